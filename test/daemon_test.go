package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/image"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testDaemon is one real host: flynn-host init + daemon (with its agent).
type testDaemon struct {
	token   string
	etcd    string
	disc    string
	hostURL string
	logPath string
}

func (d *testDaemon) log() string { b, _ := os.ReadFile(d.logPath); return string(b) }

// startDaemon inits and starts a daemon on 127.0.0.1 with free ports, its
// own bridge, subnet and cgroup parent, and waits for its agent.
func startDaemon(t *testing.T, bridge, subnet string) *testDaemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not installed (make deps installs it): %v", err)
	}
	// A long state dir on purpose: job ids ("<host>-<uuid>") and the
	// state dir's length are independent of socket address limits.
	dir := t.TempDir()
	state := filepath.Join(dir, "s")
	out, _, code := run(t, "flynn-host", "init", "--state-dir", state)
	if code != 0 {
		t.Fatalf("init: %s", out)
	}
	m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("init printed no token: %s", out)
	}
	etcdPort, discPort, hostPort := freePort(t), freePort(t), freePort(t)
	d := &testDaemon{
		token:   m[1],
		etcd:    fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		disc:    fmt.Sprintf("http://127.0.0.1:%d", discPort),
		hostURL: fmt.Sprintf("http://127.0.0.1:%d", hostPort),
		logPath: filepath.Join(dir, "daemon.log"),
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cgroup := "flynn-" + bridge
	cmd := exec.Command(filepath.Join(binDir, "flynn-host"), "daemon", "--state-dir", state, "--listen-ip", "127.0.0.1",
		"--etcd-client-port", fmt.Sprint(etcdPort), "--etcd-peer-port", fmt.Sprint(freePort(t)),
		"--discoverd-port", fmt.Sprint(discPort), "--dns-port", "-1", "--host-port", fmt.Sprint(hostPort),
		"--etcd-fast", "--bridge", bridge, "--subnet", subnet, "--cgroup-parent", cgroup, "--stop-grace", "1s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Stop the host's jobs, then the daemon, then remove what they made.
		hc := hostclient.New(d.hostURL, d.token)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if jobs, err := hc.ListJobs(ctx); err == nil {
			for _, j := range jobs {
				hc.StopJob(ctx, j.Job.ID)
			}
		}
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		logf.Close()
		exec.Command("ip", "link", "del", bridge).Run()
		cleanHostState(bridge, strings.TrimSuffix(subnet, "0/24"), cgroup)
	})
	hc := hostclient.New(d.hostURL, d.token)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if _, err := hc.Status(ctx); err == nil {
			return d
		} else if ctx.Err() != nil {
			t.Fatalf("host agent never came up: %v\n%s", err, d.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// busyboxArtifact writes a busybox layer and returns an artifact of it.
func busyboxArtifact(t *testing.T) *api.Artifact {
	t.Helper()
	layer := filepath.Join(t.TempDir(), "busybox.tar.gz")
	f, err := os.Create(layer)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.WriteBusyboxLayer(f, image.DefaultBusybox); err != nil {
		t.Fatal(err)
	}
	f.Close()
	digest, err := image.FileDigest(layer)
	if err != nil {
		t.Fatal(err)
	}
	return &api.Artifact{Type: api.ArtifactTypeFlynn, URI: "file://" + layer, Manifest: &api.ImageManifest{
		Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{{ID: digest, Type: api.LayerTypeTarGz, Hashes: map[string]string{"sha256": digest}, URL: "file://" + layer}}}},
	}}
}

// TestDaemonRunsJobs brings up one real host (flynn-host init + daemon)
// and runs a busybox job through the agent the daemon serves.
func TestDaemonRunsJobs(t *testing.T) {
	d := startDaemon(t, "flte2e0", "100.82.0.0/24")
	hc := hostclient.New(d.hostURL, d.token)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	status, err := hc.Status(ctx)
	if err != nil || status.ID == "" {
		t.Fatalf("status = %+v, %v", status, err)
	}
	if _, err := hostclient.New(d.hostURL, "wrong").Status(ctx); err == nil {
		t.Fatal("agent accepted a wrong token")
	}
	job := &api.HostJob{
		ID:        "e2e-echo",
		Artifacts: []*api.Artifact{busyboxArtifact(t)},
		Config:    api.HostJobConfig{Args: []string{"sh", "-c", "echo hello from $FLYNN_JOB_ID on $DISCOVERD"}},
	}
	if _, err := hc.AddJob(ctx, job); err != nil {
		t.Fatalf("add job: %v\n%s", err, d.log())
	}
	for {
		j, err := hc.GetJob(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status != api.HostJobStarting && j.Status != api.HostJobRunning {
			if j.ExitStatus == nil || *j.ExitStatus != 0 {
				t.Fatalf("job ended %s with %v", j.Status, j.ExitStatus)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("job never ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
	lg, err := hc.JobLog(ctx, job.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for {
		line, err := lg.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sb.WriteString(line.Msg)
	}
	if !strings.Contains(sb.String(), "hello from") || !strings.Contains(sb.String(), "http://127.0.0.1:") {
		t.Fatalf("job log = %q, want the greeting with $DISCOVERD set", sb.String())
	}
}
