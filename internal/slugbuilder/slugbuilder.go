// Package slugbuilder turns an app's source into a slug: it runs inside the
// build job (as `flynn-host slugbuilder`), unpacks the source into the
// build directory (/app), applies .slugignore, runs buildpacks with the
// Heroku buildpack API v2 (bin/detect, bin/compile, bin/release), restores
// and saves the per-app build cache (one zstd member per chunk of the cache
// directory, saved only when a chunk changed; see cache.go; kept unpacked
// between builds in a host volume when the job has one, see
// localcache.go), and writes the
// slug (the build directory in the format of package slug) plus a result
// naming its process types.
package slugbuilder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/buildpacks"
	"github.com/flynnrebuilt/flynn/internal/slug"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

// Config is one build.
type Config struct {
	// Source is the app's source as a tar or tar.gz: a path, an HTTP(S)
	// URL, or "-" (or empty) for Stdin.
	Source string
	Stdin  io.Reader
	// Output receives the build output the pusher sees, line by line.
	Output io.Writer

	// BuildDir is where the app is built; it becomes the slug. Default
	// /app, the directory app jobs run in. It is emptied first.
	BuildDir string
	// WorkDir holds the cache, env and buildpack directories; default a
	// new temporary directory, with the cache at /tmp/slugbuilder/cache
	// when no other build uses that (tools key their caches by path).
	WorkDir string

	// Slug is where the slug goes: a path or a URL to PUT to. Empty means
	// the slug is not written (the result still has its hash and size).
	// The slug is a tar.gz of the build directory in the slug package's
	// format (names under slug.Prefix, owned by the app user).
	Slug string
	// RuntimeSlug, when set, is where the slug's runtime layer goes (a
	// path or a URL to PUT to): the build directory's top-level hidden
	// directories, where buildpacks install runtimes and tools (.node,
	// .heroku, ...), packed apart from the rest, which then goes to Slug
	// (see api.SlugBuildResult.Runtime). Empty means one slug of all.
	RuntimeSlug string
	// RuntimeDigest is the digest of the last release's runtime layer
	// (api.SlugLayerResult.Digest): a runtime layer with that digest is
	// not written again but reported reused.
	RuntimeDigest string
	// CacheIn and CacheOut are the build cache (a stream of one zstd
	// member per chunk, see cache.go), a path or URL each; a missing cache
	// is an empty one. Empty disables that side. When they are the same
	// and the build changed nothing in the cache, nothing is written.
	CacheIn, CacheOut string
	// CacheVolume, when set, is a directory kept across the app's builds
	// (a host volume, writable by the build) that holds the cache
	// unpacked: CACHE_DIR is its cache/ subdirectory, reused without a
	// restore while it still is the blob at CacheIn (see localcache.go).
	CacheVolume string
	// Result, when set, receives the JSON result (path or URL to PUT to).
	Result string
	// SaveCacheLast saves the build cache after the result is written
	// and the "Build finished" line printed, rather than beside the
	// slug: whoever waits for the result (gitreceive) can go on while
	// the cache is compressed and stored, some 1.5 s of a first Go
	// build. What the save does (unchanged, or which chunks changed) is
	// still said before that line. For builds with a CacheVolume, whose
	// next build reads the volume rather than CacheOut: the volume is
	// marked unsaved meanwhile, so that a next build that stops this
	// one's save goes on from it (see localcache.go).
	SaveCacheLast bool

	// BuildpackURL selects the buildpack: a git URL (optionally #ref), a
	// tar(.gz) path or URL, or a directory. Empty means the app's
	// .buildpacks file, else detection over the shipped buildpacks.
	BuildpackURL string
	// SourceVersion is the commit being built, given to buildpacks as
	// $SOURCE_VERSION.
	SourceVersion string
	// Env is the app's config; each variable becomes a file in ENV_DIR.
	Env map[string]string
	// BaseEnv is the environment buildpacks run with (plus STACK and
	// SOURCE_VERSION); default os.Environ().
	BaseEnv []string

	// Buildpacks and Order are the shipped buildpacks; default
	// buildpacks.FS and buildpacks.Order.
	Buildpacks fs.FS
	Order      []string
}

// StableCacheRoot is where a build job mounts its app's build cache
// volume (Config.CacheVolume), so CACHE_DIR is stableCacheDir in every
// build, with a volume or without one. Without one, a build claims it
// when Config.WorkDir is empty and no other build of the machine has it;
// else CACHE_DIR is under the work directory.
const StableCacheRoot = "/tmp/slugbuilder"

// stableCacheDir is CACHE_DIR in a build job.
const stableCacheDir = StableCacheRoot + "/" + volCache

// Build runs one build and returns its result.
func Build(ctx context.Context, cfg Config, log *slog.Logger) (*api.SlugBuildResult, error) {
	start := time.Now()
	b, err := newBuild(cfg, log)
	if err != nil {
		return nil, err
	}
	defer b.cleanup()
	res, err := b.run(ctx)
	if err != nil {
		fmt.Fprintf(b.out, " !     Build failed: %v\n", err)
		return nil, err
	}
	res.DurationMS = time.Since(start).Milliseconds()
	if cfg.Result != "" {
		data, _ := json.Marshal(res)
		if err := store(ctx, cfg.Result, func(w io.Writer) error {
			_, err := w.Write(append(data, '\n'))
			return err
		}); err != nil {
			return nil, fmt.Errorf("write result: %w", err)
		}
	}
	fmt.Fprintf(b.out, "%s%s\n", FinishedLine, time.Since(start).Round(100*time.Millisecond))
	if b.lastSave != nil {
		errc := make(chan error, 1)
		go func() { errc <- b.finishSave(ctx, b.lastSave) }()
		var err error
		select {
		case err = <-errc:
		case <-ctx.Done():
			// Stopped (by the app's next build, which wants the
			// volume): at once, not once the chunk being compressed is
			// done. The volume stays marked unsaved, for that build to
			// go on from; what the save wrote is not used.
			err = ctx.Err()
		}
		if err != nil {
			fmt.Fprintf(b.out, " !     Saving the build cache failed: %v\n", err)
			return res, err
		}
	}
	return res, nil
}

// FinishedLine begins the line a build prints once its result is
// written; with Config.SaveCacheLast, the build cache is saved after it.
const FinishedLine = "-----> Build finished in "

type build struct {
	cfg                     Config
	log                     *slog.Logger
	out                     io.Writer
	work, cache, env, packs string
	ownWork, ownCache       bool
	cacheState              cacheState
	phases                  []phase
	sourceTop               map[string]bool // the source's top-level names
	lastSave                *cacheSave      // the save left for after the result (SaveCacheLast)
}

// phase is the time spent in one phase of the build so far.
type phase struct {
	name string
	d    time.Duration
}

// timed runs f as part of the phase name: its duration is added to the
// phase's, which is listed where it first ran.
func (b *build) timed(name string, f func() error) error {
	start := time.Now()
	err := f()
	b.addPhase(name, time.Since(start))
	return err
}

// addPhase adds d to the phase name's time, listing the phase if it is
// new.
func (b *build) addPhase(name string, d time.Duration) {
	for i := range b.phases {
		if b.phases[i].name == name {
			b.phases[i].d += d
			return
		}
	}
	b.phases = append(b.phases, phase{name, d})
}

// buildPhases is b.phases as the result reports them.
func (b *build) buildPhases() []api.BuildPhase {
	var ps []api.BuildPhase
	for _, p := range b.phases {
		ps = append(ps, api.BuildPhase{Name: p.name, MS: p.d.Milliseconds()})
	}
	return ps
}

func newBuild(cfg Config, log *slog.Logger) (*build, error) {
	if cfg.BuildDir == "" {
		cfg.BuildDir = "/app"
	}
	if cfg.Output == nil {
		cfg.Output = io.Discard
	}
	if cfg.Stdin == nil {
		cfg.Stdin = os.Stdin
	}
	if cfg.BaseEnv == nil {
		cfg.BaseEnv = os.Environ()
	}
	if cfg.Buildpacks == nil {
		cfg.Buildpacks, cfg.Order = buildpacks.FS, buildpacks.Order
	}
	for k := range cfg.Env {
		if k == "" || strings.ContainsAny(k, "/=\x00") {
			return nil, fmt.Errorf("env var name %q is not valid", k)
		}
	}
	b := &build{cfg: cfg, log: log, out: cfg.Output, work: cfg.WorkDir}
	if b.work == "" {
		w, err := os.MkdirTemp("", "slugbuilder-")
		if err != nil {
			return nil, err
		}
		b.work, b.ownWork = w, true
	}
	b.cache = filepath.Join(b.work, "cache")
	switch {
	case cfg.CacheVolume != "":
		b.cache = filepath.Join(cfg.CacheVolume, volCache)
	case b.ownWork:
		// Tools key their caches by absolute paths (Go's build cache
		// misses part of a cache restored under another GOROOT), so the
		// cache directory has the same path in every build job: claim
		// StableCacheRoot unless another build of this machine has it.
		if err := os.Mkdir(StableCacheRoot, 0o755); err == nil {
			b.cache, b.ownCache = stableCacheDir, true
		}
	}
	b.env = filepath.Join(b.work, "env")
	b.packs = filepath.Join(b.work, "buildpacks")
	for _, d := range []string{b.cache, b.env, b.packs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.cleanup()
			return nil, err
		}
	}
	return b, nil
}

func (b *build) cleanup() {
	if b.ownWork {
		os.RemoveAll(b.work)
	}
	if b.ownCache {
		os.RemoveAll(StableCacheRoot)
	}
}

func (b *build) step(format string, args ...any) { step(b.out, format, args...) }

func (b *build) info(format string, args ...any) { info(b.out, format, args...) }

// step writes a line that starts a step of the build to out.
func step(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "-----> "+format+"\n", args...)
}

// info writes a line about the current step to out.
func info(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "       "+format+"\n", args...)
}

func (b *build) run(ctx context.Context) (*api.SlugBuildResult, error) {
	cfg := b.cfg
	if err := b.timed("fetch", func() error { return b.fetchSource(ctx) }); err != nil {
		return nil, err
	}
	removed, err := applySlugignore(cfg.BuildDir)
	if err != nil {
		return nil, err
	}
	if len(removed) > 0 {
		b.info("removed %d path(s) listed in .slugignore", len(removed))
	}
	for k, v := range cfg.Env {
		if err := os.WriteFile(filepath.Join(b.env, k), []byte(v), 0o600); err != nil {
			return nil, err
		}
	}
	if cfg.CacheIn != "" {
		if err := b.timed("restore", func() error { return b.restoreCache(ctx) }); err != nil {
			return nil, err
		}
	} else if cfg.CacheVolume != "" {
		// Nothing to check the volume's copy against: start empty.
		if err := b.emptyVolume(); err != nil {
			return nil, err
		}
	}

	defaults := map[string]string{}
	var names []string
	err = b.timed("compile", func() error {
		packs, err := b.selectBuildpacks(ctx)
		if err != nil {
			return err
		}
		for _, p := range packs {
			b.step("%s app detected", p.name)
			names = append(names, p.name)
			if err := b.runScript(ctx, p, "compile", cfg.BuildDir, b.cache, b.env); err != nil {
				return fmt.Errorf("%s buildpack: compile failed (%w); see the output above", p.name, err)
			}
			types, err := b.release(ctx, p)
			if err != nil {
				return err
			}
			maps.Copy(defaults, types)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	types, err := b.processTypes(defaults)
	if err != nil {
		return nil, err
	}
	res := &api.SlugBuildResult{
		ProcessTypes:  types,
		Buildpack:     strings.Join(names, ", "),
		SourceVersion: cfg.SourceVersion,
		GoToolchain:   b.goToolchain(),
	}
	if err := b.saveCacheAndWriteSlug(ctx, res); err != nil {
		return nil, err
	}
	res.Phases = b.buildPhases()
	return res, nil
}

// goToolchain is the Go toolchain the Go buildpack keeps in the cache
// (CACHE_DIR/toolchain/go1.22.12), if any.
func (b *build) goToolchain() string {
	entries, _ := os.ReadDir(filepath.Join(b.cache, "toolchain"))
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "go1.") {
			return e.Name()
		}
	}
	return ""
}

// saveCacheAndWriteSlug saves the build cache and writes the slug at
// once: each is mostly reading files and compressing them, and a build
// has a core for each (a cold Go build's cache took 3.1 s to save, a
// Node.js runtime layer 2-3 s to compress). The slug's lines are held
// until the cache's are out, so the output reads as it would one after
// the other. The first to fail stops the other. With SaveCacheLast the
// slug is written alone, and the save is only said here: Build does it
// once the result is out.
func (b *build) saveCacheAndWriteSlug(ctx context.Context, res *api.SlugBuildResult) error {
	if b.cfg.SaveCacheLast {
		// Said now, done once the result is out. Meanwhile the volume
		// says cache/ is this build's, not yet stored, so a build that
		// stops this one's save goes on from it.
		s, err := b.prepareSave()
		if err != nil {
			return err
		}
		marked := make(chan error, 1)
		switch {
		case s != nil && s.unchanged:
			// Only the marker to write back: now.
			go func() { marked <- b.finishSave(ctx, s) }()
		case s != nil && b.cfg.CacheVolume != "":
			b.lastSave = s
			go func() { b.markUnsaved(s.now); marked <- nil }()
		default:
			b.lastSave = s
			marked <- nil
		}
		err = b.timed("slug", func() error { return b.writeSlug(ctx, res, b.out) })
		if merr := <-marked; err == nil {
			err = merr
		}
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var slugOut bytes.Buffer
	var slugErr error
	var slugTime time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		if slugErr = b.writeSlug(ctx, res, &slugOut); slugErr != nil {
			cancel()
		}
		slugTime = time.Since(start)
	}()
	var saveErr error
	if b.cfg.CacheOut != "" {
		if saveErr = b.timed("save", func() error { return b.saveCache(ctx) }); saveErr != nil {
			cancel()
		}
	}
	<-done
	b.out.Write(slugOut.Bytes())
	b.addPhase("slug", slugTime)
	switch {
	case saveErr != nil && (slugErr == nil || !errors.Is(saveErr, context.Canceled)):
		return saveErr
	case slugErr != nil:
		return slugErr
	}
	return nil
}

// fetchSource empties the build directory and unpacks the source into it.
func (b *build) fetchSource(ctx context.Context) error {
	dir := b.cfg.BuildDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	var r io.Reader = b.cfg.Stdin
	if src := b.cfg.Source; src != "" && src != "-" {
		rc, err := open(ctx, src)
		if err != nil {
			return fmt.Errorf("read source: %w", err)
		}
		defer rc.Close()
		r = rc
	}
	b.step("Unpacking source")
	if err := untar(r, dir); err != nil {
		return fmt.Errorf("unpack source: %w", err)
	}
	if entries, err = os.ReadDir(dir); err != nil {
		return err
	}
	b.sourceTop = map[string]bool{}
	for _, e := range entries {
		b.sourceTop[e.Name()] = true
	}
	return nil
}

// processTypes merges the Procfile with the buildpacks' defaults (the
// Procfile wins) and writes the merged Procfile, so `slugrunner start`
// finds every type in the slug.
func (b *build) processTypes(defaults map[string]string) (map[string]string, error) {
	b.step("Discovering process types")
	procfile := filepath.Join(b.cfg.BuildDir, "Procfile")
	types := map[string]string{}
	data, err := os.ReadFile(procfile)
	switch {
	case err == nil:
		if types, err = slug.ParseProcfile(string(data)); err != nil {
			return nil, err
		}
		b.info("Procfile declares types -> %s", typeList(types))
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, err
	}
	added := map[string]string{}
	for t, cmd := range defaults {
		if _, ok := types[t]; !ok {
			types[t], added[t] = cmd, cmd
		}
	}
	if len(added) > 0 {
		b.info("Default types for buildpack -> %s", typeList(added))
		if err := os.WriteFile(procfile, []byte(slug.FormatProcfile(types)), 0o644); err != nil {
			return nil, err
		}
	}
	if len(types) == 0 {
		b.info("no process types: add a Procfile with a line like \"web: ./server\"")
	}
	return types, nil
}

func typeList(m map[string]string) string {
	return strings.Join(slices.Sorted(maps.Keys(m)), ", ")
}

// writeSlug writes the slug (and its runtime layer, when the build has
// one) and records them in res. It writes its lines to out, and changes
// nothing of b, so that it may run beside the build's other work.
func (b *build) writeSlug(ctx context.Context, res *api.SlugBuildResult, out io.Writer) error {
	step(out, "Compressing slug")
	follow, err := cacheLinks(b.cfg.BuildDir, b.cache)
	if err != nil {
		return err
	}
	o := tarOpts{follow: follow}
	if b.cfg.RuntimeSlug != "" {
		names, err := runtimeDirs(b.cfg.BuildDir, b.cache, follow, b.sourceTop)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			inRuntime := func(name string) bool { return slices.Contains(names, name) }
			ro := tarOpts{top: inRuntime, fixedTimes: true, follow: follow}
			if inRuntime("node_modules") {
				// What tools of an app's build cache there (babel-loader,
				// webpack) is new in each build: it goes with the app.
				ro.skip = func(rel string) bool { return rel == modulesCache }
				o.skip = func(rel string) bool {
					under, ok := strings.CutPrefix(rel, "node_modules/")
					return ok && under != ".cache" && !strings.HasPrefix(under, ".cache/")
				}
			}
			if res.Runtime, err = b.writeRuntime(ctx, names, ro, out); err != nil {
				return fmt.Errorf("write the slug's runtime layer: %w", err)
			}
			o.top = func(name string) bool { return !inRuntime(name) || name == "node_modules" }
		}
	}
	h := sha256.New()
	var n countWriter
	fill := func(w io.Writer) error {
		return writeTarGzOpts(io.MultiWriter(w, h, &n), nil, b.cfg.BuildDir, slug.Prefix, slug.UID, slug.GID, o)
	}
	if b.cfg.Slug == "" {
		err = fill(io.Discard)
	} else {
		err = store(ctx, b.cfg.Slug, fill)
	}
	if err != nil {
		return fmt.Errorf("write slug: %w", err)
	}
	res.SHA256, res.Size = hex.EncodeToString(h.Sum(nil)), int64(n)
	info(out, "done, %.1f MB", float64(n)/1e6)
	return nil
}

// runtimeDirs lists what goes into the slug's runtime layer: the
// top-level hidden directories of dir, where buildpacks install runtimes
// and tools, and node_modules, where the Node.js buildpack installs the
// app's dependencies (hundreds of MB for a real app, which a push of
// changed code alone leaves as they were), when the build cache has a
// node_modules too: the buildpack keeps it there for the next build to
// reuse, files and times, when nothing the install reads changes (not
// for an app whose install runs its own scripts: then node_modules is
// new on every build, and stays with the app so that the runtime layer,
// without it, can stay as it was). Those are directories or links that
// follow names (see cacheLinks) that the build made: what the source has
// (.github, a committed node_modules) comes with each commit at a new
// time, and goes with the app. So do .profile.d, whose scripts
// buildpacks write anew on every build, and buildOutputs: new
// modification times would make the layer new each time.
func runtimeDirs(dir, cache string, follow map[string]string, source map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(filepath.Join(cache, "node_modules"))
	kept := err == nil && fi.IsDir()
	var names []string
	for _, e := range entries {
		n := e.Name()
		_, linked := follow[n]
		if !(e.IsDir() || linked) || source[n] || buildOutputs[n] {
			continue
		}
		if (strings.HasPrefix(n, ".") && n != ".profile.d") || (n == "node_modules" && kept && !linked) {
			names = append(names, n)
		}
	}
	return names, nil
}

// modulesCache is where tools of an app's build keep their cache in
// node_modules.
const modulesCache = "node_modules/.cache"

// buildOutputs are hidden directories that an app's build writes anew
// each time, which are not runtimes: web frameworks' build output
// (Next.js' .next, Nuxt's .nuxt and .output, SvelteKit, Angular, Astro,
// Docusaurus, Turborepo, Parcel) and what tools keep in $HOME (/app in
// a build) between runs: .cache, .config, .npm.
var buildOutputs = map[string]bool{
	".next": true, ".nuxt": true, ".output": true, ".svelte-kit": true, ".angular": true, ".astro": true,
	".docusaurus": true, ".vercel": true, ".netlify": true, ".turbo": true, ".parcel-cache": true,
	".cache": true, ".config": true, ".npm": true,
}

// cacheLinks finds the top-level symbolic links of dir that lead to a
// directory in the build cache, and returns where each leads, by name.
// The slug holds such a link as the directory it leads to: a buildpack
// may keep a runtime assembled in CACHE_DIR from one build to the next
// and link it into the app, instead of copying it into the app each time
// (Node.js, 100 MB, took 1-2 s to copy in a build job). Other links stay
// links.
func cacheLinks(dir, cache string) (map[string]string, error) {
	cache, err := filepath.EvalSymlinks(cache)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	follow := map[string]string{}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		target, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // a dangling link stays a link
		}
		if rel, err := filepath.Rel(cache, target); err != nil || rel == "." || !filepath.IsLocal(rel) {
			continue
		}
		if fi, err := os.Stat(target); err == nil && fi.IsDir() {
			follow[e.Name()] = target
		}
	}
	return follow, nil
}

// writeRuntime writes the slug's runtime layer, the directories names of
// the build directory, unless its digest (the sha256 of its tar) is
// RuntimeDigest: then the last release's layer is reused. Computing the
// digest reads the files once more than writing the layer alone would,
// which costs much less than compressing, checking and fetching a layer
// of unchanged runtimes again. Its lines go to out.
func (b *build) writeRuntime(ctx context.Context, names []string, o tarOpts, out io.Writer) (*api.SlugLayerResult, error) {
	what := strings.Join(names, ", ")
	if b.cfg.RuntimeDigest != "" {
		h := sha256.New()
		var n countWriter
		if err := writeTarOpts(io.MultiWriter(h, &n), b.cfg.BuildDir, slug.Prefix, slug.UID, slug.GID, o); err != nil {
			return nil, err
		}
		if digest := hex.EncodeToString(h.Sum(nil)); digest == b.cfg.RuntimeDigest {
			info(out, "runtime layer (%s, %.1f MB) unchanged: reusing the last release's", what, float64(n)/1e6)
			return &api.SlugLayerResult{Digest: digest, Reused: true}, nil
		}
	}
	raw, zh := sha256.New(), sha256.New()
	var zn countWriter
	err := store(ctx, b.cfg.RuntimeSlug, func(w io.Writer) error {
		return writeTarGzOpts(io.MultiWriter(w, zh, &zn), raw, b.cfg.BuildDir, slug.Prefix, slug.UID, slug.GID, o)
	})
	if err != nil {
		return nil, err
	}
	info(out, "runtime layer (%s): %.1f MB", what, float64(zn)/1e6)
	return &api.SlugLayerResult{Digest: hex.EncodeToString(raw.Sum(nil)), SHA256: hex.EncodeToString(zh.Sum(nil)), Size: int64(zn)}, nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// scriptEnv is the environment buildpack scripts run with.
func (b *build) scriptEnv() []string {
	env := slices.Clone(b.cfg.BaseEnv)
	env = append(env, "STACK="+stack.Name, "SOURCE_VERSION="+b.cfg.SourceVersion)
	if !slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "PATH=") }) {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return env
}

// runScript runs bin/<name> of a buildpack with args, streaming its output.
func (b *build) runScript(ctx context.Context, p buildpack, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(p.dir, "bin", name), args...)
	cmd.Dir = b.cfg.BuildDir
	cmd.Env = b.scriptEnv()
	cmd.Stdout, cmd.Stderr = b.out, b.out
	cmd.WaitDelay = 5 * time.Second
	return cmd.Run()
}

func (b *build) release(ctx context.Context, p buildpack) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.dir, "bin", "release"), b.cfg.BuildDir)
	cmd.Dir = b.cfg.BuildDir
	cmd.Env = b.scriptEnv()
	cmd.Stderr = b.out
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s buildpack: bin/release: %w", p.name, err)
	}
	types, err := parseRelease(string(out))
	if err != nil {
		return nil, fmt.Errorf("%s buildpack: %w", p.name, err)
	}
	return types, nil
}
