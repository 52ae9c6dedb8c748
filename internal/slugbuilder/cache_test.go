package slugbuilder

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/internal/logging"
)

// cacheMembers reads a cache file and returns its members' names and
// compressed bytes.
func cacheMembers(t *testing.T, file string) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	members, err := restoreChunks(bytes.NewReader(data), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, m := range members {
		got[m.name] = data[m.start:m.end]
	}
	return got
}

// TestBuildCache builds an app several times with a buildpack that changes
// its cache on demand, and checks what each save writes: nothing when the
// cache did not change, a fresh member only for a changed entry (the
// others are copied byte for byte), no member for a removed entry, and a
// cache in the old one-member format is read and rewritten in members.
func TestBuildCache(t *testing.T) {
	pack := t.TempDir()
	writeTree(t, pack, map[string]string{
		"bin/detect": "#!/bin/sh\necho Cachey\n",
		// The app's CHANGE variable is a shell snippet run in CACHE_DIR;
		// the restored cache is listed into the slug.
		"bin/compile": "#!/bin/sh\nset -e\ncd \"$2\"\n(find . -type f | sort | xargs -r grep -H .) > \"$1/restored\" || true\n" +
			"[ ! -d sub ] || stat -c %a sub > \"$1/submode\"\n" +
			"[ ! -f \"$3/CHANGE\" ] || sh \"$3/CHANGE\"\n",
		"bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: true\\n'\n",
	})
	app := t.TempDir()
	writeTree(t, app, map[string]string{"README": "hi"})
	cache := filepath.Join(t.TempDir(), "cache.tgz")

	var lastBuild string
	build := func(t *testing.T, change string) (restored, out string) {
		t.Helper()
		dir := t.TempDir()
		lastBuild = dir
		var buf syncBuffer
		env := map[string]string{}
		if change != "" {
			env["CHANGE"] = change
		}
		_, err := Build(context.Background(), Config{
			Stdin: bytes.NewReader(tarDir(t, app)), Output: &buf, BuildDir: dir,
			CacheIn: cache, CacheOut: cache, BuildpackURL: pack, Env: env,
		}, logging.Discard())
		if err != nil {
			t.Fatalf("%v\n%s", err, buf.String())
		}
		data, _ := os.ReadFile(filepath.Join(dir, "restored"))
		return string(data), buf.String()
	}
	wantOut := func(t *testing.T, out, want string) {
		t.Helper()
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	_, out := build(t, "mkdir -p tool sub/deep sub/other && echo v1 > tool/bin && echo 1 > sub/deep/n && echo o > sub/other/o && echo x > gone")
	wantOut(t, out, "-----> No build cache yet")
	wantOut(t, out, "-----> Saving build cache\n")
	first := cacheMembers(t, cache)
	if diff := cmp.Diff([]string{"gone", "sub/", "sub/deep", "sub/other", "tool/", "tool/bin"}, sortedKeys(first)); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}

	fi1, _ := os.Stat(cache)
	// A file made and removed again (scratch space) is no change.
	restored, out := build(t, "touch sub/deep/scratch && rm sub/deep/scratch")
	if want := "./gone:x\n./sub/deep/n:1\n./sub/other/o:o\n./tool/bin:v1\n"; restored != want {
		t.Errorf("restored:\n%s\nwant:\n%s", restored, want)
	}
	wantOut(t, out, "-----> Build cache unchanged")
	if fi2, _ := os.Stat(cache); !fi2.ModTime().Equal(fi1.ModTime()) {
		t.Errorf("an unchanged cache was written again")
	}

	_, out = build(t, "echo 2 > sub/deep/n && rm gone")
	wantOut(t, out, "-----> Saving build cache (changed: sub/deep)")
	second := cacheMembers(t, cache)
	if diff := cmp.Diff([]string{"sub/", "sub/deep", "sub/other", "tool/", "tool/bin"}, sortedKeys(second)); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	for _, c := range []string{"sub/", "sub/other", "tool/", "tool/bin"} {
		if !bytes.Equal(first[c], second[c]) {
			t.Errorf("the unchanged chunk %s was compressed again instead of copied", c)
		}
	}
	restored, _ = build(t, "chmod 600 tool/bin")
	if want := "./sub/deep/n:2\n./sub/other/o:o\n./tool/bin:v1\n"; restored != want {
		t.Errorf("restored:\n%s\nwant:\n%s", restored, want)
	}
	third := cacheMembers(t, cache)
	if bytes.Equal(second["tool/bin"], third["tool/bin"]) {
		t.Errorf("a chmod in tool did not count as a change")
	}
	// Same size, same mtime: only the ctime tells.
	build(t, "r=$(mktemp) && touch -r tool/bin $r && echo v3 > tool/bin && touch -r $r tool/bin")
	if fourth := cacheMembers(t, cache); bytes.Equal(third["tool/bin"], fourth["tool/bin"]) {
		t.Errorf("a rewrite of tool/bin that kept size and mtime did not count as a change")
	}
	if restored, _ = build(t, ""); !strings.Contains(restored, "./tool/bin:v3") {
		t.Errorf("restored:\n%s\nwant tool/bin v3", restored)
	}

	// A top-level directory's mode is a chunk of its own.
	_, out = build(t, "chmod 700 sub")
	wantOut(t, out, "-----> Saving build cache (changed: sub/)")
	build(t, "")
	if mode, _ := os.ReadFile(filepath.Join(lastBuild, "submode")); string(mode) != "700\n" {
		t.Errorf("restored sub has mode %q, want 700", mode)
	}

	// A cache written as one tar.gz of the whole tree.
	old := t.TempDir()
	writeTree(t, old, map[string]string{"a/f": "old a\n", "b": "old b\n"})
	if err := os.WriteFile(cache, tarDir(t, old), 0o644); err != nil {
		t.Fatal(err)
	}
	restored, out = build(t, "")
	if want := "./a/f:old a\n./b:old b\n"; restored != want {
		t.Errorf("restored from the old format:\n%s\nwant:\n%s", restored, want)
	}
	wantOut(t, out, "-----> Saving build cache\n")
	if diff := cmp.Diff([]string{"a/", "a/f", "b"}, sortedKeys(cacheMembers(t, cache))); diff != "" {
		t.Errorf("members after rewriting the old format (-want +got):\n%s", diff)
	}

	// A damaged cache is dropped, not fatal.
	os.WriteFile(cache, []byte("\x1f\x8b garbage"), 0o644)
	restored, out = build(t, "echo new > fresh")
	wantOut(t, out, "build cache unusable")
	if restored != "" {
		t.Errorf("restored from a damaged cache: %q", restored)
	}
	if diff := cmp.Diff([]string{"fresh"}, sortedKeys(cacheMembers(t, cache))); diff != "" {
		t.Errorf("members after a damaged cache (-want +got):\n%s", diff)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestCacheDirPath checks that builds without a work directory use the
// same CACHE_DIR path each time (tools key caches by path), the one a
// build job's cache volume gives, and a build that finds it taken uses
// another.
func TestCacheDirPath(t *testing.T) {
	if _, err := os.Stat(StableCacheRoot); err == nil {
		t.Skipf("%s exists (another build is running?)", StableCacheRoot)
	}
	pack := t.TempDir()
	writeTree(t, pack, map[string]string{
		"bin/detect":  "#!/bin/sh\necho Where\n",
		"bin/compile": "#!/bin/sh\necho \"$2\" > \"$1/cachedir\"\n",
		"bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: true\\n'\n",
	})
	app := t.TempDir()
	writeTree(t, app, map[string]string{"README": "hi"})
	cacheDir := func(vol string) string {
		t.Helper()
		dir := t.TempDir()
		var out syncBuffer
		if _, err := Build(context.Background(), Config{
			Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: dir, BuildpackURL: pack, CacheVolume: vol,
		}, logging.Discard()); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		data, _ := os.ReadFile(filepath.Join(dir, "cachedir"))
		return strings.TrimSpace(string(data))
	}
	if got := cacheDir(""); got != stableCacheDir {
		t.Errorf("CACHE_DIR = %s, want %s", got, stableCacheDir)
	}
	if _, err := os.Stat(StableCacheRoot); err == nil {
		t.Errorf("%s is left after the build", StableCacheRoot)
	}
	// A build job mounts its volume at StableCacheRoot.
	vol := t.TempDir()
	if got, want := cacheDir(vol), filepath.Join(vol, "cache"); got != want {
		t.Errorf("CACHE_DIR with a volume = %s, want %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(vol, "cache")); err != nil {
		t.Errorf("the volume's cache is gone after the build: %v", err)
	}
	if err := os.Mkdir(StableCacheRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(StableCacheRoot)
	if got := cacheDir(""); got == stableCacheDir || got == "" {
		t.Errorf("CACHE_DIR = %q while %s is taken", got, StableCacheRoot)
	}
}

// failAfter fails every write once n bytes went through.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

// TestWriteCacheMembers: every member is written once, where the result
// says, and they restore to the same tree; a failing writer ends the save
// with its error.
func TestWriteCacheMembers(t *testing.T) {
	dir := t.TempDir()
	files := map[string]int{"toolchain/go1/bin/go": 300_000, "gobuild/00/a": 10, "gobuild/01/b": 20_000, "gobuild/02/c": 5, "top": 1}
	for name, size := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		b := make([]byte, size)
		rand.NewChaCha8([32]byte{byte(size)}).Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prints, sizes, err := fingerprints(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := largestFirst(slices.Sorted(maps.Keys(prints)), sizes)
	if names[0] != "toolchain/go1" || names[1] != "gobuild/01" {
		t.Fatalf("largestFirst: %v", names)
	}
	var blob bytes.Buffer
	w := &offsetWriter{w: &blob}
	members, err := writeCacheMembers(w, dir, names, os.Getuid(), os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != len(names) || w.n != int64(blob.Len()) {
		t.Fatalf("%d members for %d names, %d bytes written of %d", len(members), len(names), w.n, blob.Len())
	}
	restoredDir := t.TempDir()
	restored, err := restoreChunks(bytes.NewReader(blob.Bytes()), restoredDir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, m := range members {
		got = append(got, m.name)
		if restored[i].name != m.name || restored[i].start != m.start || restored[i].end != m.end {
			t.Errorf("member %d: written %+v, restored %+v", i, m, restored[i])
		}
	}
	slices.Sort(got)
	if want := slices.Sorted(slices.Values(names)); !slices.Equal(got, want) {
		t.Errorf("members %v, want one each of %v", got, want)
	}
	for name := range files {
		a, _ := os.ReadFile(filepath.Join(dir, name))
		b, err := os.ReadFile(filepath.Join(restoredDir, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s restored differs (%v)", name, err)
		}
	}

	// A writer failing in the middle: the save ends with its error.
	for _, n := range []int{0, 100, blob.Len() / 2} {
		_, err := writeCacheMembers(&offsetWriter{w: &failAfter{n: n}}, dir, names, os.Getuid(), os.Getgid())
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("failing after %d bytes: %v", n, err)
		}
	}
}
