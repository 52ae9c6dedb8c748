package slugbuilder

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

func TestParseRelease(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"block", "---\naddons: []\ndefault_process_types:\n  web: bin/app\n  worker: \"bin/w -x\"\n", map[string]string{"web": "bin/app", "worker": "bin/w -x"}, false},
		{"empty map", "---\ndefault_process_types: {}\n", map[string]string{}, false},
		{"other keys after", "default_process_types:\n  web: x\nconfig_vars:\n  A: b\n", map[string]string{"web": "x"}, false},
		{"nothing", "", map[string]string{}, false},
		{"inline map", "default_process_types: {web: x}\n", nil, true},
		{"bad line", "default_process_types:\n  nonsense\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRelease(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// writeTree creates files (name → content; a trailing / makes a directory).
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(content, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel != "." {
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestSlugignore(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		".slugignore":        "# comment\n*.psd\n/docs\nlog/\nsub/tmp\n",
		"a.psd":              "x",
		"img/b.psd":          "x",
		"img/keep.png":       "x",
		"docs/x.md":          "x",
		"src/docs/keep.md":   "x",
		"log/":               "",
		"src/log":            "a file, not a directory",
		"sub/tmp/x":          "x",
		"other/sub/tmp/keep": "x",
		"main.go":            "x",
	})
	removed, err := applySlugignore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a.psd", "docs", "img/b.psd", "log", "sub/tmp"}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	want := []string{".slugignore", "img", "img/keep.png", "main.go", "other", "other/sub", "other/sub/tmp", "other/sub/tmp/keep", "src", "src/docs", "src/docs/keep.md", "src/log", "sub"}
	if diff := cmp.Diff(want, listTree(t, dir)); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
}

func tarOf(t *testing.T, entries []tar.Header, contents map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h.Size = int64(len(contents[h.Name]))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, contents[h.Name])
	}
	tw.Close()
	return buf.Bytes()
}

func TestUntarRejectsEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []tar.Header
	}{
		{"dotdot", []tar.Header{{Name: "../evil", Typeflag: tar.TypeReg}}},
		{"absolute", []tar.Header{{Name: "/etc/evil", Typeflag: tar.TypeReg}}},
		{"through symlink", []tar.Header{{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/tmp"}, {Name: "link/evil", Typeflag: tar.TypeReg}}},
		{"hardlink out", []tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			err := untar(bytes.NewReader(tarOf(t, tt.entries, nil)), dir)
			if err == nil {
				t.Fatal("untar accepted an escaping entry")
			}
		})
	}
}

func TestTarRoundTrip(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"bin/run": "#!/bin/sh\necho hi\n", "a/b/c.txt": "c", "empty/": ""})
	os.Symlink("a/b/c.txt", filepath.Join(src, "link"))
	os.Link(filepath.Join(src, "a/b/c.txt"), filepath.Join(src, "hard"))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(filepath.Join(src, "bin/run"), old, old)
	var buf bytes.Buffer
	if err := writeTarGz(&buf, src, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := untar(&buf, dst); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(listTree(t, src), listTree(t, dst)); diff != "" {
		t.Errorf("tree (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(filepath.Join(dst, "bin/run"))
	if err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Errorf("bin/run lost its exec bit: %v %v", fi, err)
	}
	if fi != nil && !fi.ModTime().Equal(old) {
		t.Errorf("bin/run mtime = %v, want %v", fi.ModTime(), old)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "link")); l != "a/b/c.txt" {
		t.Errorf("link = %q", l)
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a
// command's stdout and stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tarDir(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeTarGz(&buf, dir, 0, 0); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBuildOnHost runs whole builds in-process on this machine (no
// stack): the shipped procfile buildpack, a custom buildpack given as a
// directory, env vars, SOURCE_VERSION, the cache and an HTTP slug target.
func TestBuildOnHost(t *testing.T) {
	ctx := context.Background()

	t.Run("procfile", func(t *testing.T) {
		app := t.TempDir()
		writeTree(t, app, map[string]string{"Procfile": "web: ./run.sh\n", "run.sh": "#!/bin/sh\n", ".slugignore": "*.log\n", "debug.log": "x"})
		build, work := t.TempDir(), t.TempDir()
		var out syncBuffer
		res, err := Build(ctx, Config{
			Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: build, WorkDir: work,
			Slug: filepath.Join(work, "slug.tgz"), Result: filepath.Join(work, "result.json"),
			SourceVersion: "abc123",
		}, logging.Discard())
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if diff := cmp.Diff(map[string]string{"web": "./run.sh"}, res.ProcessTypes); diff != "" {
			t.Errorf("process types (-want +got):\n%s", diff)
		}
		if res.Buildpack != "Procfile" || res.Size == 0 || len(res.SHA256) != 64 || res.SourceVersion != "abc123" {
			t.Errorf("result = %+v", res)
		}
		// No cache configured: no cache phase.
		if diff := cmp.Diff([]string{"fetch", "compile", "slug"}, phaseNames(res)); diff != "" {
			t.Errorf("phases (-want +got):\n%s", diff)
		}
		// The slug is the app under ./app/, owned by the app user.
		slug := readLayer(t, filepath.Join(work, "slug.tgz"))
		for _, hdr := range slug.headers {
			if hdr.Uid != stack.AppUID || hdr.Gid != stack.AppGID {
				t.Errorf("%s is owned by %d:%d", hdr.Name, hdr.Uid, hdr.Gid)
			}
		}
		if diff := cmp.Diff([]string{"./app/", "./app/.slugignore", "./app/Procfile", "./app/run.sh"}, slug.names); diff != "" {
			t.Errorf("slug entries (-want +got):\n%s", diff)
		}
		if _, err := os.Stat(filepath.Join(build, "debug.log")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf(".slugignore'd debug.log is still in the slug (stat err %v)", err)
		}
		var fromFile api.SlugBuildResult
		data, _ := os.ReadFile(filepath.Join(work, "result.json"))
		if err := json.Unmarshal(data, &fromFile); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(*res, fromFile); diff != "" {
			t.Errorf("result file (-want +got):\n%s", diff)
		}
		for _, want := range []string{"-----> Procfile app detected", "Procfile declares types -> web"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
		}
	})

	// The cache and the slug are written at once: either one's failure
	// fails the build with its own error, not the other's cancellation.
	t.Run("save or slug fails", func(t *testing.T) {
		for _, bad := range []string{"/cache.tgz", "/slug.tgz"} {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				switch {
				case r.Method == http.MethodPut && r.URL.Path == bad:
					http.Error(w, "disk full", http.StatusInsufficientStorage)
				case r.Method == http.MethodPut:
				default:
					http.NotFound(w, r)
				}
			}))
			app := t.TempDir()
			writeTree(t, app, map[string]string{"Procfile": "web: ./run.sh\n", "run.sh": "#!/bin/sh\n"})
			var out syncBuffer
			_, err := Build(ctx, Config{
				Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: t.TempDir(), WorkDir: t.TempDir(),
				Slug: srv.URL + "/slug.tgz", CacheIn: srv.URL + "/cache.tgz", CacheOut: srv.URL + "/cache.tgz",
			}, logging.Discard())
			srv.Close()
			want := map[string]string{"/cache.tgz": "save build cache", "/slug.tgz": "write slug"}[bad]
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "507") {
				t.Errorf("PUT %s refused: build error %v, want one that says %q and the status\n%s", bad, err, want, out.String())
			}
		}
	})

	t.Run("custom buildpack, env, cache, slug over HTTP", func(t *testing.T) {
		pack := t.TempDir()
		writeTree(t, pack, map[string]string{
			"bin/detect": "#!/bin/sh\necho Custom\n",
			"bin/compile": "#!/bin/sh\nset -e\necho \"greeting=$(cat $3/GREETING)\" > $1/info.txt\n" +
				"echo \"version=$SOURCE_VERSION stack=$STACK\" >> $1/info.txt\n" +
				"n=$(cat $2/count 2>/dev/null || echo 0); echo $((n+1)) > $2/count; echo \"builds=$((n+1))\" >> $1/info.txt\nsleep 0.2\necho compiled\n",
			"bin/release": "#!/bin/sh\necho '---'\necho 'default_process_types:'\necho '  web: cat info.txt'\n",
		})
		app := t.TempDir()
		writeTree(t, app, map[string]string{"README": "hi"})
		var mu sync.Mutex
		blobs := map[string][]byte{}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			switch r.Method {
			case http.MethodPut:
				blobs[r.URL.Path], _ = io.ReadAll(r.Body)
			case http.MethodGet:
				b, ok := blobs[r.URL.Path]
				if !ok {
					http.NotFound(w, r)
					return
				}
				w.Write(b)
			}
		}))
		defer srv.Close()
		for i := 1; i <= 2; i++ {
			build := t.TempDir()
			var out syncBuffer
			res, err := Build(ctx, Config{
				Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: build,
				Slug: srv.URL + "/slug.tgz", CacheIn: srv.URL + "/cache.tgz", CacheOut: srv.URL + "/cache.tgz",
				BuildpackURL: pack, SourceVersion: "deadbeef", Env: map[string]string{"GREETING": "hi there"},
			}, logging.Discard())
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			data, _ := os.ReadFile(filepath.Join(build, "info.txt"))
			want := "greeting=hi there\nversion=deadbeef stack=flynn-bookworm\nbuilds=" + string(rune('0'+i)) + "\n"
			if diff := cmp.Diff(want, string(data)); diff != "" {
				t.Errorf("build %d info.txt (-want +got):\n%s", i, diff)
			}
			if res.ProcessTypes["web"] != "cat info.txt" || res.Buildpack != "Custom" {
				t.Errorf("result = %+v", res)
			}
			// The cache is restored before and saved after the compile,
			// each its own phase. The compile sleeps 0.2s. The save and
			// the slug run at once; the other phases do not overlap.
			if diff := cmp.Diff([]string{"fetch", "restore", "compile", "save", "slug"}, phaseNames(res)); diff != "" {
				t.Errorf("build %d phases (-want +got):\n%s", i, diff)
			}
			var sum, save, slugMS int64
			for _, p := range res.Phases {
				sum += p.MS
				switch p.Name {
				case "compile":
					if p.MS < 200 {
						t.Errorf("build %d: compile took %dms, want at least the script's 200ms", i, p.MS)
					}
				case "save":
					save = p.MS
				case "slug":
					slugMS = p.MS
				}
			}
			if sum -= min(save, slugMS); sum > res.DurationMS {
				t.Errorf("build %d: phases add up to %dms (the save and slug counted once), more than the build's %dms", i, sum, res.DurationMS)
			}
			// The slug's lines come after the cache's, as they would one
			// after the other.
			o := out.String()
			saved := max(strings.Index(o, "Saving build cache"), strings.Index(o, "Build cache unchanged"))
			if slugAt := strings.Index(o, "Compressing slug"); saved < 0 || slugAt < saved {
				t.Errorf("build %d: the slug's lines come before the cache's:\n%s", i, o)
			}
			mu.Lock()
			slug := blobs["/slug.tgz"]
			mu.Unlock()
			if int64(len(slug)) != res.Size {
				t.Errorf("slug PUT has %d bytes, result says %d", len(slug), res.Size)
			}
			// The merged process types are written into the slug's Procfile.
			if p, _ := os.ReadFile(filepath.Join(build, "Procfile")); string(p) != "web: cat info.txt\n" {
				t.Errorf("Procfile = %q", p)
			}
		}
	})

	t.Run(".buildpacks runs each in turn", func(t *testing.T) {
		one, two := t.TempDir(), t.TempDir()
		writeTree(t, one, map[string]string{
			"bin/detect":  "#!/bin/sh\necho One\n",
			"bin/compile": "#!/bin/sh\necho one >> $1/order\n",
			"bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: one\\n  worker: one\\n'\n",
		})
		writeTree(t, two, map[string]string{
			"bin/detect":  "#!/bin/sh\nexit 1\n",
			"bin/compile": "#!/bin/sh\necho two >> $1/order\n",
			"bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: two\\n'\n",
		})
		app := t.TempDir()
		writeTree(t, app, map[string]string{".buildpacks": "# packs\n" + one + "\n\n" + two + "\n"})
		build := t.TempDir()
		var out syncBuffer
		res, err := Build(ctx, Config{Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: build}, logging.Discard())
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if data, _ := os.ReadFile(filepath.Join(build, "order")); string(data) != "one\ntwo\n" {
			t.Errorf("order = %q", data)
		}
		if diff := cmp.Diff(map[string]string{"web": "two", "worker": "one"}, res.ProcessTypes); diff != "" {
			t.Errorf("process types (-want +got):\n%s", diff)
		}
		if want := "One, " + filepath.Base(two); res.Buildpack != want {
			t.Errorf("buildpack = %q, want %q", res.Buildpack, want)
		}
	})

	t.Run("no buildpack accepts", func(t *testing.T) {
		app := t.TempDir()
		writeTree(t, app, map[string]string{"README": "hi"})
		var out syncBuffer
		_, err := Build(ctx, Config{Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: t.TempDir()}, logging.Discard())
		if err == nil || !strings.Contains(err.Error(), "no buildpack accepts") {
			t.Fatalf("err = %v", err)
		}
		if !strings.Contains(out.String(), "Build failed") {
			t.Errorf("output does not say the build failed:\n%s", out.String())
		}
	})
}

// BenchmarkBuildProcfileApp measures a whole in-process build of a small
// Procfile app: unpack, detect, compile, release, slug.
func BenchmarkBuildProcfileApp(b *testing.B) {
	app := b.TempDir()
	os.WriteFile(filepath.Join(app, "Procfile"), []byte("web: ./web\n"), 0o644)
	os.WriteFile(filepath.Join(app, "web"), bytes.Repeat([]byte("x"), 1<<20), 0o755)
	var src bytes.Buffer
	if err := writeTarGz(&src, app, 0, 0); err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	b.ResetTimer()
	for range b.N {
		_, err := Build(context.Background(), Config{
			Stdin: bytes.NewReader(src.Bytes()), BuildDir: filepath.Join(work, "app"), WorkDir: filepath.Join(work, "w"),
			Slug: filepath.Join(work, "slug.tgz"),
		}, logging.Discard())
		if err != nil {
			b.Fatal(err)
		}
	}
}

func phaseNames(res *api.SlugBuildResult) []string {
	var names []string
	for _, p := range res.Phases {
		names = append(names, p.Name)
	}
	return names
}
