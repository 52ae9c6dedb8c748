package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

var flynnHost string // the built flynn-host binary

func TestMain(m *testing.M) {
	if spec := os.Getenv("FLT_GRID_REGISTRANT"); spec != "" {
		runRegistrant(spec)
		return
	}
	dir, err := os.MkdirTemp("", "flt-grid-bin-")
	if err != nil {
		panic(err)
	}
	flynnHost = filepath.Join(dir, "flynn-host")
	// flynn-supervisor next to it runs the jobs' supervisors.
	for _, name := range []string{"flynn-host", "flynn-supervisor"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			panic("build " + name + ": " + err.Error() + "\n" + string(out))
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runRegistrant is a separate "owner" process: it registers an instance
// and heartbeats until it is killed. spec is urls|token|service|addr.
func runRegistrant(spec string) {
	p := strings.Split(spec, "|")
	c := discoverdclient.New(p[0], p[1])
	if _, err := c.Register(context.Background(), p[2], p[3], nil); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("registered")
	select {}
}

const token = "flt-grid-token"

type node struct {
	t                                       *testing.T
	name, ip, dir, logPath                  string
	etcdClient, etcdPeer, discPort, dnsPort int
	cmd                                     *exec.Cmd
	exited                                  chan struct{}
}

func newNode(t *testing.T, name, ip string) *node {
	dir := testslot.Dir(t) // a killed run's daemons die when the slot is next taken
	return &node{
		t: t, name: name, ip: ip, dir: filepath.Join(dir, "state"), logPath: filepath.Join(dir, "daemon.log"),
		// Ports from the test slot, free for TCP and UDP on every address.
		etcdClient: testslot.Port(t), etcdPeer: testslot.Port(t),
		discPort: testslot.Port(t), dnsPort: testslot.Port(t),
	}
}

func (n *node) url() string  { return fmt.Sprintf("http://%s:%d", n.ip, n.discPort) }
func (n *node) addr() string { return fmt.Sprintf("%s:%d", n.ip, n.discPort) }

func (n *node) run(args ...string) string {
	n.t.Helper()
	out, err := exec.Command(flynnHost, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("flynn-host %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (n *node) start() {
	n.t.Helper()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	n.cmd = exec.Command(flynnHost, "daemon", "--state-dir", n.dir, "--listen-ip", n.ip,
		"--etcd-client-port", fmt.Sprint(n.etcdClient), "--etcd-peer-port", fmt.Sprint(n.etcdPeer),
		"--discoverd-port", fmt.Sprint(n.discPort), "--dns-port", fmt.Sprint(n.dnsPort),
		"--recursor", "127.0.0.1:1", "--ttl", "2s", "--etcd-fast", "--tag", "node="+n.name, "--no-agent")
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	logf.Close()
	n.exited = make(chan struct{})
	cmd, exited := n.cmd, n.exited
	go func() { cmd.Wait(); close(exited) }()
	n.t.Cleanup(func() { n.stop(syscall.SIGKILL) })
}

func (n *node) stop(sig syscall.Signal) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
		n.t.Errorf("%s did not stop on %v", n.name, sig)
	}
	n.cmd = nil
}

func (n *node) log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

func (n *node) status(ctx context.Context) (*api.GridStatus, error) {
	st := &api.GridStatus{}
	err := (&httpclient.Client{URL: n.url(), Key: token}).Do(ctx, "GET", "/grid/status", nil, st)
	return st, err
}

// waitHealthy waits until n reports hosts hosts and healthy voting etcd
// members out of members.
func (n *node) waitHealthy(ctx context.Context, hosts, healthyWant, members int) *api.GridStatus {
	n.t.Helper()
	var last string
	for {
		st, err := n.status(ctx)
		if err == nil {
			healthy := 0
			for _, m := range st.Members {
				if m.Healthy && !m.IsLearner {
					healthy++
				}
			}
			if len(st.Hosts) == hosts && healthy == healthyWant && len(st.Members) == members {
				return st
			}
			last = fmt.Sprintf("%d hosts, %d/%d healthy members", len(st.Hosts), healthy, len(st.Members))
		} else {
			last = err.Error()
		}
		var exited chan struct{}
		if n.cmd != nil {
			exited = n.exited
		}
		select {
		case <-exited:
			n.t.Fatalf("%s exited while waiting for it to be healthy\nlog:\n%s", n.name, n.log())
		case <-ctx.Done():
			n.t.Fatalf("%s not healthy (%d hosts, %d members): %s\nlog:\n%s", n.name, hosts, members, last, n.log())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type evSummary struct{ Kind, Addr string }

func wantEvents(t *testing.T, name string, w *discoverdclient.Watcher, want ...evSummary) {
	t.Helper()
	var got []evSummary
	for range want {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher %s closed: %v", name, w.Err())
			}
			s := evSummary{Kind: ev.Kind}
			if ev.Instance != nil {
				s.Addr = ev.Instance.Addr
			}
			got = append(got, s)
		case <-time.After(30 * time.Second):
			t.Fatalf("watcher %s: got %v, then nothing for 30s; want %v", name, got, want)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("watcher %s events (-want +got):\n%s", name, diff)
	}
}

func startRegistrant(t *testing.T, urls, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLT_GRID_REGISTRANT="+strings.Join([]string{urls, token, "x", addr}, "|"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "registered" {
		t.Fatalf("registrant %s: %q", addr, line)
	}
	return cmd
}

func dig(t *testing.T, ctx context.Context, n *node, name string) []string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "dig", "@"+n.ip, "-p", fmt.Sprint(n.dnsPort), "+short", "+time=5", "+tries=3", name).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s at %s: %v\n%s", name, n.name, err, out)
	}
	lines := strings.Fields(string(out))
	slices.Sort(lines)
	return lines
}

// urlsFrom lists the discoverd URLs of nodes, first's first.
func urlsFrom(nodes []*node, first int) string {
	var urls []string
	for i := range nodes {
		urls = append(urls, nodes[(first+i)%len(nodes)].url())
	}
	return strings.Join(urls, ",")
}

func TestThreeHostCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three daemons; skipped with -short")
	}
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nodes := []*node{newNode(t, "n1", "127.0.0.1"), newNode(t, "n2", "127.0.0.2"), newNode(t, "n3", "127.0.0.3")}

	// Cluster set-up: init on n1, n2 joins through n1, n3 through n2.
	out := nodes[0].run("init", "--state-dir", nodes[0].dir, "--token", token)
	if !strings.Contains(out, "token: "+token) {
		t.Fatalf("init output:\n%s", out)
	}
	nodes[0].start()
	nodes[0].waitHealthy(ctx, 1, 1, 1)
	// A wrong token is refused.
	if out, err := exec.Command(flynnHost, "join", "--state-dir", t.TempDir(), "--peer", nodes[0].addr(), "--token", "wrong").CombinedOutput(); err == nil || !strings.Contains(string(out), "refused the token") {
		t.Fatalf("join with a wrong token: %v\n%s", err, out)
	}
	for i := 1; i < 3; i++ {
		nodes[i].run("join", "--state-dir", nodes[i].dir, "--peer", nodes[i-1].addr(), "--token", token)
		nodes[i].start()
		nodes[i].waitHealthy(ctx, i+1, i+1, i+1)
	}
	st := nodes[2].waitHealthy(ctx, 3, 3, 3)
	for _, h := range st.Hosts {
		if !h.EtcdMember {
			t.Errorf("host %s is not an etcd member", h.ID)
		}
	}
	out = nodes[0].run("status", "--state-dir", nodes[0].dir, "--addr", nodes[1].addr())
	if n := strings.Count(out, "healthy"); n != 3 || strings.Contains(out, "unhealthy") {
		t.Fatalf("status shows %d healthy members:\n%s", n, out)
	}
	for _, h := range st.Hosts {
		if !strings.Contains(out, h.ID) {
			t.Fatalf("status lacks host %s:\n%s", h.ID, out)
		}
	}
	t.Logf("status:\n%s", out)

	// One watcher per node (failing over to the others).
	c := discoverdclient.New(urlsFrom(nodes, 0), token)
	if err := c.AddService(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	watchers := make([]*discoverdclient.Watcher, 3)
	for i := range nodes {
		w, err := discoverdclient.New(urlsFrom(nodes, i), token).Watch(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watchers[i] = w
		wantEvents(t, nodes[i].name, w, evSummary{"current", ""})
	}
	each := func(want ...evSummary) {
		t.Helper()
		for i, w := range watchers {
			wantEvents(t, nodes[i].name, w, want...)
		}
	}

	// Instances owned by other processes, registered through n1 and n2.
	a := startRegistrant(t, urlsFrom(nodes, 0), "10.1.0.1:80")
	each(evSummary{"up", "10.1.0.1:80"}, evSummary{"leader", "10.1.0.1:80"})
	startRegistrant(t, urlsFrom(nodes, 1), "10.1.0.2:80")
	each(evSummary{"up", "10.1.0.2:80"})
	for _, n := range nodes {
		insts, err := discoverdclient.New(n.url(), token).Instances(ctx, "x")
		if err != nil || len(insts) != 2 {
			t.Fatalf("instances at %s: %v %v", n.name, insts, err)
		}
		if diff := cmp.Diff([]string{"10.1.0.1", "10.1.0.2"}, dig(t, ctx, n, "x.discoverd")); diff != "" {
			t.Fatalf("dig x.discoverd at %s (-want +got):\n%s", n.name, diff)
		}
		if diff := cmp.Diff([]string{"10.1.0.1"}, dig(t, ctx, n, "leader.x.discoverd")); diff != "" {
			t.Fatalf("dig leader.x.discoverd at %s (-want +got):\n%s", n.name, diff)
		}
	}

	// The leader's owner dies: down within the TTL, one leader event.
	killed := time.Now()
	a.Process.Kill()
	each(evSummary{"down", "10.1.0.1:80"}, evSummary{"leader", "10.1.0.2:80"})
	t.Logf("dead owner's instance went down %v after the kill (TTL 2s)", time.Since(killed))
	if diff := cmp.Diff([]string{"10.1.0.2"}, dig(t, ctx, nodes[2], "leader.x.discoverd")); diff != "" {
		t.Fatalf("dig leader after failover (-want +got):\n%s", diff)
	}

	// Stop each node in turn (n3 is killed hard); the others keep working,
	// and the node comes back with its data.
	for i, n := range nodes {
		sig := syscall.SIGTERM
		if i == 2 {
			sig = syscall.SIGKILL
		}
		n.stop(sig)
		other := nodes[(i+1)%3]
		// The stopped host's registration is gone (at once on SIGTERM,
		// within the TTL on SIGKILL); its etcd member is unhealthy.
		other.waitHealthy(ctx, 2, 2, 3)
		oc := discoverdclient.New(urlsFrom(nodes, (i+1)%3), token)
		addr := fmt.Sprintf("10.2.0.%d:80", i+1)
		reg, err := oc.Register(ctx, "x", addr, nil)
		if err != nil {
			t.Fatalf("register with %s down: %v", n.name, err)
		}
		each(evSummary{"up", addr})
		for _, o := range nodes {
			if o == n {
				continue
			}
			if got := dig(t, ctx, o, "x.discoverd"); !slices.Contains(got, fmt.Sprintf("10.2.0.%d", i+1)) {
				t.Fatalf("dig at %s with %s down: %v", o.name, n.name, got)
			}
		}
		n.start()
		n.waitHealthy(ctx, 3, 3, 3)
		insts, err := discoverdclient.New(n.url(), token).Instances(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		var addrs []string
		for _, in := range insts {
			addrs = append(addrs, in.Addr)
		}
		if diff := cmp.Diff([]string{"10.1.0.2:80", addr}, addrs); diff != "" {
			t.Fatalf("instances at restarted %s (-want +got):\n%s", n.name, diff)
		}
		if err := reg.Deregister(ctx); err != nil {
			t.Fatal(err)
		}
		each(evSummary{"down", addr})
	}
}
