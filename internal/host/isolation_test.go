package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// The isolation tests run the attacks of a hostile tenant from real jobs
// on a real agent and check that each is refused while the platform's own
// use of the same mechanism still works.

// jobLog is a job's output (stdout and stderr) once it has ended.
func (a *agentProc) jobLog(id string) string {
	a.t.Helper()
	out, errOut, err := a.cli("log", id)
	if err != nil {
		a.t.Fatalf("flynn-host log %s: %v %s", id, err, errOut)
	}
	return out + errOut
}

// runToEnd runs j and returns its output once it has ended.
func (a *agentProc) runToEnd(j *api.HostJob) string {
	a.t.Helper()
	a.add(j)
	a.waitEnded(j.ID)
	return a.jobLog(j.ID)
}

func probeMount() api.Mount { return api.Mount{Location: probeBin, Target: "/probe"} }

func uid(n uint32) *uint32 { return &n }

// TestHostMountsAllowList: a job may bind-mount only the host paths the
// agent allows (read-only unless allowed writable), whatever symlink it
// names; the platform's own paths work.
func TestHostMountsAllowList(t *testing.T) {
	ro, rw := testslot.Dir(t), testslot.Dir(t)
	a := startAgent(t, "--mount-allow", ro, "--mount-allow", rw+":rw", "--mount-allow", probeDir)
	os.WriteFile(filepath.Join(ro, "config"), []byte("allowed-content\n"), 0o644)
	os.Chmod(rw, 0o777)
	os.Symlink("/etc", filepath.Join(rw, "etc-link"))
	os.Symlink(filepath.Join(ro, "config"), filepath.Join(rw, "config-link"))

	job := func(id string, mounts []api.Mount, args ...string) *api.HostJob {
		j := busyboxJob(id, args...)
		j.Config.Mounts = mounts
		return j
	}
	refused := []struct {
		name  string
		mount api.Mount
		want  string
	}{
		{"host etc", api.Mount{Location: "/etc", Target: "/hostetc"}, "not one jobs may mount"},
		{"host root", api.Mount{Location: "/", Target: "/host", Writeable: true}, "not one jobs may mount"},
		{"agent state", api.Mount{Location: a.stateDir, Target: "/state"}, "not one jobs may mount"},
		{"writable read-only path", api.Mount{Location: ro, Target: "/data", Writeable: true}, "read-only"},
		{"symlink out", api.Mount{Location: filepath.Join(rw, "etc-link"), Target: "/data"}, "resolves to /etc"},
		{"prefix sibling", api.Mount{Location: ro + "x", Target: "/data"}, "not one jobs may mount"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.AddJob(context.Background(), job("mnt", []api.Mount{tt.mount}, "true"))
			e, ok := api.AsError(err)
			if !ok || !errors.Is(err, api.ErrValidation) || e.Field != "config.mounts[0].location" || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("mount of %s: err = %v, want a validation error of config.mounts[0].location saying %q", tt.mount.Location, err, tt.want)
			}
		})
	}

	out := a.runToEnd(job("mnt-ro", []api.Mount{{Location: filepath.Join(ro, "config"), Target: "/etc/app.conf"}}, "cat", "/etc/app.conf"))
	if out != "allowed-content\n" {
		t.Errorf("job reading an allowed file: %q", out)
	}
	out = a.runToEnd(job("mnt-link", []api.Mount{{Location: filepath.Join(rw, "config-link"), Target: "/etc/app.conf"}}, "cat", "/etc/app.conf"))
	if out != "allowed-content\n" {
		t.Errorf("job reading an allowed file through a symlink: %q", out)
	}
	out = a.runToEnd(job("mnt-rw", []api.Mount{{Location: rw, Target: "/data", Writeable: true}}, "sh", "-c", "echo written > /data/out && echo ok"))
	if b, _ := os.ReadFile(filepath.Join(rw, "out")); out != "ok\n" || string(b) != "written\n" {
		t.Errorf("job writing an allowed writable dir: %q, file %q", out, b)
	}
	if jobs, _ := a.client.ListJobs(context.Background()); len(jobs) != 3 {
		t.Errorf("%d jobs on the host, want the 3 allowed ones", len(jobs))
	}
}

// TestSupervisorSocketsRefuseTenants: a job in the host's network
// namespace (as builds run) that is not root finds every job supervisor's
// socket and is hung up on by each; root, the platform, is served.
func TestSupervisorSocketsRefuseTenants(t *testing.T) {
	a := startAgent(t, "--mount-allow", probeDir)
	a.add(busyboxJob("victim", "sh", "-c", "echo victim-secret; exec sleep 1000"))
	waitLog(t, a, "victim", "victim-secret")
	// The victim's socket, named as the runtime names it (other agents
	// on the machine have theirs).
	sum := sha256.Sum256([]byte(filepath.Join(a.stateDir, "containers", "jobs", "victim")))
	sock := "@flynn-supervisor-" + hex.EncodeToString(sum[:16])
	attacker := func(id string, u uint32) string {
		j := busyboxJob(id, "/probe", "supervisors", sock)
		j.Config.HostNetwork = true
		j.Config.Uid, j.Config.Gid = uid(u), uid(u)
		j.Config.Mounts = []api.Mount{probeMount()}
		return a.runToEnd(j)
	}
	if out := attacker("build-like", 1000); out != sock+" closed\n1 supervisor sockets\n" {
		t.Errorf("a uid 1000 host network job asking the victim's supervisor for logs:\n%s\nwant it found and hung up on", out)
	}
	if out := attacker("platform", 0); !strings.HasPrefix(out, sock+" open (read") {
		t.Errorf("a root host network job asking the victim's supervisor for logs:\n%s\nwant an answer", out)
	}
}
