package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// startMultiCluster runs `flynn-host up --hosts n`, the code path of `make
// up HOSTS=n`: n hosts in network namespaces of this test's own names and
// subnet, joined by a bridge, with the HTTP, HTTPS and SSH ports forwarded
// from loopback.
func startMultiCluster(t *testing.T, n int) *e2eCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts a whole cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("end-to-end: needs root")
	}
	dir := testslot.Dir(t)
	state := filepath.Join(dir, "state")
	c := &e2eCluster{t: t, stateDir: state, rc: filepath.Join(dir, "flynnrc"), home: filepath.Join(dir, "home"), domain: e2eDomain,
		bridge: "flynnbr0", subnet: "100.64.0.0/24", cgroup: testslot.Name(t, "mcg"),
		net: e2eNet{bridge: testslot.Name(t, "hb"), subnet: testslot.Subnet(t), netnsPrefix: testslot.Name(t, "ns") + "h", vethPrefix: testslot.Name(t, "v") + "h"}}
	os.Mkdir(c.home, 0o755)
	c.httpPort, c.httpsPort = testslot.Port(t), testslot.Port(t)
	sshPort := testslot.Port(t)
	base := strings.TrimSuffix(c.net.subnet, "0/24")
	for i := 1; i <= n; i++ {
		ip := base + strconv.Itoa(i)
		c.hosts = append(c.hosts, e2eHost{stateDir: filepath.Join(state, "host"+strconv.Itoa(i)), hostURL: "http://" + ip + ":1113", ip: ip})
	}
	// Inside the hosts' namespaces the default ports are free; only the
	// forwarded ports are on this machine.
	c.upArgs = []string{"up", "--hosts", strconv.Itoa(n), "--state-dir", c.stateDir,
		"--hosts-bridge", c.net.bridge, "--hosts-subnet", c.net.subnet,
		"--netns-prefix", c.net.netnsPrefix, "--veth-prefix", c.net.vethPrefix,
		"--bridge", c.bridge, "--subnet", c.subnet, "--cgroup-parent", c.cgroup,
		"--dns-port", "-1", "--domain", c.domain,
		"--http-port", fmt.Sprint(c.httpPort), "--https-port", fmt.Sprint(c.httpsPort), "--git-ssh-port", fmt.Sprint(sshPort),
		"--stack-dir", "/var/cache/flynn-test/stack", "--deps", "../scripts/deps.sh",
		"--flynn", filepath.Join(binDir, "flynn"), "--etcd-fast"}
	t.Cleanup(c.down)
	c.up()
	return c
}

// hostList is `flynn-host list --json`.
func (c *e2eCluster) hostList() []*api.HostListing {
	c.t.Helper()
	out, _, code := run(c.t, "flynn-host", "list", "--json", "--state-dir", c.stateDir)
	if code != 0 {
		c.t.Fatalf("flynn-host list: %s", out)
	}
	var hosts []*api.HostListing
	if err := json.Unmarshal([]byte(out), &hosts); err != nil {
		c.t.Fatalf("flynn-host list --json: %v\n%s", err, out)
	}
	return hosts
}

// webPerHost counts the app's running web jobs on each host, as the hosts
// themselves report them (not the controller's records).
func (c *e2eCluster) webPerHost(appName string) (map[string]int, error) {
	out := map[string]int{}
	for _, h := range c.hosts {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		jobs, err := c.hostClient(h).ListJobs(ctx)
		cancel()
		if err != nil {
			continue // a host cut off is not counted
		}
		for _, j := range jobs {
			if j.Job.Metadata[api.JobMetaAppName] == appName && j.Job.Metadata[api.JobMetaProcessType] == "web" && j.Status == api.HostJobRunning {
				out[h.ip]++
			}
		}
	}
	return out, nil
}

// TestMultiHost: `up --hosts 3` runs the platform across three hosts; an
// app scaled to web=6 runs on all of them and every host's router serves
// it; when host 2's links go down its jobs move to hosts 1 and 3 while
// requests through those hosts keep succeeding and `flynn scale` keeps
// working; when its links come back the formation has exactly its count
// again; down leaves no namespace, bridge, rule, cgroup or mount.
func TestMultiHost(t *testing.T) {
	start := time.Now()
	c := startMultiCluster(t, 3)
	t.Logf("up --hosts 3: %s", time.Since(start).Round(100*time.Millisecond))

	hosts := c.hostList()
	roles := map[string]int{}
	for _, h := range hosts {
		if h.State != api.HostStateUp {
			t.Errorf("host %s at %s is %s", h.Host.ID, h.Host.Addr, h.State)
		}
		roles[h.EtcdRole]++
	}
	if len(hosts) != 3 || roles["leader"] != 1 || roles["member"] != 2 {
		t.Errorf("flynn-host list: %d hosts, etcd roles %v; want 3 hosts, a leader and 2 members", len(hosts), roles)
	}

	a := newPushApp(t, c, nil, "procfile", "spread", false)
	a.pushAndServe("hello from the procfile app")
	a.flynn("scale", "web=6")
	waitFor(t, within(t, 2*time.Minute), "web=6 on all 3 hosts", c.watch(), func() (bool, error) {
		per, _ := c.webPerHost("spread")
		return len(per) == 3 && per[c.hosts[0].ip]+per[c.hosts[1].ip]+per[c.hosts[2].ip] == 6, fmt.Errorf("per host: %v", per)
	})
	// Every host's router serves the app.
	viaHost := func(h e2eHost) (int, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s:%d/", h.ip, c.httpPort), nil)
		req.Host = "spread." + c.domain
		res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
	for _, h := range c.hosts {
		if status, err := viaHost(h); status != 200 {
			t.Errorf("GET through the router of %s: %d %v", h.ip, status, err)
		}
	}

	// Probes through hosts 1 and 3 while host 2 is cut off and back.
	var probes, failed atomic.Int64
	var failures sync.Map
	var cut, back time.Time // set before the probes read them (cutAt)
	var cutAt atomic.Pointer[time.Time]
	// since says when t was, relative to the cut (and to the link's
	// return, once it is back).
	since := func(t time.Time) string {
		c := cutAt.Load()
		if c == nil {
			return t.Format("15:04:05.000")
		}
		return fmt.Sprintf("%s (cut%+.3fs)", t.Format("15:04:05.000"), t.Sub(*c).Seconds())
	}
	pctx, stopProbes := context.WithCancel(context.Background())
	var pwg sync.WaitGroup
	for _, h := range []e2eHost{c.hosts[0], c.hosts[2]} {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for pctx.Err() == nil {
				sent := time.Now()
				status, err := viaHost(h)
				probes.Add(1)
				if status != 200 {
					failed.Add(1)
					failures.Store(fmt.Sprintf("sent %s, failed after %s: %s %d %v", since(sent), time.Since(sent).Round(time.Millisecond), h.ip, status, err), true)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	defer func() { stopProbes(); pwg.Wait() }()

	veth2 := c.net.vethPrefix + "2"
	cut = time.Now()
	cutAt.Store(&cut)
	if out, err := exec.Command("ip", "link", "set", veth2, "down").CombinedOutput(); err != nil {
		t.Fatalf("cut host 2: %v %s", err, out)
	}
	linkUp := func() { exec.Command("ip", "link", "set", veth2, "up").Run() }
	defer linkUp()
	// The hosts still reachable report web=6 between them.
	waitFor(t, within(t, 2*time.Minute), "web=6 on hosts 1 and 3", c.watch(), func() (bool, error) {
		per, _ := c.webPerHost("spread")
		return per[c.hosts[0].ip]+per[c.hosts[2].ip] == 6, fmt.Errorf("per host: %v", per)
	})
	failover := time.Since(cut)
	// The API works meanwhile.
	a.flynn("scale", "web=7")
	a.flynn("scale", "web=6")

	linkUp()
	back = time.Now()
	// Exactly the formation's count again, host 2's stale jobs stopped:
	// six running, and still six a few seconds later.
	var steadySince time.Time
	waitFor(t, within(t, 3*time.Minute), "exactly web=6 across the 3 hosts, steadily", c.watch(), func() (bool, error) {
		per, _ := c.webPerHost("spread")
		n := per[c.hosts[0].ip] + per[c.hosts[1].ip] + per[c.hosts[2].ip]
		if n != 6 || len(c.reachable()) != 3 {
			steadySince = time.Time{}
			return false, fmt.Errorf("per host: %v, %d hosts reachable", per, len(c.reachable()))
		}
		if steadySince.IsZero() {
			steadySince = time.Now()
		}
		return time.Since(steadySince) > 5*time.Second, nil
	})
	stopProbes()
	pwg.Wait()
	var list []string
	failures.Range(func(k, _ any) bool { list = append(list, k.(string)); return true })
	t.Logf("host 2 cut off: web=6 on hosts 1 and 3 after %s; back: exactly web=6 after %s; %d of %d probes through hosts 1 and 3 failed",
		failover.Round(100*time.Millisecond), steadySince.Sub(back).Round(100*time.Millisecond), failed.Load(), probes.Load())
	if failed.Load() > 0 {
		t.Errorf("%d probes through hosts 1 and 3 failed while host 2 was cut off (link back at cut%+.3fs): %v", failed.Load(), back.Sub(cut).Seconds(), list)
	}

	// Power loss on every host; they come back one at a time in another
	// order (3, 2, then 1 with up), seconds apart: the cluster restores
	// itself, and the app serves through every host with exactly web=6.
	c.powerOff(false)
	var st struct {
		Hosts []struct {
			Name       string   `json:"name"`
			Netns      string   `json:"netns"`
			StateDir   string   `json:"state_dir"`
			DaemonArgs []string `json:"daemon_args"`
		} `json:"hosts"`
	}
	if b, err := os.ReadFile(filepath.Join(c.stateDir, "up.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &st); err != nil || len(st.Hosts) != 3 {
		t.Fatalf("up.json: %v, %d hosts", err, len(st.Hosts))
	}
	restart := time.Now()
	for _, i := range []int{2, 1} {
		h := st.Hosts[i]
		lf, err := os.OpenFile(filepath.Join(h.StateDir, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.Netns, "--", filepath.Join(binDir, "flynn-host")}, h.DaemonArgs...)...)
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start the daemon of %s: %v", h.Name, err)
		}
		lf.Close()
		go cmd.Wait()
		time.Sleep(3 * time.Second)
	}
	c.up()
	waitFor(t, within(t, 3*time.Minute), "after the power loss: exactly web=6, served through every host", c.watch(), func() (bool, error) {
		per, _ := c.webPerHost("spread")
		n := per[c.hosts[0].ip] + per[c.hosts[1].ip] + per[c.hosts[2].ip]
		if n != 6 {
			return false, fmt.Errorf("per host: %v", per)
		}
		for _, h := range c.hosts {
			if status, err := viaHost(h); status != 200 {
				return false, fmt.Errorf("GET through the router of %s: %d %v", h.ip, status, err)
			}
		}
		return true, nil
	})
	t.Logf("power loss of every host, started in the order 3, 2, 1: serving with web=6 through every host %s after the first daemon started",
		time.Since(restart).Round(100*time.Millisecond))

	c.down()
	for i := 1; i <= 3; i++ {
		if _, err := os.Stat("/run/netns/" + c.net.netnsPrefix + strconv.Itoa(i)); err == nil {
			t.Errorf("network namespace %s%d left behind", c.net.netnsPrefix, i)
		}
	}
	if _, err := net.InterfaceByName(c.net.bridge); err == nil {
		t.Errorf("bridge %s left behind", c.net.bridge)
	}
	if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), c.net.bridge) || strings.Contains(string(out), c.net.subnet) {
		t.Errorf("iptables rules of the hosts' network left behind")
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), c.stateDir) {
		t.Error("mounts left behind")
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + c.cgroup + "-host*"); len(m) > 0 {
		t.Errorf("cgroups left behind: %v", m)
	}
}

// reachable are the hosts whose agents answer.
func (c *e2eCluster) reachable() []e2eHost {
	var out []e2eHost
	for _, h := range c.hosts {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.hostClient(h).Status(ctx)
		cancel()
		if err == nil {
			out = append(out, h)
		}
	}
	return out
}
