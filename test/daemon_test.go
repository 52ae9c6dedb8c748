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

// TestDaemonRunsJobs brings up one real host (flynn-host init + daemon)
// and runs a busybox job through the agent the daemon serves, found
// through the host's registration.
func TestDaemonRunsJobs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not installed (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	out, _, code := run(t, "flynn-host", "init", "--state-dir", state)
	if code != 0 {
		t.Fatalf("init: %s", out)
	}
	m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("init printed no token: %s", out)
	}
	token := m[1]
	hostPort := freePort(t)
	logPath := filepath.Join(dir, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	daemon := exec.Command(filepath.Join(binDir, "flynn-host"), "daemon", "--state-dir", state, "--listen-ip", "127.0.0.1",
		"--etcd-client-port", fmt.Sprint(freePort(t)), "--etcd-peer-port", fmt.Sprint(freePort(t)),
		"--discoverd-port", fmt.Sprint(freePort(t)), "--dns-port", "-1", "--host-port", fmt.Sprint(hostPort),
		"--etcd-fast", "--bridge", "flte2e0", "--subnet", "100.82.0.0/24", "--cgroup-parent", "flynn-e2e", "--stop-grace", "1s")
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		daemon.Process.Signal(os.Interrupt)
		daemon.Wait()
		exec.Command("ip", "link", "del", "flte2e0").Run()
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/flynn-e2e")
		for _, d := range append(dirs, "/sys/fs/cgroup/flynn-e2e") {
			os.Remove(d)
		}
	})
	dumpLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }

	hc := hostclient.New(fmt.Sprintf("http://127.0.0.1:%d", hostPort), token)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var status *api.HostStatus
	for {
		status, err = hc.Status(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("host agent never came up: %v\n%s", err, dumpLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status.ID == "" {
		t.Fatalf("status without host id: %+v", status)
	}
	{
		bad := hostclient.New(fmt.Sprintf("http://127.0.0.1:%d", hostPort), "wrong")
		if _, err := bad.Status(ctx); err == nil {
			t.Fatal("agent accepted a wrong token")
		}
	}

	layer := filepath.Join(dir, "busybox.tar.gz")
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
	job := &api.HostJob{
		ID: "e2e-echo",
		Artifacts: []*api.Artifact{{Type: api.ArtifactTypeFlynn, Manifest: &api.ImageManifest{
			Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{{ID: digest, Type: api.LayerTypeTarGz, Hashes: map[string]string{"sha256": digest}, URL: "file://" + layer}}}},
		}}},
		Config: api.HostJobConfig{Args: []string{"sh", "-c", "echo hello from $FLYNN_JOB_ID on $DISCOVERD"}},
	}
	if _, err := hc.AddJob(ctx, job); err != nil {
		t.Fatalf("add job: %v\n%s", err, dumpLog())
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
