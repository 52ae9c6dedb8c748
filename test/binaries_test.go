// Package test holds Flynn's end-to-end tests: they build the real binaries
// and drive them from the outside, as a user would.
package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flynn-test-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	// flynn-supervisor, flynn-control and flynn-data next to flynn-host:
	// the clusters' agents run job supervisors with the first and mount
	// the others into the system jobs, as installed clusters do.
	for _, name := range []string{"flynn", "flynn-host", "flynn-supervisor", "flynn-control", "flynn-data"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			panic("build " + name + ": " + err.Error() + "\n" + string(out))
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return o.String(), e.String(), ee.ExitCode()
		}
		t.Fatalf("run %s: %v", name, err)
	}
	return o.String(), e.String(), 0
}

func TestBinariesHelpAndErrors(t *testing.T) {
	for _, name := range []string{"flynn", "flynn-host"} {
		t.Run(name, func(t *testing.T) {
			out, _, code := run(t, name, "--help")
			if code != 0 || !strings.Contains(out, "Usage:") {
				t.Fatalf("--help: exit %d, output %q", code, out)
			}
			out, _, code = run(t, name, "version")
			if code != 0 || !strings.HasPrefix(out, "flynn ") {
				t.Fatalf("version: exit %d, output %q", code, out)
			}
			_, errOut, code := run(t, name, "no-such-command")
			if code == 0 {
				t.Fatal("unknown command exited 0")
			}
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "unknown command") {
				t.Fatalf("unknown command: want one line naming it, got %q", errOut)
			}
		})
	}
}
