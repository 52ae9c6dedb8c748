package test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCompat runs, on a real single-node cluster, what issue 18 asks of
// Heroku and Flynn compatibility: a Go app whose Procfile names its binary
// bare (web: goweb) builds and serves, its processes run as Heroku runs
// dynos (HOME, PATH, DYNO, bash, the profile), flynn scale returns once the
// new jobs serve, one-off jobs go through the slug runner (and a missing
// command is reported, not a 500), every deploy strategy deploys, the log
// reads as Flynn's client reads it, and export and import move the app
// with its slug.
func TestCompat(t *testing.T) {
	c := startE2ECluster(t, nil)
	a := newPushApp(t, c, nil, "go", "compatgo", false)
	if b, err := os.ReadFile(filepath.Join(a.dir, "Procfile")); err != nil || strings.TrimSpace(string(b)) != "web: goweb" {
		t.Fatalf("the Go sample app's Procfile is %q (%v), want web: goweb", b, err)
	}
	out, ok := a.push("main")
	if !ok || !strings.Contains(out, "remote: =====> Application deployed") {
		t.Fatalf("git push of the Go app (web: goweb) failed:\n%s\n%s", out, c.watch())
	}
	host := "compatgo." + c.domain
	get := func(host string) (int, string) {
		out, err := exec.Command("curl", "-sS", "-m", "10", "-w", "\n%{http_code}", c.url(host, "/")).Output()
		if err != nil {
			return 0, err.Error()
		}
		i := strings.LastIndexByte(string(out), '\n')
		status, _ := strconv.Atoi(strings.TrimSpace(string(out[i+1:])))
		return status, string(out[:i])
	}
	// The push returned once web.1 was routable.
	if status, body := get(host); status != 200 || !strings.Contains(body, "hello from the go app") || !strings.Contains(body, "\ndyno=web.1\n") {
		t.Fatalf("right after the push, GET / = %d %q, want the go app as web.1", status, body)
	}

	// A one-off job runs through the slug runner as Heroku runs one: in
	// /app, HOME=/app, the app's bin first on PATH, DYNO=run.N, by bash.
	out = a.flynn("run", "bash", "-c", `echo "pwd=$(pwd) home=$HOME dyno=$DYNO"; echo "path=$PATH"; command -v goweb; [[ -n $BASH_VERSION ]] && echo bash`)
	for _, want := range []string{"pwd=/app home=/app dyno=run.", "path=/app/bin:", "/app/bin/goweb", "bash"} {
		if !strings.Contains(out, want) {
			t.Errorf("flynn run: output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`dyno=run\.\d{4}\n`).MatchString(out) {
		t.Errorf("flynn run: DYNO is not run.N:\n%s", out)
	}
	// A command the slug does not have: the shell says so (exit 127), as
	// on Heroku; a release that is not a slug refuses it with a 4xx.
	cmd := a.cmd(filepath.Join(binDir, "flynn"), "run", "no-such-command")
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 127 || !strings.Contains(string(b), "no-such-command") {
		t.Errorf("flynn run no-such-command: %v, want exit 127 naming it:\n%s", err, b)
	}
	cmd = a.cmd(filepath.Join(binDir, "flynn"), "-a", "blobstore", "run", "no-such-command")
	b, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "does not exist") || strings.Contains(string(b), "internal error") {
		t.Errorf("flynn -a blobstore run no-such-command: %v, want a refusal saying the command does not exist:\n%s", err, b)
	}

	// A type the release lacks: refused, saying so, with no "scaling"
	// line (nothing was scaled).
	b, err = a.cmd(filepath.Join(binDir, "flynn"), "scale", "web=2", "nosuchtype=1").CombinedOutput()
	if err == nil || !strings.Contains(string(b), `no process type "nosuchtype"`) || strings.Contains(string(b), "scaling") {
		t.Errorf("flynn scale nosuchtype=1: %v, want a refusal naming the type and no scaling line:\n%s", err, b)
	}
	if out := a.flynn("scale"); strings.TrimSpace(out) != "web=1" {
		t.Errorf("after a refused scale, flynn scale = %q, want web=1", out)
	}

	// flynn scale returns once the new job serves: every request from
	// then on is answered, by both jobs, web.1 and web.2.
	out = a.flynn("scale", "web=2")
	if !strings.Contains(out, "scale completed") {
		t.Fatalf("flynn scale web=2:\n%s", out)
	}
	dynos := map[string]bool{}
	for i := 0; i < 100 && len(dynos) < 2; i++ {
		status, body := get(host)
		if status != 200 {
			t.Fatalf("request %d after flynn scale returned: %d %q", i, status, body)
		}
		for _, l := range strings.Split(body, "\n") {
			if d, ok := strings.CutPrefix(l, "dyno="); ok {
				dynos[d] = true
			}
		}
	}
	if !dynos["web.1"] || !dynos["web.2"] || len(dynos) != 2 {
		t.Errorf("after flynn scale web=2, the dynos that answered: %v, want web.1 and web.2", dynos)
	}
	if out := a.flynn("ps", "-c"); strings.Count(out, "slugrunner start web") != 2 {
		t.Errorf("flynn ps -c does not show the two web jobs' command:\n%s", out)
	}

	// Every strategy deploys (a new release each time), and serves.
	for i, tt := range []struct{ strategy, batch string }{
		{"one-by-one", ""}, {"in-batches", "1"}, {"in-batches", ""}, {"one-down-one-up", ""}, {"all-at-once", ""},
	} {
		a.flynn("deployment", "strategy", tt.strategy)
		if tt.batch != "" {
			a.flynn("deployment", "batch-size", tt.batch)
		}
		value := fmt.Sprintf("v%d", i)
		out := a.flynn("env", "set", "APP_VALUE="+value)
		if !strings.Contains(out, "("+tt.strategy+")") || !strings.Contains(out, "Deployed in") {
			t.Errorf("env set with strategy %s:\n%s", tt.strategy, out)
		}
		waitFor(t, within(t, time.Minute), "the "+tt.strategy+" release to serve", c.watch(), func() (bool, error) {
			status, body := get(host)
			return status == 200 && strings.Contains(body, "value="+value+"\n"), fmt.Errorf("%d %s", status, body)
		})
	}
	if out := a.flynn("scale"); strings.TrimSpace(out) != "web=2" {
		t.Errorf("after the deploys, flynn scale = %q, want web=2", out)
	}
	var deps []struct{ Strategy, Status string }
	if err := json.Unmarshal([]byte(a.flynn("deployment", "--json")), &deps); err != nil {
		t.Fatal(err)
	}
	for _, d := range deps {
		if d.Status != "complete" {
			t.Errorf("deployment %+v did not complete", d)
		}
	}

	// The log reads as Flynn's client reads it: a plain GET is
	// newline-delimited JSON messages with a source.
	key, ctrl := clusterKey(t, c)
	cmd = exec.Command("curl", "-sSk", "-u", ":"+key, ctrl+"/apps/compatgo/log?lines=20&stream_types=stdout%2Cstderr")
	b, err = cmd.Output()
	if err != nil {
		t.Fatalf("curl the log: %v", err)
	}
	sc, lines := bufio.NewScanner(strings.NewReader(string(b))), 0
	for sc.Scan() {
		var m struct {
			JobID, Msg, ProcessType, Source, Stream string
			Timestamp                               time.Time
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not Flynn's message JSON: %v", sc.Text(), err)
		}
		if m.Source != "app" || m.Stream == "" || m.Timestamp.IsZero() {
			t.Errorf("log line %q lacks Flynn's fields", sc.Text())
		}
		lines++
	}
	if lines == 0 || !strings.Contains(string(b), "web starting on port") {
		t.Errorf("the plain log has %d lines, without the web process's output:\n%s", lines, b)
	}
	// export and import: the copy runs the exported slug and serves.
	tar := filepath.Join(t.TempDir(), "compatgo.tar")
	a.flynn("export", "-f", tar)
	out = a.flynn("import", "-f", tar, "-n", "compatcopy")
	if !strings.Contains(out, "Imported compatcopy") {
		t.Fatalf("flynn import:\n%s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "the imported app to serve", c.watch(), func() (bool, error) {
		status, body := get("compatcopy." + c.domain)
		return status == 200 && strings.Contains(body, "hello from the go app") && strings.Contains(body, "value=v4\n"), fmt.Errorf("%d %s", status, body)
	})

	// release delete removes an earlier release.
	rels := strings.Fields(a.flynn("release", "-q"))
	if len(rels) < 2 {
		t.Fatalf("releases: %v", rels)
	}
	out = a.flynn("release", "delete", "-y", rels[len(rels)-1])
	if !strings.Contains(out, "Deleted release "+rels[len(rels)-1]) {
		t.Errorf("release delete:\n%s", out)
	}
}

// clusterKey reads the cluster's key and controller URL from the CLI
// config flynn-host up wrote.
func clusterKey(t *testing.T, c *e2eCluster) (key, controllerURL string) {
	t.Helper()
	b, err := os.ReadFile(c.rc)
	if err != nil {
		t.Fatal(err)
	}
	k := regexp.MustCompile(`(?m)^\s*key = "([^"]+)"`).FindSubmatch(b)
	u := regexp.MustCompile(`(?m)^\s*controller_url = "([^"]+)"`).FindSubmatch(b)
	if k == nil || u == nil {
		t.Fatalf("no key or controller_url in %s:\n%s", c.rc, b)
	}
	return string(k[1]), string(u[1])
}
