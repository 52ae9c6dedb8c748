package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/buildpacks/buildpacktest"
	"github.com/flynnrebuilt/flynn/internal/stack/stacktest"
)

var buildTimeRE = regexp.MustCompile(`-----> Build finished in (\S+)`)

// hasLine says whether out has the line want (git pads remote lines with
// spaces).
func hasLine(out, want string) bool {
	for line := range strings.Lines(out) {
		if strings.TrimRight(line, " \r\n") == want {
			return true
		}
	}
	return false
}

// buildTime is the build's own duration, from a push's output.
func buildTime(out string) string {
	if m := buildTimeRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return "?"
}

// TestPushPythonAndRuby pushes the Python and Ruby sample apps to a
// cluster brought up like make up, twice each (the second push with the
// build cache warm), each answering through the router from its slug on
// the stack. The Python app's two dependencies are wheels the test builds
// and serves from two package indexes, given to the build by the app's
// env (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL); the warm push asks neither.
// The Ruby app's gem, built by the test, is in vendor/cache. A push whose
// requirements cannot be resolved is refused with one line saying which
// and the previous release keeps serving.
func TestPushPythonAndRuby(t *testing.T) {
	// The cluster's build stack: the same package list in the same cache.
	rootfs := stacktest.DefaultStack(t)
	wheels := buildpacktest.BuildWheels(t, rootfs,
		buildpacktest.PythonGreeting("flynn-extra", "1.0.0"), buildpacktest.PythonGreeting("flynn-greeting", "1.0.0"))
	index, extra := buildpacktest.NewPyIndex(t, wheels[1]), buildpacktest.NewPyIndex(t, wheels[0])
	gem := buildpacktest.BuildGems(t, rootfs, buildpacktest.RubyGreeting("1.0.0"))[0]
	c := startE2ECluster(t, nil)

	type timing struct {
		name                   string
		cold, warm             time.Duration
		coldBuild, warmBuild   string
		coldOutput, warmOutput string
	}
	var timings []timing

	// Python: dependencies from the indexes the app's env names.
	py := newPushApp(t, c, nil, "python", "pushpython", false)
	py.flynn("env", "set", "PIP_INDEX_URL="+index.URL, "PIP_EXTRA_INDEX_URL="+extra.URL)
	const pyWant = "hello from the python app: flynn-greeting 1.0.0, flynn-extra 1.0.0, python 3.11.2 in /app/.venv"
	tm := timing{name: "python"}
	tm.cold, tm.coldOutput = py.pushServe(pyWant)
	for _, want := range []string{"remote: -----> Python app detected", "remote: -----> Using Python 3.11.2 (.python-version asks for 3.11)",
		"fetching what the wheel cache lacks from " + index.URL + " and " + extra.URL,
		"Successfully installed flynn-extra-1.0.0 flynn-greeting-1.0.0"} {
		if !strings.Contains(tm.coldOutput, want) {
			t.Errorf("cold Python push output lacks %q:\n%s", want, tm.coldOutput)
		}
	}
	asked := index.Requests() + extra.Requests()
	if index.Requests() == 0 || extra.Requests() == 0 {
		t.Errorf("the build asked the index %d and the extra index %d times; want both asked", index.Requests(), extra.Requests())
	}
	py.commit("second")
	tm.warm, tm.warmOutput = py.pushServe(pyWant)
	for _, want := range []string{"from the wheel cache (no package index asked)", "-----> Build cache unchanged"} {
		if !strings.Contains(tm.warmOutput, want) {
			t.Errorf("warm Python push output lacks %q:\n%s", want, tm.warmOutput)
		}
	}
	if n := index.Requests() + extra.Requests() - asked; n != 0 {
		t.Errorf("the warm push asked the indexes %d times, want none: %v %v", n, index.Paths(), extra.Paths())
	}
	timings = append(timings, tm)
	// As on Heroku: WEB_CONCURRENCY (gunicorn's worker count) from the
	// job's memory limit, unless the env sets it.
	for _, tc := range []struct{ limits, env, want string }{
		{"memory=512MiB", "", "2"},
		{"memory=1GiB", "", "4"},
		{"memory=1GiB", "WEB_CONCURRENCY=3", "3"},
	} {
		if got := py.runWith(tc.limits, tc.env, "echo $WEB_CONCURRENCY"); got != tc.want {
			t.Errorf("flynn run --limits %s --env %q: WEB_CONCURRENCY = %q, want %q", tc.limits, tc.env, got, tc.want)
		}
	}
	// Over 1 GB: twice the CPUs plus one.
	var wc, cpus int
	out := py.runWith("memory=2GiB", "", "echo $WEB_CONCURRENCY $(nproc)")
	if _, err := fmt.Sscan(out, &wc, &cpus); err != nil || wc != 2*cpus+1 {
		t.Errorf("flynn run --limits memory=2GiB: WEB_CONCURRENCY and nproc %q, want twice the CPUs plus one", out)
	}

	// A requirement no index has: refused with one line saying so, and
	// the previous release keeps serving.
	reqs := filepath.Join(py.dir, "requirements.txt")
	data, err := os.ReadFile(reqs)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(reqs, append(data, "flynn-missing==1.0\n"...), 0o644)
	py.git("commit", "-qam", "a requirement no index has")
	out, ok := py.push("main")
	wantLine := "remote:  !     requirements.txt: No matching distribution found for flynn-missing==1.0 (index " + index.URL + ")"
	if ok || !hasLine(out, wantLine) || !strings.Contains(out, "Push rejected") {
		t.Errorf("push with an unresolvable requirement: ok=%v, want a refusal with the line %q:\n%s", ok, wantLine, out)
	}
	if status, body := py.get(); status != 200 || !strings.Contains(body, pyWant) {
		t.Errorf("after the refused push the previous release stopped serving: %d %s", status, body)
	}

	// Ruby: the gem from vendor/cache, no network.
	rb := newPushApp(t, c, nil, "ruby", "pushruby", false)
	gemData, err := os.ReadFile(gem)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rb.dir, "vendor", "cache", filepath.Base(gem)), gemData, 0o644); err != nil {
		t.Fatal(err)
	}
	rb.git("add", ".")
	rb.git("commit", "-qm", "bundle cache")
	const rbWant = "hello from the ruby app: flynn-greeting 1.0.0, ruby 3.1.2, bundle at /app/vendor/bundle/ruby/3.1.0"
	tm = timing{name: "ruby"}
	tm.cold, tm.coldOutput = rb.pushServe(rbWant)
	for _, want := range []string{"remote: -----> Ruby app detected", "remote: -----> Using Ruby 3.1.2 and Bundler 2.3.15 (Debian's)",
		"remote: -----> Installing gems from vendor/cache (bundle install --local, no network)", "Installing flynn-greeting 1.0.0"} {
		if !strings.Contains(tm.coldOutput, want) {
			t.Errorf("cold Ruby push output lacks %q:\n%s", want, tm.coldOutput)
		}
	}
	rb.commit("second")
	tm.warm, tm.warmOutput = rb.pushServe(rbWant)
	for _, want := range []string{"restored 1 installed gems from the build cache", "Using flynn-greeting 1.0.0", "-----> Build cache unchanged"} {
		if !strings.Contains(tm.warmOutput, want) {
			t.Errorf("warm Ruby push output lacks %q:\n%s", want, tm.warmOutput)
		}
	}
	timings = append(timings, tm)

	for _, tm := range timings {
		if testing.Verbose() {
			t.Logf("%s cold push:\n%s\n%s warm push:\n%s", tm.name, tm.coldOutput, tm.name, tm.warmOutput)
		}
		t.Logf("push to first 200: %-6s cold %-8v (build %s)  warm %-8v (build %s)", tm.name,
			tm.cold.Round(10*time.Millisecond), buildTime(tm.coldOutput), tm.warm.Round(10*time.Millisecond), buildTime(tm.warmOutput))
	}
}
