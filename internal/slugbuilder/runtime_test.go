package slugbuilder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/slug"
)

// TestRuntimeLayer builds an app three times with a buildpack that
// installs a "runtime" into .rt, as the Node.js buildpack installs Node
// into .node: made anew in each build (directories and links with new
// times, the tool copied with its own), a profile script written anew,
// and a hard link from the app to the tool. The runtime goes to a layer
// of its own; the second build, whose runtime is the same, reuses the
// first's layer and does not write one; the third, whose tool changed,
// writes a new one.
func TestRuntimeLayer(t *testing.T) {
	ctx := context.Background()
	pack, src := t.TempDir(), t.TempDir()
	writeTree(t, pack, map[string]string{
		"bin/detect": "#!/bin/sh\necho Runtime\n",
		"bin/compile": "#!/bin/sh\nset -e\nmkdir -p $1/.rt/bin $1/.profile.d\n" +
			"cp -p " + src + "/tool $1/.rt/bin/tool\nln -s tool $1/.rt/bin/alias\n" +
			// Dependencies, kept in CACHE_DIR for the next build
			// (unless FRESH is set: installed in each build).
			"mkdir -p $1/node_modules/dep\ncp -p " + src + "/tool $1/node_modules/dep/index.js\n" +
			"if [ -f $3/FRESH ]; then echo lock > $1/node_modules/.package-lock.json; rm -rf $2/node_modules; " +
			"else cp -p " + src + "/tool $1/node_modules/.package-lock.json; mkdir -p $2/node_modules; fi\n" +
			"touch -d @$(cat $3/STAMP) $1/node_modules $1/node_modules/dep\n" +
			// A framework's build output, and a build tool's cache in
			// node_modules, new in each build.
			"mkdir -p $1/.next $1/node_modules/.cache/tool\necho \"$SOURCE_VERSION\" > $1/.next/BUILD_ID\n" +
			"echo \"$SOURCE_VERSION\" > $1/node_modules/.cache/tool/entry\n" +
			"echo 'export PATH=$HOME/.rt/bin:$PATH' > $1/.profile.d/rt.sh\n" +
			"echo \"$SOURCE_VERSION\" > $1/app.txt\nln $1/.rt/bin/tool $1/hard\n" +
			// Made at another time in each build.
			"touch -d @$(cat $3/STAMP) $1/.rt $1/.rt/bin\ntouch -h -d @$(cat $3/STAMP) $1/.rt/bin/alias\n",
		"bin/release": "#!/bin/sh\necho '---'\necho 'default_process_types:'\necho '  web: cat app.txt'\n",
	})
	tool := func(content string) {
		t.Helper()
		p := filepath.Join(src, "tool")
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	app := t.TempDir()
	// A hidden directory of the source's, at each commit's time.
	writeTree(t, app, map[string]string{"README": "hi", ".github/ci.yml": "on: push\n"})
	work := t.TempDir()
	stamp := 1000000000
	fresh := false
	build := func(rev, digest string) (*api.SlugBuildResult, string, string) {
		t.Helper()
		stamp += 1000
		var out syncBuffer
		slugPath, runtimePath := filepath.Join(work, rev+".tgz"), filepath.Join(work, rev+"-runtime.tgz")
		env := map[string]string{"STAMP": strconv.Itoa(stamp)}
		if fresh {
			env["FRESH"] = "1"
		}
		res, err := Build(ctx, Config{
			Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: t.TempDir(), WorkDir: t.TempDir(),
			Slug: slugPath, RuntimeSlug: runtimePath, RuntimeDigest: digest,
			BuildpackURL: pack, SourceVersion: rev, Env: env,
		}, logging.Discard())
		if err != nil {
			t.Fatalf("build %s: %v\n%s", rev, err, out.String())
		}
		return res, out.String(), runtimePath
	}

	tool("#!/bin/sh\necho tool v1\n")
	first, out, runtime1 := build("rev1", "")
	if first.Runtime == nil || len(first.Runtime.Digest) != 64 || first.Runtime.Reused || len(first.Runtime.SHA256) != 64 || first.Runtime.Size == 0 {
		t.Fatalf("first build's runtime layer: %+v\n%s", first.Runtime, out)
	}
	if !strings.Contains(out, "runtime layer (.rt, node_modules)") {
		t.Errorf("first build's output does not name the runtime layer:\n%s", out)
	}
	rt := readLayer(t, runtime1)
	if diff := cmp.Diff([]string{"./app/", "./app/.rt/", "./app/.rt/bin/", "./app/.rt/bin/alias", "./app/.rt/bin/tool",
		"./app/node_modules/", "./app/node_modules/.package-lock.json", "./app/node_modules/dep/", "./app/node_modules/dep/index.js"}, rt.names); diff != "" {
		t.Errorf("runtime layer entries (-want +got):\n%s", diff)
	}
	if !rt.safe {
		t.Error("the runtime layer is not a safe layer (slug.Check)")
	}
	if got := rt.contents["./app/.rt/bin/tool"]; got != "#!/bin/sh\necho tool v1\n" {
		t.Errorf("runtime layer's tool = %q", got)
	}
	// The slug holds the rest; the hard link to the runtime's tool is a
	// file of its own there, since the layers are separate tars.
	sl := readLayer(t, filepath.Join(work, "rev1.tgz"))
	if diff := cmp.Diff([]string{"./app/", "./app/.github/", "./app/.github/ci.yml", "./app/.next/", "./app/.next/BUILD_ID", "./app/.profile.d/", "./app/.profile.d/rt.sh",
		"./app/Procfile", "./app/README", "./app/app.txt", "./app/hard",
		"./app/node_modules/", "./app/node_modules/.cache/", "./app/node_modules/.cache/tool/", "./app/node_modules/.cache/tool/entry"}, sl.names); diff != "" {
		t.Errorf("slug entries (-want +got):\n%s", diff)
	}
	if !sl.safe || sl.contents["./app/hard"] != "#!/bin/sh\necho tool v1\n" {
		t.Errorf("slug: safe %v, hard = %q", sl.safe, sl.contents["./app/hard"])
	}

	// The same runtime, made again (the source and the build's output
	// at new times): reused, not written.
	os.Chtimes(filepath.Join(app, ".github", "ci.yml"), time.Now(), time.Now())
	second, out, runtime2 := build("rev2", first.Runtime.Digest)
	if diff := cmp.Diff(&api.SlugLayerResult{Digest: first.Runtime.Digest, Reused: true}, second.Runtime); diff != "" {
		t.Errorf("second build's runtime layer (-want +got):\n%s\n%s", diff, out)
	}
	if !strings.Contains(out, "unchanged: reusing the last release's") {
		t.Errorf("second build's output does not say the runtime layer is reused:\n%s", out)
	}
	if _, err := os.Stat(runtime2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second build wrote a runtime layer (stat: %v)", err)
	}
	if got := readLayer(t, filepath.Join(work, "rev2.tgz")).contents["./app/app.txt"]; got != "rev2\n" {
		t.Errorf("second slug's app.txt = %q", got)
	}

	// A changed runtime: a new layer, with the new tool.
	tool("#!/bin/sh\necho tool v2\n")
	third, out, runtime3 := build("rev3", first.Runtime.Digest)
	if third.Runtime == nil || third.Runtime.Reused || third.Runtime.Digest == first.Runtime.Digest {
		t.Fatalf("third build's runtime layer: %+v\n%s", third.Runtime, out)
	}
	if got := readLayer(t, runtime3).contents["./app/.rt/bin/tool"]; got != "#!/bin/sh\necho tool v2\n" {
		t.Errorf("third runtime layer's tool = %q", got)
	}
	if got := readLayer(t, runtime3).contents["./app/node_modules/dep/index.js"]; got != "#!/bin/sh\necho tool v2\n" {
		t.Errorf("third runtime layer's node_modules/dep/index.js = %q", got)
	}

	// A node_modules the buildpack does not keep in CACHE_DIR (installed
	// anew in each build) goes with the app: the runtime layer, without
	// it, is new once, then reused while the install is new each time.
	fresh = true
	fourth, out, runtime4 := build("rev4", third.Runtime.Digest)
	if fourth.Runtime == nil || fourth.Runtime.Reused {
		t.Fatalf("fourth build's runtime layer: %+v\n%s", fourth.Runtime, out)
	}
	if names := readLayer(t, runtime4).names; slices.Contains(names, "./app/node_modules/") {
		t.Errorf("a node_modules installed in the build is in the runtime layer: %v", names)
	}
	if got := readLayer(t, filepath.Join(work, "rev4.tgz")).contents["./app/node_modules/.package-lock.json"]; got != "lock\n" {
		t.Errorf("fourth slug's node_modules/.package-lock.json = %q", got)
	}
	if !strings.Contains(out, "runtime layer (.rt):") {
		t.Errorf("fourth build's output does not name the runtime layer without node_modules:\n%s", out)
	}
	fifth, out, _ := build("rev5", fourth.Runtime.Digest)
	if fifth.Runtime == nil || !fifth.Runtime.Reused {
		t.Errorf("fifth build's runtime layer, node_modules installed again: %+v\n%s", fifth.Runtime, out)
	}
	fresh = false

	// Without RuntimeSlug, one slug of all, as before.
	var buf syncBuffer
	res, err := Build(ctx, Config{Stdin: bytes.NewReader(tarDir(t, app)), Output: &buf, BuildDir: t.TempDir(), WorkDir: t.TempDir(),
		Slug: filepath.Join(work, "one.tgz"), BuildpackURL: pack, SourceVersion: "one", Env: map[string]string{"STAMP": "1"}}, logging.Discard())
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if res.Runtime != nil {
		t.Errorf("a build without RuntimeSlug reported a runtime layer: %+v", res.Runtime)
	}
	if names := readLayer(t, filepath.Join(work, "one.tgz")).names; !cmp.Equal(names[:8], []string{"./app/", "./app/.github/", "./app/.github/ci.yml", "./app/.next/", "./app/.next/BUILD_ID", "./app/.profile.d/", "./app/.profile.d/rt.sh", "./app/.rt/"}) {
		t.Errorf("one slug's entries: %v", names)
	}
}

// layerTar is what readLayer found in a slug or layer: its entries in
// order (names and headers), its files' contents, and slug.Check's verdict.
type layerTar struct {
	names    []string
	headers  []*tar.Header
	contents map[string]string
	safe     bool
}

func readLayer(t *testing.T, path string) layerTar {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l := layerTar{contents: map[string]string{}}
	if l.safe, err = slug.Check(bytes.NewReader(data)); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for tr := tar.NewReader(zr); ; {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		l.names = append(l.names, hdr.Name)
		l.headers = append(l.headers, hdr)
		if hdr.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			l.contents[hdr.Name] = string(b)
		}
	}
	return l
}

// TestRuntimeLayerFromCache: a buildpack that keeps its runtime in
// CACHE_DIR and links it into the app (as the Node.js buildpack links
// .node) gets a slug that holds the runtime as a directory: in the
// runtime layer, or in the one slug without one. Links that lead
// elsewhere, or to CACHE_DIR itself, stay links.
func TestRuntimeLayerFromCache(t *testing.T) {
	ctx := context.Background()
	pack := t.TempDir()
	writeTree(t, pack, map[string]string{
		"bin/detect": "#!/bin/sh\necho Runtime\n",
		"bin/compile": "#!/bin/sh\nset -e\nmkdir -p $2/rt/bin\n" +
			"[ -e $2/rt/bin/tool ] || { printf 'tool v1\\n' > $2/rt/bin/tool; touch -d @1000000000 $2/rt/bin/tool; }\n" +
			"ln -s $2/rt $1/.rt\nln -s /etc $1/.etc\nln -s $2 $1/.cache\n" +
			// node_modules kept in CACHE_DIR and linked: it is not split
			// between the layers (the app has it whole).
			"mkdir -p $2/node_modules/dep\necho dep > $2/node_modules/dep/index.js\nln -s $2/node_modules $1/node_modules\n",
		"bin/release": "#!/bin/sh\necho '---'\necho 'default_process_types:'\necho '  web: cat .rt/bin/tool'\n",
	})
	app := t.TempDir()
	writeTree(t, app, map[string]string{"README": "hi"})
	work, cacheWork := t.TempDir(), t.TempDir()
	build := func(rev, digest string, runtime bool) (*api.SlugBuildResult, string) {
		t.Helper()
		var out syncBuffer
		cfg := Config{
			Stdin: bytes.NewReader(tarDir(t, app)), Output: &out, BuildDir: t.TempDir(), WorkDir: cacheWork,
			Slug: filepath.Join(work, rev+".tgz"), RuntimeDigest: digest, BuildpackURL: pack, SourceVersion: rev,
		}
		if runtime {
			cfg.RuntimeSlug = filepath.Join(work, rev+"-runtime.tgz")
		}
		res, err := Build(ctx, cfg, logging.Discard())
		if err != nil {
			t.Fatalf("build %s: %v\n%s", rev, err, out.String())
		}
		return res, out.String()
	}

	first, out := build("rev1", "", true)
	if first.Runtime == nil || first.Runtime.Reused {
		t.Fatalf("first build's runtime layer: %+v\n%s", first.Runtime, out)
	}
	rt := readLayer(t, filepath.Join(work, "rev1-runtime.tgz"))
	if diff := cmp.Diff([]string{"./app/", "./app/.rt/", "./app/.rt/bin/", "./app/.rt/bin/tool"}, rt.names); diff != "" {
		t.Errorf("runtime layer entries (-want +got):\n%s", diff)
	}
	if rt.contents["./app/.rt/bin/tool"] != "tool v1\n" || !rt.safe {
		t.Errorf("runtime layer: tool = %q, safe %v", rt.contents["./app/.rt/bin/tool"], rt.safe)
	}
	sl := readLayer(t, filepath.Join(work, "rev1.tgz"))
	links := map[string]string{}
	for _, h := range sl.headers {
		if h.Typeflag == tar.TypeSymlink {
			links[h.Name] = h.Linkname
		}
		if strings.HasPrefix(h.Name, "./app/.rt") {
			t.Errorf("the slug holds %s, which is the runtime layer's", h.Name)
		}
	}
	if n := slices.Index(sl.names, "./app/node_modules/dep/index.js"); n < 0 || sl.contents[sl.names[n]] != "dep\n" {
		t.Errorf("the slug lacks node_modules/dep/index.js from the linked node_modules: %v", sl.names)
	}
	if links["./app/.etc"] != "/etc" || !strings.HasSuffix(links["./app/.cache"], "/cache") {
		t.Errorf("the slug's links: %v; want .etc and .cache as links", links)
	}

	// The same runtime: the layer is reused.
	second, out := build("rev2", first.Runtime.Digest, true)
	if second.Runtime == nil || !second.Runtime.Reused {
		t.Errorf("second build's runtime layer: %+v\n%s", second.Runtime, out)
	}

	// One slug: the runtime is a directory in it.
	build("one", "", false)
	one := readLayer(t, filepath.Join(work, "one.tgz"))
	if one.contents["./app/.rt/bin/tool"] != "tool v1\n" {
		t.Errorf("one slug's entries: %v", one.names)
	}
}
