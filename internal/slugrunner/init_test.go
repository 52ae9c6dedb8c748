package slugrunner

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// Re-executed as PID 1 of a new pid namespace by TestInitForwardsSignals.
	if os.Getenv("SLUGRUNNER_TEST_INIT") == "1" {
		err := Exec("/", []string{"/bin/sleep", "100"}, os.Environ())
		os.Stderr.WriteString(err.Error())
		os.Exit(99)
	}
	os.Exit(m.Run())
}

// TestInitForwardsSignals: as PID 1, slugrunner passes SIGTERM on to the
// app (which the kernel would not deliver to a PID 1 without a handler)
// and exits with the app's status.
func TestInitForwardsSignals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a pid namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare")
	}
	self, _ := os.Executable()
	cmd := exec.Command("unshare", "--pid", "--fork", self)
	cmd.Env = append(os.Environ(), "SLUGRUNNER_TEST_INIT=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Find the namespace's PID 1 (unshare's child) and its child, sleep.
	var init int
	deadline := time.Now().Add(10 * time.Second)
	for init == 0 || len(children(init)) == 0 {
		if time.Now().After(deadline) {
			out, _ := exec.Command("ps", "-ef", "--forest").Output()
			t.Fatalf("init or its child never started (unshare %d: %v, init %d: %v): %s\n%s", cmd.Process.Pid, children(cmd.Process.Pid), init, children(init), stderr.String(), out)
		}
		if c := children(cmd.Process.Pid); len(c) > 0 {
			init = c[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(init, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 128+int(syscall.SIGTERM) {
			t.Fatalf("exit = %v, want status %d (the app ended by SIGTERM); stderr %s", err, 128+int(syscall.SIGTERM), stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("SIGTERM to PID 1 did not end the app")
	}
}

// children lists pid's children: the children files of all its threads
// (a Go program forks from whichever thread it runs on).
func children(pid int) []int {
	files, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	var out []int
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}
