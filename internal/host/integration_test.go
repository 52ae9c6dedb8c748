package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/hostcmd"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// The tests run the flynn-host binary they build; referring to its
// package makes `go test` caching notice changes to any of its code.
var _ = hostcmd.Run

// flynnHost is the flynn-host binary built for the integration tests, with
// flynnSupervisor next to it (so its agents run job supervisors with that),
// and soloHost a link to it in a directory of its own (its agents run
// `flynn-host supervise`). busyboxLayer is a busybox layer file made with
// `flynn-host image busybox`.
// probeBin is testdata/probe, a static binary the isolation tests run in
// jobs (from probeDir, which their agents let jobs mount).
var flynnHost, flynnSupervisor, soloHost, busyboxLayer, busyboxDigest, probeDir, probeBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // integration tests skip themselves
		}
		dir, err := os.MkdirTemp("", "flt-host-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		flynnHost = filepath.Join(dir, "flynn-host")
		flynnSupervisor = filepath.Join(dir, "flynn-supervisor")
		for _, bin := range []string{flynnHost, flynnSupervisor} {
			args := []string{"build", "-o", bin}
			if os.Getenv("FLYNN_TEST_RACE") != "" {
				args = append(args, "-race") // run the agent and supervisors under the race detector
			}
			out, err := exec.Command("go", append(args, "github.com/flynnrebuilt/flynn/cmd/"+filepath.Base(bin))...).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", filepath.Base(bin), err, out)
				return 1
			}
		}
		// A hard link, not a symlink: the agent finds its companion next
		// to /proc/self/exe, which resolves symlinks.
		soloHost = filepath.Join(dir, "solo", "flynn-host")
		if err := os.Mkdir(filepath.Dir(soloHost), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := os.Link(flynnHost, soloHost); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		busyboxLayer = filepath.Join(dir, "busybox.tar.gz")
		out, err := exec.Command(flynnHost, "image", "busybox", "--out", busyboxLayer).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build busybox layer: %v\n%s", err, out)
			return 1
		}
		busyboxDigest, _ = image.FileDigest(busyboxLayer)
		probeDir = filepath.Join(dir, "probe")
		probeBin = filepath.Join(probeDir, "probe")
		build := exec.Command("go", "build", "-o", probeBin, "./testdata/probe")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build testdata/probe: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// agentProc is a `flynn-host agent` process under test.
type agentProc struct {
	t        testing.TB
	bin      string // flynn-host binary
	stateDir string
	args     []string
	url      string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited
	logs     *safeBuffer
	client   *hostclient.Client
	bridge   string
	subnet   string
	cgroup   string
}

const testToken = "test-token"

// startAgent starts an agent with its own state dir, bridge, subnet and
// cgroup parent, and more flags when given, and registers clean-up of
// everything it made.
func startAgent(t testing.TB, flags ...string) *agentProc {
	t.Helper()
	return startAgentBin(t, flynnHost, flags...)
}

// startAgentBin is startAgent with the flynn-host binary bin.
func startAgentBin(t testing.TB, bin string, flags ...string) *agentProc {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration test: needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("integration test: needs runc")
	}
	// A state dir of its own, not removed by Dir's clean-up: cleanup
	// reports what the agent left mounted there before removing it.
	dir := filepath.Join(testslot.Dir(t), "state")
	a := &agentProc{
		t: t, bin: bin, stateDir: dir, bridge: testslot.Name(t, "h"), subnet: testslot.Subnet(t), cgroup: testslot.Name(t, "hcg"),
	}
	port := testslot.Port(t)
	a.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	a.args = []string{"agent", "--state-dir", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--token", testToken,
		"--host-id", "test", "--bridge", a.bridge, "--subnet", a.subnet, "--cgroup-parent", a.cgroup,
		"--port-range", testslot.PortRange(t, 40), "--stop-grace", "1s", "--log-level", "debug"}
	a.args = append(a.args, flags...)
	for i, f := range flags {
		if f == "--listen" && i+1 < len(flags) {
			a.url = "http://" + flags[i+1] // the last --listen wins
		}
	}
	a.client = hostclient.New(a.url, testToken)
	t.Cleanup(a.cleanup)
	a.start()
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	if a.logs == nil {
		a.logs = &safeBuffer{}
	}
	a.cmd = exec.Command(a.bin, a.args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(a.cmd, a.exited)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := a.client.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-a.exited:
			a.t.Fatalf("agent exited (%v) before its API answered:\n%s", a.cmd.ProcessState, a.logs)
		default:
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("agent API at %s did not answer within 20s: %v\nagent log:\n%s", a.url, err, a.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the agent process (SIGTERM); its jobs keep running.
func (a *agentProc) stop() {
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
}

func (a *agentProc) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if a.cmd != nil {
		if jobs, err := a.client.ListJobs(ctx); err == nil {
			for _, j := range jobs {
				if j.Status == api.HostJobRunning || j.Status == api.HostJobStarting {
					a.client.SignalJob(ctx, j.Job.ID, "KILL")
					a.client.StopJob(ctx, j.Job.ID)
				}
			}
		}
	}
	a.stop()
	sups, _ := filepath.Glob(filepath.Join(a.stateDir, "containers", "jobs", "*", "supervisor.log"))
	for _, f := range sups {
		if b, _ := os.ReadFile(f); bytes.Contains(b, []byte("DATA RACE")) {
			a.t.Errorf("race in supervisor:\n%s", b)
		}
	}
	if strings.Contains(a.logs.String(), "DATA RACE") {
		a.t.Error("race in the agent")
	}
	if a.t.Failed() {
		a.t.Logf("agent log:\n%s", a.logs)
	}
	// Anything still mounted under the state dir is a leak: report it
	// and undo it so the machine stays clean.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], a.stateDir) {
			a.t.Errorf("mount left behind: %s", f[4])
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
	exec.Command("ip", "link", "del", a.bridge).Run()
	if err := network.RemoveFirewall(a.bridge); err != nil {
		a.t.Errorf("remove the jobs' firewall: %v", err)
	}
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		os.Remove(filepath.Join("/sys/fs/cgroup", e.Name(), a.cgroup))
	}
	os.RemoveAll(a.stateDir)
}

// cli runs a flynn-host client command against the agent.
func (a *agentProc) cli(args ...string) (string, string, error) {
	cmd := exec.Command(flynnHost, args...)
	cmd.Env = append(os.Environ(), "FLYNN_HOST_URL="+a.url, "FLYNN_TOKEN="+testToken)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func busyboxArtifact() *api.Artifact {
	return &api.Artifact{Type: api.ArtifactTypeFlynn, URI: "file://" + busyboxLayer, Manifest: &api.ImageManifest{
		Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{{ID: busyboxDigest, Type: api.LayerTypeTarGz, Hashes: map[string]string{"sha256": busyboxDigest}, URL: "file://" + busyboxLayer}}}},
	}}
}

func busyboxJob(id string, args ...string) *api.HostJob {
	return &api.HostJob{ID: id, Artifacts: []*api.Artifact{busyboxArtifact()}, Config: api.HostJobConfig{Args: args}}
}

func (a *agentProc) add(j *api.HostJob) *api.ActiveJob {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	aj, err := a.client.AddJob(ctx, j)
	if err != nil {
		a.t.Fatalf("add job %s: %v", j.ID, err)
	}
	if aj.Status != api.HostJobRunning {
		msg := ""
		if aj.Error != nil {
			msg = *aj.Error
		}
		a.t.Fatalf("job %s status %s: %s", j.ID, aj.Status, msg)
	}
	return aj
}

// waitEnded polls until the job has ended.
func (a *agentProc) waitEnded(id string) *api.ActiveJob {
	a.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		aj, err := a.client.GetJob(context.Background(), id)
		if err != nil {
			a.t.Fatal(err)
		}
		if aj.Status != api.HostJobRunning && aj.Status != api.HostJobStarting {
			return aj
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("job %s still %s", id, aj.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpGet fetches url, retrying until the job's server is up.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 {
				return string(b)
			}
			err = errors.New(res.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func exitStatus(aj *api.ActiveJob) int {
	if aj.ExitStatus == nil {
		return -999
	}
	return *aj.ExitStatus
}
