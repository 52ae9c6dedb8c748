package host_test

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSupervisorBinary checks which program supervises a job: the small
// flynn-supervisor when it is installed next to flynn-host, else
// `flynn-host supervise`, and that the job works either way. It logs the
// supervisor's memory, the figure the small binary is for.
func TestSupervisorBinary(t *testing.T) {
	for _, tc := range []struct {
		name     string
		host     string // the agent's flynn-host
		wantExe  string
		wantArgs []string // argv before the job directory
	}{
		{"companion", flynnHost, flynnSupervisor, []string{flynnSupervisor}},
		{"flynn-host only", soloHost, soloHost, []string{soloHost, "supervise"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startAgentBin(t, tc.host)
			aj := a.add(busyboxJob("sup", "sh", "-c", "echo hello; exec sleep 1000"))
			sup := parentPID(t, aj.PID)
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup))
			if err != nil {
				t.Fatal(err)
			}
			if exe != tc.wantExe {
				t.Errorf("supervisor %d runs %s, want %s", sup, exe, tc.wantExe)
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sup))
			if err != nil {
				t.Fatal(err)
			}
			args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
			if len(args) != len(tc.wantArgs)+1 || strings.Join(args[:len(tc.wantArgs)], " ") != strings.Join(tc.wantArgs, " ") {
				t.Errorf("supervisor command line %q, want %q and the job directory", args, tc.wantArgs)
			}
			t.Logf("supervisor %s: %s", exe, memStatus(t, sup))
			// The supervisor writes the job's log: wait for the echo.
			var out string
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out, "hello") && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				out, _, err = a.cli("log", "sup")
			}
			if !strings.Contains(out, "hello") {
				t.Errorf("job log %q (%v), want hello", out, err)
			}
		})
	}
}

// parentPID is the parent of process pid.
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			var ppid int
			fmt.Sscan(v, &ppid)
			return ppid
		}
	}
	t.Fatalf("no PPid in /proc/%d/status", pid)
	return 0
}

// memStatus is the resident memory lines of /proc/pid/status.
func memStatus(t *testing.T, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		for _, k := range []string{"VmRSS:", "RssAnon:", "RssFile:"} {
			if bytes.HasPrefix(line, []byte(k)) {
				out = append(out, strings.Join(strings.Fields(string(line)), " "))
			}
		}
	}
	return strings.Join(out, ", ")
}
