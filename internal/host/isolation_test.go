package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// The isolation tests run the attacks of a hostile tenant from real jobs
// on a real agent and check that each is refused while the platform's own
// use of the same mechanism still works.

// jobLog is a job's output (stdout and stderr) once it has ended.
func (a *agentProc) jobLog(id string) string {
	a.t.Helper()
	out, errOut, err := a.cli("log", id)
	if err != nil {
		a.t.Fatalf("flynn-host log %s: %v %s", id, err, errOut)
	}
	return out + errOut
}

// runToEnd runs j and returns its output once it has ended.
func (a *agentProc) runToEnd(j *api.HostJob) string {
	a.t.Helper()
	a.add(j)
	a.waitEnded(j.ID)
	return a.jobLog(j.ID)
}

func probeMount() api.Mount { return api.Mount{Location: probeBin, Target: "/probe"} }

func uid(n uint32) *uint32 { return &n }

// TestHostMountsAllowList: a job may bind-mount only the host paths the
// agent allows (read-only unless allowed writable), whatever symlink it
// names; the platform's own paths work.
func TestHostMountsAllowList(t *testing.T) {
	ro, rw := testslot.Dir(t), testslot.Dir(t)
	a := startAgent(t, "--mount-allow", ro, "--mount-allow", rw+":rw", "--mount-allow", probeDir)
	os.WriteFile(filepath.Join(ro, "config"), []byte("allowed-content\n"), 0o644)
	os.Chmod(rw, 0o777)
	os.Symlink("/etc", filepath.Join(rw, "etc-link"))
	os.Symlink(filepath.Join(ro, "config"), filepath.Join(rw, "config-link"))

	job := func(id string, mounts []api.Mount, args ...string) *api.HostJob {
		j := busyboxJob(id, args...)
		j.Config.Mounts = mounts
		return j
	}
	refused := []struct {
		name  string
		mount api.Mount
		want  string
	}{
		{"host etc", api.Mount{Location: "/etc", Target: "/hostetc"}, "not one jobs may mount"},
		{"host root", api.Mount{Location: "/", Target: "/host", Writeable: true}, "not one jobs may mount"},
		{"agent state", api.Mount{Location: a.stateDir, Target: "/state"}, "not one jobs may mount"},
		{"writable read-only path", api.Mount{Location: ro, Target: "/data", Writeable: true}, "read-only"},
		{"symlink out", api.Mount{Location: filepath.Join(rw, "etc-link"), Target: "/data"}, "resolves to /etc"},
		{"prefix sibling", api.Mount{Location: ro + "x", Target: "/data"}, "not one jobs may mount"},
		{"writable platform binary", api.Mount{Location: host.MountPrefix + "bin", Target: "/bin/flynn-host", Writeable: true}, "read-only"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.AddJob(context.Background(), job("mnt", []api.Mount{tt.mount}, "true"))
			e, ok := api.AsError(err)
			if !ok || !errors.Is(err, api.ErrValidation) || e.Field != "config.mounts[0].location" || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("mount of %s: err = %v, want a validation error of config.mounts[0].location saying %q", tt.mount.Location, err, tt.want)
			}
		})
	}

	out := a.runToEnd(job("mnt-ro", []api.Mount{{Location: filepath.Join(ro, "config"), Target: "/etc/app.conf"}}, "cat", "/etc/app.conf"))
	if out != "allowed-content\n" {
		t.Errorf("job reading an allowed file: %q", out)
	}
	out = a.runToEnd(job("mnt-link", []api.Mount{{Location: filepath.Join(rw, "config-link"), Target: "/etc/app.conf"}}, "cat", "/etc/app.conf"))
	if out != "allowed-content\n" {
		t.Errorf("job reading an allowed file through a symlink: %q", out)
	}
	out = a.runToEnd(job("mnt-rw", []api.Mount{{Location: rw, Target: "/data", Writeable: true}}, "sh", "-c", "echo written > /data/out && echo ok"))
	if b, _ := os.ReadFile(filepath.Join(rw, "out")); out != "ok\n" || string(b) != "written\n" {
		t.Errorf("job writing an allowed writable dir: %q, file %q", out, b)
	}
	if jobs, _ := a.client.ListJobs(context.Background()); len(jobs) != 3 {
		t.Errorf("%d jobs on the host, want the 3 allowed ones", len(jobs))
	}
}

// TestSupervisorSocketsRefuseTenants: a job in the host's network
// namespace (as builds run) that is not root finds every job supervisor's
// socket and is hung up on by each; root, the platform, is served.
func TestSupervisorSocketsRefuseTenants(t *testing.T) {
	a := startAgent(t, "--mount-allow", probeDir)
	a.add(busyboxJob("victim", "sh", "-c", "echo victim-secret; exec sleep 1000"))
	waitLog(t, a, "victim", "victim-secret")
	// The victim's socket, named as the runtime names it (other agents
	// on the machine have theirs).
	sum := sha256.Sum256([]byte(filepath.Join(a.stateDir, "containers", "jobs", "victim")))
	sock := "@flynn-supervisor-" + hex.EncodeToString(sum[:16])
	attacker := func(id string, u uint32) string {
		j := busyboxJob(id, "/probe", "supervisors", sock)
		j.Config.HostNetwork = true
		j.Config.Uid, j.Config.Gid = uid(u), uid(u)
		j.Config.Mounts = []api.Mount{probeMount()}
		return a.runToEnd(j)
	}
	if out := attacker("build-like", 1000); out != sock+" closed\n1 supervisor sockets\n" {
		t.Errorf("a uid 1000 host network job asking the victim's supervisor for logs:\n%s\nwant it found and hung up on", out)
	}
	if out := attacker("platform", 0); !strings.HasPrefix(out, sock+" open (read") {
		t.Errorf("a root host network job asking the victim's supervisor for logs:\n%s\nwant an answer", out)
	}
}

// hostIP adds a link (a veth pair: this kernel may lack dummy links)
// with an address of a test subnet: a host address the tests' agents and
// servers listen on and jobs can route to, as a host's cluster address.
// It is removed at the end.
func hostIP(t *testing.T) string {
	t.Helper()
	link := testslot.Name(t, "hip")
	ip := strings.TrimSuffix(testslot.Subnet(t), "0/24") + "1"
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	for _, args := range [][]string{
		{"link", "add", link, "type", "veth", "peer", "name", link + "p"},
		{"addr", "add", ip + "/32", "dev", link},
		{"link", "set", link, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return ip
}

// TestJobNetworkIsolation: a job on the job network reaches the routers'
// ports on its host but neither the host agent's port, nor another job
// (its address or its published port), while a system job and a host
// network job reach the agent. The firewall stays while the agent is
// down and after it restarts.
func TestJobNetworkIsolation(t *testing.T) {
	ip := hostIP(t)
	p := testslot.Ports(t, 2)
	agentPort, routerPort := p[0], p[1]
	agentAddr := net.JoinHostPort(ip, fmt.Sprint(agentPort))
	routerAddr := net.JoinHostPort(ip, fmt.Sprint(routerPort))
	a := startAgent(t, "--mount-allow", probeDir, "--listen", agentAddr, "--router-ports", fmt.Sprint(routerPort))
	router, err := net.Listen("tcp", routerAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close()
	go func() {
		for {
			c, err := router.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	victim := busyboxJob("victim", "sh", "-c", "mkdir /tmp/www && echo victim-page > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
	victim.Config.Ports = []api.Port{{Port: 8080, Proto: "tcp"}}
	v := a.add(victim)
	victimAddr := net.JoinHostPort(v.InternalIP, "8080")
	victimPublished := net.JoinHostPort(ip, fmt.Sprint(v.HostPorts[0]))
	// The victim serves its published port (from the host).
	if body := httpGet(t, "http://"+victimPublished+"/"); body != "victim-page\n" {
		t.Fatalf("victim's page: %q", body)
	}

	n := 0
	probe := func(mod func(*api.HostJob), addrs ...string) map[string]string {
		t.Helper()
		n++
		j := busyboxJob(fmt.Sprintf("probe-%d", n), append([]string{"/probe", "tcp"}, addrs...)...)
		j.Config.Mounts = []api.Mount{probeMount()}
		if mod != nil {
			mod(j)
		}
		got := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(a.runToEnd(j)), "\n") {
			if addr, res, ok := strings.Cut(l, " "); ok {
				got[addr] = res
			}
		}
		return got
	}
	check := func(who string, got map[string]string, want map[string]string) {
		t.Helper()
		for addr, w := range want {
			if got[addr] != w {
				t.Errorf("%s connecting to %s: %q, want %s (all: %v)", who, addr, got[addr], w, got)
			}
		}
	}
	check("an app job", probe(nil, agentAddr, routerAddr, victimAddr, victimPublished), map[string]string{
		agentAddr: "blocked", routerAddr: "connected", victimAddr: "blocked", victimPublished: "blocked",
	})
	check("a system job", probe(func(j *api.HostJob) { j.Config.System = true }, agentAddr), map[string]string{agentAddr: "connected"})
	check("a host network job", probe(func(j *api.HostJob) { j.Config.HostNetwork = true }, agentAddr, victimPublished), map[string]string{
		agentAddr: "connected", victimPublished: "connected",
	})

	// The agent down: nothing listens on its port, yet an app job is
	// stopped by the firewall before it learns that.
	a.stop()
	jobs := probeWhileDown(t, a, agentAddr)
	a.start()
	if jobs != "blocked" {
		t.Errorf("an app job connecting to the agent's port while the agent is down: %s, want blocked", jobs)
	}
	check("an app job after the agent restarted", probe(nil, agentAddr, routerAddr), map[string]string{agentAddr: "blocked", routerAddr: "connected"})
}

// probeWhileDown connects to addr from inside the running victim job's
// network namespace (the agent being down, no new job can start) and
// names the outcome as the probe does.
func probeWhileDown(t *testing.T, a *agentProc, addr string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+filepath.Join(a.stateDir, "net", "netns", "victim"), probeBin, "tcp", addr).CombinedOutput()
	if err != nil {
		t.Fatalf("probe in the victim's namespace: %v: %s", err, out)
	}
	_, res, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	return res
}

// TestTempDiskAndMemoryAdmission: a job that writes past its temp_disk
// gets ENOSPC while the same write without one succeeds, and the host
// spends no more disk than the limit on it; a job whose memory request
// does not fit beside the running jobs' is refused.
func TestTempDiskAndMemoryAdmission(t *testing.T) {
	a := startAgent(t, "--memory-capacity", fmt.Sprint(3*api.DefaultMemoryRequest))
	size := int64(16 << 20)
	fill := "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo exit=$?; du -k /tmp/fill"
	bounded := busyboxJob("bounded", "sh", "-c", fill+"; sleep 1000")
	bounded.Resources = api.Resources{api.ResourceTempDisk: {Limit: &size}}
	a.add(bounded)
	out := waitLog(t, a, "bounded", "/tmp/fill")
	if !strings.Contains(out, "No space left on device") || strings.Contains(out, "exit=0") {
		t.Errorf("a job writing 64 MiB with a 16 MiB temp_disk:\n%s\nwant ENOSPC", out)
	}
	img := filepath.Join(a.stateDir, "containers", "jobs", "bounded", "scratch.img")
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatalf("the job's temp disk: %v", err)
	} else if used := st.Blocks * 512; used > size {
		t.Errorf("the host spent %d bytes on a job with a %d byte temp_disk", used, size)
	}
	if out := a.runToEnd(busyboxJob("unbounded", "sh", "-c", fill)); !strings.Contains(out, "exit=0") {
		t.Errorf("a job writing 64 MiB without a temp_disk:\n%s\nwant it to succeed", out)
	}

	// Two jobs without a memory request hold two thirds of the capacity
	// (bounded, still running, is one); a third fits, a fourth does not.
	a.add(busyboxJob("second", "sleep", "1000"))
	a.add(busyboxJob("third", "sleep", "1000"))
	_, err := a.client.AddJob(context.Background(), busyboxJob("fourth", "sleep", "1000"))
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "memory") {
		t.Errorf("a job beyond the host's memory: err = %v, want it refused for memory", err)
	}
	small := int64(8 << 20)
	j := busyboxJob("small-after-stop", "true")
	j.Resources = api.Resources{api.ResourceMemory: {Request: &small, Limit: &small}}
	a.client.StopJob(context.Background(), "third")
	a.add(j)
}
