package gitreceive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
	"github.com/flynnrebuilt/flynn/internal/slug"
	"github.com/flynnrebuilt/flynn/internal/slugbuilder"
)

// FlynnHostPath is where the flynn-host binary is mounted in build and app
// jobs: the slugbuilder and slugrunner entrypoints.
const FlynnHostPath = "/usr/local/bin/flynn-host"

// DefaultCABundle is the host's CA bundle, mounted into build jobs so
// buildpacks can fetch over TLS (egress may go through a TLS proxy only
// the host trusts).
const DefaultCABundle = "/etc/ssl/certs/ca-certificates.crt"

// DefaultBuildMemory is the default memory limit of a build job, twice an
// app job's: compilers want room, and the page cache of the files a build
// writes (toolchains, the build cache, the slug) counts against the limit.
// At 1 GiB the Go sample app's first build took about twice as long.
const DefaultBuildMemory = 2 << 30

// JobRunner runs a build job somewhere in the cluster, streams its output
// to out while it runs, and returns how it exited. An error that is
// api.ErrConflict says the host refused to start the job because a volume
// it binds is in use there.
type JobRunner interface {
	RunJob(ctx context.Context, job *api.HostJob, out io.Writer) (*api.HostJobExit, error)
}

// ReceiverConfig configures a BuildReceiver.
type ReceiverConfig struct {
	Controller *controllerclient.Client
	Blobs      *blobclient.Client
	// JobBlobURL is the blobstore's base URL as build jobs reach it
	// (default Blobs' URL) and BlobKey the key jobs write with; it travels
	// in the URLs given to the job.
	JobBlobURL string
	// JobBlobBase, when set, gives the blobstore's base URL for each
	// build instead of JobBlobURL: a live instance's address, for build
	// jobs, which cannot look services up themselves.
	JobBlobBase func(ctx context.Context) (string, error)
	BlobKey     string
	Jobs        JobRunner
	// StackLayer is the root filesystem builds and apps run on: a layer
	// with URL and Hashes["sha256"].
	StackLayer *api.ImageLayer
	// FlynnHostBin is the flynn-host binary on the hosts, mounted
	// read-only at FlynnHostPath into build and app jobs.
	FlynnHostBin string
	// CABundle is mounted into build jobs when set (default none).
	CABundle string
	// BuildTimeout bounds a build (default 15 minutes); DeployTimeout the
	// wait for the deployment or the first web job (default the app's
	// deploy timeout, else api.DefaultDeployTimeout seconds).
	BuildTimeout  time.Duration
	DeployTimeout time.Duration
	// BuildMemory is the memory limit of build jobs in bytes (default
	// DefaultBuildMemory).
	BuildMemory int64
	// Discoverd, when set, is used to wait until a first web process is
	// registered (so the app answers through the router) before the push
	// reports success.
	Discoverd *discoverdclient.Client
	// NoGoStd turns off the platform's shared builds of Go (see
	// gostd.go): none are made, none given to builds. GoStdQuiet is how
	// long no build must have run before the job that makes one starts
	// (default 30 s).
	NoGoStd    bool
	GoStdQuiet time.Duration
	// GoProxy is the module proxy the job that makes a shared Go build
	// fetches the toolchain from (default the Go buildpack's,
	// https://proxy.golang.org). It is the operator's: an app's GOPROXY
	// serves that app's builds only.
	GoProxy string
	// BaseContext, when it ends, ends the receiver's own jobs (those
	// that make shared builds of Go), stopping them on their hosts;
	// Wait waits for that. Default: they run to their end.
	BaseContext context.Context
}

// BuildReceiver is the Receiver of a cluster: it builds a push with the
// slugbuilder as a job on a host, turns the slug into an artifact and a
// release, and deploys it through the controller.
type BuildReceiver struct {
	cfg ReceiverConfig
	log *slog.Logger

	// goStd: whether a job makes a shared Go build, and when the last
	// started (see gostd.go).
	goStd struct {
		sync.Mutex
		running bool
		last    time.Time
	}
	// bg counts the goroutines of the receiver's own jobs (Wait).
	bg sync.WaitGroup
	// busy: how many builds run, and when one last started or ended.
	busy struct {
		sync.Mutex
		builds int
		last   time.Time
	}
	// saving: by app, the last build job, which went on saving its build
	// cache after its result (see runBuild), until it ends.
	saving struct {
		sync.Mutex
		apps map[string]*savingJob
	}
}

// NewReceiver returns a BuildReceiver.
func NewReceiver(cfg ReceiverConfig, log *slog.Logger) (*BuildReceiver, error) {
	switch {
	case cfg.Controller == nil || cfg.Blobs == nil || cfg.Jobs == nil:
		return nil, errors.New("gitreceive: receiver needs a controller, a blobstore and a job runner")
	case cfg.StackLayer == nil || cfg.StackLayer.URL == "" || cfg.StackLayer.Hashes["sha256"] == "":
		return nil, errors.New("gitreceive: receiver needs the stack layer's URL and sha256")
	case cfg.FlynnHostBin == "":
		return nil, errors.New("gitreceive: receiver needs the path of flynn-host on the hosts")
	}
	if cfg.JobBlobURL == "" {
		cfg.JobBlobURL = strings.TrimSuffix(cfg.Blobs.URL("/"), "/")
	}
	if _, err := url.Parse(cfg.JobBlobURL); err != nil {
		return nil, fmt.Errorf("gitreceive: job blobstore URL: %w", err)
	}
	if cfg.BuildTimeout == 0 {
		cfg.BuildTimeout = 15 * time.Minute
	}
	if cfg.BuildMemory == 0 {
		cfg.BuildMemory = DefaultBuildMemory
	}
	if cfg.BaseContext == nil {
		cfg.BaseContext = context.Background()
	}
	if cfg.GoStdQuiet == 0 {
		cfg.GoStdQuiet = 30 * time.Second
	}
	if !cfg.NoGoStd && cfg.GoProxy != "" && !namesProxyURL(cfg.GoProxy) {
		// Else every shared build of Go would fail, in the log only.
		return nil, fmt.Errorf("gitreceive: Go proxy %q names no proxy URL (http://, https:// or file://); shared builds of Go fetch the toolchain from one", cfg.GoProxy)
	}
	return &BuildReceiver{cfg: cfg, log: log}, nil
}

// Authorize checks that the app exists.
func (r *BuildReceiver) Authorize(ctx context.Context, app string) error {
	_, err := r.cfg.Controller.GetApp(ctx, app)
	if errors.Is(err, api.ErrNotFound) {
		return api.NotFound("app %q does not exist: create it first with `flynn create %s`", app, app)
	}
	if err != nil {
		return fmt.Errorf("look up app %q: %w", app, err)
	}
	return nil
}

// jobURL is the URL of blob p under base as the build job uses it:
// signed for access (api.BlobRead, ...) to p alone, for as long as a
// build may take; the job never holds the blobstore key.
func (r *BuildReceiver) jobURL(base, p, access string) string {
	if r.cfg.BlobKey == "" {
		return strings.TrimSuffix(base, "/") + escapePath(p)
	}
	return api.SignBlobURL(base, r.cfg.BlobKey, access, p, time.Now().Add(r.cfg.BuildTimeout+5*time.Minute))
}

// withRev adds the pushed revision to a build job's metadata.
func withRev(meta map[string]string, rev string) map[string]string {
	meta["gitreceive.rev"] = rev
	return meta
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// Receive builds, releases and deploys one push. It ends with the
// timings line (see timings.go): "Done in" after a deploy, "Failed after"
// when a step failed after the source was stored.
func (r *BuildReceiver) Receive(ctx context.Context, p Push, out io.Writer) (err error) {
	tm := newTimings()
	defer func() {
		if err != nil && len(tm.phases) > 0 {
			fmt.Fprintln(out, tm.line("Failed after"))
		}
	}()
	app, err := r.cfg.Controller.GetApp(ctx, p.App)
	if err != nil {
		return fmt.Errorf("look up app %q: %w", p.App, err)
	}
	if app.Meta[api.MetaSystemApp] == "true" {
		return fmt.Errorf("%s is a system app (it runs part of the platform): it is not deployed by git push", app.Name)
	}
	prev, err := r.cfg.Controller.GetAppRelease(ctx, app.ID)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return fmt.Errorf("current release of %s: %w", app.Name, err)
	}
	if err != nil {
		prev = nil
	}
	last := r.lastRuntime(ctx, prev)
	fmt.Fprintf(out, "-----> Building %s...\n", app.Name)

	src := fmt.Sprintf("/repos/%s/%s.tar", app.ID, p.NewRev)
	start := time.Now()
	err = r.uploadSource(ctx, p, src)
	tm.since("source", start)
	if err != nil {
		return err
	}
	defer r.cfg.Blobs.Delete(context.WithoutCancel(ctx), src)

	start = time.Now()
	res, err := r.build(ctx, app, prev, last, p, src, out)
	tm.since("build", start)
	if err != nil {
		return err
	}
	tm.buildPhases(res.Phases)
	// Once the push is done: the job competes with its deploy for CPU.
	defer r.seedGoStd(res.GoToolchain)
	if err := needsWeb(res); err != nil {
		return err
	}
	// The release is made on top of what the app runs once any of its
	// deployments under way (an env change's, a rollback's) has ended,
	// so that a change made during the build is kept.
	start = time.Now()
	waited, err := r.cfg.Controller.WaitAppDeployments(ctx, app.ID, func(d *api.Deployment) {
		fmt.Fprintf(out, "-----> Waiting for deployment %s (release %s) to end first...\n", d.ID, d.NewReleaseID)
	})
	if waited {
		tm.since("wait", start)
	}
	if err != nil {
		return fmt.Errorf("%w: this push is not deployed", err)
	}
	if cur, err := r.cfg.Controller.GetAppRelease(ctx, app.ID); err == nil {
		prev = cur
	} else if !errors.Is(err, api.ErrNotFound) {
		return fmt.Errorf("current release of %s: %w", app.Name, err)
	}
	start = time.Now()
	rel, err := r.createRelease(ctx, app, prev, last, p.NewRev, res, out)
	tm.since("release", start)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "       Release %s with process types: %s\n", rel.ID, strings.Join(slices.Sorted(maps.Keys(rel.Processes)), ", "))
	if err := r.deploy(ctx, app, rel, out, tm); err != nil {
		return err
	}
	fmt.Fprintln(out, "=====> Application deployed")
	fmt.Fprintln(out, tm.line("Done in"))
	return nil
}

// Meta keys of a pushed release's artifact that name its runtime layer
// (api.SlugBuildResult.Runtime): the layer's digest and its ID.
const (
	metaRuntimeDigest = "gitreceive.runtime_digest"
	metaRuntimeLayer  = "gitreceive.runtime_layer"
)

// runtimeLayer is the runtime layer of an app's current release.
type runtimeLayer struct {
	digest string
	layer  *api.ImageLayer
}

// lastRuntime finds the runtime layer of release prev when a push made
// it (nil otherwise, or when it cannot be read: the build then writes
// its runtime layer anew).
func (r *BuildReceiver) lastRuntime(ctx context.Context, prev *api.Release) *runtimeLayer {
	if prev == nil || len(prev.ArtifactIDs) != 1 {
		return nil
	}
	art, err := r.cfg.Controller.GetArtifact(ctx, prev.ArtifactIDs[0])
	if err != nil {
		r.log.Warn("read the current release's artifact", "release", prev.ID, "err", err)
		return nil
	}
	digest, id := art.Meta[metaRuntimeDigest], art.Meta[metaRuntimeLayer]
	if digest == "" || id == "" || art.Manifest == nil || len(art.Manifest.Rootfs) == 0 || art.Manifest.Rootfs[0] == nil {
		return nil
	}
	for _, l := range art.Manifest.Rootfs[0].Layers {
		if l != nil && l.ID == id {
			c := *l
			return &runtimeLayer{digest: digest, layer: &c}
		}
	}
	return nil
}

// createRelease makes the slug of rev a layer (two with a runtime layer,
// which may be last's) and creates the artifact and the release of the
// build res.
func (r *BuildReceiver) createRelease(ctx context.Context, app *api.App, prev *api.Release, last *runtimeLayer, rev string, res *api.SlugBuildResult, out io.Writer) (*api.Release, error) {
	meta := map[string]string{"gitreceive.rev": rev, "gitreceive.buildpack": res.Buildpack}
	layers := []*api.ImageLayer{r.cfg.StackLayer}
	if rt := res.Runtime; rt != nil {
		var l *api.ImageLayer
		switch {
		case rt.Reused && last != nil && rt.Digest == last.digest:
			l = last.layer
		case rt.Reused:
			return nil, errors.New("the build reused a runtime layer that the app's current release does not have")
		default:
			info, err := r.slugLayer(ctx, runtimePath(app.ID, rev))
			if err != nil {
				return nil, fmt.Errorf("runtime layer: %w", err)
			}
			l = info.layer(r.cfg.Blobs)
		}
		layers = append(layers, l)
		meta[metaRuntimeDigest], meta[metaRuntimeLayer] = rt.Digest, l.ID
	}
	layer, err := r.slugLayer(ctx, slugPath(app.ID, rev))
	if err != nil {
		return nil, err
	}
	layers = append(layers, layer.layer(r.cfg.Blobs))
	fmt.Fprintln(out, "-----> Creating release...")
	art := &api.Artifact{
		Type: api.ArtifactTypeFlynn,
		URI:  r.cfg.Blobs.URL(layer.URL),
		Meta: meta,
		Manifest: &api.ImageManifest{
			Type: api.ManifestType,
			Entrypoints: map[string]*api.Entrypoint{"_default": {
				WorkingDir: slug.AppDir,
				Env:        map[string]string{"PATH": defaultPath, "HOME": slug.AppDir},
				Uid:        ptr(uint32(slug.UID)), Gid: ptr(uint32(slug.GID)),
			}},
			Rootfs: []*api.ImageRootfs{{
				Platform: &api.ImagePlatform{Architecture: "amd64", OS: "linux"},
				Layers:   layers,
			}},
		},
	}
	if err := r.cfg.Controller.CreateArtifact(ctx, art); err != nil {
		return nil, fmt.Errorf("create artifact: %w", err)
	}
	rel := r.release(app, prev, art.ID, res, rev)
	if err := r.cfg.Controller.CreateRelease(ctx, rel); err != nil {
		return nil, fmt.Errorf("create release: %w", err)
	}
	return rel, nil
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func ptr[T any](v T) *T { return &v }

// uploadSource archives the pushed tree into the blobstore at path.
func (r *BuildReceiver) uploadSource(ctx context.Context, p Push, blob string) error {
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := p.Archive(ctx, pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	_, err := r.cfg.Blobs.Put(ctx, blob, pr, nil)
	pr.CloseWithError(errors.New("upload ended"))
	if aerr := <-errc; aerr != nil {
		return fmt.Errorf("archive the pushed tree: %w", aerr)
	}
	if err != nil {
		return fmt.Errorf("upload the source to the blobstore: %w", err)
	}
	return nil
}

func slugPath(appID, rev string) string { return fmt.Sprintf("/slugs/%s/%s.tgz", appID, rev) }
func runtimePath(appID, rev string) string {
	return fmt.Sprintf("/slugs/%s/%s-runtime.tgz", appID, rev)
}
func resultPath(appID, rev string) string { return fmt.Sprintf("/slugs/%s/%s.json", appID, rev) }

// buildNetwork says where a build whose blobstore is at base runs: on the
// job network like an app, its host's firewall letting it through to the
// blobstore's port and nothing else of the platform; or, when the
// blobstore listens on a loopback address (a blobstore on this machine
// only, as in tests), on the host's network, the only place it is reached
// from.
func buildNetwork(base string) (hostNet bool, reach []int, err error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return false, nil, fmt.Errorf("blobstore URL for builds %q: not a URL", base)
	}
	if ip, err := netip.ParseAddr(u.Hostname()); (err == nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
		return true, nil, nil
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return false, nil, fmt.Errorf("blobstore URL for builds %q: no port", base)
	}
	return false, []int{n}, nil
}

// jobBlobBase is the blobstore's base URL for a build job.
func (r *BuildReceiver) jobBlobBase(ctx context.Context) (string, error) {
	if r.cfg.JobBlobBase == nil {
		return r.cfg.JobBlobURL, nil
	}
	base, err := r.cfg.JobBlobBase(ctx)
	if err != nil {
		return "", fmt.Errorf("find the blobstore for the build: %w", err)
	}
	return base, nil
}

// slugbuilderJob is a job that runs the slugbuilder on the stack with
// env, reaching the blobstore at base and nothing else of the platform.
func (r *BuildReceiver) slugbuilderJob(base string, env, meta map[string]string) (*api.HostJob, error) {
	hostNet, reach, err := buildNetwork(base)
	if err != nil {
		return nil, err
	}
	mounts := []api.Mount{{Location: r.cfg.FlynnHostBin, Target: FlynnHostPath}}
	if r.cfg.CABundle != "" {
		mounts = append(mounts, api.Mount{Location: r.cfg.CABundle, Target: DefaultCABundle})
	}
	return &api.HostJob{
		// ID: HOSTID-UUID, given once the job is placed.
		Artifacts: []*api.Artifact{{Type: api.ArtifactTypeFlynn, Manifest: &api.ImageManifest{Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{r.cfg.StackLayer}}}}}},
		Metadata:  meta,
		Config: api.HostJobConfig{
			Args:        []string{FlynnHostPath, "slugbuilder"},
			Env:         env,
			WorkingDir:  slug.AppDir,
			Uid:         ptr(uint32(slug.UID)),
			Gid:         ptr(uint32(slug.GID)),
			Mounts:      mounts,
			HostNetwork: hostNet,
			ReachPorts:  reach,
		},
		Resources: api.Resources{api.ResourceMemory: {Limit: ptr(r.cfg.BuildMemory)}},
	}, nil
}

// build runs the slugbuilder job and returns its result.
func (r *BuildReceiver) build(ctx context.Context, app *api.App, prev *api.Release, last *runtimeLayer, p Push, src string, out io.Writer) (*api.SlugBuildResult, error) {
	r.building(1)
	counted := true // until a job saving its cache takes the count over
	defer func() {
		if counted {
			r.building(-1)
		}
	}()
	lastEnded, err := r.waitSaving(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	if prev != nil {
		maps.Copy(env, prev.Env)
	}
	base, err := r.jobBlobBase(ctx)
	if err != nil {
		return nil, err
	}
	maps.Copy(env, map[string]string{
		"PATH":            defaultPath,
		"HOME":            slug.AppDir,
		"SOURCE_URL":      r.jobURL(base, src, api.BlobRead),
		"SLUG_URL":        r.jobURL(base, slugPath(app.ID, p.NewRev), api.BlobWrite),
		"SLUG_RESULT_URL": r.jobURL(base, resultPath(app.ID, p.NewRev), api.BlobWrite),
		// The runtime layer goes apart, or is last's when unchanged.
		"SLUG_RUNTIME_URL":    r.jobURL(base, runtimePath(app.ID, p.NewRev), api.BlobWrite),
		"SLUG_RUNTIME_DIGEST": "",
		"BUILD_CACHE_URL":     r.jobURL(base, fmt.Sprintf("/caches/%s.tgz", app.ID), api.BlobReadWrite),
		"SOURCE_VERSION":      p.NewRev,
		// The app's build cache volume, mounted where the slugbuilder
		// has CACHE_DIR in every build (see job.Config.Volumes).
		"BUILD_CACHE_VOLUME": slugbuilder.StableCacheRoot,
		// The next build reads the volume: the push goes on once the
		// result is out, while the job stores the cache (runBuild).
		"BUILD_CACHE_SAVE_LAST": "1",
		// Set here, whatever the app's config says: the platform's
		// builds of the Go standard library (see gostd.go).
		"GO_STD_SEEDS":    "",
		"GO_STD_SEED_URL": "",
	})
	if !r.cfg.NoGoStd {
		env["GO_STD_SEEDS"] = r.goStdSeeds(ctx, base)
	}
	if last != nil {
		env["SLUG_RUNTIME_DIGEST"] = last.digest
	}
	job, err := r.slugbuilderJob(base, env, withRev(scheduler.JobMetadata(app, "", "slugbuilder"), p.NewRev))
	if err != nil {
		return nil, err
	}
	job.Config.Volumes = []api.VolumeBinding{{VolumeID: api.BuildCacheVolumeID(app.ID), Target: slugbuilder.StableCacheRoot, Writeable: true}}
	start := time.Now()
	// The key is not in the job's URLs, but keep it out of the output
	// whatever prints it.
	jobOut := newRedactor(out, r.cfg.BlobKey)
	// The result is there once the job says it finished.
	ready := func(ctx context.Context) bool {
		rc, _, err := r.cfg.Blobs.Get(ctx, resultPath(app.ID, p.NewRev))
		if err != nil {
			return false
		}
		rc.Close()
		return true
	}
	exit, saving, err := r.runBuild(ctx, app.ID, job, jobOut, ready)
	if lastEnded {
		// The app's last build job, which held the volume, just ended:
		// its host frees the volume in a moment.
		for deadline := time.Now().Add(volumeFreeWait); errors.Is(err, api.ErrConflict) && time.Now().Before(deadline); {
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			job.ID = ""
			exit, saving, err = r.runBuild(ctx, app.ID, job, jobOut, ready)
		}
	}
	if errors.Is(err, api.ErrConflict) {
		// The host refused the job because another build of the app
		// (from another gitreceive instance) uses the volume there:
		// build without it, restoring the cache from the blobstore.
		r.log.Info("build cache volume busy; building without it", "app", app.Name, "err", err)
		fmt.Fprintln(jobOut, "-----> Build cache volume busy (another build of this app runs on the host); restoring the cache instead")
		job.ID = ""
		job.Config.Volumes = nil
		delete(job.Config.Env, "BUILD_CACHE_VOLUME")
		delete(job.Config.Env, "BUILD_CACHE_SAVE_LAST")
		exit, saving, err = r.runBuild(ctx, app.ID, job, jobOut, ready)
	}
	jobOut.Flush()
	if saving {
		counted = false
	}
	if err != nil {
		if errors.Is(err, errBuildTimeout) && ctx.Err() == nil {
			return nil, fmt.Errorf("build timed out after %s", r.cfg.BuildTimeout)
		}
		return nil, fmt.Errorf("run the build job: %w", err)
	}
	switch {
	case saving:
		// Built: the job goes on storing the cache.
	case exit.Error != "":
		return nil, fmt.Errorf("build job failed: %s", exit.Error)
	case exit.OOM:
		return nil, errors.New("build ran out of memory")
	case exit.ExitStatus != 0:
		return nil, fmt.Errorf("build failed (slugbuilder exited with status %d); see the output above", exit.ExitStatus)
	}
	rc, _, err := r.cfg.Blobs.Get(ctx, resultPath(app.ID, p.NewRev))
	if err != nil {
		return nil, fmt.Errorf("read the build result: %w", err)
	}
	defer rc.Close()
	var res api.SlugBuildResult
	if err := json.NewDecoder(rc).Decode(&res); err != nil {
		return nil, fmt.Errorf("read the build result: %w", err)
	}
	if len(res.ProcessTypes) == 0 {
		return nil, errors.New("the build defines no process types: add a Procfile")
	}
	r.log.Info("build done", "app", app.Name, "rev", p.NewRev, "buildpack", res.Buildpack, "duration", time.Since(start))
	return &res, nil
}

// slugLayerInfo is the slug as an image layer in the blobstore.
type slugLayerInfo struct {
	URL    string // blob path
	SHA256 string
	Size   int64
}

func (l slugLayerInfo) layer(b *blobclient.Client) *api.ImageLayer {
	return &api.ImageLayer{ID: l.SHA256, Type: api.LayerTypeTarGz, Length: l.Size,
		Hashes: map[string]string{"sha256": l.SHA256}, URL: b.URL(l.URL)}
}

// slugLayer makes the slug at blob (or its runtime layer) an image layer.
// A slug in the slug package's format is a layer as it is: then its blob
// is the layer, and only its hash is computed. The build runs the app's
// code and could have written anything to the slug's URLs, so every entry
// is checked (slug.Check); a slug that is not a safe layer (or one from an
// older slugbuilder, with names relative to the app directory) is
// rewritten by slug.Rewrite and stored at /layers/<sha256>.tgz.
func (r *BuildReceiver) slugLayer(ctx context.Context, blob string) (*slugLayerInfo, error) {
	rc, _, err := r.cfg.Blobs.Get(ctx, blob)
	if err != nil {
		return nil, fmt.Errorf("read the slug: %w", err)
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	ok, err := slug.Check(io.TeeReader(rc, cw))
	if err == nil {
		// The hash covers all of the blob, trailing bytes too.
		_, err = io.Copy(cw, rc)
	}
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("read the slug: %w", err)
	}
	if ok {
		return &slugLayerInfo{URL: blob, SHA256: hex.EncodeToString(h.Sum(nil)), Size: cw.n}, nil
	}
	return r.rewriteSlug(ctx, blob)
}

// rewriteSlug stores slug.Rewrite's layer of the slug at /layers/<sha256>.tgz.
func (r *BuildReceiver) rewriteSlug(ctx context.Context, blob string) (*slugLayerInfo, error) {
	rc, _, err := r.cfg.Blobs.Get(ctx, blob)
	if err != nil {
		return nil, fmt.Errorf("read the slug: %w", err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp("", "slug-layer-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if err := slug.Rewrite(cw, rc); err != nil {
		return nil, fmt.Errorf("convert the slug to a layer: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	p := "/layers/" + sum + ".tgz"
	if _, err := r.cfg.Blobs.Put(ctx, p, tmp, &blobclient.PutOptions{SHA256: sum, Size: cw.n}); err != nil {
		return nil, fmt.Errorf("upload the slug layer: %w", err)
	}
	return &slugLayerInfo{URL: p, SHA256: sum, Size: cw.n}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// isWebType says whether a process type serves HTTP on $PORT.
// needsWeb refuses a build that defines no web process: nothing would
// serve the app's route. The previous release keeps running.
func needsWeb(res *api.SlugBuildResult) error {
	var types []string
	for t := range res.ProcessTypes {
		if isWebType(t) {
			return nil
		}
		types = append(types, t)
	}
	sort.Strings(types)
	if len(types) == 0 {
		return errors.New("the build defines no process types: add a Procfile with a line like `web: ./server` (it must listen on $PORT)")
	}
	return fmt.Errorf("the build defines no web process (only %s): add a line like `web: ./server` to the Procfile (it must listen on $PORT)", strings.Join(types, ", "))
}

func isWebType(t string) bool { return t == "web" || strings.HasSuffix(t, "-web") }

// release builds the new release: the previous env, the build's process
// types run by slugrunner, web types on port 8080 behind <app>-<type>. A
// type the previous release has keeps what was set on it there (flynn
// limit set's resources, its env, a health check or ports given with
// flynn release update, volumes), as Flynn's push kept it: only its
// command is the build's.
func (r *BuildReceiver) release(app *api.App, prev *api.Release, artifactID string, res *api.SlugBuildResult, rev string) *api.Release {
	rel := &api.Release{
		AppID:       app.ID,
		ArtifactIDs: []string{artifactID},
		Env:         map[string]string{},
		Meta:        map[string]string{api.MetaReleaseGit: "true", "rev": rev},
		Processes:   map[string]*api.ProcessType{},
	}
	if prev != nil {
		maps.Copy(rel.Env, prev.Env)
	}
	for typ := range res.ProcessTypes {
		pt := &api.ProcessType{}
		if prev != nil && prev.Processes[typ] != nil {
			pt = cloneProcessType(prev.Processes[typ])
		}
		pt.Args = []string{FlynnHostPath, "slugrunner", "start", typ}
		// The runner, at the host's path of it now.
		pt.Mounts = slices.DeleteFunc(pt.Mounts, func(m api.Mount) bool { return m.Target == FlynnHostPath })
		pt.Mounts = append([]api.Mount{{Location: r.cfg.FlynnHostBin, Target: FlynnHostPath}}, pt.Mounts...)
		if isWebType(typ) && len(pt.Ports) == 0 {
			pt.Ports = []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{
				Name: app.Name + "-" + typ, Create: true, Check: &api.HealthCheck{Type: "tcp"},
			}}}
		}
		rel.Processes[typ] = pt
	}
	return rel
}

// cloneProcessType is a deep copy of pt, through its JSON (every field of
// it is one, so nothing is lost; a copy that failed would be empty).
func cloneProcessType(pt *api.ProcessType) *api.ProcessType {
	var c api.ProcessType
	if b, err := json.Marshal(pt); err == nil {
		json.Unmarshal(b, &c)
	}
	return &c
}

func (r *BuildReceiver) deployTimeout(app *api.App) time.Duration {
	if r.cfg.DeployTimeout > 0 {
		return r.cfg.DeployTimeout
	}
	if app.DeployTimeout > 0 {
		return time.Duration(app.DeployTimeout) * time.Second
	}
	return api.DefaultDeployTimeout * time.Second
}

// deploy deploys rel and waits for it: for the deployment to finish when
// the app runs processes, or, on an app's first deploy with a web type,
// for the first web job to come up. The deployer runs rel's release
// command (`release:` in the Procfile), when it has one, before any job
// of rel starts; its output is the push's. It records the phases it
// waited for in tm: "release command" until that
// command ended, "deploy" until the deployment finished, "start" until
// the first web job was up (and registered); a deployment with nothing to
// roll and no web job to start records neither of the last two.
//
// The deployment goes on without the push: a pusher who goes away once
// it is made (^C, a lost connection, a killed gitreceive) still gets the
// release deployed, or its release command's failure in flynn deployment.
func (r *BuildReceiver) deploy(ctx context.Context, app *api.App, rel *api.Release, out io.Writer, tm *timings) error {
	timeout := r.deployTimeout(app)
	hasRelease := rel.Processes[api.ProcessTypeRelease] != nil
	if hasRelease {
		timeout += api.ReleasePhaseTimeout
	} else {
		// With a release command, once that has run.
		fmt.Fprintln(out, "-----> Deploying...")
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Follow the app's events from before the deployment, so none is missed.
	events, err := r.cfg.Controller.StreamEvents(wctx, controllerclient.EventOptions{
		AppID: app.ID, ObjectTypes: []string{api.EventTypeDeployment, api.EventTypeJob},
	})
	if err != nil {
		return fmt.Errorf("follow the deployment: %w", err)
	}
	defer events.Close()
	evc := make(chan *api.Event)
	go func() {
		defer close(evc)
		for {
			ev, err := events.Next()
			if err != nil {
				return
			}
			select {
			case evc <- ev:
			case <-wctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel()
		events.Close()
		for range evc {
		}
	}()

	d, err := r.cfg.Controller.CreateDeployment(ctx, app.ID, rel.ID)
	if errors.Is(err, api.ErrConflict) {
		// One that started since the push waited for deployments.
		return fmt.Errorf("deploy release %s: another deployment of %s started meanwhile; push again once it ends (flynn deployment)", rel.ID, app.Name)
	}
	if err != nil {
		return fmt.Errorf("deploy release %s: %w", rel.ID, err)
	}
	if d.Status != api.DeploymentComplete {
		err := r.waitDeployment(wctx, d, evc, out, timeout, tm, start)
		start = time.Now()
		if err != nil {
			var fe *failedType
			if errors.As(err, &fe) {
				r.printLastLines(ctx, out, app, fe.typ, fe.job)
			}
			return err
		}
	}
	// The first deploy of an app with a web type (nothing was scaled up
	// before, e.g. only `flynn env set` ran): run one web process.
	_, hasWeb := rel.Processes["web"]
	if running(d.Processes) || !hasWeb {
		return nil
	}
	defer tm.since("start", start)
	fmt.Fprintln(out, "=====> Scaling initial release to web=1")
	if err := r.cfg.Controller.PutFormation(ctx, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 1}}); err != nil {
		return fmt.Errorf("scale web=1: %w", err)
	}
	fmt.Fprintln(out, "-----> Waiting for web job to start...")
	err = waitWebUp(wctx, rel.ID, evc, timeout)
	if err == nil && r.cfg.Discoverd != nil {
		err = r.waitRegistered(wctx, out, app.Name+"-web", rel.ID, evc)
	}
	if err != nil {
		var fe *failedType
		if errors.As(err, &fe) {
			r.printLastLines(ctx, out, app, fe.typ, fe.job)
		} else {
			r.printLastLines(ctx, out, app, "web", "")
		}
		// Take the app down again, as Flynn does: the push is rejected.
		r.cfg.Controller.PutFormation(context.WithoutCancel(ctx), &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 0}})
		return err
	}
	fmt.Fprintln(out, "=====> web job started")
	return nil
}

// notReachableHint is how long a web job may run without being
// registered (its health check, a connection to $PORT, not passing)
// before the push says so, rather than wait its deploy timeout silently.
const notReachableHint = 10 * time.Second

// waitRegistered waits until service has an instance of release. A web
// job of release that goes down meanwhile (a process that crashes once
// it is up) fails the wait at once. Past notReachableHint it prints why
// it still waits, once.
func (r *BuildReceiver) waitRegistered(ctx context.Context, out io.Writer, service, releaseID string, evc <-chan *api.Event) error {
	hint := time.After(notReachableHint)
	for {
		insts, err := r.cfg.Discoverd.Instances(ctx, service)
		if err == nil {
			for _, in := range insts {
				if in.Meta["FLYNN_RELEASE_ID"] == releaseID {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("the web process started but never became reachable (%v): is it listening on $PORT? check flynn log", err)
		case ev, ok := <-evc:
			if !ok {
				evc = nil // polling discoverd goes on
				continue
			}
			if j := webJobDown(ev, releaseID); j != nil {
				return &failedType{typ: "web", job: j.ID, err: errors.New("the web process exited before it became reachable: it " + j.End())}
			}
		case <-hint:
			hint = nil
			left := ""
			if dl, ok := ctx.Deadline(); ok {
				left = fmt.Sprintf(" for up to %s more", time.Until(dl).Round(time.Second))
			}
			fmt.Fprintf(out, "       The web process runs but nothing answers on $PORT yet: waiting%s (it must listen on $PORT; its output: flynn log -t web)\n", left)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// webJobDown returns the job of a job event that says a web job of
// release went down.
func webJobDown(ev *api.Event, releaseID string) *api.Job {
	if ev.ObjectType != api.EventTypeJob {
		return nil
	}
	var j api.Job
	if json.Unmarshal(ev.Data, &j) != nil || j.ReleaseID != releaseID || j.Type != "web" || j.State != api.JobStateDown {
		return nil
	}
	return &j
}

// running says whether a formation runs any process.
func running(procs map[string]int) bool {
	for _, n := range procs {
		if n > 0 {
			return true
		}
	}
	return false
}

// waitDeployment waits for deployment d, made at start, to finish,
// printing its steps, and its release command's output (indented) while
// that runs. It records in tm the "release command" phase, when the
// deployment has one, and the "deploy" phase after it.
func (r *BuildReceiver) waitDeployment(ctx context.Context, d *api.Deployment, evc <-chan *api.Event, out io.Writer, timeout time.Duration, tm *timings, start time.Time) error {
	phase := "deploy"
	defer func() { tm.since(phase, start) }()
	// Whether the deployment finished, for a stream that ended. (The
	// stream began before the deployment was made and resumes from its
	// last event, so every event of the deployment, its failure's reason
	// and its release command included, comes through it.)
	check := func() (bool, error) {
		cur, err := r.cfg.Controller.GetDeployment(ctx, d.ID)
		if err != nil {
			return false, nil
		}
		switch cur.Status {
		case api.DeploymentComplete:
			return true, nil
		case api.DeploymentFailed:
			return true, fmt.Errorf("deployment %s failed", d.ID)
		}
		return false, nil
	}
	releaseOut := controllerclient.NewJobOutput(r.cfg.Controller, d.AppID, out, "       ")
	defer releaseOut.Wait()
	var releaseJob string // the release command's job, once it started
	// The last job of the new release that went down, by type: the
	// one whose output explains a failed deployment.
	downJobs := map[string]string{}
	var downType string // the last type a job of the deployment went down in
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployment %s did not finish within %s (is the scheduler running? see `flynn deployment`)", d.ID, timeout)
		case ev, ok := <-evc:
			if !ok {
				if done, err := check(); done {
					return err
				}
				return fmt.Errorf("lost the event stream while deploying %s", d.ID)
			}
			if ev.ObjectType == api.EventTypeJob {
				var j api.Job
				if json.Unmarshal(ev.Data, &j) == nil && j.ReleaseID == d.NewReleaseID && j.State == api.JobStateDown && j.ID != "" {
					downJobs[j.Type] = j.ID
					downType = j.Type
				}
				continue
			}
			if ev.ObjectType != api.EventTypeDeployment || ev.ObjectID != d.ID {
				continue
			}
			var de api.DeploymentEvent
			if json.Unmarshal(ev.Data, &de) != nil {
				continue
			}
			switch {
			case de.JobType == api.ProcessTypeRelease && de.JobID != "":
				// The release command: its output rather than its
				// steps. A deployer that takes the deployment up names
				// the same job again.
				if de.JobState == api.JobStateStarting && de.JobID != releaseJob {
					releaseJob, phase = de.JobID, "release command"
					fmt.Fprintln(out, "-----> Running release command...")
					releaseOut.Follow(ctx, de.JobID)
				}
				if de.JobState == api.JobStateDown && releaseJob != "" {
					releaseOut.Wait()
					tm.since(phase, start)
					releaseJob, phase, start = "", "deploy", time.Now()
					fmt.Fprintln(out, "-----> Deploying...")
				}
			case de.JobType != "" && de.JobState != "":
				fmt.Fprintf(out, "=====> %s job %s\n", de.JobType, de.JobState)
				if de.JobState == api.JobStateDown {
					downType = de.JobType
				}
			}
			switch de.Status {
			case api.DeploymentComplete:
				return nil
			case api.DeploymentFailed:
				releaseOut.Wait()
				msg := de.Error
				if msg == "" {
					msg = "no reason given"
				}
				// The failure event itself names no job type.
				typ := de.JobType
				if typ == "" {
					typ = downType
				}
				if typ == api.ProcessTypeRelease {
					// Its output is above, and msg names its job.
					return fmt.Errorf("deployment failed: %s", msg)
				}
				return &failedType{typ: typ, job: downJobs[typ], err: fmt.Errorf("deployment failed: %s", msg)}
			}
		}
	}
}

// failedType is a deployment that failed because a job of typ went
// down: job, when known.
type failedType struct {
	typ string
	job string
	err error
}

func (f *failedType) Error() string { return f.err.Error() }
func (f *failedType) Unwrap() error { return f.err }

// lastLinesWait bounds how long printLastLines waits for a failed job's
// log to reach its exit line (its host ships it in the background).
var lastLinesWait = 5 * time.Second

// printLastLines writes the last lines a failed job wrote, and how it
// ended, so a pusher sees why a process crashed without another command.
// With no job ID, it writes the process type's last lines as the log has
// them now.
func (r *BuildReceiver) printLastLines(ctx context.Context, out io.Writer, app *api.App, typ, job string) {
	if typ == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	const n = 10
	opts := controllerclient.LogOptions{Lines: n, ProcessType: typ, StreamTypes: []string{api.LogStdout, api.LogStderr}}
	if job != "" {
		// Followed up to the platform's line about the job's exit,
		// which its host writes after the job's last output: the lines
		// before it may still be on their way to the aggregator.
		fctx, fcancel := context.WithTimeout(ctx, lastLinesWait)
		defer fcancel()
		ctx = fctx
		opts = controllerclient.LogOptions{Follow: true, Lines: n + 4, JobID: job, StreamTypes: []string{api.LogStdout, api.LogStderr, api.LogInit}}
	}
	rc, err := r.cfg.Controller.GetAppLog(ctx, app.ID, opts)
	if err != nil {
		return
	}
	lr := logaggclient.NewPlainReader(rc)
	defer lr.Close()
	lines := logaggclient.LastLines(lr, n)
	if len(lines) == 0 {
		return
	}
	if job != "" {
		fmt.Fprintf(out, "-----> Last log lines of %s (job %s):\n", typ, job)
	} else {
		fmt.Fprintf(out, "-----> Last log lines of %s:\n", typ)
	}
	for _, l := range lines {
		fmt.Fprintf(out, "       %s\n", l)
	}
}

// waitWebUp waits for a web job of release to be up; one that goes down
// first fails the push.
func waitWebUp(ctx context.Context, releaseID string, evc <-chan *api.Event, timeout time.Duration) error {
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the web process did not start within %s (is the scheduler running?)", timeout)
		case ev, ok := <-evc:
			if !ok {
				return errors.New("lost the event stream while waiting for the web process")
			}
			if ev.ObjectType != api.EventTypeJob {
				continue
			}
			var j api.Job
			if json.Unmarshal(ev.Data, &j) != nil || j.ReleaseID != releaseID || j.Type != "web" {
				continue
			}
			switch j.State {
			case api.JobStateUp:
				return nil
			case api.JobStateDown:
				return &failedType{typ: "web", job: j.ID, err: errors.New("the web process failed to start: it " + j.End() + "; see `flynn log`")}
			}
		}
	}
}

// redactor copies output line by line with a secret replaced.
type redactor struct {
	w      io.Writer
	secret string
	buf    []byte
}

func newRedactor(w io.Writer, secret string) *redactor { return &redactor{w: w, secret: secret} }

func (r *redactor) Write(p []byte) (int, error) {
	if r.secret == "" {
		return r.w.Write(p)
	}
	r.buf = append(r.buf, p...)
	if i := strings.LastIndexByte(string(r.buf), '\n'); i >= 0 {
		line := strings.ReplaceAll(string(r.buf[:i+1]), r.secret, "***")
		r.buf = append(r.buf[:0], r.buf[i+1:]...)
		if _, err := io.WriteString(r.w, line); err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// Flush writes what is left of an unfinished line.
func (r *redactor) Flush() {
	if len(r.buf) > 0 {
		io.WriteString(r.w, strings.ReplaceAll(string(r.buf), r.secret, "***"))
		r.buf = r.buf[:0]
	}
}
