package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"flynn": func() {
			os.Exit(Run(context.Background(), os.Args[1:], Env{
				Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv,
			}))
		},
	})
}

// TestScripts runs the txtar scripts in testdata/script against the real
// command line (the test binary re-executed as "flynn"). Each script gets
// its own controller (on its own etcd namespace) with a fake scheduler,
// deployer and host runner; its URLs are in $CONTROLLER_URL (plain HTTP),
// $CONTROLLER_TLS_URL (TLS, certificate pin in $CONTROLLER_PIN), and the
// key in $CONTROLLER_KEY.
func TestScripts(t *testing.T) {
	etcd := etcdtest.Start(t)
	var n atomic.Int64
	cmds := map[string]func(ts *testscript.TestScript, neg bool, args []string){
		// second-controller starts another cluster's controller and
		// sets $CONTROLLER2_URL.
		"second-controller": func(ts *testscript.TestScript, neg bool, args []string) {
			h, err := newHarness(etcd.Endpoint(), fmt.Sprintf("/script%d", n.Add(1)), ts.MkAbs("."))
			if err != nil {
				ts.Fatalf("second controller: %v", err)
			}
			ts.Defer(h.stop)
			ts.Setenv("CONTROLLER2_URL", h.URL)
		},
	}
	for name, fn := range harnessCmds() {
		cmds[name] = fn
	}
	for name, fn := range flynnClientCmds() {
		cmds[name] = fn
	}
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			h, err := newHarness(etcd.Endpoint(), fmt.Sprintf("/script%d", n.Add(1)), env.WorkDir)
			if err != nil {
				return err
			}
			env.Defer(h.stop)
			env.Values["harness"] = h
			env.Setenv("FLYNNRC", env.WorkDir+"/.flynnrc")
			env.Setenv("HOME", env.WorkDir+"/home")
			env.Setenv("GIT_CONFIG_NOSYSTEM", "1")
			env.Setenv("GIT_AUTHOR_NAME", "t")
			env.Setenv("GIT_AUTHOR_EMAIL", "t@example.com")
			env.Setenv("GIT_COMMITTER_NAME", "t")
			env.Setenv("GIT_COMMITTER_EMAIL", "t@example.com")
			env.Setenv("CONTROLLER_URL", h.URL)
			env.Setenv("CONTROLLER_TLS_URL", h.TLSURL)
			env.Setenv("CONTROLLER_PIN", h.Pin)
			env.Setenv("CONTROLLER_KEY", testKey)
			env.Setenv("PROVIDER_URL", h.ProviderURL)
			return os.MkdirAll(env.WorkDir+"/home", 0o755)
		},
		Cmds: cmds,
	})
}

// harnessCmds are the script commands that reach into the harness.
func harnessCmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	return map[string]func(ts *testscript.TestScript, neg bool, args []string){
		// addlog APP TYPE STREAM MSG... stores a log line of APP.
		"addlog": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) < 4 {
				ts.Fatalf("usage: addlog APP TYPE STREAM MSG...")
			}
			h := ts.Value("harness").(*harness)
			err := h.addLog(context.Background(), args[0], args[1], args[2], strings.Join(args[3:], " "))
			if (err != nil) != neg {
				ts.Fatalf("addlog: %v", err)
			}
		},
		// addvolume ID HOST APP TYPE PATH INUSE puts a volume on the
		// fake hosts, of app APP (a name) and process type TYPE.
		"addvolume": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 6 {
				ts.Fatalf("usage: addvolume ID HOST APP TYPE PATH INUSE")
			}
			h := ts.Value("harness").(*harness)
			app, err := h.c.GetApp(context.Background(), args[2])
			if err != nil {
				ts.Fatalf("addvolume: %v", err)
			}
			h.runner.mu.Lock()
			defer h.runner.mu.Unlock()
			h.runner.volumes = append(h.runner.volumes, &api.Volume{
				ID: args[0], HostID: args[1], Type: api.VolumeTypeData, AppID: app.ID, AppName: app.Name,
				JobType: args[3], Path: args[4], InUse: args[5] == "true", JobID: args[1] + "-job", Size: 3 << 20,
			})
		},
		// setfrom VAR FILE sets $VAR to the first line of FILE (e.g. a
		// saved stdout).
		"setfrom": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: setfrom VAR FILE")
			}
			line, _, _ := strings.Cut(ts.ReadFile(args[1]), "\n")
			ts.Setenv(args[0], strings.TrimSpace(line))
		},
		// stopped JOB checks that the host runner was asked to stop JOB.
		"stopped": func(ts *testscript.TestScript, neg bool, args []string) {
			h := ts.Value("harness").(*harness)
			h.runner.mu.Lock()
			defer h.runner.mu.Unlock()
			found := false
			for _, id := range h.runner.stopped {
				found = found || id == args[0]
			}
			if found == neg {
				ts.Fatalf("stopped %s: %t, want %t (stopped: %v)", args[0], found, !neg, h.runner.stopped)
			}
		},
		// slugapp APP deploys to APP (which exists) a release built the
		// way git push builds one: a flynn artifact of a stack layer and
		// a slug layer (uploaded to the blobstore through the
		// controller), process type web run by the slug runner. It sets
		// $SLUG_RELEASE and $SLUG_LAYER.
		"slugapp": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 1 {
				ts.Fatalf("usage: slugapp APP")
			}
			h := ts.Value("harness").(*harness)
			rel, layer, err := h.slugApp(context.Background(), args[0])
			if err != nil {
				ts.Fatalf("slugapp: %v", err)
			}
			ts.Setenv("SLUG_RELEASE", rel)
			ts.Setenv("SLUG_LAYER", layer)
		},
		// hostjobjson prints the last job the host runner was given, as
		// JSON.
		"hostjobjson": func(ts *testscript.TestScript, neg bool, args []string) {
			h := ts.Value("harness").(*harness)
			h.runner.mu.Lock()
			defer h.runner.mu.Unlock()
			if len(h.runner.added) == 0 {
				ts.Fatalf("no job was added")
			}
			b, _ := json.Marshal(h.runner.added[len(h.runner.added)-1])
			ts.Stdout().Write(append(b, '\n'))
		},
		// hostjob prints the last job the host runner was given: its
		// args, mounts and DYNO.
		"hostjob": func(ts *testscript.TestScript, neg bool, args []string) {
			h := ts.Value("harness").(*harness)
			h.runner.mu.Lock()
			defer h.runner.mu.Unlock()
			if len(h.runner.added) == 0 {
				ts.Fatalf("no job was added")
			}
			j := h.runner.added[len(h.runner.added)-1]
			fmt.Fprintf(ts.Stdout(), "args %q\n", j.Config.Args)
			for _, m := range j.Config.Mounts {
				fmt.Fprintf(ts.Stdout(), "mount %s %s\n", m.Location, m.Target)
			}
			fmt.Fprintf(ts.Stdout(), "dyno %s\n", j.Config.Env["DYNO"])
		},
	}
}

func TestAppFromGitURL(t *testing.T) {
	tests := map[string]string{
		"https://git.flynn.localhost/myapp.git":     "myapp",
		"https://git.example.com:8443/my-app.git":   "my-app",
		"ssh://git@flynn.localhost:2222/myapp.git":  "myapp",
		"git@flynn.localhost:myapp.git":             "myapp",
		"https://github.com/someone/Not_An_App.git": "",
		"/local/path/repo.git":                      "",
		"https://git.flynn.localhost/-bad-.git":     "",
	}
	for in, want := range tests {
		if got := appFromGitURL(in); got != want {
			t.Errorf("appFromGitURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryCommandHasExample walks the command tree: every command's
// --help must show usage with examples.
func TestEveryCommandHasExample(t *testing.T) {
	root := newRoot(Env{Stdin: strings.NewReader(""), Stdout: os.Stdout, Stderr: os.Stderr, Getenv: func(string) string { return "" }})
	var walk func(c *cobra.Command)
	count := 0
	walk = func(c *cobra.Command) {
		count++
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		if c.Short == "" {
			t.Errorf("%q has no Short description", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			if sub.Name() == "help" {
				continue // cobra's own help command
			}
			walk(sub)
		}
	}
	walk(root)
	if count < 40 {
		t.Errorf("walked only %d commands; is the tree wired?", count)
	}
}

func TestParseScaleArgs(t *testing.T) {
	tests := []struct {
		args    []string
		want    map[string]int
		wantErr string
	}{
		{args: []string{"web=2", "worker=0"}, want: map[string]int{"web": 2, "worker": 0}},
		{args: []string{"web"}, wantErr: "use TYPE=N"},
		{args: []string{"web=-1"}, wantErr: "whole number"},
		{args: []string{"web=two"}, wantErr: "whole number"},
		{args: []string{"Web=1"}, wantErr: "use TYPE=N"},
		{args: []string{"=1"}, wantErr: "use TYPE=N"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := parseScaleArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		name, v string
		want    int64
		bad     bool
	}{
		{"memory", "512MB", 512 << 20, false},
		{"memory", "1GiB", 1 << 30, false},
		{"memory", "1024", 1024, false},
		{"cpu", "500", 500, false},
		{"cpu", "5MB", 0, true},
		{"memory", "-1", 0, true},
		{"disk", "1", 0, true},
	}
	for _, tt := range tests {
		got, err := parseLimit(tt.name, tt.v)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("parseLimit(%s, %s) = %d, %v; want %d, bad=%t", tt.name, tt.v, got, err, tt.want, tt.bad)
		}
	}
}
