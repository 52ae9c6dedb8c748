package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/controller"
	"github.com/flynnrebuilt/flynn/internal/deployer"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/logagg"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

const testKey = "cli-test-key"

// harness is a real controller (on its own etcd namespace) with a fake
// host runner, a real log aggregator, the real deployer (which also
// completes scale requests), and a fake scheduler that follows the
// controller's formation events the way the real one does: jobs come up
// for each formation (or crash, when the release sets FAIL_DEPLOY).
type harness struct {
	URL, TLSURL, Pin string
	// ProviderURL is a resource provider that hands out a fake database.
	ProviderURL string
	// Blobs is the controller's blobstore (a real one, on disk).
	Blobs  *blobclient.Client
	c      *controllerclient.Client
	logs   *logagg.Server
	runner *fakeRunner

	stop func()
}

func newHarness(etcdEndpoint, prefix, dir string) (*harness, error) {
	etcd, err := etcdkv.New(etcdkv.Config{Endpoints: []string{etcdEndpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	etcd = etcd.WithNamespace(prefix)

	ctx, cancel := context.WithCancel(context.Background())
	var closers []func()
	h := &harness{runner: &fakeRunner{etcd: etcd, jobs: map[string]chan *api.HostJob{}}}
	h.stop = func() {
		cancel()
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		etcd.Close()
	}
	hostJSON, _ := json.Marshal(&api.Host{ID: "h1", URL: "http://127.0.0.1:1"})
	if _, err := etcd.Put(ctx, api.KeyHosts+"h1", string(hostJSON)); err != nil {
		h.stop()
		return nil, err
	}

	blobFS, err := blobstore.NewFS(filepath.Join(dir, "blobs"), blobstore.FSOptions{NoSync: true})
	if err != nil {
		h.stop()
		return nil, err
	}
	blobSrv := httptest.NewServer(blobstore.NewServer(blobFS, []string{testKey}, 0, logging.Discard()).Handler())
	closers = append(closers, blobSrv.Close)
	h.Blobs = blobclient.New(blobSrv.URL, testKey, nil)

	h.logs = logagg.NewServer(logagg.Config{}, logging.Discard())
	logSrv := httptest.NewServer(h.logs.Handler())
	closers = append(closers, logSrv.Close)

	var nres atomic.Int64
	prov := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := nres.Add(1)
		fmt.Fprintf(w, `{"id":"db%d","env":{"DATABASE_URL":"postgres://db%d.example/app"}}`, n, n)
	}))
	closers = append(closers, prov.Close)
	h.ProviderURL = prov.URL

	caFile := filepath.Join(dir, "cluster-ca.pem")
	srv, err := controller.New(controller.Config{
		Etcd: etcd, AuthKeys: []string{testKey}, ClusterDomain: "flynn.test",
		CACertFile: caFile, LogAggregatorURL: logSrv.URL, Runner: h.runner, Blobs: h.Blobs,
		// The scripts' slug releases mount flynn-host from here.
		TenantMounts: []string{"/opt/flynn-host"},
	}, logging.Discard())
	if err != nil {
		h.stop()
		return nil, err
	}
	plain := httptest.NewServer(srv)
	closers = append(closers, plain.Close)
	tlsSrv := httptest.NewUnstartedServer(srv)
	tlsSrv.StartTLS()
	closers = append(closers, tlsSrv.Close)
	cert := tlsSrv.Certificate()
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		h.stop()
		return nil, err
	}
	h.URL, h.TLSURL, h.Pin = plain.URL, tlsSrv.URL, PinOf(cert.Raw)
	h.c = controllerclient.New(h.URL, testKey)

	stream, err := h.c.StreamEvents(ctx, controllerclient.EventOptions{
		ObjectTypes: []string{api.EventTypeFormation},
	})
	if err != nil {
		h.stop()
		return nil, err
	}
	dep, err := deployer.New(deployer.Config{Controller: &deployer.ControllerClient{C: h.c}, RetryInterval: 100 * time.Millisecond}, logging.Discard())
	if err != nil {
		h.stop()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.follow(ctx, stream)
	}()
	go func() {
		defer wg.Done()
		dep.Run(ctx)
	}()
	closers = append(closers, func() { cancel(); stream.Close(); wg.Wait() })
	return h, nil
}

// follow plays the scheduler.
func (h *harness) follow(ctx context.Context, stream *controllerclient.EventStream) {
	for {
		ev, err := stream.Next()
		if err != nil {
			return
		}
		var f api.Formation
		if json.Unmarshal(ev.Data, &f) == nil {
			h.reconcile(ctx, &f)
		}
	}
}

// reconcile starts and stops jobs so that the formation's release runs
// its counts. Jobs of a release that sets FAIL_DEPLOY exit at once; those
// of one that sets SLOW_DEPLOY (a duration) come up after it.
func (h *harness) reconcile(ctx context.Context, f *api.Formation) {
	jobs, err := h.c.JobList(ctx, f.AppID)
	if err != nil {
		return
	}
	crash := false
	var slow time.Duration
	if rel, err := h.c.GetRelease(ctx, f.ReleaseID); err == nil {
		crash = rel.Env["FAIL_DEPLOY"] != ""
		slow, _ = time.ParseDuration(rel.Env["SLOW_DEPLOY"])
	}
	live := map[string][]*api.Job{}
	for _, j := range jobs {
		if j.ReleaseID == f.ReleaseID && j.Type != "" && j.State != api.JobStateDown {
			live[j.Type] = append(live[j.Type], j)
		}
	}
	types := map[string]bool{}
	for t := range f.Processes {
		types[t] = true
	}
	for t := range live {
		types[t] = true
	}
	for t := range types {
		for n := len(live[t]); n < f.Processes[t]; n++ {
			u := uuid.NewString()
			j := &api.Job{ID: "h1-" + u, UUID: u, HostID: "h1", AppID: f.AppID, ReleaseID: f.ReleaseID, Type: t, State: api.JobStateStarting}
			h.c.PutJob(ctx, j)
			if crash {
				code := int32(1)
				j.State, j.ExitStatus = api.JobStateDown, &code
			} else {
				j.State = api.JobStateUp
			}
			if slow > 0 {
				go func() {
					select {
					case <-ctx.Done():
					case <-time.After(slow):
						h.c.PutJob(ctx, j)
					}
				}()
				continue
			}
			h.c.PutJob(ctx, j)
		}
		for i := f.Processes[t]; i < len(live[t]); i++ {
			j := live[t][i]
			j.State = api.JobStateDown
			h.c.PutJob(ctx, j)
		}
	}
}

// FlynnHostPath is where a slug release mounts flynn-host, whose
// slugrunner runs its processes (as gitreceive builds them).
const flynnHostPath = "/usr/local/bin/flynn-host"

// slugApp deploys to app a release shaped as git push makes one (see
// the slugapp script command) and returns its id and its slug layer's.
func (h *harness) slugApp(ctx context.Context, appName string) (string, string, error) {
	app, err := h.c.GetApp(ctx, appName)
	if err != nil {
		return "", "", err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	files := []struct{ name, body string }{
		{"app/Procfile", "web: myweb\n"},
		{"app/bin/myweb", "#!/bin/sh\necho serving on $PORT\n"},
	}
	tw.WriteHeader(&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "app/bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	hexSum := hex.EncodeToString(sum[:])
	layer, err := h.c.PutLayer(ctx, hexSum, bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		return "", "", fmt.Errorf("put layer: %w", err)
	}
	stack := &api.ImageLayer{ID: "stack", Type: api.LayerTypeTar, Hashes: map[string]string{"sha256": "stack"}, URL: "file:///var/lib/flynn/stack.tar"}
	art := &api.Artifact{Type: api.ArtifactTypeFlynn, URI: layer.URL, Manifest: &api.ImageManifest{
		Type:   api.ManifestType,
		Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{stack, layer}}},
	}}
	if err := h.c.CreateArtifact(ctx, art); err != nil {
		return "", "", fmt.Errorf("create artifact: %w", err)
	}
	rel := &api.Release{
		AppID: app.ID, ArtifactIDs: []string{art.ID}, Env: map[string]string{"GREETING": "hi"},
		Meta: map[string]string{"git": "true"},
		Processes: map[string]*api.ProcessType{"web": {
			Args:   []string{flynnHostPath, "slugrunner", "start", "web"},
			Mounts: []api.Mount{{Location: "/opt/flynn-host", Target: flynnHostPath}},
			Ports: []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: app.Name + "-web", Create: true,
				Check: &api.HealthCheck{Type: "tcp", Interval: api.Duration(2 * time.Second)}}}},
		}},
	}
	if err := h.c.CreateRelease(ctx, rel); err != nil {
		return "", "", fmt.Errorf("create release: %w", err)
	}
	if err := h.c.SetAppRelease(ctx, app.ID, rel.ID); err != nil {
		return "", "", err
	}
	return rel.ID, hexSum, nil
}

// addLog stores a log line of app (by name).
func (h *harness) addLog(ctx context.Context, app, typ, stream, msg string) error {
	a, err := h.c.GetApp(ctx, app)
	if err != nil {
		return err
	}
	h.logs.Store().Add([]api.LogMessage{{AppID: a.ID, JobID: "h1-job", ProcessType: typ, Stream: stream, Timestamp: time.Now(), Msg: msg}})
	return nil
}

// fakeRunner stands in for host agents. Attached jobs behave by their
// first argument: "echo ARGS" prints ARGS, "fail N" exits N, anything else
// is interactive: it reports whether it has a TTY, echoes input lines,
// reports a Ctrl-C byte, and exits N on a line "exit N" (0 at EOF).
type fakeRunner struct {
	// etcd holds the registered hosts Place picks from.
	etcd     *etcdkv.Client
	mu       sync.Mutex
	jobs     map[string]chan *api.HostJob
	added    []*api.HostJob
	stopped  []string
	signaled []string
	volumes  []*api.Volume
}

// ListVolumes implements controller.VolumeRunner over the volumes the
// script added (addvolume).
func (f *fakeRunner) ListVolumes(ctx context.Context) ([]*api.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []*api.Volume{}
	for _, v := range f.volumes {
		c := *v
		out = append(out, &c)
	}
	return out, nil
}

// DeleteVolume implements controller.VolumeRunner as a host does.
func (f *fakeRunner) DeleteVolume(ctx context.Context, hostID, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, v := range f.volumes {
		if v.ID == id && v.HostID == hostID {
			if v.InUse {
				return api.Conflict("volume %s is in use by job %s: stop the job (scale its process type to 0) first", id, v.JobID)
			}
			f.volumes = append(f.volumes[:i], f.volumes[i+1:]...)
			return nil
		}
	}
	return api.NotFound("volume %q not found", id)
}

// Place picks among the hosts registered in etcd, by the scheduler's rules.
func (f *fakeRunner) Place(ctx context.Context, req scheduler.Request) (*api.Host, error) {
	hosts, err := (&scheduler.EtcdHosts{Client: f.etcd}).ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	return scheduler.PlaceOne(&scheduler.Snapshot{Hosts: hosts}, req)
}

// hostFrames writes the host agent's attach frames.
type hostFrames struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *hostFrames) write(typ byte, p []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return api.WriteFrame(fw.w, typ, p)
}

func (f *fakeRunner) SignalJob(ctx context.Context, h *api.Host, id string, sig int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signaled = append(f.signaled, fmt.Sprintf("%s:%d", id, sig))
	return nil
}

func (f *fakeRunner) ch(id string) chan *api.HostJob {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.jobs[id]
	if !ok {
		c = make(chan *api.HostJob, 1)
		f.jobs[id] = c
	}
	return c
}

func (f *fakeRunner) AddJob(ctx context.Context, h *api.Host, j *api.HostJob) error {
	f.mu.Lock()
	f.added = append(f.added, j)
	f.mu.Unlock()
	f.ch(j.ID) <- j
	return nil
}

func (f *fakeRunner) StopJob(ctx context.Context, h *api.Host, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = append(f.stopped, id)
	return nil
}

func (f *fakeRunner) Attach(ctx context.Context, h *api.Host, req controller.AttachRequest) (io.ReadWriteCloser, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		var j *api.HostJob
		select {
		case j = <-f.ch(req.JobID):
		case <-time.After(time.Minute):
			return
		}
		fw := &hostFrames{w: b}
		exit := func(n int) {
			p, _ := json.Marshal(api.HostJobExit{ExitStatus: n})
			fw.write(api.FrameExit, p)
		}
		args := j.Config.Args
		if len(args) > 2 && args[1] == "slugrunner" {
			args = args[2:] // the slug runner runs the rest
		}
		switch args[0] {
		case "echo":
			fw.write(api.FrameStdout, []byte(strings.Join(args[1:], " ")+"\n"))
			exit(0)
			return
		case "fail":
			n, _ := strconv.Atoi(args[1])
			fw.write(api.FrameStderr, []byte("failing\n"))
			exit(n)
			return
		}
		nl := "\n"
		if req.TTY {
			nl = "\r\n"
		}
		fw.write(api.FrameStdout, []byte(fmt.Sprintf("attached tty=%t size=%dx%d env=%s%s", req.TTY, req.Width, req.Height, j.Config.Env["GREETING"], nl)))
		var line []byte
		for {
			typ, p, err := api.ReadFrame(b)
			if err != nil {
				return
			}
			if typ != api.FrameStdin {
				continue
			}
			if len(p) == 0 {
				exit(0)
				return
			}
			for _, c := range p {
				switch c {
				case 3:
					fw.write(api.FrameStdout, []byte("got ^C"+nl))
				case '\r', '\n':
					l := string(line)
					line = nil
					if n, ok := strings.CutPrefix(l, "exit "); ok {
						code, _ := strconv.Atoi(n)
						exit(code)
						return
					}
					if l != "" {
						fw.write(api.FrameStdout, []byte("echo: "+l+nl))
					}
				default:
					line = append(line, c)
				}
			}
		}
	}()
	return a, nil
}
