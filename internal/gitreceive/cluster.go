package gitreceive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// The cluster side of gitreceive: build jobs on host agents, the repo
// cache in the blobstore, SSH keys from the controller.

// HostJobRunner runs jobs on a host agent of the cluster, placed by the
// scheduler's rules (memory free, the least busy host).
type HostJobRunner struct {
	Etcd *etcdkv.Client
	// Token is the host agents' key.
	Token string
}

// place picks the host for job.
func (h *HostJobRunner) place(ctx context.Context, job *api.HostJob) (*api.Host, error) {
	mem := scheduler.MemoryRequest(job.Resources)
	cluster := scheduler.NewHostCluster(h.Etcd, h.Token, slog.New(slog.DiscardHandler))
	host, err := scheduler.PlaceOnCluster(ctx, cluster, scheduler.Request{Memory: mem})
	if err != nil {
		return nil, fmt.Errorf("no host can run the build: %w", err)
	}
	return host, nil
}

// RunJob starts job on a host, relays its output to out until it exits,
// and stops it if ctx ends first.
func (h *HostJobRunner) RunJob(ctx context.Context, job *api.HostJob, out io.Writer) (*api.HostJobExit, error) {
	host, err := h.place(ctx, job)
	if err != nil {
		return nil, err
	}
	if job.ID == "" {
		job.ID, _ = scheduler.NewJobID(host.ID)
	}
	hc := hostclient.New(host.URL, h.Token)
	if _, err := hc.AddJob(ctx, job); err != nil {
		return nil, fmt.Errorf("start the job on host %s: %w", host.ID, err)
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		hc.StopJob(sctx, job.ID)
	}
	// Attach once the job has left "starting" (layers fetched, process
	// running or already ended); Logs replays what it wrote so far.
	for {
		aj, err := hc.GetJob(ctx, job.ID)
		if err != nil {
			stop()
			return nil, fmt.Errorf("job %s: %w", job.ID, err)
		}
		if aj.Status != api.HostJobStarting {
			break
		}
		select {
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	att, err := hc.Attach(ctx, &api.AttachRequest{JobID: job.ID, Logs: true})
	if err != nil {
		stop()
		return nil, fmt.Errorf("attach to job %s: %w", job.ID, err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			att.Close()
		case <-done:
		}
	}()
	exit, err := att.Receive(out, out)
	close(done)
	att.Close()
	if ctx.Err() != nil {
		stop()
		return nil, ctx.Err()
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("job %s output: %w", job.ID, err)
	}
	return exit, nil
}

// BlobRepoCache keeps app repositories as tars in the blobstore at
// /repos/<app>.tar.
type BlobRepoCache struct {
	Blobs *blobclient.Client
}

func repoBlob(app string) string { return "/repos/" + app + ".tar" }

// Restore unpacks the cached repository of app into dir; nothing cached
// is not an error.
func (c *BlobRepoCache) Restore(ctx context.Context, app, dir string) error {
	rc, _, err := c.Blobs.Get(ctx, repoBlob(app))
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore repo %s: %w", app, err)
	}
	defer rc.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "tar", "-x", "--no-same-owner", "-C", dir, "-f", "-")
	cmd.Stdin = rc
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("restore repo %s: untar: %v: %s", app, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Save stores the repository in dir as app's cached repository.
func (c *BlobRepoCache) Save(ctx context.Context, app, dir string) error {
	cmd := exec.CommandContext(ctx, "tar", "-c", "-C", dir, "--exclude=./hooks", "-f", "-", ".")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("save repo %s: %w", app, err)
	}
	_, perr := c.Blobs.Put(ctx, repoBlob(app), stdout, nil)
	if perr != nil {
		io.Copy(io.Discard, stdout)
	}
	werr := cmd.Wait()
	if werr != nil {
		return fmt.Errorf("save repo %s: tar: %v: %s", app, werr, strings.TrimSpace(stderr.String()))
	}
	if perr != nil {
		return fmt.Errorf("save repo %s: %w", app, perr)
	}
	return nil
}

// ControllerKeys checks SSH keys against the keys registered in the
// controller (flynn key add).
type ControllerKeys struct {
	Controller *controllerclient.Client
}

// Allowed says whether key is registered.
func (k *ControllerKeys) Allowed(ctx context.Context, key ssh.PublicKey) (bool, error) {
	keys, err := k.Controller.KeyList(ctx)
	if err != nil {
		return false, fmt.Errorf("list keys: %w", err)
	}
	want := key.Marshal()
	for _, rk := range keys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rk.Key))
		if err != nil {
			continue
		}
		if bytes.Equal(pub.Marshal(), want) {
			return true, nil
		}
	}
	return false, nil
}
