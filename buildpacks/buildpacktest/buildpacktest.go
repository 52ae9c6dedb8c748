// Package buildpacktest makes what tests of the shipped Python and Ruby
// buildpacks install, since tests reach neither PyPI nor rubygems.org:
// wheels and gems built from source with the stack's own pip and gem, and
// package indexes that serve them over HTTP the way pip (a PEP 503 simple
// index) and Bundler (a RubyGems static index) read them. The servers
// listen on loopback, which build jobs reach: they use the host's network.
package buildpacktest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"html"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/stack/stacktest"
)

// Package is the source of a Python or Ruby package: a name, a version
// and its files, by path relative to the package's root. A Python
// package's modules sit at the root (greeting/__init__.py); a gem's under
// lib/.
type Package struct {
	Name, Version string
	Files         map[string]string
	// Pyproject is more of a Python package's pyproject.toml, after its
	// [project] table: entry points, say.
	Pyproject string
}

// BuildWheels builds each package into a pure-Python wheel with the
// stack's pip (setuptools, without build isolation, so offline) and
// returns the wheels' paths.
func BuildWheels(t testing.TB, rootfs string, pkgs ...Package) []string {
	t.Helper()
	var script strings.Builder
	script.WriteString("set -e\n")
	io := ioDir(t)
	for i, p := range pkgs {
		dir := fmt.Sprintf("src/%d", i)
		writeFiles(t, filepath.Join(io, dir), pythonProject(p))
		fmt.Fprintf(&script, "pip3 wheel -q --no-build-isolation --no-deps --wheel-dir /io/out /io/%s\n", dir)
	}
	runInStack(t, rootfs, io, script.String())
	return outFiles(t, io, ".whl", len(pkgs))
}

// pythonProject is the source tree of a Python package: its files and a
// pyproject.toml naming it, built with setuptools.
func pythonProject(p Package) map[string]string {
	files := map[string]string{
		"pyproject.toml": fmt.Sprintf("[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n"+
			"[project]\nname = %q\nversion = %q\n\n%s", p.Name, p.Version, p.Pyproject),
	}
	for name, content := range p.Files {
		files[name] = content
	}
	return files
}

// WriteSdist writes the package as a source distribution (a tar.gz of
// NAME-VERSION/ holding the package's files and a pyproject.toml; a
// setup.py among the files can declare C extensions) into dir and
// returns its path. pip builds it with setuptools, which it fetches from
// the index.
func WriteSdist(t testing.TB, dir string, p Package) string {
	t.Helper()
	base := strings.ReplaceAll(p.Name, "-", "_") + "-" + p.Version
	dst := filepath.Join(dir, base+".tar.gz")
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	files := pythonProject(p)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		hdr := &tar.Header{Name: base + "/" + name, Mode: 0o644, Size: int64(len(files[name])), ModTime: time.Unix(1e9, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[name])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// StackPackage reads a package Debian installed in the stack (a directory
// under /usr/lib/python3/dist-packages) as a Package of that name and
// version, bytecode left out: to build a wheel of it for an index. Its
// entry points are the caller's to give.
func StackPackage(t testing.TB, rootfs, module, name, version string) Package {
	t.Helper()
	return dirPackage(t, filepath.Join(rootfs, "usr/lib/python3/dist-packages"), module, name, version)
}

// DebianModule names a Python module Debian packages: the package (Deb),
// the module's directory (Module) and the name pip knows it by (Name).
type DebianModule struct{ Deb, Module, Name string }

// DebianPython fetches Debian's packages of the modules with apt-get
// download (from the host's apt sources; the stack is the host's Debian
// release) and reads each module as a Package at its upstream version
// (the Debian version without epoch and revision), every file of it
// included in the wheel BuildWheels makes (templates and static files
// too).
func DebianPython(t testing.TB, mods ...DebianModule) []Package {
	t.Helper()
	dir := t.TempDir()
	// apt's download user must be able to write there.
	os.Chmod(dir, 0o777)
	var pkgs []Package
	download := func(deb string) ([]byte, error) {
		cmd := exec.Command("apt-get", "download", "-q", deb)
		cmd.Dir = dir
		return cmd.CombinedOutput()
	}
	for _, m := range mods {
		if out, err := download(m.Deb); err != nil {
			// Lists older than the mirror name versions it no longer
			// has: update them once.
			if up, err := exec.Command("apt-get", "update", "-q").CombinedOutput(); err != nil {
				t.Fatalf("apt-get download %s: %s; apt-get update: %v\n%s", m.Deb, out, err, up)
			}
			if out, err := download(m.Deb); err != nil {
				t.Fatalf("apt-get download %s: %v\n%s", m.Deb, err, out)
			}
		}
		debs, _ := filepath.Glob(filepath.Join(dir, m.Deb+"_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("apt-get download %s left %v", m.Deb, debs)
		}
		v, err := exec.Command("dpkg-deb", "-f", debs[0], "Version").Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", debs[0], err)
		}
		version := strings.TrimSpace(string(v))
		if i := strings.Index(version, ":"); i >= 0 {
			version = version[i+1:]
		}
		if i := strings.LastIndex(version, "-"); i >= 0 {
			version = version[:i]
		}
		root := filepath.Join(dir, m.Deb)
		if out, err := exec.Command("dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
		}
		p := dirPackage(t, filepath.Join(root, "usr/lib/python3/dist-packages"), m.Module, m.Name, version)
		p.Pyproject = "[tool.setuptools.package-data]\n\"*\" = [\"**/*\"]\n"
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// dirPackage reads module (a directory under root) as a Package.
func dirPackage(t testing.TB, root, module, name, version string) Package {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(root, module), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = string(data)
		return nil
	})
	if err != nil {
		t.Fatalf("read %s from the stack: %v", module, err)
	}
	return Package{Name: name, Version: version, Files: files}
}

// StackGem reads a gem Debian installed in the stack (under
// /usr/share/rubygems-integration/all/gems: its lib and exe) as a Package,
// to build a gem of it for an app's vendor/cache.
func StackGem(t testing.TB, rootfs, name, version string) Package {
	t.Helper()
	root := filepath.Join(rootfs, "usr/share/rubygems-integration/all/gems", name+"-"+version)
	p := Package{Name: name, Version: version, Files: map[string]string{}}
	for _, sub := range []string{"lib", "exe"} {
		q := dirPackage(t, root, sub, name, version)
		for f, data := range q.Files {
			p.Files[f] = data
		}
	}
	return p
}

// BuildGems builds each package into a gem with the stack's `gem build`
// and returns the gems' paths. Files named ext/NAME/extconf.rb are the
// gem's native extensions, compiled where it is installed; files in exe/
// its executables.
func BuildGems(t testing.TB, rootfs string, pkgs ...Package) []string {
	t.Helper()
	var script strings.Builder
	script.WriteString("set -e\n")
	io := ioDir(t)
	for i, p := range pkgs {
		dir := fmt.Sprintf("src/%d", i)
		var names, exts, exes []string
		for name := range p.Files {
			names = append(names, fmt.Sprintf("%q", name))
			if ok, _ := path.Match("ext/*/extconf.rb", name); ok {
				exts = append(exts, fmt.Sprintf("%q", name))
			}
			if ok, _ := path.Match("exe/*", name); ok {
				exes = append(exes, fmt.Sprintf("%q", path.Base(name)))
			}
		}
		sort.Strings(names)
		sort.Strings(exts)
		sort.Strings(exes)
		files := map[string]string{
			p.Name + ".gemspec": fmt.Sprintf("Gem::Specification.new do |s|\n  s.name = %q\n  s.version = %q\n"+
				"  s.summary = \"A gem built by a Flynn test\"\n  s.authors = [\"Flynn tests\"]\n  s.license = \"BSD-3-Clause\"\n"+
				"  s.files = [%s]\n  s.extensions = [%s]\n  s.bindir = \"exe\"\n  s.executables = [%s]\nend\n",
				p.Name, p.Version, strings.Join(names, ", "), strings.Join(exts, ", "), strings.Join(exes, ", ")),
		}
		for name, content := range p.Files {
			files[name] = content
		}
		writeFiles(t, filepath.Join(io, dir), files)
		fmt.Fprintf(&script, "cd /io/%s && gem build -q %s.gemspec -o /io/out/%s-%s.gem\n", dir, p.Name, p.Name, p.Version)
	}
	runInStack(t, rootfs, io, script.String())
	return outFiles(t, io, ".gem", len(pkgs))
}

// ioDir is a directory the stack's app user can write, with out/ for
// what a build makes.
func ioDir(t testing.TB) string {
	t.Helper()
	io := t.TempDir()
	if err := os.MkdirAll(filepath.Join(io, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The app user builds here, and reads what the test wrote.
	if err := filepath.Walk(io, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, 0o777)
	}); err != nil {
		t.Fatal(err)
	}
	return io
}

func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	// Directories the app user writes in (setuptools' build/ and
	// egg-info): every directory of the tree.
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o777)
		}
		return nil
	})
}

// runInStack runs a shell script in the stack as the app user, with io
// at /io.
func runInStack(t testing.TB, rootfs, io, script string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := stacktest.Command(ctx, t, stacktest.Spec{
		Rootfs: rootfs,
		Binds:  []stacktest.Bind{{Src: io, Dst: "/io", RW: true}},
		Env:    []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "PIP_DISABLE_PIP_VERSION_CHECK=1"},
		Args:   []string{"/bin/sh", "-c", script},
	})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("in the stack: %s: %v\n%s", script, err, out.String())
	}
}

func outFiles(t testing.TB, io, ext string, want int) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(io, "out", "*"+ext))
	if err != nil || len(paths) != want {
		t.Fatalf("built %v, want %d %s files (%v)", paths, want, ext, err)
	}
	sort.Strings(paths)
	return paths
}

// server is an HTTP server that counts the requests it answers.
type server struct {
	srv      *httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	paths    []string
}

func newServer(t testing.TB, h http.Handler) *server {
	s := &server{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		s.paths = append(s.paths, r.URL.Path)
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// Requests is how many requests the server has answered so far.
func (s *server) Requests() int { return int(s.requests.Load()) }

// Paths are the paths of the requests answered so far, in order.
func (s *server) Paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

// PyIndex is a PEP 503 simple package index serving wheels.
type PyIndex struct {
	*server
	// URL is the index's base URL, what PIP_INDEX_URL takes
	// (http://127.0.0.1:PORT/simple).
	URL string
}

var normalizeRE = regexp.MustCompile(`[-_.]+`)

// NewPyIndex serves the wheels under URL/<project>/ until the test ends.
func NewPyIndex(t testing.TB, wheels ...string) *PyIndex {
	t.Helper()
	projects := map[string][]string{} // normalized name -> wheel paths
	for _, w := range wheels {
		// A wheel's name starts with its distribution name, then "-".
		dist, _, _ := strings.Cut(filepath.Base(w), "-")
		name := strings.ToLower(normalizeRE.ReplaceAllString(dist, "-"))
		projects[name] = append(projects[name], w)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /simple/{project}/{$}", func(w http.ResponseWriter, r *http.Request) {
		files, ok := projects[r.PathValue("project")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		var b strings.Builder
		b.WriteString("<!DOCTYPE html>\n<html><body>\n")
		for _, f := range files {
			n := html.EscapeString(filepath.Base(f))
			fmt.Fprintf(&b, "<a href=\"../../files/%s\">%s</a><br>\n", n, n)
		}
		b.WriteString("</body></html>\n")
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte(b.String()))
	})
	mux.HandleFunc("GET /files/{file}", func(w http.ResponseWriter, r *http.Request) {
		for _, files := range projects {
			for _, f := range files {
				if filepath.Base(f) == r.PathValue("file") {
					http.ServeFile(w, r, f)
					return
				}
			}
		}
		http.NotFound(w, r)
	})
	s := newServer(t, mux)
	return &PyIndex{server: s, URL: s.srv.URL + "/simple"}
}

// GemSource is a RubyGems source: the static index `gem generate_index`
// writes, which Bundler reads when the server has no compact index.
type GemSource struct {
	*server
	// URL is what a Gemfile's source line takes (http://127.0.0.1:PORT).
	URL string
}

// NewGemSource indexes the gems with the stack's `gem generate_index`
// and serves them until the test ends.
func NewGemSource(t testing.TB, rootfs string, gems ...string) *GemSource {
	t.Helper()
	io := ioDir(t)
	dir := filepath.Join(io, "out", "gems")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, g := range gems {
		data, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(g)), data, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	runInStack(t, rootfs, io, "gem generate_index -q -d /io/out")
	s := newServer(t, http.FileServer(http.Dir(filepath.Join(io, "out"))))
	return &GemSource{server: s, URL: s.srv.URL}
}

// PythonGreeting is the source of a wheel with one module (the name with
// "_" for "-") whose hello() says the distribution's name and installed
// version: what the Python sample app (test/apps/python) imports as
// flynn_greeting and flynn_extra.
func PythonGreeting(name, version string) Package {
	mod := strings.ReplaceAll(name, "-", "_")
	return Package{Name: name, Version: version, Files: map[string]string{
		mod + "/__init__.py": fmt.Sprintf("from importlib.metadata import version\n\n\n"+
			"def hello():\n    return %q + \" \" + version(%q)\n", name, name),
	}}
}

// RubyGreeting is the source of the flynn-greeting gem the Ruby sample
// app (test/apps/ruby) requires: FlynnGreeting.hello says its name and
// version.
func RubyGreeting(version string) Package {
	return Package{Name: "flynn-greeting", Version: version, Files: map[string]string{
		"lib/flynn_greeting.rb": fmt.Sprintf("module FlynnGreeting\n  VERSION = %q\n\n"+
			"  def self.hello\n    \"flynn-greeting #{VERSION}\"\n  end\nend\n", version),
	}}
}
