package slugrunner

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// appDir makes a slug directory with a Procfile, a .profile.d script and
// a .profile.
func appDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"Procfile":          "web: echo \"web $A $B $PWD $HOME\"\nworker: sleep 30\npid: echo $$\n",
		".profile.d/a.sh":   "export A=from-profile.d\nexport B=overridden-later\n",
		".profile.d/no.txt": "export A=not-sourced\n",
		".profile":          "export B=from-profile\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// run runs what Command returns for args and gives its output.
func run(t *testing.T, dir string, args []string) (string, *exec.Cmd) {
	t.Helper()
	argv, env, err := Command(dir, args, []string{"PATH=/usr/bin:/bin", "HOME=/elsewhere"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return string(out), cmd
}

func TestCommand(t *testing.T) {
	dir := appDir(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"shell line", []string{"echo $A $B"}, "from-profile.d from-profile\n"},
		{"argv", []string{"printf", "%s|", "a b", "$A"}, "a b|$A|"},
		{"working dir and home", []string{"pwd; echo $HOME"}, dir + "\n" + dir + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := run(t, dir, tt.args)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := Command(dir, nil, nil); err == nil {
		t.Error("Command accepted no arguments")
	}
}

// TestHerokuContract: a command runs as on Heroku: HOME is the app dir,
// PATH starts with its bin (so a Procfile names a binary bare), a
// buildpack's .profile.d adds to PATH, the line is run by bash, and DYNO
// and PORT pass through.
func TestHerokuContract(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("needs /bin/bash")
	}
	dir := t.TempDir()
	files := map[string]string{
		"bin/myapp":            "#!/bin/sh\necho \"myapp on $PORT as $DYNO home=$HOME\"\n",
		".heroku/bin/tool":     "#!/bin/sh\necho tool\n",
		".profile.d/heroku.sh": "export PATH=\"$HOME/.heroku/bin:$PATH\"\n",
		"Procfile":             "web: myapp\nbashism: [[ $DYNO == web.* ]] && echo \"bash $BASH_VERSION\" | cut -c1-6\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runType := func(typ string) string {
		t.Helper()
		line, err := ProcessCommand(dir, typ)
		if err != nil {
			t.Fatal(err)
		}
		argv, env, err := Command(dir, []string{line}, []string{"PATH=/usr/bin:/bin", "PORT=5000", "DYNO=web.2"})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", typ, err, out)
		}
		return string(out)
	}
	if diff := cmp.Diff("myapp on 5000 as web.2 home="+dir+"\n", runType("web")); diff != "" {
		t.Errorf("web: bare binary name from bin (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("bash 5\n", runType("bashism")); diff != "" {
		t.Errorf("a Procfile line is run by bash (-want +got):\n%s", diff)
	}
	got, _ := run(t, dir, []string{"echo $PATH; tool"})
	if want := dir + "/.heroku/bin:" + dir + "/bin:/usr/bin:/bin\ntool\n"; got != want {
		t.Errorf("PATH and a profile-provided tool: got %q, want %q", got, want)
	}
	// A PATH that already starts with the app's bin is kept as it is.
	_, env, _ := Command(dir, []string{"true"}, []string{"PATH=" + dir + "/bin:/bin"})
	if !slices.Contains(env, "PATH="+dir+"/bin:/bin") {
		t.Errorf("env = %q, want PATH unchanged", env)
	}
}

func TestProcessCommand(t *testing.T) {
	dir := appDir(t)
	cmd, err := ProcessCommand(dir, "web")
	if err != nil || !strings.HasPrefix(cmd, "echo \"web") {
		t.Fatalf("web = %q, %v", cmd, err)
	}
	if _, err := ProcessCommand(dir, "nope"); err == nil || !strings.Contains(err.Error(), "pid, web, worker") {
		t.Errorf("unknown type: err = %v", err)
	}
	if _, err := ProcessCommand(t.TempDir(), "web"); err == nil || !strings.Contains(err.Error(), "no Procfile") {
		t.Errorf("no Procfile: err = %v", err)
	}
}

// TestExecReplacesProcess checks that the command ends up as the very
// process that was started (the shells exec), so signals reach it.
func TestExecReplacesProcess(t *testing.T) {
	dir := appDir(t)
	typ, _ := ProcessCommand(dir, "pid")
	out, cmd := run(t, dir, []string{typ})
	if got, want := strings.TrimSpace(out), strconv.Itoa(cmd.Process.Pid); got != want {
		t.Errorf("command ran as pid %s, want the started pid %s", got, want)
	}

	// A signal to the started process reaches the command.
	worker, _ := ProcessCommand(dir, "worker")
	argv, env, _ := Command(dir, []string{worker}, []string{"PATH=/usr/bin:/bin"})
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = env
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.Process.Pid))
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process is %q, not sleep", comm)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Process.Signal(syscall.SIGTERM)
	err := c.Wait()
	ws, _ := c.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("sleep did not die of SIGTERM: %v", err)
	}
}

func TestServeStatic(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "css"), 0o755)
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("<h1>hi</h1>"), 0o644)
	os.WriteFile(filepath.Join(dir, "css/a.css"), []byte("body{}"), 0o644)
	os.WriteFile(filepath.Join(dir, "app.js"), []byte("let a"), 0o644)
	os.WriteFile(filepath.Join(dir, "logo.svg"), []byte("<svg/>"), 0o644)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testslot.Port(t)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeStatic(ctx, StaticConfig{Dir: dir, Addr: addr}, logging.Discard()) }()
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := http.Get(base); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	tests := []struct {
		path, ctype string
		status      int
	}{
		{"/", "text/html; charset=utf-8", 200},
		{"/css/a.css", "text/css; charset=utf-8", 200},
		{"/app.js", "text/javascript; charset=utf-8", 200},
		{"/logo.svg", "image/svg+xml", 200},
		{"/missing", "text/plain; charset=utf-8", 404},
	}
	for _, tt := range tests {
		res, err := http.Get(base + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.status || res.Header.Get("Content-Type") != tt.ctype {
			t.Errorf("%s: %d %q, want %d %q", tt.path, res.StatusCode, res.Header.Get("Content-Type"), tt.status, tt.ctype)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeStatic: %v", err)
	}
	if err := ServeStatic(context.Background(), StaticConfig{Dir: filepath.Join(dir, "nope"), Addr: addr}, logging.Discard()); err == nil {
		t.Error("ServeStatic accepted a missing directory")
	}
}

func TestExecLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"node server.js", "exec node server.js"},
		{"  bin/web -p $PORT 2>&1", "exec bin/web -p $PORT 2>&1"},
		{`node -e "a  b"`, `exec node -e "a  b"`},
		{"A=1 B=x bin/web", "A=1 B=x exec bin/web"},
		{"exec bin/web", "exec bin/web"},
		{"cd x && ./web", "cd x && ./web"},
		{"a; b", "a; b"},
		{"a | b", "a | b"},
		{"A='x y' web", "A='x y' web"},
		{"if true; then x; fi", "if true; then x; fi"},
		{"A=1", "A=1"},
	}
	for _, tt := range tests {
		if got := execLine(tt.in); got != tt.want {
			t.Errorf("execLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
