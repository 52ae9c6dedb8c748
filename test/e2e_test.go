package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/bootstrap"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// e2eCluster is a single-node cluster started with `flynn-host up`, the
// code path of `make up`, in its own state dir, ports, bridge and subnet.
type e2eCluster struct {
	t        *testing.T
	stateDir string
	rc       string // the CLI config up wrote
	home     string // HOME of the CLI and git (the cluster CA goes there)
	httpPort int
	// httpsPort is the router's TLS port: the CLI and git over HTTPS
	// reach the controller and gitreceive there.
	httpsPort int
	domain    string
	upArgs    []string
	bridge    string
	subnet    string
	cgroup    string
	// hosts are the cluster's hosts: one, or each of `up --hosts N`.
	hosts []e2eHost
	// net is the hosts' network with several hosts.
	net e2eNet
}

// e2eHost is one host of an e2e cluster.
type e2eHost struct {
	stateDir, hostURL, ip string
}

// e2eNet names the network of `up --hosts N`.
type e2eNet struct {
	bridge, subnet, netnsPrefix, vethPrefix string
}

const e2eDomain = "e2e.flynn.localhost"

// e2eBridgeIP, given to startE2ECluster as an argument of flynn-host up,
// becomes the address of the cluster's job bridge: where app jobs reach
// the routers when they have no discoverd DNS (these clusters run none).
const e2eBridgeIP = "${E2E_BRIDGE_IP}"

func startE2ECluster(t *testing.T, manifest *bootstrap.Manifest, extra ...string) *e2eCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts a whole cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("end-to-end: needs root")
	}
	for _, bin := range []string{"runc", "busybox", "git"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("end-to-end: needs %s", bin)
		}
	}
	dir := testslot.Dir(t)
	state := filepath.Join(dir, "state") // up creates it
	c := &e2eCluster{t: t, stateDir: state, rc: filepath.Join(dir, "flynnrc"), home: filepath.Join(dir, "home"), domain: e2eDomain,
		bridge: testslot.Name(t, "e2e"), subnet: testslot.Subnet(t), cgroup: testslot.Name(t, "e2ecg")}
	os.Mkdir(c.home, 0o755)
	port := func() string { return fmt.Sprint(testslot.Port(t)) }
	c.httpPort, c.httpsPort = testslot.Port(t), testslot.Port(t)
	hostPort := port()
	c.hosts = []e2eHost{{stateDir: state, hostURL: "http://127.0.0.1:" + hostPort, ip: "127.0.0.1"}}
	c.upArgs = []string{"up", "--state-dir", c.stateDir, "--listen-ip", "127.0.0.1",
		"--bridge", c.bridge, "--subnet", c.subnet, "--cgroup-parent", c.cgroup,
		"--port-range", testslot.PortRange(t, 60),
		"--etcd-client-port", port(), "--etcd-peer-port", port(),
		"--discoverd-port", port(), "--dns-port", "-1", "--host-port", hostPort,
		"--domain", c.domain,
		"--http-port", fmt.Sprint(c.httpPort), "--https-port", fmt.Sprint(c.httpsPort),
		"--router-api-port", port(), "--blobstore-port", port(),
		"--logaggregator-port", port(), "--git-http-port", port(),
		"--git-ssh-port", port(),
		"--stack-dir", "/var/cache/flynn-test/stack", "--deps", "../scripts/deps.sh",
		"--flynn", filepath.Join(binDir, "flynn"), "--etcd-fast"}
	for _, a := range extra {
		if a == e2eBridgeIP {
			a = strings.TrimSuffix(c.subnet, "0/24") + "1"
		}
		c.upArgs = append(c.upArgs, a)
	}
	if manifest != nil {
		b, _ := json.Marshal(manifest)
		f := filepath.Join(dir, "manifest.json")
		os.WriteFile(f, b, 0o644)
		c.upArgs = append(c.upArgs, "--manifest", f)
	}
	t.Cleanup(c.down)
	c.up()
	return c
}

func (c *e2eCluster) up() string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "flynn-host"), c.upArgs...)
	cmd.Env = append(c.env(), "SUDO_USER=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		// Up's own output last: it says which step failed and why, and a
		// report cut to its end (CI's) keeps it.
		c.t.Fatalf("%s\n==== flynn-host up: %v\n%s", c.watch(), err, out)
	}
	return string(out)
}

// watch reports each host daemon's log tail and jobs, and ends a wait when
// a daemon is gone.
func (c *e2eCluster) watch() watch {
	return watch{
		dump: func() string {
			var sb strings.Builder
			for _, h := range c.hosts {
				b, _ := os.ReadFile(filepath.Join(h.stateDir, "daemon.log"))
				fmt.Fprintf(&sb, "==== daemon log of %s (tail):\n%s\n==== its jobs:\n%s", h.stateDir, tail(string(b), 40), c.jobTable(h))
			}
			return sb.String()
		},
		dead: func() string {
			for _, h := range c.hosts {
				if daemonPID(h.stateDir) == 0 {
					return "the host daemon of " + h.stateDir + " is not running"
				}
			}
			return ""
		},
	}
}

// daemonLog is the first host daemon's log.
func (c *e2eCluster) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(c.hosts[0].stateDir, "daemon.log"))
	return string(b)
}

// hostClient is a client of h's agent.
func (c *e2eCluster) hostClient(h e2eHost) *hostclient.Client {
	hcfg, err := daemon.LoadHostConfig(h.stateDir)
	if err != nil {
		c.t.Fatalf("host config of %s: %v", h.stateDir, err)
	}
	return hostclient.New(h.hostURL, hcfg.Token)
}

// jobTable lists a host's jobs, newest last, for failure reports.
func (c *e2eCluster) jobTable(h e2eHost) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hcfg, err := daemon.LoadHostConfig(h.stateDir)
	if err != nil {
		return err.Error()
	}
	jobs, err := hostclient.New(h.hostURL, hcfg.Token).ListJobs(ctx)
	if err != nil {
		return err.Error()
	}
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].CreatedAt.Before(jobs[j].CreatedAt) })
	var sb strings.Builder
	for _, j := range jobs {
		exit := ""
		if j.ExitStatus != nil {
			exit = fmt.Sprintf(" exit=%d", *j.ExitStatus)
		}
		if j.Error != nil {
			exit += " error=" + *j.Error
		}
		fmt.Fprintf(&sb, "%s %s/%s %s%s\n", j.Job.ID, j.Job.Metadata[api.JobMetaAppName], j.Job.Metadata[api.JobMetaProcessType], j.Status, exit)
	}
	return sb.String()
}

// daemonPID is the pid of the daemon up started for stateDir, or 0 when
// it is not running.
func daemonPID(stateDir string) int {
	b, err := os.ReadFile(filepath.Join(stateDir, "daemon.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

func (c *e2eCluster) down() {
	out, err := exec.Command(filepath.Join(binDir, "flynn-host"), "down", "--state-dir", c.stateDir).CombinedOutput()
	if err != nil {
		c.t.Errorf("flynn-host down: %v\n%s", err, out)
	}
}

// env is the environment of the CLI and git: the cluster's config, its
// own HOME, the binaries under test first in PATH and a git identity.
// (The rest is the caller's: a GIT_SSL_CAINFO there must not stop git
// from trusting the cluster CA flynn create configures.)
func (c *e2eCluster) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "HOME" && k != "PATH" {
			env = append(env, kv)
		}
	}
	return append(env, "FLYNNRC="+c.rc, "HOME="+c.home, "PATH="+binDir+":"+os.Getenv("PATH"),
		"GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@example.com", "GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@example.com")
}

// url is the address of host (a name under the cluster domain, which
// curl resolves to this machine as every *.localhost name) through the
// router's HTTP port.
func (c *e2eCluster) url(host, path string) string {
	return fmt.Sprintf("http://%s:%d%s", host, c.httpPort, path)
}

// curl fetches path from host (a name under the cluster domain) through
// the router's HTTP port, and returns the status (0 when the request
// failed) and the body (or the error).
func (c *e2eCluster) curl(host, path string) (int, string) {
	out, err := exec.Command("curl", "-sS", "-m", "5", "-w", "\n%{http_code}", c.url(host, path)).Output()
	if err != nil {
		return 0, err.Error()
	}
	i := strings.LastIndexByte(string(out), '\n')
	status, _ := strconv.Atoi(strings.TrimSpace(string(out[i+1:])))
	return status, string(out[:i])
}

// flynn runs the CLI with the cluster's config in dir.
func (c *e2eCluster) flynn(dir string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
	cmd.Dir = dir
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The scheduler's log last: it says why a formation or deploy
		// did not complete.
		c.t.Fatalf("flynn %s: %v\n%s\n%s\n%s", strings.Join(args, " "), err, out, c.watch().dump(), c.appLogs("scheduler", 60))
	}
	return string(out)
}

// appLogs is the log tail of each of app's jobs on every host, for
// failure reports.
func (c *e2eCluster) appLogs(app string, n int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sb strings.Builder
	for _, h := range c.hosts {
		hcfg, err := daemon.LoadHostConfig(h.stateDir)
		if err != nil {
			continue
		}
		jobs, err := hostclient.New(h.hostURL, hcfg.Token).ListJobs(ctx)
		if err != nil {
			fmt.Fprintf(&sb, "==== jobs of %s: %v\n", h.stateDir, err)
			continue
		}
		for _, j := range jobs {
			if j.Job.Metadata[api.JobMetaAppName] != app {
				continue
			}
			logs, _ := filepath.Glob(filepath.Join(h.stateDir, "*", "containers", "jobs", j.Job.ID, "log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				fmt.Fprintf(&sb, "==== log of %s job %s (%s, tail):\n%s\n", app, j.Job.ID, j.Status, tail(string(b), n))
			}
		}
	}
	return sb.String()
}

// TestUpTwiceAndDown: up brings a cluster whose controller the CLI reaches
// with every system app registered; a second up changes nothing; down
// leaves no bridge, cgroup, mount or state dir behind.
func TestUpTwiceAndDown(t *testing.T) {
	c := startE2ECluster(t, nil)
	apps := c.flynn(t.TempDir(), "apps")
	for _, app := range []string{"controller", "scheduler", "router", "blobstore", "logaggregator"} {
		if !strings.Contains(apps, app) {
			t.Errorf("flynn apps does not list %s:\n%s", app, apps)
		}
	}
	out := c.up()
	if !strings.Contains(out, "The cluster is bootstrapped already") {
		t.Errorf("second up did not notice the cluster is bootstrapped:\n%s", out)
	}
	c.down()
	if rc, _ := os.ReadFile(c.rc); strings.Contains(string(rc), c.domain) {
		t.Errorf("the CLI config still lists the cluster:\n%s", rc)
	}
	if _, err := net.InterfaceByName(c.bridge); err == nil {
		t.Errorf("bridge %s left behind", c.bridge)
	}
	if _, err := os.Stat(c.stateDir); err == nil {
		t.Error("state dir left behind")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), c.stateDir) {
		t.Error("mounts left behind")
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + c.cgroup); len(m) > 0 {
		t.Errorf("cgroups left behind: %v", m)
	}
}

// TestSystemApps: the platform's own apps are operated like any app: the
// controller scales to two jobs on one host (each gets its own port, the
// CLI reaches them through the router), and a killed router or controller
// job is replaced by the scheduler while the CLI keeps working.
func TestSystemApps(t *testing.T) {
	c := startE2ECluster(t, nil)
	dir := t.TempDir()
	// upJobs returns the ids of the app's jobs that are up (none while
	// the CLI cannot reach the controller, as while the router restarts).
	upJobs := func(app string) []string {
		cmd := exec.Command(filepath.Join(binDir, "flynn"), "-a", app, "ps")
		cmd.Env = c.env()
		out, err := cmd.Output()
		if err != nil {
			return nil
		}
		var ids []string
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[2] == "up" {
				ids = append(ids, f[0])
			}
		}
		return ids
	}
	// replaced waits until app runs n jobs, none of them killed.
	replaced := func(app, killed string, n int) {
		t.Helper()
		waitFor(t, within(t, time.Minute), fmt.Sprintf("%s job %s to be replaced (%d up)", app, killed, n), c.watch(), func() (bool, error) {
			ids := upJobs(app)
			return len(ids) == n && !slices.Contains(ids, killed), fmt.Errorf("up: %v", ids)
		})
	}
	if ids := upJobs("router"); len(ids) != 1 {
		t.Fatalf("flynn -a router ps: %d jobs up, want 1", len(ids))
	}

	if out := c.flynn(dir, "-a", "controller", "scale", "web=2"); !strings.Contains(out, "scale completed") {
		t.Errorf("flynn -a controller scale web=2:\n%s", out)
	}
	ctls := upJobs("controller")
	if len(ctls) != 2 {
		t.Fatalf("after scale web=2, controller jobs up: %v", ctls)
	}
	for range 10 { // spread over both controllers by the router
		c.flynn(dir, "apps")
	}

	c.flynn(dir, "-a", "controller", "kill", ctls[0])
	replaced("controller", ctls[0], 2)
	c.flynn(dir, "-a", "controller", "scale", "web=1")

	router := upJobs("router")[0]
	c.flynn(dir, "-a", "router", "kill", router)
	replaced("router", router, 1)

	// The only controller, killed through itself, comes back.
	ctl := upJobs("controller")[0]
	c.flynn(dir, "-a", "controller", "kill", ctl)
	replaced("controller", ctl, 1)
	if out := c.flynn(dir, "apps"); !strings.Contains(out, "gitreceive") {
		t.Errorf("flynn apps after the restarts:\n%s", out)
	}
}

// TestUserJourney is the walkthrough of the README, through the flynn CLI,
// git and curl only: a Go and a Node.js app pushed over HTTPS through the
// router, then the Go app scaled, configured, logged, run, routed, rolled
// back, killed and deleted.
func TestUserJourney(t *testing.T) {
	c := startE2ECluster(t, nil)
	// get fetches a URL until cond holds (a minute at most) and returns
	// the body.
	get := func(url string, cond func(status int, body string) bool) string {
		t.Helper()
		var body string
		waitFor(t, within(t, time.Minute), "the wanted reply from GET "+url, c.watch(), func() (bool, error) {
			out, err := exec.Command("curl", "-sS", "-m", "10", "-w", "\n%{http_code}", url).Output()
			if err != nil {
				return false, err
			}
			// The body, then a line with the status code.
			i := strings.LastIndexByte(string(out), '\n')
			body = string(out[:i])
			status, _ := strconv.Atoi(strings.TrimSpace(string(out[i+1:])))
			return cond(status, body), fmt.Errorf("%d %s", status, body)
		})
		return body
	}
	ok := func(status int, body string) bool { return status == 200 }
	pushed := func(a *pushApp, detected, want string) {
		t.Helper()
		out, pushOK := a.push("main")
		if !pushOK {
			t.Fatalf("git push of %s failed:\n%s", a.name, out)
		}
		for _, w := range []string{"remote: -----> " + detected + " app detected", "remote: =====> Application deployed"} {
			if !strings.Contains(out, w) {
				t.Errorf("git push of %s: output lacks %q:\n%s", a.name, w, out)
			}
		}
		// The first push of an app starts its first web job.
		if m := timingsLine.FindString(out); !strings.Contains(m, ", start ") {
			t.Errorf("git push of %s: no timings line like %s with a start phase:\n%s", a.name, timingsLine, out)
		} else {
			t.Logf("git push of %s: %s", a.name, strings.TrimSpace(m))
		}
		// The push returned once the web process was routable.
		if status, body := a.get(); status != 200 || !strings.Contains(body, want) {
			t.Errorf("right after the push of %s, GET / = %d %q", a.name, status, body)
		}
	}

	// flynn create (the git remote), git push over HTTPS, curl by name.
	node := newPushApp(t, c, nil, "nodejs", "e2enode", false)
	pushed(node, "Node.js", "hello from the node app")
	a := newPushApp(t, c, nil, "go", "e2eapp", false)
	if u := strings.TrimSpace(a.git("remote", "get-url", "flynn")); u != fmt.Sprintf("https://git.%s:%d/e2eapp.git", c.domain, c.httpsPort) {
		t.Errorf("flynn create's git remote is %s, want gitreceive through the router", u)
	}
	pushed(a, "Go", "hello from the go app")
	host := "e2eapp." + c.domain
	get(c.url(host, "/"), func(s int, b string) bool { return s == 200 && strings.Contains(b, "hello from the go app") })
	// The same app over HTTPS and HTTP/2, as browsers reach it.
	h2url := fmt.Sprintf("https://%s:%d/", host, c.httpsPort)
	if out, err := exec.Command("curl", "-sS", "-k", "--http2", "-m", "10", "-w", "\n%{http_version} %{http_code}", h2url).Output(); err != nil ||
		!strings.HasSuffix(string(out), "\n2 200") || !strings.Contains(string(out), "hello from the go app") {
		t.Errorf("GET %s over HTTP/2: %v %q", h2url, err, out)
	}

	// Three processes: three different jobs answer.
	a.flynn("scale", "web=3")
	jobs := map[string]bool{}
	for i := 0; i < 200 && len(jobs) < 3; i++ {
		body := get(c.url(host, "/"), ok)
		for _, l := range strings.Split(body, "\n") {
			if id, found := strings.CutPrefix(l, "job="); found && id != "" {
				jobs[id] = true
			}
		}
	}
	if len(jobs) != 3 {
		t.Errorf("after scale web=3, %d different jobs answered: %v", len(jobs), jobs)
	}

	// Config: a new release, restarted processes see the value.
	a.flynn("env", "set", "APP_VALUE=e2e-hello")
	if out := a.flynn("env", "get", "APP_VALUE"); strings.TrimSpace(out) != "e2e-hello" {
		t.Errorf("env get: %q", out)
	}
	get(c.url(host, "/"), func(s int, b string) bool { return s == 200 && strings.Contains(b, "value=e2e-hello\n") })

	if out := a.flynn("log", "-n", "1000"); !strings.Contains(out, "web starting on port") {
		t.Errorf("flynn log lacks the web process's output:\n%s", out)
	}
	if out := a.flynn("run", "sh", "-c", "echo one-off $APP_VALUE"); !strings.Contains(out, "one-off e2e-hello") {
		t.Errorf("flynn run: %q", out)
	}

	a.flynn("route", "add", "http", "second."+c.domain)
	get(c.url("second."+c.domain, "/"), func(s int, b string) bool { return s == 200 && strings.Contains(b, "hello from the go app") })

	// Rollback: the release before env set, without the value.
	a.flynn("release", "rollback", "-y")
	get(c.url(host, "/"), func(s int, b string) bool { return s == 200 && strings.Contains(b, "value=\n") })

	// A killed job is replaced.
	ps := a.flynn("ps")
	id := strings.Fields(strings.Split(strings.TrimSpace(ps), "\n")[1])[0]
	a.flynn("kill", id)
	waitFor(t, within(t, time.Minute), "killed job "+id+" to be replaced", c.watch(), func() (bool, error) {
		ps = a.flynn("ps")
		return !strings.Contains(ps, id) && strings.Count(ps, " up ") == 3, errors.New(ps)
	})

	// Delete: the routes go (404) and so do the jobs.
	a.flynn("delete", "-y")
	get(c.url(host, "/"), func(s int, b string) bool { return s == 404 })
	get(c.url("second."+c.domain, "/"), func(s int, b string) bool { return s == 404 })
	if out := a.flynn("apps"); strings.Contains(out, "e2eapp") || !strings.Contains(out, "e2enode") {
		t.Errorf("flynn apps after deleting e2eapp:\n%s", out)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-r", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", from, err, out)
	}
}
