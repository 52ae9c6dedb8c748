package slugbuilder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// volumeBuilder builds a small app with a buildpack that lists the
// restored cache into the slug ("restored") and runs the app's CHANGE
// variable in CACHE_DIR; FAIL makes the compile fail after that.
type volumeBuilder struct {
	t          *testing.T
	pack, app  string
	cacheIn    string
	cacheOut   string
	lastBuild  string
	lastOutput string
}

func newVolumeBuilder(t *testing.T, cacheIn, cacheOut string) *volumeBuilder {
	vb := &volumeBuilder{t: t, pack: t.TempDir(), app: t.TempDir(), cacheIn: cacheIn, cacheOut: cacheOut}
	writeTree(t, vb.pack, map[string]string{
		"bin/detect": "#!/bin/sh\necho Cachey\n",
		"bin/compile": "#!/bin/sh\nset -e\ncd \"$2\"\n(find . -type f | sort | xargs -r grep -H .) > \"$1/restored\" || true\n" +
			"[ ! -f \"$3/CHANGE\" ] || sh \"$3/CHANGE\"\n" +
			"[ ! -f \"$3/FAIL\" ] || exit 1\n",
		"bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: true\\n'\n",
	})
	writeTree(t, vb.app, map[string]string{"README": "hi"})
	return vb
}

// build builds with volume vol ("" for none) and returns what the build
// found in its cache and its output; a failed build is fatal unless env
// has FAIL.
func (vb *volumeBuilder) build(vol string, env map[string]string) (restored, out string) {
	t := vb.t
	t.Helper()
	dir := t.TempDir()
	vb.lastBuild = dir
	var buf syncBuffer
	_, err := Build(context.Background(), Config{
		Stdin: bytes.NewReader(tarDir(t, vb.app)), Output: &buf, BuildDir: dir,
		CacheIn: vb.cacheIn, CacheOut: vb.cacheOut, CacheVolume: vol, BuildpackURL: vb.pack, Env: env,
	}, logging.Discard())
	if _, fail := env["FAIL"]; err != nil && !fail {
		t.Fatalf("%v\n%s", err, buf.String())
	} else if err == nil && fail {
		t.Fatalf("the build did not fail\n%s", buf.String())
	}
	data, _ := os.ReadFile(filepath.Join(dir, "restored"))
	vb.lastOutput = buf.String()
	return string(data), buf.String()
}

func change(script string) map[string]string { return map[string]string{"CHANGE": script} }

func wantIn(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func wantNotIn(t *testing.T, out string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(out, w) {
			t.Errorf("output has %q:\n%s", w, out)
		}
	}
}

func fileSHA(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// checkVolume checks that a volume's marker names the blob in file, that
// its kept blob is that blob, and that the marker's members lie where
// they do in it.
func checkVolume(t *testing.T, vol, file string) {
	t.Helper()
	b := &build{cfg: Config{CacheVolume: vol}}
	m := b.readMarker()
	if m == nil {
		t.Fatalf("no marker in the volume")
	}
	if sha := fileSHA(t, file); m.SHA256 != sha {
		t.Errorf("marker names %s, the cache is %s", m.SHA256, sha)
	}
	if sha := fileSHA(t, filepath.Join(vol, volBlob)); m.SHA256 != sha {
		t.Errorf("marker names %s, the kept blob is %s", m.SHA256, sha)
	}
	data, _ := os.ReadFile(file)
	members, err := restoreChunks(bytes.NewReader(data), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(toMarkerMembers(members), m.Members); diff != "" {
		t.Errorf("marker members (-blob +marker):\n%s", diff)
	}
}

// TestCacheVolume builds with a build cache volume: the first build
// restores (nothing) and leaves a marker; the next ones reuse the
// volume's copy while it is the cache blob, save only changed chunks
// (copied from the kept blob), and restore again when the blob changed
// elsewhere, when a build failed (or was killed) after the marker was
// dropped, or when the marker is damaged or the blob gone.
func TestCacheVolume(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache.blob")
	vb := newVolumeBuilder(t, cache, cache)
	vol := t.TempDir()

	_, out := vb.build(vol, change("mkdir -p tool sub/deep && echo v1 > tool/bin && echo 1 > sub/deep/n"))
	wantIn(t, out, "-----> No build cache yet", "-----> Saving build cache\n")
	checkVolume(t, vol, cache)

	fi1, _ := os.Stat(cache)
	restored, out := vb.build(vol, nil)
	wantIn(t, out, "-----> Build cache: reused the local copy", "-----> Build cache unchanged")
	if want := "./sub/deep/n:1\n./tool/bin:v1\n"; restored != want {
		t.Errorf("reused:\n%s\nwant:\n%s", restored, want)
	}
	if fi2, _ := os.Stat(cache); !fi2.ModTime().Equal(fi1.ModTime()) {
		t.Errorf("an unchanged cache was written again")
	}
	checkVolume(t, vol, cache)

	before := cacheMembers(t, cache)
	_, out = vb.build(vol, change("echo 2 > sub/deep/n"))
	wantIn(t, out, "-----> Build cache: reused the local copy", "-----> Saving build cache (changed: sub/deep)")
	checkVolume(t, vol, cache)
	after := cacheMembers(t, cache)
	for _, c := range []string{"sub/", "tool/", "tool/bin"} {
		if !bytes.Equal(before[c], after[c]) {
			t.Errorf("the unchanged chunk %s was compressed again instead of copied", c)
		}
	}
	restored, out = vb.build(vol, nil)
	wantIn(t, out, "reused the local copy", "Build cache unchanged")
	if want := "./sub/deep/n:2\n./tool/bin:v1\n"; restored != want {
		t.Errorf("reused:\n%s\nwant:\n%s", restored, want)
	}

	// Another host (another volume, or none) saves a change: this
	// volume's copy is stale and the blob is restored into it.
	vb.build(t.TempDir(), change("echo elsewhere > tool/bin"))
	restored, out = vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	wantNotIn(t, out, "reused the local copy")
	if want := "./sub/deep/n:2\n./tool/bin:elsewhere\n"; restored != want {
		t.Errorf("restored after a save elsewhere:\n%s\nwant:\n%s", restored, want)
	}
	checkVolume(t, vol, cache)
	vb.build("", change("echo nohost > tool/bin"))
	restored, _ = vb.build(vol, nil)
	if want := "./sub/deep/n:2\n./tool/bin:nohost\n"; restored != want {
		t.Errorf("restored after a save without a volume:\n%s\nwant:\n%s", restored, want)
	}

	// A build that fails (or is killed) after changing the cache leaves
	// no marker: the next build restores the blob, without the change.
	vb.build(vol, map[string]string{"CHANGE": "echo half > tool/bin && echo junk > junk", "FAIL": "1"})
	if _, err := os.Stat(filepath.Join(vol, volMarker)); err == nil {
		t.Errorf("a failed build left a marker")
	}
	restored, out = vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	wantNotIn(t, out, "reused the local copy")
	if want := "./sub/deep/n:2\n./tool/bin:nohost\n"; restored != want {
		t.Errorf("restored after a failed build:\n%s\nwant:\n%s", restored, want)
	}

	// A damaged marker, or a kept blob gone: restore.
	os.WriteFile(filepath.Join(vol, volMarker), []byte("{not json"), 0o600)
	_, out = vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	checkVolume(t, vol, cache)
	os.Remove(filepath.Join(vol, volBlob))
	_, out = vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	checkVolume(t, vol, cache)

	// The blob deleted: the volume starts empty.
	os.Remove(cache)
	restored, out = vb.build(vol, change("echo fresh > fresh"))
	wantIn(t, out, "-----> No build cache yet")
	if restored != "" {
		t.Errorf("restored with the blob gone: %q", restored)
	}
	checkVolume(t, vol, cache)
}

// TestCacheVolumeKilled stops a build at each step after the restore
// (the marker dropped, the cache changed, the blob saved but the marker
// not yet written): each time the next build restores the blob.
func TestCacheVolumeKilled(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache.blob")
	vb := newVolumeBuilder(t, cache, cache)
	vol := t.TempDir()
	vb.build(vol, change("echo 1 > n"))
	checkVolume(t, vol, cache)

	// Killed during the compile: the marker went before the compile ran.
	b, err := newBuild(Config{CacheIn: cache, CacheOut: cache, CacheVolume: vol, BuildDir: t.TempDir(), WorkDir: t.TempDir()}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.restoreCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(vol, volMarker)); err == nil {
		t.Fatalf("the marker is still there once the cache may change")
	}
	os.WriteFile(filepath.Join(b.cache, "n"), []byte("changed\n"), 0o644)
	restored, out := vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	if restored != "./n:1\n" {
		t.Errorf("restored after a killed build: %q", restored)
	}

	// Killed after the save stored the blob, before the marker: the
	// next build restores (the same blob).
	b, _ = newBuild(Config{CacheIn: cache, CacheOut: cache, CacheVolume: vol, BuildDir: t.TempDir(), WorkDir: t.TempDir()}, logging.Discard())
	if err := b.restoreCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(b.cache, "n"), []byte("saved\n"), 0o644)
	if err := b.saveCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(vol, volMarker)) // as if killed before writing it
	restored, out = vb.build(vol, nil)
	wantIn(t, out, "-----> Restoring build cache")
	if restored != "./n:saved\n" {
		t.Errorf("restored after a build killed before its marker: %q", restored)
	}
	checkVolume(t, vol, cache)
}

// TestCacheVolumeBlobstore builds against the blobstore through a URL
// signed read/write, as build jobs do: a HEAD through it gives the
// version, a PUT's reply the version stored, and the second build reuses
// the volume.
func TestCacheVolumeBlobstore(t *testing.T) {
	s, err := blobstore.New(blobstore.ServerConfig{Backend: blobstore.NewMem(), Keys: []string{"key"}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	u := api.SignBlobURL(srv.URL, "key", api.BlobReadWrite, "/caches/app.tgz", time.Now().Add(time.Hour))
	vb := newVolumeBuilder(t, u, u)
	vol := t.TempDir()

	_, out := vb.build(vol, change("echo 1 > n && echo k > kept"))
	wantIn(t, out, "-----> No build cache yet", "-----> Saving build cache")
	ver, err := blobVersion(context.Background(), u)
	if err != nil || ver == "" {
		t.Fatalf("HEAD through the signed URL: %q, %v", ver, err)
	}
	b := &build{cfg: Config{CacheVolume: vol}}
	if m := b.readMarker(); m == nil || m.SHA256 != ver {
		t.Fatalf("marker %+v, want sha256 %s", m, ver)
	}
	restored, out := vb.build(vol, change("echo 2 > n"))
	wantIn(t, out, "-----> Build cache: reused the local copy", "-----> Saving build cache (changed: n)")
	if restored != "./kept:k\n./n:1\n" {
		t.Errorf("reused: %q", restored)
	}
	restored, out = vb.build(vol, nil)
	wantIn(t, out, "reused the local copy", "Build cache unchanged")
	if restored != "./kept:k\n./n:2\n" {
		t.Errorf("reused: %q", restored)
	}
}

// TestBlobCopyWriteFails: a copy whose writes fail (a full disk) does not
// fail what it copies, and commit reports it and leaves no blob.
func TestBlobCopyWriteFails(t *testing.T) {
	vol := t.TempDir()
	b := &build{cfg: Config{CacheVolume: vol}}
	c, err := b.newBlobCopy()
	if err != nil {
		t.Fatal(err)
	}
	c.f.Close() // every write fails from now on
	if n, err := c.Write([]byte("data")); n != 4 || err != nil {
		t.Errorf("Write = %d, %v; want 4, nil", n, err)
	}
	if _, err := c.commit(); err == nil {
		t.Errorf("commit of a failed copy succeeded")
	}
	for _, name := range []string{volBlob, volBlob + ".tmp"} {
		if _, err := os.Stat(filepath.Join(vol, name)); err == nil {
			t.Errorf("%s left after a failed copy", name)
		}
	}
}

// finishSpy is a build's output that notes, as the build says it
// finished, whether the result and the cache blob were there.
type finishSpy struct {
	syncBuffer
	result, cache                 string
	seen, hadResult, hadCacheBlob bool
}

func (s *finishSpy) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(FinishedLine)) {
		_, err := os.Stat(s.result)
		s.hadResult = err == nil
		_, err = os.Stat(s.cache)
		s.hadCacheBlob = err == nil
		s.seen = true
	}
	return s.syncBuffer.Write(p)
}

// TestCacheVolumeSaveLast: with SaveCacheLast, a build writes its result
// and says it finished before it stores the cache, says before that what
// the save does, and leaves the volume as a build that saved first does:
// the next build reuses it.
func TestCacheVolumeSaveLast(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache.blob")
	vb := newVolumeBuilder(t, cache, cache)
	vol := t.TempDir()
	build := func(env map[string]string) (restored string, spy *finishSpy) {
		t.Helper()
		bdir := t.TempDir()
		spy = &finishSpy{result: filepath.Join(dir, "result.json"), cache: cache}
		os.Remove(spy.result)
		if _, err := Build(context.Background(), Config{
			Stdin: bytes.NewReader(tarDir(t, vb.app)), Output: spy, BuildDir: bdir, Result: spy.result,
			CacheIn: cache, CacheOut: cache, CacheVolume: vol, BuildpackURL: vb.pack, Env: env, SaveCacheLast: true,
		}, logging.Discard()); err != nil {
			t.Fatalf("%v\n%s", err, spy.String())
		}
		if !spy.seen || !spy.hadResult {
			t.Fatalf("the build said it finished before its result was written (said: %v)\n%s", spy.seen, spy.String())
		}
		data, _ := os.ReadFile(filepath.Join(bdir, "restored"))
		return string(data), spy
	}
	before := func(t *testing.T, out, first, then string) {
		t.Helper()
		i, j := strings.Index(out, first), strings.Index(out, then)
		if i < 0 || j < 0 || i > j {
			t.Errorf("output lacks %q before %q:\n%s", first, then, out)
		}
	}

	_, spy := build(change("mkdir -p tool && echo v1 > tool/bin"))
	if spy.hadCacheBlob {
		t.Errorf("the cache was stored before the build said it finished")
	}
	before(t, spy.String(), "-----> Saving build cache\n", FinishedLine)
	checkVolume(t, vol, cache)

	restored, spy := build(nil)
	before(t, spy.String(), "-----> Build cache: reused the local copy", "-----> Build cache unchanged")
	before(t, spy.String(), "-----> Build cache unchanged", FinishedLine)
	if want := "./tool/bin:v1\n"; restored != want {
		t.Errorf("reused:\n%s\nwant:\n%s", restored, want)
	}

	fi, _ := os.Stat(cache)
	_, spy = build(change("echo v2 > tool/bin"))
	before(t, spy.String(), "-----> Saving build cache (changed: tool/bin)", FinishedLine)
	if fi2, _ := os.Stat(cache); fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("the changed cache was not stored")
	}
	checkVolume(t, vol, cache)
	restored, _ = build(nil)
	if want := "./tool/bin:v2\n"; restored != want {
		t.Errorf("reused after a change:\n%s\nwant:\n%s", restored, want)
	}
}

// TestCacheVolumeSaveStopped: a build saving its cache last that is
// stopped (here: its upload refused) after it finished leaves the volume
// marked unsaved; the next build reuses cache/ as that build left it
// while the blob it started from (or none) is still the cache, saves
// what differs from that blob, and restores when another build stored a
// blob since.
func TestCacheVolumeSaveStopped(t *testing.T) {
	s, err := blobstore.New(blobstore.ServerConfig{Backend: blobstore.NewMem(), Keys: []string{"key"}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	var failPut atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && failPut.Load() {
			http.Error(w, "stopped", http.StatusServiceUnavailable)
			return
		}
		s.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u := api.SignBlobURL(srv.URL, "key", api.BlobReadWrite, "/caches/app.tgz", time.Now().Add(time.Hour))
	vb := newVolumeBuilder(t, u, u)
	vol := t.TempDir()
	run := func(vol string, stop bool, env map[string]string) (restored, out string) {
		t.Helper()
		failPut.Store(stop)
		dir := t.TempDir()
		var buf syncBuffer
		_, err := Build(context.Background(), Config{
			Stdin: bytes.NewReader(tarDir(t, vb.app)), Output: &buf, BuildDir: dir, Result: filepath.Join(dir, "..", "result.json"),
			CacheIn: u, CacheOut: u, CacheVolume: vol, BuildpackURL: vb.pack, Env: env, SaveCacheLast: true,
		}, logging.Discard())
		if stop && (err == nil || !strings.Contains(buf.String(), FinishedLine)) {
			t.Fatalf("the stopped build: %v, want its save failed after it finished\n%s", err, buf.String())
		} else if !stop && err != nil {
			t.Fatalf("%v\n%s", err, buf.String())
		}
		data, _ := os.ReadFile(filepath.Join(dir, "restored"))
		return string(data), buf.String()
	}
	marker := func() *volumeMarker {
		t.Helper()
		m := (&build{cfg: Config{CacheVolume: vol}}).readMarker()
		if m == nil {
			t.Fatal("no marker in the volume")
		}
		return m
	}

	// The first build, stopped: nothing stored yet.
	run(vol, true, change("echo 1 > n && echo k > kept"))
	if m := marker(); !m.Unsaved || !m.NoBlob {
		t.Fatalf("marker after a first build stopped saving: %+v, want unsaved with no blob", m)
	}
	restored, out := run(vol, false, nil)
	wantIn(t, out, "-----> Build cache: reused the local copy", "-----> Build cache unchanged (storing it: the last build's save was stopped)")
	if restored != "./kept:k\n./n:1\n" {
		t.Errorf("reused: %q", restored)
	}
	ver, err := blobVersion(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	if m := marker(); m.Unsaved || m.SHA256 != ver {
		t.Fatalf("marker after a save: %+v, want the blob %s", m, ver)
	}

	// Stopped again, after a blob was stored: that blob is the base.
	run(vol, true, change("echo 2 > n"))
	if m := marker(); !m.Unsaved || m.NoBlob || m.SHA256 != ver {
		t.Fatalf("marker after a build stopped saving: %+v, want unsaved from %s", m, ver)
	}
	restored, out = run(vol, false, change("echo x > extra"))
	wantIn(t, out, "-----> Build cache: reused the local copy", "-----> Saving build cache (changed: extra, n)")
	if restored != "./kept:k\n./n:2\n" {
		t.Errorf("reused: %q", restored)
	}
	run(vol, false, change("rm extra"))
	checkBlob := func(want string) {
		t.Helper()
		got, _ := run(t.TempDir(), false, nil) // another host restores the blob
		if got != want {
			t.Errorf("the blob holds %q, want %q", got, want)
		}
	}
	checkBlob("./kept:k\n./n:2\n")

	// Stopped, then the machine restarts: the unsaved marker, written
	// without a sync, is not trusted in another boot, and the stored blob
	// is restored.
	run(vol, true, change("echo lost > n"))
	m := marker()
	if !m.Unsaved || m.Boot == "" || m.Boot != bootID() {
		t.Fatalf("unsaved marker: %+v, want this boot's (%s)", m, bootID())
	}
	m.Boot = "another-boot"
	data, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(vol, volMarker), data, 0o600); err != nil {
		t.Fatal(err)
	}
	restored, out = run(vol, false, nil)
	wantIn(t, out, "-----> Restoring build cache")
	if restored != "./kept:k\n./n:2\n" {
		t.Errorf("restored after a restart: %q", restored)
	}

	// Stopped, then another host stores a blob: this copy is stale.
	run(vol, true, change("echo 3 > n"))
	run(t.TempDir(), false, change("echo elsewhere > n"))
	restored, out = run(vol, false, nil)
	wantIn(t, out, "-----> Restoring build cache")
	if restored != "./kept:k\n./n:elsewhere\n" {
		t.Errorf("restored after another host saved: %q", restored)
	}
}
