package test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/bootstrap"
)

// e2eCluster is a single-node cluster started with `flynn-host up`, the
// code path of `make up`, in its own state dir, ports, bridge and subnet.
type e2eCluster struct {
	t        *testing.T
	stateDir string
	rc       string // the CLI config up wrote
	httpPort int
	domain   string
	upArgs   []string
}

const e2eDomain = "e2e.flynn.localhost"

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
	dir := t.TempDir()
	state := filepath.Join(dir, "state") // up creates it
	c := &e2eCluster{t: t, stateDir: state, rc: filepath.Join(dir, "flynnrc"), domain: e2eDomain}
	c.httpPort = freePort(t)
	c.upArgs = []string{"up", "--state-dir", c.stateDir, "--listen-ip", "127.0.0.1",
		"--bridge", "flte2e1", "--subnet", "100.84.0.0/24", "--cgroup-parent", "flte2e1",
		"--etcd-client-port", fmt.Sprint(freePort(t)), "--etcd-peer-port", fmt.Sprint(freePort(t)),
		"--discoverd-port", fmt.Sprint(freePort(t)), "--dns-port", "-1", "--host-port", fmt.Sprint(freePort(t)),
		"--domain", c.domain, "--controller-port", fmt.Sprint(freePort(t)),
		"--http-port", fmt.Sprint(c.httpPort), "--https-port", fmt.Sprint(freePort(t)),
		"--router-api-port", fmt.Sprint(freePort(t)), "--blobstore-port", fmt.Sprint(freePort(t)),
		"--logaggregator-port", fmt.Sprint(freePort(t)), "--git-http-port", fmt.Sprint(freePort(t)),
		"--git-ssh-port", fmt.Sprint(freePort(t)),
		"--stack-dir", "/var/cache/flynn-test/stack", "--deps", "../scripts/deps.sh",
		"--flynn", filepath.Join(binDir, "flynn"), "--etcd-fast"}
	c.upArgs = append(c.upArgs, extra...)
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
	cmd.Env = append(os.Environ(), "FLYNNRC="+c.rc, "SUDO_USER=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.stateDir, "daemon.log"))
		c.t.Fatalf("flynn-host up: %v\n%s\ndaemon log:\n%s", err, out, log)
	}
	return string(out)
}

func (c *e2eCluster) down() {
	out, err := exec.Command(filepath.Join(binDir, "flynn-host"), "down", "--state-dir", c.stateDir).CombinedOutput()
	if err != nil {
		c.t.Errorf("flynn-host down: %v\n%s", err, out)
	}
}

// flynn runs the CLI with the cluster's config in dir.
func (c *e2eCluster) flynn(dir string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FLYNNRC="+c.rc)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("flynn %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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
	if !strings.Contains(out, "bootstrapped already") {
		t.Errorf("second up did not notice the cluster is bootstrapped:\n%s", out)
	}
	c.down()
	if _, err := net.InterfaceByName("flte2e1"); err == nil {
		t.Error("bridge flte2e1 left behind")
	}
	if _, err := os.Stat(c.stateDir); err == nil {
		t.Error("state dir left behind")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), c.stateDir) {
		t.Error("mounts left behind")
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/flte2e1"); len(m) > 0 {
		t.Errorf("cgroups left behind: %v", m)
	}
}

// TestUserJourney is the walkthrough of the README, through the flynn CLI,
// git and HTTP only.
func TestUserJourney(t *testing.T) {
	c := startE2ECluster(t, nil)
	work := t.TempDir()
	app := filepath.Join(work, "procfile")
	copyDir(t, "apps/procfile", app)
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = app
		cmd.Env = append(os.Environ(), "FLYNNRC="+c.rc, "PATH="+binDir+":"+os.Getenv("PATH"),
			"GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@example.com", "GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	git("init", "-b", "main")
	git("add", ".")
	git("commit", "-m", "app")
	c.flynn(app, "create", "e2eapp")
	push := git("push", "flynn", "main")
	for _, want := range []string{"remote: -----> Procfile app detected", "remote: =====> Application deployed"} {
		if !strings.Contains(push, want) {
			t.Errorf("git push output lacks %q:\n%s", want, push)
		}
	}

	// get fetches path through the router until cond holds (a minute at
	// most) and returns the body.
	get := func(host, path string, cond func(status int, body string) bool) string {
		t.Helper()
		var last string
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			out, err := exec.Command("curl", "-sS", "-w", "\n%{http_code}", "-H", "Host: "+host, fmt.Sprintf("http://127.0.0.1:%d%s", c.httpPort, path)).Output()
			if err == nil {
				// The body, then a line with the status code.
				i := strings.LastIndexByte(string(out), '\n')
				body := string(out[:i])
				status, _ := strconv.Atoi(strings.TrimSpace(string(out[i+1:])))
				if cond(status, body) {
					return body
				}
				last = fmt.Sprintf("%d %s", status, body)
			} else {
				last = err.Error()
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("GET http://%s%s: last reply %s", host, path, last)
		return ""
	}
	ok := func(status int, body string) bool { return status == 200 }
	host := "e2eapp." + c.domain
	// The push returned once the web process was routable.
	if out, _ := exec.Command("curl", "-sS", "-H", "Host: "+host, fmt.Sprintf("http://127.0.0.1:%d/", c.httpPort)).Output(); !strings.Contains(string(out), "hello from the procfile app") {
		t.Errorf("right after the push, GET / = %q", out)
	}

	// Three processes: three different jobs answer.
	c.flynn(app, "scale", "web=3")
	jobs := map[string]bool{}
	for i := 0; i < 200 && len(jobs) < 3; i++ {
		body := get(host, "/cgi-bin/hello", ok)
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
	c.flynn(app, "env", "set", "APP_VALUE=e2e-hello")
	if out := c.flynn(app, "env", "get", "APP_VALUE"); strings.TrimSpace(out) != "e2e-hello" {
		t.Errorf("env get: %q", out)
	}
	get(host, "/cgi-bin/hello", func(s int, b string) bool { return s == 200 && strings.Contains(b, "value=e2e-hello") })

	if out := c.flynn(app, "log", "-n", "1000"); !strings.Contains(out, "web starting on port") {
		t.Errorf("flynn log lacks the web process's output:\n%s", out)
	}
	if out := c.flynn(app, "run", "sh", "-c", "echo one-off $APP_VALUE"); !strings.Contains(out, "one-off e2e-hello") {
		t.Errorf("flynn run: %q", out)
	}

	c.flynn(app, "route", "add", "http", "second."+c.domain)
	get("second."+c.domain, "/", ok)

	// Rollback: the release before env set, without the value.
	c.flynn(app, "release", "rollback", "-y")
	get(host, "/cgi-bin/hello", func(s int, b string) bool { return s == 200 && strings.Contains(b, "value=\n") })

	// A killed job is replaced.
	ps := c.flynn(app, "ps")
	id := strings.Fields(strings.Split(strings.TrimSpace(ps), "\n")[1])[0]
	c.flynn(app, "kill", id)
	deadline := time.Now().Add(time.Minute)
	for {
		ps = c.flynn(app, "ps")
		if !strings.Contains(ps, id) && strings.Count(ps, " up ") == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("killed job %s not replaced:\n%s", id, ps)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Delete: the routes go (404) and so do the jobs.
	c.flynn(app, "delete", "-y")
	get(host, "/", func(s int, b string) bool { return s == 404 })
	get("second."+c.domain, "/", func(s int, b string) bool { return s == 404 })
	if out := c.flynn(app, "apps"); strings.Contains(out, "e2eapp") {
		t.Errorf("flynn apps still lists the app:\n%s", out)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-r", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", from, err, out)
	}
}
