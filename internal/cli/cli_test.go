package cli

import (
	"context"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
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
// command line (the test binary re-executed as "flynn").
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("FLYNNRC", env.WorkDir+"/.flynnrc")
			env.Setenv("GIT_CONFIG_NOSYSTEM", "1")
			return nil
		},
	})
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
