package gitreceive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/controller"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/slugbuilder"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

const (
	testCtrlKey = "ctrlkey"
	testBlobKey = "blobkey"
	// testSystemKey marks system apps in the test controller.
	testSystemKey = "systemkey"
)

// fakeBuilder stands in for the slugbuilder job: it reads the source the
// job's env points at and writes a slug and result where the env says,
// over HTTP with the credentials in the URLs, as the real job does.
type fakeBuilder struct {
	mu   sync.Mutex
	jobs []*api.HostJob
	fail bool
	// busyVolumes refuses jobs that bind a volume, as a host does while
	// another job uses it.
	busyVolumes bool
	// runtime, when set, is the content of a file the build puts in a
	// runtime layer (api.SlugBuildResult.Runtime), whose digest is its
	// sha256 here; lieReused reports a runtime layer reused that the
	// build was not given.
	runtime   string
	lieReused bool
	// goToolchain is what builds report in GoToolchain; a job that makes
	// a shared Go build (GO_STD_SEED_URL) PUTs goStdBlob there.
	goToolchain string
	// seedHold, when set, holds a job that makes a shared Go build until
	// its ctx ends (it then writes nothing), and is closed when it starts.
	seedHold chan struct{}
	// saveHold, when set, holds a build told to save its cache last
	// (BUILD_CACHE_SAVE_LAST) after its result and "Build finished"
	// line, until it is closed; forgeFinished makes the build print
	// such a line before its result too, as a build's own output could.
	saveHold      chan struct{}
	forgeFinished bool
	// refuseVolumeOnce refuses the next job that binds a volume, as a
	// host does for a moment after the job that held it ended.
	refuseVolumeOnce bool
	// saveStopped counts the builds stopped while held by saveHold.
	saveStopped int
}

const goStdBlob = "go build cache"

func httpPut(u string, body []byte) error {
	req, _ := http.NewRequest(http.MethodPut, u, bytes.NewReader(body))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("PUT %s: %s", u, res.Status)
	}
	return nil
}

func (f *fakeBuilder) RunJob(ctx context.Context, job *api.HostJob, out io.Writer) (*api.HostJobExit, error) {
	f.mu.Lock()
	j := *job
	j.Config.Volumes = slices.Clone(job.Config.Volumes)
	j.Config.Env = maps.Clone(job.Config.Env)
	f.jobs = append(f.jobs, &j)
	fail, busy, runtime, lie, goToolchain, hold := f.fail, f.busyVolumes, f.runtime, f.lieReused, f.goToolchain, f.seedHold
	saveHold, forge := f.saveHold, f.forgeFinished
	if f.refuseVolumeOnce && len(job.Config.Volumes) > 0 {
		f.refuseVolumeOnce = false
		busy = true
	}
	f.mu.Unlock()
	if u := job.Config.Env["GO_STD_SEED_URL"]; u != "" {
		if hold != nil {
			close(hold)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		if err := httpPut(u, []byte(goStdBlob)); err != nil {
			return nil, err
		}
		return &api.HostJobExit{}, nil
	}
	if busy && len(job.Config.Volumes) > 0 {
		return nil, fmt.Errorf("start the job on host h1: %w", api.Conflict("volume %s is in use by job h1-x", job.Config.Volumes[0].VolumeID))
	}
	env := job.Config.Env
	// Time the fetch and the slug upload, as the slugbuilder does.
	start := time.Now()
	res, err := http.Get(env["SOURCE_URL"])
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	tr := tar.NewReader(res.Body)
	var procfile []byte
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if hdr.Name == "Procfile" {
			procfile, _ = io.ReadAll(tr)
		}
	}
	fetched := time.Since(start)
	fmt.Fprintln(out, "-----> Fake buildpack app detected")
	if fail {
		fmt.Fprintln(out, " !     compile failed")
		fmt.Fprintf(out, " !     cannot GET %s\n", env["BUILD_CACHE_URL"])
		return &api.HostJobExit{ExitStatus: 1}, nil
	}
	types := map[string]string{}
	for _, line := range strings.Split(string(procfile), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			types[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	var slug bytes.Buffer
	zw := gzip.NewWriter(&slug)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./app/", Mode: 0o755, Uid: stack.AppUID, Gid: stack.AppGID})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "./app/Procfile", Mode: 0o644, Size: int64(len(procfile)), Uid: stack.AppUID, Gid: stack.AppGID})
	tw.Write(procfile)
	tw.Close()
	zw.Close()
	start = time.Now()
	if err := httpPut(env["SLUG_URL"], slug.Bytes()); err != nil {
		return nil, err
	}
	var rt *api.SlugLayerResult
	if runtime != "" {
		sum := sha256.Sum256([]byte(runtime))
		rt = &api.SlugLayerResult{Digest: hex.EncodeToString(sum[:])}
		switch {
		case lie:
			rt.Digest, rt.Reused = strings.Repeat("f", 64), true
		case rt.Digest == env["SLUG_RUNTIME_DIGEST"]:
			rt.Reused = true
		default:
			layer := tarGz(map[string]string{"./app/.rt/tool": runtime})
			if err := httpPut(env["SLUG_RUNTIME_URL"], layer); err != nil {
				return nil, err
			}
		}
	}
	result, _ := json.Marshal(api.SlugBuildResult{ProcessTypes: types, Buildpack: "fake", SourceVersion: env["SOURCE_VERSION"], Runtime: rt, GoToolchain: goToolchain,
		Phases: []api.BuildPhase{{Name: "fetch", MS: fetched.Milliseconds()}, {Name: "slug", MS: time.Since(start).Milliseconds()}}})
	if forge {
		fmt.Fprintln(out, slugbuilder.FinishedLine+"0.0s (the app's own line)")
		time.Sleep(50 * time.Millisecond)
	}
	if err := httpPut(env["SLUG_RESULT_URL"], result); err != nil {
		return nil, err
	}
	fmt.Fprintln(out, "-----> Compiled slug")
	if env["BUILD_CACHE_SAVE_LAST"] == "1" && saveHold != nil {
		fmt.Fprint(out, slugbuilder.FinishedLine+"0.1s\n-----> Saving build cache (after the result)\n")
		select {
		case <-saveHold:
		case <-ctx.Done():
			f.mu.Lock()
			f.saveStopped++
			f.mu.Unlock()
			return nil, ctx.Err()
		}
		fmt.Fprintln(out, "-----> Saved build cache")
	}
	return &api.HostJobExit{ExitStatus: 0}, nil
}

// tarGz is a slug layer of ./app/ and the files given, owned by the app
// user.
func tarGz(files map[string]string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./app/", Mode: 0o755, Uid: stack.AppUID, Gid: stack.AppGID})
	for _, name := range slices.Sorted(maps.Keys(files)) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(files[name])), Uid: stack.AppUID, Gid: stack.AppGID})
		tw.Write([]byte(files[name]))
	}
	tw.Close()
	zw.Close()
	return b.Bytes()
}

// fakeCluster plays the scheduler and deployer: it completes pending
// deployments and reports a web job of a formation scaled up, up or down.
// A release with a release command has it "run" first (the deployment's
// events name its job), and fail when the release's env has
// RELEASE_FAILS. It leaves the deployments of a release with meta
// test.hold pending.
func fakeCluster(ctx context.Context, c *controllerclient.Client, appID string, webCrashes bool) {
	seen := map[string]bool{}
	for ctx.Err() == nil {
		ds, _ := c.ListDeployments(ctx, api.DeploymentPending)
	deployments:
		for _, d := range ds {
			rel, err := c.GetRelease(ctx, d.NewReleaseID)
			if err != nil || rel.Meta["test.hold"] != "" {
				continue
			}
			if p := rel.Processes[api.ProcessTypeRelease]; p != nil {
				c.UpdateDeployment(ctx, d.ID, api.DeploymentRunning, "")
				job := "host1-" + d.ID[:8] + "-0000-4000-8000-000000000000"
				c.AddDeploymentEvent(ctx, d.ID, &api.DeploymentEvent{JobType: api.ProcessTypeRelease, JobState: api.JobStateStarting, JobID: job})
				if rel.Env["RELEASE_FAILS"] != "" {
					c.UpdateDeployment(ctx, d.ID, api.DeploymentFailed, "the release command failed (exit status 4): release "+d.NewReleaseID+" is not deployed (the command's output: flynn log -j "+job+")")
					continue deployments
				}
				c.AddDeploymentEvent(ctx, d.ID, &api.DeploymentEvent{JobType: api.ProcessTypeRelease, JobState: api.JobStateDown, JobID: job})
			}
			// Move the processes to the new release, as the deployer does.
			c.PutFormation(ctx, &api.Formation{AppID: d.AppID, ReleaseID: d.NewReleaseID, Processes: d.Processes})
			if d.OldReleaseID != "" {
				c.PutFormation(ctx, &api.Formation{AppID: d.AppID, ReleaseID: d.OldReleaseID, Processes: map[string]int{}})
			}
			c.UpdateDeployment(ctx, d.ID, api.DeploymentComplete, "")
		}
		fs, _ := c.FormationList(ctx, appID)
		for _, f := range fs {
			if f.Processes["web"] > 0 && !seen[f.ReleaseID] {
				seen[f.ReleaseID] = true
				state := api.JobStateUp
				var exit *int32
				if webCrashes {
					state, exit = api.JobStateDown, new(int32)
					*exit = 2
				}
				id := fmt.Sprintf("host1-%08d-0000-4000-8000-000000000000", len(seen))
				if err := c.PutJob(ctx, &api.Job{ID: id, AppID: appID, ReleaseID: f.ReleaseID, Type: "web", State: state, ExitStatus: exit}); err != nil {
					panic(err)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type recvEnv struct {
	ctrl    *controllerclient.Client
	ctrlURL string
	blobs   *blobclient.Client
	builder *fakeBuilder
	httpURL string
	repo    string
	app     *api.App
	fresh   func() string
	recv    *BuildReceiver
	// stop ends the receiver's BaseContext.
	stop context.CancelFunc
}

func setupReceiver(t *testing.T, webCrashes bool) *recvEnv {
	t.Helper()
	cs, err := controller.New(controller.Config{Etcd: etcdtest.KV(t), AuthKeys: []string{testCtrlKey}, SystemKeys: []string{testSystemKey}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctrlSrv := httptest.NewServer(cs)
	t.Cleanup(ctrlSrv.Close)
	ctrl := controllerclient.New(ctrlSrv.URL, testCtrlKey)
	blobSrv := httptest.NewServer(blobstore.NewServer(blobstore.NewMem(), []string{testBlobKey}, 0, logging.Discard()).Handler())
	t.Cleanup(blobSrv.Close)
	blobs := blobclient.New(blobSrv.URL, testBlobKey, nil)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	app := &api.App{Name: "myapp"}
	if err := ctrl.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); fakeCluster(ctx, ctrl, app.ID, webCrashes) }()

	builder := &fakeBuilder{}
	base, stop := context.WithCancel(context.Background())
	recv, err := NewReceiver(ReceiverConfig{
		BaseContext: base,
		Controller:  ctrl, Blobs: blobs, BlobKey: testBlobKey, Jobs: builder,
		StackLayer:   &api.ImageLayer{ID: "stack", Type: api.LayerTypeTar, URL: "file:///stack.tar", Hashes: map[string]string{"sha256": strings.Repeat("a", 64)}},
		FlynnHostBin: "/usr/bin/flynn-host", CABundle: DefaultCABundle,
		DeployTimeout: 30 * time.Second, GoStdQuiet: time.Millisecond, GoProxy: "https://goproxy.example",
	}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(); recv.Wait() })
	dir := t.TempDir()
	self, _ := os.Executable()
	hook := filepath.Join(dir, "hook.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\nFLYNN_TEST_HOOK=1 exec "+self+"\n"), 0o755)
	s, err := New(Config{RepoDir: filepath.Join(dir, "repos"), HookBin: hook, Receiver: recv, Cache: &BlobRepoCache{Blobs: blobs}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.Run(ctx) }()
	hs := httptest.NewServer(s.Handler(httpapi.NewKeyAuth(testCtrlKey)))
	t.Cleanup(hs.Close)

	repo := filepath.Join(dir, "work")
	gitIn(t, "", "init", "-q", "-b", "main", repo)
	os.WriteFile(filepath.Join(repo, "Procfile"), []byte("web: ./server\nworker: ./work\n"), 0o644)
	gitIn(t, repo, "add", ".")
	gitIn(t, repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
	e := &recvEnv{ctrl: ctrl, ctrlURL: ctrlSrv.URL, blobs: blobs, builder: builder, httpURL: hs.URL, repo: repo, app: app, recv: recv, stop: stop}
	// fresh starts another gitreceive with an empty repo dir on the same
	// cluster, as after a restart on another host.
	e.fresh = func() string {
		s, err := New(Config{RepoDir: filepath.Join(t.TempDir(), "repos"), HookBin: hook, Receiver: recv, Cache: &BlobRepoCache{Blobs: blobs}}, logging.Discard())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
		hs := httptest.NewServer(s.Handler(httpapi.NewKeyAuth(testCtrlKey)))
		t.Cleanup(hs.Close)
		return hs.URL
	}
	return e
}

func (e *recvEnv) push(t *testing.T, app string) (string, bool) {
	t.Helper()
	ee := &env{httpURL: e.httpURL, workRepo: e.repo}
	return ee.push(t, false, testCtrlKey, app, "main")
}

// firstPush pushes myapp and returns the release it made current.
func (e *recvEnv) firstPush(t *testing.T) *api.Release {
	t.Helper()
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("push: %s", out)
	}
	rel, err := e.ctrl.GetAppRelease(context.Background(), e.app.ID)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func TestReceiverBuildsAndReleases(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	out, ok := e.push(t, "myapp")
	if !ok {
		t.Fatalf("push failed:\n%s", out)
	}
	for _, want := range []string{
		"remote: -----> Building myapp...", "remote: -----> Fake buildpack app detected", "remote: -----> Creating release...",
		"remote: -----> Deploying...", "remote: =====> Scaling initial release to web=1", "remote: =====> web job started",
		"remote: =====> Application deployed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	// The first deploy starts the first web job: a start phase.
	firstDone := regexp.MustCompile(`(?m)^remote: -----> Done in \d+\.\ds: source \d+\.\ds, build \d+\.\ds \(fetch \d+\.\ds, slug \d+\.\ds\), release \d+\.\ds, start \d+\.\ds\s*$`)
	if !firstDone.MatchString(out) {
		t.Errorf("push output lacks the timings line %s:\n%s", firstDone, out)
	}
	rev := strings.TrimSpace(gitIn(t, e.repo, "rev-parse", "HEAD"))

	// The build job.
	if len(e.builder.jobs) != 1 {
		t.Fatalf("%d build jobs, want 1", len(e.builder.jobs))
	}
	job := e.builder.jobs[0]
	if got, want := job.Config.Args, []string{FlynnHostPath, "slugbuilder"}; !cmp.Equal(got, want) {
		t.Errorf("build args %q, want %q", got, want)
	}
	wantMounts := []api.Mount{{Location: "/usr/bin/flynn-host", Target: FlynnHostPath}, {Location: DefaultCABundle, Target: DefaultCABundle}}
	if diff := cmp.Diff(wantMounts, job.Config.Mounts); diff != "" {
		t.Errorf("build mounts (-want +got):\n%s", diff)
	}
	// The app's build cache volume, where the slugbuilder is told.
	wantVols := []api.VolumeBinding{{VolumeID: "buildcache-" + app0ID(t, e), Target: "/tmp/slugbuilder", Writeable: true}}
	if diff := cmp.Diff(wantVols, job.Config.Volumes); diff != "" {
		t.Errorf("build volumes (-want +got):\n%s", diff)
	}
	if got := job.Config.Env["BUILD_CACHE_VOLUME"]; got != "/tmp/slugbuilder" {
		t.Errorf("build env BUILD_CACHE_VOLUME = %q, want the volume's target", got)
	}
	if mem := job.Resources[api.ResourceMemory].Limit; mem == nil || *mem != DefaultBuildMemory {
		t.Errorf("build job memory limit = %v, want %d", mem, DefaultBuildMemory)
	}
	if !job.Config.HostNetwork || job.Config.Env["SOURCE_VERSION"] != rev || !strings.Contains(job.Config.Env["SLUG_URL"], api.BlobSigParam+"=") {
		t.Errorf("build job config %+v", job.Config)
	}
	// The build holds signed URLs, not the blobstore key, and they open
	// nothing else: not another path, not another kind of access.
	for k, v := range job.Config.Env {
		if strings.Contains(v, testBlobKey) {
			t.Errorf("build env %s holds the blobstore key: %s", k, v)
		}
	}
	if err := httpPut(job.Config.Env["SOURCE_URL"], []byte("forged")); err == nil {
		t.Error("the build wrote its source through its read-only URL")
	}
	other := strings.Replace(job.Config.Env["BUILD_CACHE_URL"], e.app.ID, "someone-else", 1)
	if res, err := http.Get(other); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("another app's cache with the build's signature: %v %v, want 401", res.Status, err)
	}

	// The release.
	app, err := e.ctrl.GetApp(ctx, "myapp")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := e.ctrl.GetAppRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	mounts := []api.Mount{{Location: "/usr/bin/flynn-host", Target: FlynnHostPath}}
	wantProcs := map[string]*api.ProcessType{
		"web": {Args: []string{FlynnHostPath, "slugrunner", "start", "web"}, Mounts: mounts, Ports: []api.Port{{Port: 8080, Proto: "tcp",
			Service: &api.Service{Name: "myapp-web", Create: true, Check: &api.HealthCheck{Type: "tcp"}}}}},
		"worker": {Args: []string{FlynnHostPath, "slugrunner", "start", "worker"}, Mounts: mounts},
	}
	if diff := cmp.Diff(wantProcs, rel.Processes); diff != "" {
		t.Errorf("release processes (-want +got):\n%s", diff)
	}
	f, err := e.ctrl.GetFormation(ctx, app.ID, rel.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"web": 1}, f.Processes); diff != "" {
		t.Errorf("formation (-want +got):\n%s", diff)
	}

	// The artifact: stack + slug layer rooted at /app, in the blobstore.
	art, err := e.ctrl.GetArtifact(ctx, rel.ArtifactIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	layers := art.Manifest.Rootfs[0].Layers
	if len(layers) != 2 || layers[0].ID != "stack" {
		t.Fatalf("artifact layers %+v", layers)
	}
	// The slug is a safe layer as it is: its blob is the layer.
	if want := e.blobs.URL(slugPath(app.ID, rev)); layers[1].URL != want {
		t.Errorf("slug layer URL = %s, want the slug's %s", layers[1].URL, want)
	}
	// Read as a host agent does, with a key; without one, nothing.
	if res, err := http.Get(layers[1].URL); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("slug read without a key: %v %v, want 401", res.Status, err)
	}
	req, _ := http.NewRequest(http.MethodGet, layers[1].URL, nil)
	req.SetBasicAuth("", testBlobKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	blob, _ := io.ReadAll(res.Body)
	if sum := sha256.Sum256(blob); layers[1].Hashes["sha256"] != hex.EncodeToString(sum[:]) || layers[1].Length != int64(len(blob)) {
		t.Errorf("slug layer %+v does not describe the %d byte blob", layers[1], len(blob))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
	sort.Strings(names)
	if diff := cmp.Diff([]string{"./app/", "./app/Procfile"}, names); diff != "" {
		t.Errorf("slug layer entries (-want +got):\n%s", diff)
	}

	// A second push keeps the env and deploys through a deployment.
	rel.Env = map[string]string{"GREETING": "hi"}
	rel.ID = ""
	if err := e.ctrl.CreateRelease(ctx, rel); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.CreateDeployment(ctx, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	waitRelease(t, e.ctrl, app.ID, rel.ID)
	os.WriteFile(filepath.Join(e.repo, "Procfile"), []byte("web: ./server2\n"), 0o644)
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "second")
	out, ok = e.push(t, "myapp")
	if !ok || strings.Contains(out, "Scaling initial") || !strings.Contains(out, "Application deployed") {
		t.Fatalf("second push (ok=%v):\n%s", ok, out)
	}
	// A web job runs already: the deployment rolls it, no start phase.
	secondDone := regexp.MustCompile(`(?m)^remote: -----> Done in \d+\.\ds: source \d+\.\ds, build \d+\.\ds \(fetch \d+\.\ds, slug \d+\.\ds\), release \d+\.\ds, deploy \d+\.\ds\s*$`)
	if !secondDone.MatchString(out) {
		t.Errorf("second push output lacks the timings line %s:\n%s", secondDone, out)
	}
	rel2, err := e.ctrl.GetAppRelease(ctx, app.ID)
	if err != nil || rel2.ID == rel.ID {
		t.Fatalf("release after second push: %v %v", rel2, err)
	}
	if diff := cmp.Diff(map[string]string{"GREETING": "hi"}, rel2.Env); diff != "" {
		t.Errorf("env not kept (-want +got):\n%s", diff)
	}
	if got := e.builder.jobs[1].Config.Env["GREETING"]; got != "hi" {
		t.Errorf("build job env GREETING = %q, want the app's config", got)
	}
}

// TestReceiverRuntimeLayer: a build's runtime layer goes below its slug
// in the artifact; the next build is given its digest, and a runtime
// layer it reports reused is the last release's, the same layer (so hosts
// that have it fetch nothing); a changed one is a new layer; a build that
// claims a layer it was not given fails the push.
func TestReceiverRuntimeLayer(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	e.builder.runtime = "runtime v1"
	push := func(what string) (*api.Artifact, string) {
		t.Helper()
		os.WriteFile(filepath.Join(e.repo, "README"), []byte(what), 0o644)
		gitIn(t, e.repo, "add", ".")
		gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", what)
		out, ok := e.push(t, "myapp")
		if !ok {
			t.Fatalf("push %s failed:\n%s", what, out)
		}
		rel, err := e.ctrl.GetAppRelease(ctx, e.app.ID)
		if err != nil {
			t.Fatal(err)
		}
		art, err := e.ctrl.GetArtifact(ctx, rel.ArtifactIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		if n := len(art.Manifest.Rootfs[0].Layers); n != 3 {
			t.Fatalf("push %s: %d layers, want the stack, the runtime and the slug", what, n)
		}
		return art, e.builder.jobs[len(e.builder.jobs)-1].Config.Env["SLUG_RUNTIME_DIGEST"]
	}
	first, given := push("first")
	sum := sha256.Sum256([]byte("runtime v1"))
	digest := hex.EncodeToString(sum[:])
	if given != "" || first.Meta[metaRuntimeDigest] != digest {
		t.Errorf("first build given digest %q; artifact meta %v", given, first.Meta)
	}
	rt := first.Manifest.Rootfs[0].Layers[1]
	if rt.URL != e.blobs.URL(runtimePath(e.app.ID, first.Meta["gitreceive.rev"])) || first.Meta[metaRuntimeLayer] != rt.ID || len(rt.ID) != 64 {
		t.Errorf("runtime layer %+v, meta %v", rt, first.Meta)
	}

	second, given := push("second")
	if given != digest {
		t.Errorf("second build given digest %q, want %q", given, digest)
	}
	if diff := cmp.Diff(rt, second.Manifest.Rootfs[0].Layers[1]); diff != "" {
		t.Errorf("second push's runtime layer is not the first's (-want +got):\n%s", diff)
	}

	e.builder.mu.Lock()
	e.builder.runtime = "runtime v2"
	e.builder.mu.Unlock()
	third, _ := push("third")
	if l := third.Manifest.Rootfs[0].Layers[1]; l.ID == rt.ID || third.Meta[metaRuntimeDigest] == digest || third.Meta[metaRuntimeLayer] != l.ID {
		t.Errorf("third push's runtime layer %+v (meta %v) is the first's", l, third.Meta)
	}

	e.builder.mu.Lock()
	e.builder.lieReused = true
	e.builder.mu.Unlock()
	os.WriteFile(filepath.Join(e.repo, "README"), []byte("lie"), 0o644)
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "lie")
	if out, ok := e.push(t, "myapp"); ok || !strings.Contains(out, "reused a runtime layer that the app's current release does not have") {
		t.Errorf("a build claiming a runtime layer it was not given: ok=%v\n%s", ok, out)
	}
}

func app0ID(t *testing.T, e *recvEnv) string {
	t.Helper()
	app, err := e.ctrl.GetApp(context.Background(), "myapp")
	if err != nil {
		t.Fatal(err)
	}
	return app.ID
}

// TestReceiverBuildCacheVolumeBusy: a host that refuses the build because
// the app's build cache volume is in use (another gitreceive's build of
// the app) gets the build again without the volume, and the push works.
func TestReceiverBuildCacheVolumeBusy(t *testing.T) {
	e := setupReceiver(t, false)
	e.builder.busyVolumes = true
	out, ok := e.push(t, "myapp")
	if !ok || !strings.Contains(out, "Build cache volume busy") {
		t.Fatalf("push (ok=%v):\n%s", ok, out)
	}
	if len(e.builder.jobs) != 2 {
		t.Fatalf("%d build jobs, want 2 (refused, then without the volume)", len(e.builder.jobs))
	}
	retry := e.builder.jobs[1]
	if len(retry.Config.Volumes) != 0 || retry.Config.Env["BUILD_CACHE_VOLUME"] != "" || retry.Config.Env["BUILD_CACHE_URL"] == "" {
		t.Errorf("the second build job still binds the volume or lost the cache URL: %+v", retry.Config)
	}
}

// TestReceiverSavesCacheLast: a build job with the app's cache volume is
// told to save its cache last; the push goes on at its "Build finished"
// line once the result is there (not at a line of the build's own before
// it), without relaying what the job prints after it. The app's next
// build stops that job, still saving, and gets the volume (asking again
// while the host still holds it for the stopped job).
func TestReceiverSavesCacheLast(t *testing.T) {
	e := setupReceiver(t, false)
	hold := make(chan struct{})
	defer close(hold)
	e.builder.saveHold, e.builder.forgeFinished = hold, true
	type pushed struct {
		out string
		ok  bool
	}
	push := func() pushed {
		ch := make(chan pushed, 1)
		go func() {
			out, ok := e.push(t, "myapp")
			ch <- pushed{out, ok}
		}()
		select {
		case p := <-ch:
			return p
		case <-time.After(30 * time.Second):
			t.Fatal("the push waited for a build job's cache save")
		}
		return pushed{}
	}
	first := push()
	if !first.ok || !strings.Contains(first.out, "remote: =====> Application deployed") {
		t.Fatalf("push failed:\n%s", first.out)
	}
	if !strings.Contains(first.out, "(the app's own line)") || !strings.Contains(first.out, "remote: -----> Compiled slug") ||
		!strings.Contains(first.out, "remote: -----> Build finished in 0.1s") {
		t.Errorf("push output lacks the build's lines up to its result:\n%s", first.out)
	}
	if strings.Contains(first.out, "after the result") {
		t.Errorf("push output has what the job printed after its result:\n%s", first.out)
	}
	e.builder.mu.Lock()
	env := e.builder.jobs[0].Config.Env
	e.builder.saveHold, e.builder.forgeFinished = nil, false
	e.builder.refuseVolumeOnce = true
	e.builder.mu.Unlock()
	if env["BUILD_CACHE_SAVE_LAST"] != "1" || env["BUILD_CACHE_VOLUME"] == "" {
		t.Errorf("build job env BUILD_CACHE_SAVE_LAST=%q BUILD_CACHE_VOLUME=%q, want 1 with the volume", env["BUILD_CACHE_SAVE_LAST"], env["BUILD_CACHE_VOLUME"])
	}

	// The next push stops the first job, still saving.
	os.WriteFile(filepath.Join(e.repo, "Procfile"), []byte("web: ./server v2\n"), 0o644)
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "second")
	p := push()
	if !p.ok {
		t.Fatalf("second push failed:\n%s", p.out)
	}
	// The host refused the volume once more (the first job's exit not yet
	// recorded there): asked again, not built without it.
	if strings.Contains(p.out, "Build cache volume busy") {
		t.Errorf("the second build went without the volume:\n%s", p.out)
	}
	e.builder.mu.Lock()
	defer e.builder.mu.Unlock()
	if e.builder.saveStopped != 1 {
		t.Errorf("%d build jobs stopped while saving, want the first", e.builder.saveStopped)
	}
	if len(e.builder.jobs) != 3 {
		t.Fatalf("%d build jobs, want 3 (the first, one refused the volume, one with it)", len(e.builder.jobs))
	}
	if last := e.builder.jobs[2]; len(last.Config.Volumes) != 1 || last.Config.Env["BUILD_CACHE_SAVE_LAST"] != "1" {
		t.Errorf("the second build ran without the volume: %+v", last.Config)
	}
}

func TestReceiverRejects(t *testing.T) {
	t.Run("unknown app", func(t *testing.T) {
		e := setupReceiver(t, false)
		out, ok := e.push(t, "nosuchapp")
		if ok || !strings.Contains(out, `app "nosuchapp" does not exist`) {
			t.Fatalf("push to a missing app (ok=%v):\n%s", ok, out)
		}
		// Nothing was timed: no timings line.
		if strings.Contains(out, "Done in") || strings.Contains(out, "Failed after") {
			t.Errorf("a push refused before the build has a timings line:\n%s", out)
		}
	})
	t.Run("system app", func(t *testing.T) {
		e := setupReceiver(t, false)
		sys := controllerclient.New(e.ctrlURL, testSystemKey)
		if err := sys.CreateApp(context.Background(), &api.App{Name: "router", Meta: map[string]string{api.MetaSystemApp: "true"}}); err != nil {
			t.Fatal(err)
		}
		out, ok := e.push(t, "router")
		if ok || !strings.Contains(out, "router is a system app") {
			t.Fatalf("push to a system app (ok=%v):\n%s", ok, out)
		}
		e.builder.mu.Lock()
		defer e.builder.mu.Unlock()
		if len(e.builder.jobs) != 0 {
			t.Fatal("a push to a system app ran a build")
		}
	})
	t.Run("failed build", func(t *testing.T) {
		e := setupReceiver(t, false)
		e.builder.mu.Lock()
		e.builder.fail = true
		e.builder.mu.Unlock()
		out, ok := e.push(t, "myapp")
		if ok || !strings.Contains(out, "remote:  !     compile failed") || !strings.Contains(out, "build failed (slugbuilder exited with status 1)") {
			t.Fatalf("failed build (ok=%v):\n%s", ok, out)
		}
		// The time spent so far, without the build's own phases (no
		// result) and without a Done line.
		failed := regexp.MustCompile(`(?m)^remote: -----> Failed after \d+\.\ds: source \d+\.\ds, build \d+\.\ds\s*$`)
		if !failed.MatchString(out) || strings.Contains(out, "Done in") {
			t.Errorf("failed build: want the line %s and no Done line:\n%s", failed, out)
		}
		if strings.Contains(out, testBlobKey) || !strings.Contains(out, api.BlobSigParam+"=") {
			t.Errorf("the build output should show its signed URL and not the blobstore key:\n%s", out)
		}
		if _, err := e.ctrl.GetAppRelease(context.Background(), e.app.ID); err == nil {
			t.Fatal("a failed build made a release")
		}
	})
	t.Run("crashing web", func(t *testing.T) {
		e := setupReceiver(t, true)
		out, ok := e.push(t, "myapp")
		if ok || !strings.Contains(out, "the web process failed to start: it exited with status 2") {
			t.Fatalf("crashing app (ok=%v):\n%s", ok, out)
		}
	})
}

// TestReceiverReleasePhase: the deployer runs a release command (here
// fakeCluster plays it): the push shows it starting before the deploy and
// times it, and one that fails fails the push with the deployer's reason,
// the release not deployed. A deployment of the app still in progress is
// waited for, not refused.
func TestReceiverReleasePhase(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	first := e.firstPush(t)
	commit := func(procfile string) {
		t.Helper()
		os.WriteFile(filepath.Join(e.repo, "Procfile"), []byte(procfile), 0o644)
		gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "procfile")
	}

	// setEnv deploys first with env, as flynn env set does.
	setEnv := func(env map[string]string) *api.Release {
		t.Helper()
		rel := &api.Release{AppID: e.app.ID, ArtifactIDs: first.ArtifactIDs, Processes: first.Processes, Env: env}
		if err := e.ctrl.CreateRelease(ctx, rel); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ctrl.CreateDeployment(ctx, e.app.ID, rel.ID); err != nil {
			t.Fatal(err)
		}
		waitRelease(t, e.ctrl, e.app.ID, rel.ID)
		return rel
	}

	failing := setEnv(map[string]string{"RELEASE_FAILS": "1"})
	commit("web: ./server\nrelease: migrate\n")
	out, ok := e.push(t, "myapp")
	if ok || !strings.Contains(out, "remote: -----> Running release command...") ||
		!strings.Contains(out, "Push rejected: deployment failed: the release command failed (exit status 4)") ||
		!regexp.MustCompile(`(?m)^remote: -----> Failed after .*, release \d+\.\ds, release command \d+\.\ds\s*$`).MatchString(out) {
		t.Errorf("a failing release command (ok=%v): want it run and the push refused:\n%s", ok, out)
	}
	if strings.Contains(out, "Deploying...") {
		t.Errorf("a failing release command: the push went on to deploy:\n%s", out)
	}
	if cur, err := e.ctrl.GetAppRelease(ctx, e.app.ID); err != nil || cur.ID != failing.ID {
		t.Errorf("after a failing release command the current release is %v (%v), want %s", cur, err, failing.ID)
	}
	setEnv(nil)

	// A deployment in progress (an env change's, say) when the push's
	// build ends: the push waits for it, and its release keeps the env
	// that deployment made current.
	held := &api.Release{AppID: e.app.ID, ArtifactIDs: first.ArtifactIDs, Processes: first.Processes,
		Env: map[string]string{"DURING": "the build"}, Meta: map[string]string{"test.hold": "true"}}
	if err := e.ctrl.CreateRelease(ctx, held); err != nil {
		t.Fatal(err)
	}
	hd, err := e.ctrl.CreateDeployment(ctx, e.app.ID, held.ID)
	if err != nil {
		t.Fatal(err)
	}
	builds := func() int {
		e.builder.mu.Lock()
		defer e.builder.mu.Unlock()
		return len(e.builder.jobs)
	}
	before := builds()
	commit("web: ./server\nrelease: migrate --again\n")
	done := make(chan string, 1)
	go func() {
		out, ok := e.push(t, "myapp")
		if !ok {
			out = "(failed) " + out
		}
		done <- out
	}()
	deadline := time.Now().Add(30 * time.Second)
	for builds() == before {
		if time.Now().After(deadline) {
			t.Fatal("the push ran no build")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	rels, err := e.ctrl.AppReleaseList(ctx, e.app.ID)
	if err != nil || len(rels) != 5 {
		t.Errorf("while another deployment is in progress the push made a release: %d releases (%v), want 5", len(rels), err)
	}
	if _, err := e.ctrl.UpdateDeployment(ctx, hd.ID, api.DeploymentComplete, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case out = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the push did not end once the other deployment did")
	}
	waiting := strings.Index(out, "remote: -----> Waiting for deployment "+hd.ID)
	creating := strings.Index(out, "remote: -----> Creating release...")
	ran := strings.Index(out, "remote: -----> Running release command...")
	deploying := strings.Index(out, "remote: -----> Deploying...")
	if strings.HasPrefix(out, "(failed) ") || waiting < 0 || creating < waiting || ran < creating || deploying < ran {
		t.Errorf("want the push to wait for deployment %s, then make its release, run its release command, and deploy:\n%s", hd.ID, out)
	}
	timed := regexp.MustCompile(`(?m)^remote: -----> Done in .*, wait \d+\.\ds, release \d+\.\ds, release command \d+\.\ds, deploy \d+\.\ds(, start \d+\.\ds)?\s*$`)
	if !timed.MatchString(out) {
		t.Errorf("push output lacks the timings line %s:\n%s", timed, out)
	}
	cur, err := e.ctrl.GetAppRelease(ctx, e.app.ID)
	if err != nil || cur.ID == first.ID || cur.ID == held.ID || cur.Processes[api.ProcessTypeRelease] == nil {
		t.Fatalf("after the push the current release is %+v (%v), want the push's", cur, err)
	}
	if cur.Env["DURING"] != "the build" {
		t.Errorf("the push's release lost the env set during its build: %v", cur.Env)
	}
}

// TestReceiverKeepsProcessSettings: a push keeps what was set on a process
// type the app already has (limits, its env, its health check, volumes),
// as Flynn's did; only its command is the build's.
func TestReceiverKeepsProcessSettings(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	first := e.firstPush(t)
	// As flynn limit set and flynn release update would.
	set := *first
	set.ID = ""
	set.Processes = map[string]*api.ProcessType{}
	for typ, pt := range first.Processes {
		c := *pt
		set.Processes[typ] = &c
	}
	mem := int64(300 << 20)
	web := set.Processes["web"]
	web.Resources = api.Resources{api.ResourceMemory: {Limit: &mem}}
	web.Env = map[string]string{"WEB_ONLY": "1"}
	web.Ports = []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "myapp-web", Create: true,
		Check: &api.HealthCheck{Type: "http", Path: "/healthz"}}}}
	web.Mounts = append(web.Mounts, api.Mount{Location: "/usr/local/bin/flynn-host", Target: FlynnHostPath})
	set.Processes["worker"].Volumes = []api.VolumeReq{{Path: "/data"}}
	if err := e.ctrl.CreateRelease(ctx, &set); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.CreateDeployment(ctx, e.app.ID, set.ID); err != nil {
		t.Fatal(err)
	}
	waitRelease(t, e.ctrl, e.app.ID, set.ID)

	os.WriteFile(filepath.Join(e.repo, "Procfile"), []byte("web: ./server --v2\nworker: ./work\nclock: ./tick\n"), 0o644)
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "v2")
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("push: %s", out)
	}
	rel, err := e.ctrl.GetAppRelease(ctx, e.app.ID)
	if err != nil || rel.ID == set.ID {
		t.Fatalf("release after the push: %v %v", rel, err)
	}
	w := rel.Processes["web"]
	if w == nil || w.Resources[api.ResourceMemory].Limit == nil || *w.Resources[api.ResourceMemory].Limit != mem ||
		w.Env["WEB_ONLY"] != "1" || len(w.Ports) != 1 || w.Ports[0].Service.Check.Path != "/healthz" {
		t.Errorf("the push lost the web type's settings: %+v", w)
	}
	wantMounts := []api.Mount{{Location: "/usr/bin/flynn-host", Target: FlynnHostPath}}
	if diff := cmp.Diff(wantMounts, w.Mounts); diff != "" {
		t.Errorf("web mounts: the runner's mount once, at the host's path (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{FlynnHostPath, "slugrunner", "start", "web"}, w.Args); diff != "" {
		t.Errorf("web args (-want +got):\n%s", diff)
	}
	if v := rel.Processes["worker"].Volumes; len(v) != 1 || v[0].Path != "/data" {
		t.Errorf("the push lost the worker's volume: %+v", v)
	}
	// A new type gets the defaults; the settings are the release's own
	// copies, not the old release's.
	if c := rel.Processes["clock"]; c == nil || c.Resources != nil || len(c.Ports) != 0 {
		t.Errorf("a new process type: %+v", c)
	}
	if old, _ := e.ctrl.GetRelease(ctx, set.ID); old.Processes["web"].Args[len(old.Processes["web"].Args)-1] != "web" {
		t.Errorf("the old release changed: %+v", old.Processes["web"])
	}
}

func TestRepoCacheRestoresObjects(t *testing.T) {
	e := setupReceiver(t, false)
	out, ok := e.push(t, "myapp")
	if !ok {
		t.Fatalf("push: %s", out)
	}
	// A fresh gitreceive has the pushed objects: the next push is a
	// fast-forward of main, not a new branch.
	first := strings.TrimSpace(gitIn(t, e.repo, "rev-parse", "HEAD"))
	os.WriteFile(filepath.Join(e.repo, "Procfile"), []byte("web: ./server3\n"), 0o644)
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "third")
	e.httpURL = e.fresh()
	out, ok = e.push(t, "myapp")
	if !ok || !strings.Contains(out, first[:7]+"..") || strings.Contains(out, "[new branch]") {
		t.Fatalf("push to a fresh gitreceive (ok=%v) is not an update of %s:\n%s", ok, first[:7], out)
	}

	cache := &BlobRepoCache{Blobs: e.blobs}
	dir := filepath.Join(t.TempDir(), "myapp.git")
	if err := cache.Restore(context.Background(), "myapp", dir); err != nil {
		t.Fatal(err)
	}
	rev := strings.TrimSpace(gitIn(t, e.repo, "rev-parse", "HEAD"))
	got := strings.TrimSpace(gitIn(t, "", "--git-dir", dir, "rev-parse", "refs/heads/main"))
	if got != rev {
		t.Fatalf("restored repo has main at %q, want %q", got, rev)
	}
	if err := cache.Restore(context.Background(), "other", filepath.Join(t.TempDir(), "x.git")); err != nil {
		t.Fatalf("restore of an uncached app: %v", err)
	}
}

// tgz writes headers (with content for regular files) as a tar.gz.
// waitRelease waits for appID's current release to be releaseID.
func waitRelease(t *testing.T, c *controllerclient.Client, appID, releaseID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rel, err := c.GetAppRelease(context.Background(), appID)
		if err == nil && rel.ID == releaseID {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("release %s never became current (%v, %v)", releaseID, rel, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNeedsWeb(t *testing.T) {
	for _, tt := range []struct {
		types map[string]string
		want  string
	}{
		{map[string]string{"web": "./server", "worker": "./w"}, ""},
		{map[string]string{"api-web": "./api"}, ""},
		{map[string]string{"worker": "./w", "clock": "./c"}, "only clock, worker"},
		{nil, "no process types"},
	} {
		err := needsWeb(&api.SlugBuildResult{ProcessTypes: tt.types})
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("needsWeb(%v) = %v, want %q", tt.types, err, tt.want)
		}
	}
}

// TestBuildNetwork: a build runs on the job network, let through to the
// blobstore's port only, unless the blobstore is on a loopback address.
func TestBuildNetwork(t *testing.T) {
	tests := []struct {
		base    string
		hostNet bool
		reach   []int
		err     bool
	}{
		{"http://10.0.0.5:5380", false, []int{5380}, false},
		{"http://[fd00::5]:5380", false, []int{5380}, false},
		{"https://blobs.example", false, []int{443}, false},
		{"http://127.0.0.1:5380", true, nil, false},
		{"http://localhost:5380", true, nil, false},
		{"http://[::1]:5380", true, nil, false},
		{"not a url", false, nil, true},
		{"http://10.0.0.5:0", false, nil, true},
	}
	for _, tt := range tests {
		hostNet, reach, err := buildNetwork(tt.base)
		if (err != nil) != tt.err || hostNet != tt.hostNet || !slices.Equal(reach, tt.reach) {
			t.Errorf("buildNetwork(%q) = %v, %v, %v; want %v, %v, error %v", tt.base, hostNet, reach, err, tt.hostNet, tt.reach, tt.err)
		}
	}
}

func TestFormatTimings(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		verb   string
		total  time.Duration
		phases []phase
		want   string
	}{
		{
			name: "first deploy", verb: "Done in", total: 6440 * ms,
			phases: []phase{
				{name: "source", d: 210 * ms},
				{name: "build", d: 4140 * ms, sub: []phase{{name: "fetch", d: 90 * ms}, {name: "compile", d: 3000 * ms}, {name: "slug", d: 640 * ms}}},
				{name: "release", d: 120 * ms},
				{name: "start", d: 1940 * ms},
			},
			want: "-----> Done in 6.4s: source 0.2s, build 4.1s (fetch 0.1s, compile 3.0s, slug 0.6s), release 0.1s, start 1.9s",
		},
		{
			name: "build from an older slugbuilder", verb: "Done in", total: 75 * time.Second,
			phases: []phase{{name: "source", d: 40 * ms}, {name: "build", d: 72 * time.Second}, {name: "release", d: 0}, {name: "deploy", d: 2960 * ms}},
			want:   "-----> Done in 75.0s: source 0.0s, build 72.0s, release 0.0s, deploy 3.0s",
		},
		{
			name: "failed build", verb: "Failed after", total: 2 * time.Second,
			phases: []phase{{name: "source", d: 100 * ms}, {name: "build", d: 1900 * ms}},
			want:   "-----> Failed after 2.0s: source 0.1s, build 1.9s",
		},
		{name: "no phases", verb: "Done in", total: 80 * ms, want: "-----> Done in 0.1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, formatTimings(tc.verb, tc.total, tc.phases)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestTimingsBuildPhases(t *testing.T) {
	tm := newTimings()
	tm.phases = []phase{{name: "source", d: time.Second}, {name: "build", d: 5 * time.Second}}
	tm.buildPhases([]api.BuildPhase{{Name: "fetch", MS: 100}, {Name: "cache", MS: 250}, {Name: "compile", MS: 4000}})
	want := []phase{{name: "source", d: time.Second}, {name: "build", d: 5 * time.Second, sub: []phase{
		{name: "fetch", d: 100 * time.Millisecond}, {name: "cache", d: 250 * time.Millisecond}, {name: "compile", d: 4 * time.Second}}}}
	if diff := cmp.Diff(want, tm.phases, cmp.AllowUnexported(phase{})); diff != "" {
		t.Errorf("phases (-want +got):\n%s", diff)
	}
}

// TestReceiverGoStd: after a build that installed a Go toolchain, a job
// of gitreceive's own makes the shared build of its standard library,
// with none of the app's config, writing that one blob; the next builds
// are given a read-only URL of it in GO_STD_SEEDS. A version that is not
// a Go release's makes no job.
func TestReceiverGoStd(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	// The app's config names seeds of its own: they are not given.
	rel := &api.Release{AppID: e.app.ID, Env: map[string]string{"GREETING": "hi", "GO_STD_SEEDS": "go1.22.12=http://evil.example/std.tar", "GO_STD_SEED_URL": "http://evil.example/"}}
	if err := e.ctrl.CreateRelease(ctx, rel); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.CreateDeployment(ctx, e.app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	waitRelease(t, e.ctrl, e.app.ID, rel.ID)
	e.builder.mu.Lock()
	e.builder.goToolchain = "go1.22.12"
	e.builder.mu.Unlock()
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("push failed:\n%s", out)
	}
	jobs := func() []*api.HostJob {
		e.builder.mu.Lock()
		defer e.builder.mu.Unlock()
		return slices.Clone(e.builder.jobs)
	}
	if env := jobs()[0].Config.Env; env["GO_STD_SEEDS"] != "" || env["GO_STD_SEED_URL"] != "" || env["GREETING"] != "hi" {
		t.Errorf("first build's GO_STD_SEEDS = %q, GO_STD_SEED_URL = %q, want none (and not the app's)", env["GO_STD_SEEDS"], env["GO_STD_SEED_URL"])
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.blobs.Head(ctx, "/go-std/2/go1.22.12.tar"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /go-std/go1.22.12.tar; jobs: %d", len(jobs()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	js := jobs()
	if len(js) != 2 {
		t.Fatalf("%d jobs, want the build and the one making the Go build", len(js))
	}
	seed := js[1]
	if got := seed.Metadata[metaGoStd]; got != "go1.22.12" {
		t.Errorf("seed job metadata %v", seed.Metadata)
	}
	if seed.Metadata[api.JobMetaApp] != "" || len(seed.Config.Volumes) != 0 {
		t.Errorf("seed job belongs to the app: metadata %v, volumes %v", seed.Metadata, seed.Config.Volumes)
	}
	wantKeys := []string{"GOPROXY", "GOVERSION", "GO_STD_SEED_URL", "HOME", "PATH", "SOURCE_URL"}
	if diff := cmp.Diff(wantKeys, slices.Sorted(maps.Keys(seed.Config.Env))); diff != "" {
		t.Errorf("seed job env keys (-want +got):\n%s", diff)
	}
	if cpu := seed.Resources[api.ResourceCPU].Limit; cpu == nil || *cpu != goStdCPU {
		t.Errorf("seed job cpu %v, want %d milli-cores: it yields to other jobs", cpu, goStdCPU)
	}
	if seed.Config.Env["GOVERSION"] != "go1.22.12" || seed.Config.Env["GOPROXY"] != "https://goproxy.example" || !slices.Equal(seed.Config.Args, []string{FlynnHostPath, "slugbuilder"}) {
		t.Errorf("seed job %+v", seed.Config)
	}
	// Its URL writes that blob alone.
	other := strings.Replace(seed.Config.Env["GO_STD_SEED_URL"], "go1.22.12.tar", "go1.23.4.tar", 1)
	if err := httpPut(other, []byte("x")); err == nil {
		t.Error("the seed job's URL wrote another blob")
	}
	// Its source is gone.
	if entries, err := e.blobs.List(ctx, "/go-std/2/src/"); err == nil && len(entries) > 0 {
		t.Errorf("seed sources left: %v", entries)
	}

	// The next build is given it, read-only, whatever the app says.
	gitIn(t, e.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "second")
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("second push failed:\n%s", out)
	}
	js = jobs()
	seeds := js[len(js)-1].Config.Env["GO_STD_SEEDS"]
	v, u, ok := strings.Cut(seeds, "=")
	if !ok || v != "go1.22.12" || strings.Contains(u, " ") {
		t.Fatalf("second build's GO_STD_SEEDS = %q", seeds)
	}
	res, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != goStdBlob {
		t.Errorf("GET the seed: %s %q", res.Status, body)
	}
	if err := httpPut(u, []byte("poisoned")); err == nil {
		t.Error("a build wrote the shared Go build through its URL")
	}
	if len(js) != 3 {
		t.Errorf("%d jobs after the second push, want 3 (no second seed job)", len(js))
	}
}

// TestReceiverGoStdPrune: making a shared build of Go deletes those made
// before it beyond goStdKeep, oldest first, and leaves what else is there.
func TestReceiverGoStdPrune(t *testing.T) {
	e := setupReceiver(t, false)
	ctx := context.Background()
	// Made before, oldest first (and go1.25.1 made last, though an older
	// version than the one the push makes).
	old := []string{"go1.20.14", "go1.21.13", "go1.23.4", "go1.24.2", "go1.25.1"}
	for _, v := range old {
		if _, err := e.blobs.Put(ctx, "/go-std/2/"+v+".tar", strings.NewReader("old"), nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // distinct times
	}
	if _, err := e.blobs.Put(ctx, "/go-std/2/notes.txt", strings.NewReader("not a build"), nil); err != nil {
		t.Fatal(err)
	}
	// Made with DWARF, in the old place: deleted, whatever else is there
	// stays.
	for _, name := range []string{"/go-std/go1.22.12.tar", "/go-std/go1.21.13.tar", "/go-std/notes.txt"} {
		if _, err := e.blobs.Put(ctx, name, strings.NewReader("legacy"), nil); err != nil {
			t.Fatal(err)
		}
	}
	e.builder.mu.Lock()
	e.builder.goToolchain = "go1.22.12"
	e.builder.mu.Unlock()
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("push failed:\n%s", out)
	}
	// waitNames waits until dir's listing (its files, and its
	// directories when dirs is set) is want.
	deadline := time.Now().Add(10 * time.Second)
	waitNames := func(dir string, dirs bool, want []string) {
		t.Helper()
		var got []string
		for {
			entries, err := e.blobs.List(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			got = got[:0]
			for _, en := range entries {
				if dirs || !en.Dir {
					got = append(got, en.Name)
				}
			}
			slices.Sort(got)
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %v, want %v", dir, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitNames("/go-std/2/", false, []string{"go1.22.12.tar", "go1.23.4.tar", "go1.24.2.tar", "go1.25.1.tar", "notes.txt"})
	if goStdKeep != 4 {
		t.Fatalf("goStdKeep = %d: the want above keeps 4", goStdKeep)
	}
	// The legacy builds deleted, the rest kept.
	waitNames("/go-std/", true, []string{"2", "notes.txt"})
}

// TestReceiverGoStdStop: when the receiver's BaseContext ends, the job
// making a shared build of Go under way is stopped, and Wait returns once
// it has.
func TestReceiverGoStdStop(t *testing.T) {
	e := setupReceiver(t, false)
	hold := make(chan struct{})
	e.builder.mu.Lock()
	e.builder.goToolchain = "go1.22.12"
	e.builder.seedHold = hold
	e.builder.mu.Unlock()
	if out, ok := e.push(t, "myapp"); !ok {
		t.Fatalf("push failed:\n%s", out)
	}
	select {
	case <-hold:
	case <-time.After(10 * time.Second):
		t.Fatal("no job started to make the shared build of Go")
	}
	waited := make(chan struct{})
	go func() { e.recv.Wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("Wait returned while the job ran")
	case <-time.After(50 * time.Millisecond):
	}
	e.stop()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after BaseContext ended")
	}
	if _, err := e.blobs.Head(context.Background(), "/go-std/2/go1.22.12.tar"); err == nil {
		t.Error("the stopped job's build was stored")
	}
}

// TestSeedGoStdVersions: only a Go release's toolchain name makes a job.
func TestSeedGoStdVersions(t *testing.T) {
	for v, want := range map[string]bool{
		"go1.22.12": true, "go1.9.0": true, "": false, "go1.22": false, "go1.23rc1": false,
		"go1.22.12/../x": false, "go1.22.12 go1.23.0": false, "1.22.12": false, "go2.0.0": false,
	} {
		if got := goToolchainRE.MatchString(v); got != want {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}

// TestGoProxyChecked: a receiver whose Go proxy names no URL is refused
// at start, unless it makes no shared builds of Go.
func TestGoProxyChecked(t *testing.T) {
	for proxy, want := range map[string]bool{
		"": true, "https://proxy.golang.org": true, "direct": false, "off": false, "https://": false,
		"direct,https://goproxy.example|direct": true, "file:///srv/goproxy": true, "proxy.golang.org": false, " https://x": false,
	} {
		for _, off := range []bool{false, true} {
			_, err := NewReceiver(ReceiverConfig{
				Controller: &controllerclient.Client{}, Blobs: blobclient.New("http://blob", "k", nil), Jobs: &fakeBuilder{},
				StackLayer:   &api.ImageLayer{URL: "file:///stack.tar", Hashes: map[string]string{"sha256": strings.Repeat("a", 64)}},
				FlynnHostBin: "/usr/bin/flynn-host", GoProxy: proxy, NoGoStd: off,
			}, logging.Discard())
			if ok := err == nil; ok != (want || off) {
				t.Errorf("Go proxy %q (shared builds off: %v): err = %v", proxy, off, err)
			}
		}
	}
}

// TestWaitQuiet: the job that makes a shared Go build waits while a build
// runs, and until none has for GoStdQuiet.
func TestWaitQuiet(t *testing.T) {
	r := &BuildReceiver{cfg: ReceiverConfig{GoStdQuiet: 20 * time.Millisecond}}
	if !r.waitQuiet(context.Background()) {
		t.Fatal("waited with no build ever run")
	}
	r.building(1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if r.waitQuiet(ctx) {
		t.Fatal("did not wait for the running build")
	}
	r.building(-1)
	done := make(chan bool)
	go func() { done <- r.waitQuiet(context.Background()) }()
	r.building(1) // another starts at once: still waiting
	select {
	case <-done:
		t.Fatal("did not wait for the second build")
	case <-time.After(100 * time.Millisecond):
	}
	r.building(-1)
	if !<-done {
		t.Fatal("waitQuiet gave up")
	}
	r.busy.Lock()
	defer r.busy.Unlock()
	if since := time.Since(r.busy.last); since < r.cfg.GoStdQuiet {
		t.Errorf("returned %s after the last build, before GoStdQuiet", since)
	}
}
