package host_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// sparePins are the spare network namespaces pinned in an agent's state.
func sparePins(t testing.TB, a *agentProc) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(a.stateDir, "net", "netns"))
	if err != nil {
		t.Fatal(err)
	}
	pins := map[string]bool{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "spare-") {
			pins[e.Name()] = true
		}
	}
	return pins
}

// waitSpares polls until ok holds for the agent's spare pins.
func waitSpares(t testing.TB, a *agentProc, what string, ok func(map[string]bool) bool) map[string]bool {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		pins := sparePins(t, a)
		if ok(pins) {
			return pins
		}
		if time.Now().After(deadline) {
			t.Fatalf("spare namespaces: %d pinned, want %s", len(pins), what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSparesAfterAgentKilled: an agent keeps spare network namespaces;
// killed (SIGKILL), it leaves them behind, and the next agent removes
// them (and makes its own), while the job that ran on one of them keeps
// running and is cleaned up when it stops. The clean-up's check that
// nothing is left mounted covers the spares of the agent stopped last.
func TestSparesAfterAgentKilled(t *testing.T) {
	a := startAgent(t)
	a.add(busyboxJob("onspare", "sleep", "1000"))
	if _, err := os.Stat(filepath.Join(a.stateDir, "net", "taken", "onspare")); err != nil {
		t.Errorf("the job did not start on a spare namespace: %v", err)
	}
	before := waitSpares(t, a, "some", func(p map[string]bool) bool { return len(p) > 0 })

	a.cmd.Process.Kill()
	<-a.exited
	a.cmd = nil
	a.start()
	waitSpares(t, a, "none of the killed agent's", func(p map[string]bool) bool {
		for k := range before {
			if p[k] {
				return false
			}
		}
		return len(p) > 0
	})
	if aj, err := a.client.GetJob(t.Context(), "onspare"); err != nil || aj.Status != api.HostJobRunning {
		t.Fatalf("the job after the agent was killed: %+v %v", aj, err)
	}
	if _, stderr, err := a.cli("stop", "onspare"); err != nil {
		t.Fatalf("stop: %v %s", err, stderr)
	}
	a.waitEnded("onspare")
	for _, f := range []string{"netns", "taken"} {
		if _, err := os.Stat(filepath.Join(a.stateDir, "net", f, "onspare")); !os.IsNotExist(err) {
			t.Errorf("the stopped job's net/%s/onspare is left (%v)", f, err)
		}
	}
}
