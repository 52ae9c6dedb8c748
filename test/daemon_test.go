package test

import (
	"context"
	"fmt"
	"io"
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
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// testDaemon is one real host: flynn-host init + daemon (with its agent).
type testDaemon struct {
	token string
	// etcd is its etcd's URL; etcdTLS the host's PKI dir, whose component
	// certificate a component presents to etcd (--etcd-tls).
	etcd    string
	etcdTLS string
	disc    string
	hostURL string
	proc    *bgProc
	hc      *hostclient.Client
}

// startDaemon inits and starts a daemon on 127.0.0.1 with ports, bridge,
// subnet, cgroup parent and state dir of its own (see testslot), and
// waits until its host agent answers and the host is registered.
func startDaemon(t *testing.T) *testDaemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not installed (make deps installs it): %v", err)
	}
	// A long state dir on purpose: job ids ("<host>-<uuid>") and the
	// state dir's length are independent of socket address limits.
	dir := testslot.Dir(t)
	state := filepath.Join(dir, "state-dir-with-a-rather-long-name-to-show-socket-paths-do-not-depend-on-it")
	out, _, code := run(t, "flynn-host", "init", "--state-dir", state)
	if code != 0 {
		t.Fatalf("init: %s", out)
	}
	m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("init printed no token: %s", out)
	}
	etcdPort, discPort, hostPort := testslot.Port(t), testslot.Port(t), testslot.Port(t)
	d := &testDaemon{
		token:   m[1],
		etcd:    fmt.Sprintf("https://127.0.0.1:%d", etcdPort),
		etcdTLS: filepath.Join(state, "pki"),
		disc:    fmt.Sprintf("http://127.0.0.1:%d", discPort),
		hostURL: fmt.Sprintf("http://127.0.0.1:%d", hostPort),
	}
	d.hc = hostclient.New(d.hostURL, d.token)
	bridge, subnet, cgroup := testslot.Name(t, "br"), testslot.Subnet(t), testslot.Name(t, "cg")
	// Cleanups run last-registered first: this one after the daemon has
	// stopped, removing what its jobs may have left.
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		testslot.RemoveIptables(strings.TrimSuffix(subnet, "0/24"), bridge)
		testslot.RemoveCgroups(cgroup)
	})
	d.proc = startBg(t, "daemon", filepath.Join(dir, "daemon.log"), "daemon", "--state-dir", state, "--listen-ip", "127.0.0.1",
		"--etcd-client-port", fmt.Sprint(etcdPort), "--etcd-peer-port", fmt.Sprint(testslot.Port(t)),
		"--discoverd-port", fmt.Sprint(discPort), "--dns-port", "-1", "--host-port", fmt.Sprint(hostPort),
		"--etcd-fast", "--bridge", bridge, "--subnet", subnet, "--cgroup-parent", cgroup,
		"--port-range", testslot.PortRange(t, 40), "--stop-grace", "1s")
	// Stop the host's jobs before the daemon stops (this cleanup runs
	// before startBg's).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if jobs, err := d.hc.ListJobs(ctx); err == nil {
			for _, j := range jobs {
				d.hc.StopJob(ctx, j.Job.ID)
			}
		}
	})
	waitFor(t, within(t, 2*time.Minute), "the host agent to answer", d.watch(), func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := d.hc.Status(ctx)
		return err == nil, err
	})
	return d
}

func (d *testDaemon) watch() watch { return watching(d.proc) }

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
	d := startDaemon(t)
	hc := d.hc
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
		t.Fatalf("add job: %v\n%s", err, d.watch())
	}
	waitFor(t, ctx, "the job to end", d.watch(), func() (bool, error) {
		j, err := hc.GetJob(ctx, job.ID)
		if err != nil {
			return false, err
		}
		if j.Status != api.HostJobStarting && j.Status != api.HostJobRunning {
			if j.ExitStatus == nil || *j.ExitStatus != 0 {
				t.Fatalf("job ended %s with %v", j.Status, j.ExitStatus)
			}
			return true, nil
		}
		return false, fmt.Errorf("job %s", j.Status)
	})
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
