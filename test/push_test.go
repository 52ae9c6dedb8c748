package test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// pushApp is one sample app pushed to the cluster.
type pushApp struct {
	c    *e2eCluster
	t    *testing.T
	name string
	dir  string
	env  []string
	// lastPush is the output of the last push.
	lastPush string
}

// newPushApp copies test/apps/<sample> into a git repo and creates the app
// with `flynn create`, over SSH when ssh is set.
func newPushApp(t *testing.T, c *e2eCluster, env []string, sample, name string, ssh bool) *pushApp {
	t.Helper()
	a := &pushApp{c: c, t: t, name: name, dir: filepath.Join(t.TempDir(), name), env: env}
	copyDir(t, "apps/"+sample, a.dir)
	a.git("init", "-b", "main")
	a.git("add", ".")
	a.git("commit", "-m", "app")
	args := []string{"create", name}
	if ssh {
		args = []string{"create", "--ssh", name}
	}
	a.flynn(args...)
	return a
}

func (a *pushApp) cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = a.dir
	cmd.Env = append(a.c.env(), a.env...)
	return cmd
}

func (a *pushApp) git(args ...string) string {
	a.t.Helper()
	out, err := a.cmd("git", args...).CombinedOutput()
	if err != nil {
		a.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (a *pushApp) flynn(args ...string) string {
	a.t.Helper()
	out, err := a.cmd(filepath.Join(binDir, "flynn"), args...).CombinedOutput()
	if err != nil {
		a.t.Fatalf("flynn %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// runWith runs script with sh as a one-off job with flynn run --limits
// limits and, unless empty, --env env, and returns its output trimmed.
func (a *pushApp) runWith(limits, env, script string) string {
	a.t.Helper()
	args := []string{"run", "--limits", limits}
	if env != "" {
		args = append(args, "--env", env)
	}
	return strings.TrimSpace(a.flynn(append(args, "--", "sh", "-c", script)...))
}

// push runs git push and returns its output and whether it succeeded.
func (a *pushApp) push(refspec string) (string, bool) {
	out, err := a.cmd("git", "push", "flynn", refspec).CombinedOutput()
	a.lastPush = string(out)
	return string(out), err == nil
}

// unpadded is git push output without the spaces git pads each remote
// line with.
func unpadded(out string) string {
	return regexp.MustCompile(`(?m)[ \t]+$`).ReplaceAllString(out, "")
}

// get fetches / through the router.
func (a *pushApp) get() (int, string) { return a.c.curl(a.name+"."+a.c.domain, "/") }

// timingsLine is the last line of a successful push: where its time went,
// the build's own phases in parentheses, the wait for another deployment
// of the app if there was one, then the deployment's (rolling
// running processes) or the first web job's start, or neither.
var timingsLine = regexp.MustCompile(`(?m)^remote: -----> Done in \d+\.\ds: source \d+\.\ds, ` +
	`build \d+\.\ds \(fetch \d+\.\ds, (?:restore \d+\.\ds, )?compile \d+\.\ds, (?:save \d+\.\ds, )?slug \d+\.\ds\), (?:wait \d+\.\ds, )?release \d+\.\ds` +
	`(?:, release command \d+\.\ds)?(?:, deploy \d+\.\ds)?(?:, start \d+\.\ds)?\s*$`)

// pushAndServe pushes main and returns the time from the push to the
// first 200 with want in the body.
func (a *pushApp) pushAndServe(want string) time.Duration {
	a.t.Helper()
	d, _ := a.pushServe(want)
	return d
}

// pushServe is pushAndServe that also returns the push's output.
func (a *pushApp) pushServe(want string) (time.Duration, string) {
	a.t.Helper()
	start := time.Now()
	out, ok := a.push("main")
	if !ok {
		a.t.Fatalf("push %s failed:\n%s", a.name, out)
	}
	if !strings.Contains(out, "remote: -----> ") || !strings.Contains(out, "remote: =====> Application deployed") {
		a.t.Errorf("push %s: no live build output:\n%s", a.name, out)
	}
	if !timingsLine.MatchString(out) {
		a.t.Errorf("push %s: no timings line like %s:\n%s", a.name, timingsLine, out)
	}
	waitFor(a.t, within(a.t, 2*time.Minute), fmt.Sprintf("%s to answer %q", a.name, want), a.c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 200 && strings.Contains(body, want), fmt.Errorf("%d %s", status, body)
	})
	return time.Since(start), out
}

// commit changes the app trivially so a second push has something new.
func (a *pushApp) commit(msg string) {
	a.t.Helper()
	os.WriteFile(filepath.Join(a.dir, "CHANGES"), []byte(msg+"\n"), 0o644)
	a.git("add", ".")
	a.git("commit", "-m", msg)
}

// TestPushApps pushes the Go, Node.js, static and Procfile sample apps,
// each over SSH and over HTTPS (through the router), to a cluster brought
// up like make up, each answering through the router; the second push
// uses the repo and build caches (the build cache from the host's volume,
// not restored from the blobstore); bad pushes are refused and the
// previous release keeps serving.
func TestPushApps(t *testing.T) {
	c := startE2ECluster(t, nil)
	home := t.TempDir()
	key := filepath.Join(home, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	sshEnv := []string{"GIT_SSH_COMMAND=ssh -i " + key + " -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"}
	c.flynn(home, "key", "add", key+".pub")

	type result struct {
		name                 string
		cold, warm           time.Duration
		coldOver, secondOver string
	}
	over := map[bool]string{true: "ssh", false: "https"}
	var results []result
	// Each app is pushed twice, over SSH and over HTTPS (through the
	// router), the second push with the repo and build caches warm.
	for _, tt := range []struct {
		sample, name, want string
		sshFirst           bool
	}{
		{"go", "pushgo", "hello from the go app", true},
		{"nodejs", "pushnode", "hello from the node app", false},
		{"static", "pushstatic", "hello from the static app", true},
		{"procfile", "pushproc", "hello from the procfile app", false},
	} {
		a := newPushApp(t, c, sshEnv, tt.sample, tt.name, tt.sshFirst)
		r := result{name: tt.name, coldOver: over[tt.sshFirst], secondOver: over[!tt.sshFirst]}
		r.cold = a.pushAndServe(tt.want)
		if tt.sshFirst {
			a.flynn("remote", "add", "-y")
		} else {
			a.flynn("remote", "add", "-y", "--ssh")
		}
		a.commit("second")
		var out string
		r.warm, out = a.pushServe(tt.want)
		// The first build left the app's cache unpacked in the host's
		// build cache volume: the second uses it without a restore.
		if !strings.Contains(out, "remote: -----> Build cache: reused the local copy") {
			t.Errorf("warm push of %s did not reuse the build cache volume:\n%s", tt.name, out)
		}
		// Node.js, installed into .node again from the cache, is the
		// same: its runtime layer is the first push's.
		if tt.sample == "nodejs" && !strings.Contains(out, "unchanged: reusing the last release's") {
			t.Errorf("warm push of %s did not reuse its runtime layer:\n%s", tt.name, out)
		}
		if tt.sample == "nodejs" {
			// As on Heroku: WEB_CONCURRENCY from the job's memory
			// limit over WEB_MEMORY (512 MB), unless the env sets it.
			for _, tc := range []struct{ limits, env, want string }{
				{"memory=2GiB", "", "2048 512 4"},
				{"memory=2GiB", "WEB_MEMORY=256", "2048 256 8"},
				{"memory=256MiB", "", "256 512 1"},
				{"memory=256MiB", "WEB_CONCURRENCY=3", "256 512 3"},
			} {
				if got := a.runWith(tc.limits, tc.env, "echo $MEMORY_AVAILABLE $WEB_MEMORY $WEB_CONCURRENCY"); got != tc.want {
					t.Errorf("flynn run --limits %s --env %q: MEMORY_AVAILABLE WEB_MEMORY WEB_CONCURRENCY = %q, want %q", tc.limits, tc.env, got, tc.want)
				}
			}
			// Its artifact has three layers (stack, runtime, app): an
			// export carries them and the imported copy serves.
			exported := filepath.Join(t.TempDir(), tt.name+".tar")
			a.flynn("export", "-f", exported)
			if n := countLayers(t, exported); n != 2 {
				t.Errorf("the export of %s holds %d layers, want 2 (runtime and app; the stack is every cluster's)", tt.name, n)
			}
			copyName := tt.name + "copy"
			if out := a.flynn("import", "-f", exported, "-n", copyName); !strings.Contains(out, "Imported "+copyName) {
				t.Fatalf("flynn import:\n%s", out)
			}
			waitFor(t, within(t, 2*time.Minute), "the imported Node.js app to serve", c.watch(), func() (bool, error) {
				status, body := c.curl(copyName+"."+c.domain, "/")
				return status == 200 && strings.Contains(body, tt.want), fmt.Errorf("%d %s", status, body)
			})
		}
		results = append(results, r)
	}
	for _, r := range results {
		t.Logf("push to first 200: %-10s cold (%-5s) %-8v warm (%-5s) %v", r.name, r.coldOver, r.cold.Round(10*time.Millisecond), r.secondOver, r.warm.Round(10*time.Millisecond))
	}

	// Refusals, each with a clear message, on the procfile app: its
	// release keeps serving.
	a := newPushApp(t, c, nil, "procfile", "pushbad", false)
	a.pushAndServe("hello from the procfile app")
	refuse := func(what, want string) {
		t.Helper()
		out, ok := a.push("main")
		if ok || !strings.Contains(out, want) {
			t.Errorf("%s: push ok=%v, want refusal with %q:\n%s", what, ok, want, out)
		}
		a.git("reset", "-q", "--hard", "HEAD~1")
		if status, body := a.get(); status != 200 || !strings.Contains(body, "hello from the procfile app") {
			t.Errorf("after %s the previous release stopped serving: %d %s", what, status, body)
		}
	}
	os.WriteFile(filepath.Join(a.dir, "Procfile"), []byte("worker: sleep 1000\n"), 0o644)
	a.git("commit", "-qam", "no web")
	refuse("a Procfile with no web process", "no web process")

	// A crashing process's last lines, and how it ended (the platform's
	// line about its exit, written after its output), are in the push's
	// output.
	os.WriteFile(filepath.Join(a.dir, "Procfile"), []byte("web: echo \"crashing on purpose\"; exit 3\n"), 0o644)
	a.git("commit", "-qam", "crashing web")
	refuse("a crashing web process", "remote: -----> Last log lines of web (job ")
	if out := a.lastPush; !strings.Contains(unpadded(out), "remote:        crashing on purpose\nremote:        Process exited with status 3\n") {
		t.Errorf("a crashing web process: the push's output lacks its last line and exit:\n%s", out)
	}
	if out := a.flynn("log", "-i", "-t", "web"); !strings.Contains(out, ": Starting process with command `") || !strings.Contains(out, ": Process exited with status 3") {
		t.Errorf("flynn log -i shows no platform lines about the crashed job's start and exit:\n%s", out)
	}
	if out := a.flynn("log", "-t", "web"); strings.Contains(out, "Process exited") {
		t.Errorf("flynn log without -i shows the platform's lines:\n%s", out)
	}

	// An app whose first web process comes up and then crashes: the push
	// fails as soon as it does (not when the deploy timeout ends), with
	// its last lines, and the app is scaled back down.
	cr := newPushApp(t, c, nil, "procfile", "pushcrash", false)
	cr.firstPushRefused("whose web process crashes once up", "web: echo \"up, then crashing\"; sleep 2; exit 5\n",
		"it exited with status 5", "remote: -----> Last log lines of web (job ", "remote:        up, then crashing\nremote:        Process exited with status 5\n")
	// The router says in the app's log why it answered a request itself,
	// as Heroku's router does (code H14: the app has no web process).
	if status, body := cr.get(); status != 503 {
		t.Errorf("GET of an app with no web process: %d %s, want 503", status, body)
	}
	wantLine := regexp.MustCompile(`router\[[^]]*\]: at=error code=H14 desc="No web processes running" method=GET path="/" host=pushcrash\.\S+ fwd="[^"]+" service=\d+ms status=503 protocol=https?\n`)
	var routerLog string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		if routerLog = cr.flynn("log", "-t", "router"); wantLine.MatchString(routerLog) {
			break
		}
	}
	if !wantLine.MatchString(routerLog) {
		t.Errorf("flynn log -t router after a GET of an app with no web process:\n%s\nwant a line matching %s", routerLog, wantLine)
	}
	// flynn scale of it fails once it has crashed three times, with the
	// last crashed job's last lines and exit.
	sout, serr := cr.cmd(filepath.Join(binDir, "flynn"), "scale", "web=1").CombinedOutput()
	if serr == nil || !strings.Contains(string(sout), "Last log lines of web (job ") || !strings.Contains(string(sout), "  up, then crashing\n  Process exited with status 5\n") ||
		!strings.Contains(string(sout), "web crashed 3 times") {
		t.Errorf("flynn scale web=1 of a crashing app: err %v, want a failure with its last lines:\n%s", serr, sout)
	}

	// An app whose first web process runs but never listens on $PORT:
	// after a while the push says why it still waits, then fails at the
	// deploy timeout (set short here) and scales the app back down.
	np := newPushApp(t, c, nil, "procfile", "pushport", false)
	np.flynn("deployment", "timeout", "20")
	np.firstPushRefused("whose web process never listens on $PORT", "web: echo \"on the wrong port\"; exec busybox httpd -f -p 5555 -h www\n",
		"The web process runs but nothing answers on $PORT yet: waiting for up to ", "is it listening on $PORT?", "remote:        on the wrong port\n")

	a.git("rm", "-q", "Procfile")
	a.git("commit", "-qam", "nothing to run")
	refuse("a failing build", "Push rejected")

	// The release phase, as on Heroku: a Procfile's `release:` command
	// runs once, with the new release's env, before the release is
	// deployed, its output in the push's; one that fails leaves the app
	// on its current release.
	a.flynn("env", "set", "MARKER=m1")
	procfile, _ := os.ReadFile(filepath.Join(a.dir, "Procfile"))
	os.WriteFile(filepath.Join(a.dir, "Procfile"), append(procfile[:len(procfile):len(procfile)],
		"release: echo \"migrating for $MARKER as $FLYNN_PROCESS_TYPE in $DYNO\"; exit 4\n"...), 0o644)
	a.git("commit", "-qam", "failing release command")
	before := a.flynn("info")
	out, ok := a.push("main")
	if ok || !strings.Contains(out, "remote:        migrating for m1 as release in release.") || !strings.Contains(out, "the release command failed (exit status 4)") {
		t.Errorf("a failing release command: push ok=%v, want its output and a refusal:\n%s", ok, out)
	}
	if strings.Contains(out, "-----> Deploying") {
		t.Errorf("a failing release command: the release was deployed:\n%s", out)
	}
	if after := a.flynn("info"); after != before {
		t.Errorf("a failing release command changed the app's current release:\n%s\nthen:\n%s", before, after)
	}
	a.git("reset", "-q", "--hard", "HEAD~1")
	if status, body := a.get(); status != 200 || !strings.Contains(body, "hello from the procfile app") {
		t.Errorf("after a failing release command the previous release stopped serving: %d %s", status, body)
	}
	os.WriteFile(filepath.Join(a.dir, "Procfile"), append(procfile[:len(procfile):len(procfile)],
		"release: echo \"migrated for $MARKER\"; printf 'no newline at the end'; test \"$MARKER\" != fail\n"...), 0o644)
	index := filepath.Join(a.dir, "www", "index.html")
	html, _ := os.ReadFile(index)
	os.WriteFile(index, []byte(strings.Replace(string(html), "hello from the procfile app", "hello after the release phase", 1)), 0o644)
	a.git("commit", "-qam", "release command")
	// What was set on a process type outlives a push, as on Flynn and
	// Heroku.
	a.flynn("limit", "set", "web", "memory=300MiB")
	limits := a.flynn("limit", "-t", "web")
	_, out = a.pushServe("hello after the release phase")
	if after := a.flynn("limit", "-t", "web"); after != limits || !strings.Contains(limits, "memory=") {
		t.Errorf("a push lost the web type's limits: before %q, after %q", limits, after)
	}
	ran := strings.Index(out, "remote: -----> Running release command...")
	if ran < 0 || !strings.Contains(out, "remote:        migrated for m1") || !strings.Contains(out, "remote:        no newline at the end") ||
		strings.Index(out, "remote: -----> Deploying") < ran || !strings.Contains(out, ", release command ") {
		t.Errorf("a release command: want its output (each line indented) before the deploy, and its time:\n%s", out)
	}
	// Each push's release command ran once (the failing push's is the
	// other).
	if ids := a.releaseJobs(); len(ids) != 2 {
		t.Errorf("after a failing and a passing release command, release command jobs %v, want 2", ids)
	}
	// An env change is a new release: as on Heroku, its release command
	// runs (the deployer runs it) before it is deployed, and one that
	// fails leaves the app on its current release.
	envOut := a.flynn("env", "set", "MARKER=m2")
	if m := regexp.MustCompile(`==> release starting \(job (\S+)\)\n       migrated for m2\n       no newline at the end\n.* ==> release down \(job (\S+)\)`).FindStringSubmatch(envOut); m == nil || m[1] != m[2] {
		t.Errorf("flynn env set of an app with a release command: want its job started, its output (indented) and the job down:\n%s", envOut)
	} else {
		waitFor(t, within(t, 30*time.Second), "the release command's output in its log", c.watch(), func() (bool, error) {
			log := a.flynn("log", "-j", m[1])
			return strings.Contains(log, "migrated for m2"), fmt.Errorf("flynn log -j %s:\n%s", m[1], log)
		})
	}
	if out, err := a.cmd(filepath.Join(binDir, "flynn"), "env", "set", "MARKER=fail").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "the release command failed (exit status 1)") || !strings.Contains(string(out), "flynn log -j ") ||
		!strings.Contains(string(out), "\n       migrated for fail\n") {
		t.Errorf("flynn env set with a failing release command: err=%v, want its failure:\n%s", err, out)
	}
	if got := strings.TrimSpace(a.flynn("env", "get", "MARKER")); got != "m2" {
		t.Errorf("after a failing release command on an env change, MARKER = %q, want m2 (the release in place)", got)
	}
	if status, body := a.get(); status != 200 || !strings.Contains(body, "hello after the release phase") {
		t.Errorf("after a failing release command on an env change: %d %s", status, body)
	}
	if out, err := a.cmd(filepath.Join(binDir, "flynn"), "scale", "release=1").CombinedOutput(); err == nil || !strings.Contains(string(out), "is not scaled") {
		t.Errorf("flynn scale release=1: err=%v, want a refusal:\n%s", err, out)
	}
	releasePhaseAfterKill(t, c, a, procfile)
	deployerKilledInReleasePhase(t, c, a, procfile)

	if out, ok := a.push("main:feature"); ok || !strings.Contains(out, "only a push to main or master deploys") {
		t.Errorf("push to another branch: ok=%v\n%s", ok, out)
	}
	other := filepath.Join(home, "id_other")
	exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).Run()
	s := newPushApp(t, c, []string{"GIT_SSH_COMMAND=ssh -i " + other + " -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"}, "procfile", "pushkey", true)
	if out, ok := s.push("main"); ok || !strings.Contains(out, "Permission denied") {
		t.Errorf("push with an unknown key: ok=%v\n%s", ok, out)
	}
}

// releasePhaseAfterKill SIGKILLs gitreceive while a push's release command
// runs: that push fails but its deployment goes on (the deployer runs the
// command). gitreceive comes back, and the next push waits for that
// deployment to end (here, for `flynn kill` of its release command, which
// fails it) before it deploys, so two release commands never run at once.
func releasePhaseAfterKill(t *testing.T, c *e2eCluster, a *pushApp, procfile []byte) {
	t.Helper()
	os.WriteFile(filepath.Join(a.dir, "Procfile"), append(procfile[:len(procfile):len(procfile)],
		"release: echo slow release; sleep 600\n"...), 0o644)
	a.git("commit", "-qam", "slow release command")
	failed := a.deployments()[api.DeploymentFailed]
	first := make(chan string, 1)
	go func() { out, _ := a.push("main"); first <- out }()
	var orphan string
	waitFor(t, within(t, 2*time.Minute), "the slow release command to run", c.watch(), func() (bool, error) {
		// Running: its output is in the log.
		ps := a.flynn("ps", "-a", "-c")
		for _, line := range strings.Split(ps, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[2] != "down" && strings.HasSuffix(line, "start release") {
				orphan = f[0]
				return strings.Contains(a.flynn("log", "-j", orphan), "slow release"), fmt.Errorf("no output yet from job %s", orphan)
			}
		}
		return false, fmt.Errorf("ps:\n%s", ps)
	})
	hc := c.hostClient(c.hosts[0])
	gitreceive := func() string { return c.runningJobID("gitreceive") }
	killed := gitreceive()
	if killed == "" {
		t.Fatalf("no running gitreceive job:\n%s", c.jobTable(c.hosts[0]))
	}
	if err := hc.SignalJob(context.Background(), killed, "KILL"); err != nil {
		t.Fatal(err)
	}
	select {
	case out := <-first:
		if strings.Contains(out, "Application deployed") {
			t.Errorf("the push whose gitreceive was killed deployed:\n%s", out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the push whose gitreceive was killed did not end")
	}
	if n := a.deployments()[api.DeploymentRunning]; n != 1 {
		t.Errorf("the deployment of the push whose gitreceive was killed does not run on: %d running", n)
	}
	waitFor(t, within(t, 2*time.Minute), "gitreceive to come back", c.watch(), func() (bool, error) {
		id := gitreceive()
		if id == "" || id == killed {
			return false, fmt.Errorf("gitreceive job %q", id)
		}
		out, err := a.cmd("git", "push", "--dry-run", "flynn", "main").CombinedOutput()
		return err == nil, fmt.Errorf("git push --dry-run: %v %s", err, out)
	})
	releases := strings.Count(a.flynn("release"), "\n")
	// The app's build jobs that ended well, by ID (the host forgets the
	// oldest ended jobs, so a count could stand still).
	builds := func() map[string]bool {
		ids := map[string]bool{}
		for _, line := range strings.Split(c.jobTable(c.hosts[0]), "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[1] == a.name+"/slugbuilder" && f[2] == "done" && f[3] == "exit=0" {
				ids[f[0]] = true
			}
		}
		return ids
	}
	built := builds()
	os.WriteFile(filepath.Join(a.dir, "Procfile"), append(procfile[:len(procfile):len(procfile)],
		"release: echo quick release\n"...), 0o644)
	a.git("commit", "-qam", "quick release command")
	second := make(chan string, 1)
	go func() {
		out, ok := a.push("main")
		if !ok {
			out = "(failed) " + out
		}
		second <- out
	}()
	// The second push builds, then waits, before it makes its release.
	waitFor(t, within(t, 2*time.Minute), "the second push's build", c.watch(), func() (bool, error) {
		for id := range builds() {
			if !built[id] {
				return true, nil
			}
		}
		return false, fmt.Errorf("no new build done")
	})
	time.Sleep(3 * time.Second)
	if n := strings.Count(a.flynn("release"), "\n"); n != releases {
		t.Errorf("while the first deployment runs, the second push made its release: %d release lines, %d before", n, releases)
	}
	ps := a.flynn("ps", "-a", "-c")
	for _, line := range strings.Split(ps, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasSuffix(line, "start release") {
			continue
		}
		if f[0] == orphan && f[2] == "down" || f[0] != orphan && f[2] != "down" {
			t.Errorf("while the first release command runs, the second has started, or the first has ended:\n%s", ps)
		}
	}
	a.flynn("kill", orphan)
	select {
	case out := <-second:
		if strings.HasPrefix(out, "(failed) ") || !strings.Contains(out, "remote: -----> Waiting for deployment ") ||
			!strings.Contains(out, "remote:        quick release") {
			t.Errorf("the push after the kill did not wait for the earlier deployment, then run its release command and deploy:\n%s", out)
		}
	case <-time.After(4 * time.Minute):
		t.Fatal("the push after the kill did not end")
	}
	if n := a.deployments()[api.DeploymentFailed]; n != failed+1 {
		t.Errorf("the deployment whose release command was killed did not fail: %d failed deployments, %d before", n, failed)
	}
	if status, body := a.get(); status != 200 || !strings.Contains(body, "hello after the release phase") {
		t.Errorf("after the push that waited: %d %s", status, body)
	}
}

// firstPushRefused pushes procfile as the app's first code and checks
// that the push is refused with output holding each of want (lines'
// trailing blanks ignored), and that the app is scaled back to web=0.
func (a *pushApp) firstPushRefused(what, procfile string, want ...string) {
	a.t.Helper()
	os.WriteFile(filepath.Join(a.dir, "Procfile"), []byte(procfile), 0o644)
	a.git("commit", "-qam", what)
	out, ok := a.push("main")
	missing := slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(unpadded(out), w) })
	if ok || len(missing) > 0 {
		a.t.Errorf("a first push %s: push ok=%v, want a refusal with %q:\n%s", what, ok, missing, out)
	}
	if sc := a.flynn("scale"); !strings.Contains(sc, "web=0") {
		a.t.Errorf("after a first push %s, flynn scale says %q, want web=0", what, sc)
	}
}

// deployments counts the app's deployments by status.
func (a *pushApp) deployments() map[string]int {
	a.t.Helper()
	var deps []api.Deployment
	if err := json.Unmarshal([]byte(a.flynn("deployment", "--json")), &deps); err != nil {
		a.t.Fatalf("flynn deployment --json: %v", err)
	}
	n := map[string]int{}
	for _, d := range deps {
		n[d.Status]++
	}
	return n
}

// releaseJobs maps the app's release command jobs (flynn ps -a -c) to
// their states.
func (a *pushApp) releaseJobs() map[string]string {
	a.t.Helper()
	jobs := map[string]string{}
	for _, line := range strings.Split(a.flynn("ps", "-a", "-c"), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.HasSuffix(line, "start release") {
			jobs[f[0]] = f[2]
		}
	}
	return jobs
}

// deployerKilledInReleasePhase SIGKILLs the scheduler (the deployer runs
// in it) while the release command of an env change runs: the scheduler
// comes back, its deployer takes the deployment up, and waits for the
// same command rather than run it again; the deploy then completes.
func deployerKilledInReleasePhase(t *testing.T, c *e2eCluster, a *pushApp, procfile []byte) {
	t.Helper()
	os.WriteFile(filepath.Join(a.dir, "Procfile"), append(procfile[:len(procfile):len(procfile)],
		"release: echo \"release for $MARKER\"; if [ \"$MARKER\" = slow ]; then sleep 20; fi; echo \"released $MARKER\"\n"...), 0o644)
	a.git("commit", "-qam", "release command, slow for MARKER=slow")
	if out, ok := a.push("main"); !ok {
		t.Fatalf("push of a release command: %s", out)
	}
	before := a.releaseJobs()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := a.cmd(filepath.Join(binDir, "flynn"), "env", "set", "MARKER=slow").CombinedOutput()
		done <- result{string(out), err}
	}()
	var job string
	waitFor(t, within(t, 2*time.Minute), "the env change's release command to run", c.watch(), func() (bool, error) {
		jobs := a.releaseJobs()
		for id, state := range jobs {
			if _, ok := before[id]; !ok && state == "up" {
				job = id
				return true, nil
			}
		}
		return false, fmt.Errorf("release jobs %v", jobs)
	})
	hc := c.hostClient(c.hosts[0])
	scheduler := func() string { return c.runningJobID("scheduler") }
	killed := scheduler()
	if killed == "" {
		t.Fatalf("no running scheduler job:\n%s", c.jobTable(c.hosts[0]))
	}
	if err := hc.SignalJob(context.Background(), killed, "KILL"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || !strings.Contains(r.out, "==> release down (job "+job+")") {
			t.Errorf("flynn env set while the scheduler was killed: err=%v, want its release command %s down and the deploy done:\n%s", r.err, job, r.out)
		}
	case <-time.After(4 * time.Minute):
		t.Fatal("flynn env set did not end after the scheduler was killed")
	}
	if now := scheduler(); now == "" || now == killed {
		t.Errorf("scheduler job after the kill: %q (killed %s)", now, killed)
	}
	after := a.releaseJobs()
	if len(after) != len(before)+1 {
		t.Errorf("release command jobs before the env change %v, after %v: want one more (not run again)", before, after)
	}
	waitFor(t, within(t, 30*time.Second), "the release command's end in its log", c.watch(), func() (bool, error) {
		log := a.flynn("log", "-j", job)
		return strings.Contains(log, "released slow"), fmt.Errorf("flynn log -j %s:\n%s", job, log)
	})
	if got := strings.TrimSpace(a.flynn("env", "get", "MARKER")); got != "slow" {
		t.Errorf("after the deploy the deployer took up, MARKER = %q, want slow", got)
	}
	if status, body := a.get(); status != 200 || !strings.Contains(body, "hello after the release phase") {
		t.Errorf("after the deploy the deployer took up: %d %s", status, body)
	}
}

// countLayers counts the image layers in a flynn export tarball.
func countLayers(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for tr := tar.NewReader(f); ; {
		hdr, err := tr.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		if strings.HasSuffix(hdr.Name, ".layer") {
			n++
		}
	}
}
