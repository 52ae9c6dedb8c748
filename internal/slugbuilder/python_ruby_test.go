package slugbuilder_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/buildpacks/buildpacktest"
	"github.com/flynnrebuilt/flynn/internal/slugbuilder"
	"github.com/flynnrebuilt/flynn/internal/stack/stacktest"
)

// These tests build Python and Ruby apps with the shipped buildpacks in
// the default Debian stack, from package indexes and gem sources the test
// serves with packages it builds (buildpacktest), as build jobs would.

// cacheEntries lists the names in the build cache of iodir, one per line.
func cacheEntries(t *testing.T, iodir string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(iodir, "cache.tgz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	if _, err := slugbuilder.RestoreCache(f, dir); err != nil {
		t.Fatalf("list cache: %v", err)
	}
	var names []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, "./"+rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(names, "\n") + "\n"
}

// wantBuildFailure builds app, which must fail with want in the output,
// and returns the output.
func wantBuildFailure(t *testing.T, rootfs, app string, o buildOpts, want string) string {
	t.Helper()
	_, out, err := tryBuild(t, rootfs, app, ioDir(t), o)
	if err == nil {
		t.Fatalf("the build succeeded, want a failure saying %q:\n%s", want, out)
	}
	wantOutput(t, out, want)
	return out
}

// runInSlug runs a shell command line in the slug (at /app, on the stack)
// with flynn-host slugrunner, as `flynn run` would, and returns its output.
func runInSlug(t *testing.T, rootfs, slug, line string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := stacktest.Command(ctx, t, stacktest.Spec{
		Rootfs: rootfs,
		Binds:  []stacktest.Bind{{Src: flynnHost, Dst: stacktest.FlynnHostPath}, {Src: slug, Dst: "/app"}},
		Env:    []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Args:   []string{stacktest.FlynnHostPath, "slugrunner", line},
	})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return string(out)
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	return err == nil
}

// TestPythonBuildpack covers the Python buildpack: requirements.txt from
// two package indexes given in the app's env, the venv in the slug
// running the web process, the wheel cache (a warm build asks no index
// and leaves the cache as it was; a changed pin fetches the new version
// and drops the old wheel), an sdist with a C extension built against
// the stack's headers (its wheel cached) and an editable project,
// Pipfile.lock (its sources and hashes) and pyproject.toml, the Python
// version files, and one-line errors.
func TestPythonBuildpack(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	wheels := buildpacktest.BuildWheels(t, rootfs,
		buildpacktest.PythonGreeting("flynn-extra", "1.0.0"),
		buildpacktest.PythonGreeting("flynn-greeting", "1.0.0"),
		buildpacktest.PythonGreeting("flynn-greeting", "2.0.0"))
	extraWheel, greeting1, greeting2 := wheels[0], wheels[1], wheels[2]
	index := buildpacktest.NewPyIndex(t, greeting1, greeting2)
	extra := buildpacktest.NewPyIndex(t, extraWheel)
	indexEnv := []string{"PIP_INDEX_URL=" + index.URL, "PIP_EXTRA_INDEX_URL=" + extra.URL}

	t.Run("requirements.txt", func(t *testing.T) {
		app, iodir := copySample(t, "python"), ioDir(t)
		opts := buildOpts{env: indexEnv}
		res, out := buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "-----> Python app detected", "-----> Using Python 3.11.2 (.python-version asks for 3.11)",
			"fetching what the wheel cache lacks from "+index.URL+" and "+extra.URL,
			"Successfully installed flynn-extra-1.0.0 flynn-greeting-1.0.0")
		if res.Buildpack != "Python" || res.ProcessTypes["web"] != "python server.py" {
			t.Errorf("result = %+v", res)
		}
		if index.Requests() == 0 || extra.Requests() == 0 {
			t.Errorf("the build asked the index %d times and the extra index %d times; want both asked", index.Requests(), extra.Requests())
		}
		slug := unpackSlug(t, iodir)
		if target, err := os.Readlink(filepath.Join(slug, ".venv/bin/python3.11")); err != nil || target != "/usr/bin/python3.11" {
			t.Errorf("the slug's .venv/bin/python3.11 links to %q (%v), want the stack's /usr/bin/python3.11", target, err)
		}
		body := runWeb(t, rootfs, slug, "/")
		if want := "hello from the python app: flynn-greeting 1.0.0, flynn-extra 1.0.0, python 3.11.2 in /app/.venv"; !strings.Contains(body, want) {
			t.Errorf("body = %q, want %q", body, want)
		}
		if entries := cacheEntries(t, iodir); !strings.Contains(entries, "wheels/flynn_greeting-1.0.0-py3-none-any.whl") {
			t.Errorf("the build cache lacks the wheel:\n%s", entries)
		}

		// Warm: everything from the wheel cache, no index asked, the
		// cache left as it was.
		asked := index.Requests() + extra.Requests()
		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "from the wheel cache (no package index asked)", "-----> Build cache unchanged")
		if n := index.Requests() + extra.Requests() - asked; n != 0 {
			t.Errorf("the warm build asked the indexes %d times, want none: %v", n, index.Paths())
		}

		// A changed pin: the new version comes from the index, the old
		// wheel leaves the cache.
		edit(t, app, "requirements.txt", "flynn-greeting==1.0.0", "flynn-greeting==2.0.0")
		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "fetching what the wheel cache lacks", "Successfully installed flynn-extra-1.0.0 flynn-greeting-2.0.0")
		body = runWeb(t, rootfs, unpackSlug(t, iodir), "/")
		if !strings.Contains(body, "flynn-greeting 2.0.0") {
			t.Errorf("body = %q, want flynn-greeting 2.0.0", body)
		}
		entries := cacheEntries(t, iodir)
		if strings.Contains(entries, "flynn_greeting-1.0.0") || !strings.Contains(entries, "flynn_greeting-2.0.0") {
			t.Errorf("the build cache should hold flynn-greeting 2.0.0 only:\n%s", entries)
		}
	})

	t.Run("unresolvable requirement", func(t *testing.T) {
		app := copySample(t, "python")
		edit(t, app, "requirements.txt", "flynn-extra==1.0.0", "flynn-extra==9.9.9")
		// An index URL with credentials: they stay out of the output.
		withAuth := strings.Replace(index.URL, "://", "://reader:s3cret@", 1)
		out := wantBuildFailure(t, rootfs, app, buildOpts{env: []string{"PIP_INDEX_URL=" + withAuth, "PIP_EXTRA_INDEX_URL=" + extra.URL}},
			" !     requirements.txt: No matching distribution found for flynn-extra==9.9.9 (index "+strings.Replace(index.URL, "://", "://****@", 1)+")")
		if strings.Contains(out, "s3cret") {
			t.Errorf("the output shows the index's password:\n%s", out)
		}
	})

	t.Run("sdist with a C extension", func(t *testing.T) {
		// The index serves the build backend too, as a PyPI mirror
		// would: setuptools and wheel, Debian's own copies.
		setuptools, _ := filepath.Glob(filepath.Join(rootfs, "usr/share/python-wheels/setuptools-*.whl"))
		if len(setuptools) != 1 {
			t.Fatalf("the stack's setuptools wheel: %v", setuptools)
		}
		wheelPkg := buildpacktest.StackPackage(t, rootfs, "wheel", "wheel", "0.38.4")
		wheelPkg.Pyproject = "[project.entry-points.\"distutils.commands\"]\nbdist_wheel = \"wheel.bdist_wheel:bdist_wheel\"\n"
		wheel := buildpacktest.BuildWheels(t, rootfs, wheelPkg)[0]
		sdist := buildpacktest.WriteSdist(t, t.TempDir(), buildpacktest.Package{Name: "flynn-cext", Version: "1.0.0", Files: map[string]string{
			"setup.py": "from setuptools import Extension, setup\n\nsetup(ext_modules=[Extension(\"flynn_cext\", [\"flynn_cext.c\"])])\n",
			"flynn_cext.c": `#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "The answer."}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "flynn_cext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_flynn_cext(void) { return PyModule_Create(&module); }
`,
		}})
		cindex := buildpacktest.NewPyIndex(t, sdist, setuptools[0], wheel)
		app, iodir := t.TempDir(), ioDir(t)
		writeFile(t, app, "requirements.txt", "flynn-cext==1.0.0\n")
		writeFile(t, app, "Procfile", "web: python -c 'import flynn_cext'\n")
		opts := buildOpts{env: []string{"PIP_INDEX_URL=" + cindex.URL}}
		_, out := buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "Building wheel for flynn-cext", "Successfully installed flynn-cext-1.0.0")
		if got := runInSlug(t, rootfs, unpackSlug(t, iodir), "python -c 'import flynn_cext; print(flynn_cext.answer())'"); got != "42\n" {
			t.Errorf("the compiled extension answers %q, want 42", got)
		}
		// Warm: the wheel pip built is in the cache; nothing is built
		// or fetched again.
		asked := cindex.Requests()
		_, out = buildApp(t, rootfs, app, iodir, opts)
		wantOutput(t, out, "from the wheel cache (no package index asked)", "-----> Build cache unchanged")
		if cindex.Requests() != asked {
			t.Errorf("the warm build asked the index: %v", cindex.Paths())
		}
		if entries := cacheEntries(t, iodir); !strings.Contains(entries, "wheels/flynn_cext-1.0.0-cp311-cp311-linux_x86_64.whl") {
			t.Errorf("the build cache lacks the wheel pip built:\n%s", entries)
		}

		// The app as an editable project (-e .): pip needs the build
		// backend from the index to install it, so the install after
		// the wheels asks the index.
		writeFile(t, app, "pyproject.toml", "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n"+
			"[project]\nname = \"myapp\"\nversion = \"0.1\"\ndependencies = [\"flynn-cext==1.0.0\"]\n")
		writeFile(t, app, "myapp/__init__.py", "import flynn_cext\n\nANSWER = flynn_cext.answer()\n")
		writeFile(t, app, "requirements.txt", "-e .\n")
		_, out = buildApp(t, rootfs, app, iodir, opts)
		// The wheel of the project itself stays out of the cache.
		wantOutput(t, out, "Successfully installed flynn-cext-1.0.0 myapp-0.1", "-----> Build cache unchanged")
		if got := runInSlug(t, rootfs, unpackSlug(t, iodir), "cd / && python -c 'import myapp; print(myapp.ANSWER)'"); got != "42\n" {
			t.Errorf("the editable app answers %q, want 42", got)
		}
	})

	t.Run("Pipfile.lock", func(t *testing.T) {
		data, err := os.ReadFile(greeting1)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		lock := func(hash string) string {
			return `{"_meta": {"requires": {"python_version": "3.11"},
  "sources": [{"name": "test", "url": "` + index.URL + `", "verify_ssl": false}]},
 "default": {"flynn-greeting": {"version": "==1.0.0", "hashes": ["sha256:` + hash + `"]}},
 "develop": {"flynn-extra": {"version": "==1.0.0"}}}`
		}
		app := t.TempDir()
		writeFile(t, app, "Pipfile.lock", lock(hex.EncodeToString(sum[:])))
		writeFile(t, app, "Procfile", "web: python -c 'import flynn_greeting'\n")
		// No PIP_INDEX_URL: the lock's source is the index.
		iodir := ioDir(t)
		res, out := buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "Using Python 3.11.2 (Pipfile.lock asks for 3.11)", "Installing dependencies from Pipfile.lock",
			"Successfully installed flynn-greeting-1.0.0")
		if res.Buildpack != "Python" {
			t.Errorf("buildpack = %q", res.Buildpack)
		}
		slug := unpackSlug(t, iodir)
		if !exists(t, filepath.Join(slug, ".venv/lib/python3.11/site-packages/flynn_greeting/__init__.py")) {
			t.Error("flynn_greeting is not in the slug's venv")
		}
		if exists(t, filepath.Join(slug, ".venv/lib/python3.11/site-packages/flynn_extra")) {
			t.Error("the lock's develop package flynn-extra is in the slug")
		}

		writeFile(t, app, "Pipfile.lock", lock(strings.Repeat("0", 64)))
		wantBuildFailure(t, rootfs, app, buildOpts{}, " !     Pipfile.lock: THESE PACKAGES DO NOT MATCH THE HASHES")
	})

	// uv.lock and poetry.lock: what they pin for the app, hashes
	// checked, installed with pip; their dev groups (flynn-extra) and
	// what a marker rules out are not.
	wheelHash := func(t *testing.T, path string) string {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	lockTests := []struct {
		name, file string
		lock       func(hash string) string
		pyproject  string
		env        []string
		// A dependency added to pyproject.toml without locking it.
		stale, staleWant string
	}{
		{"uv.lock", "uv.lock", func(hash string) string {
			// No PIP_INDEX_URL: the lock's registry is the index.
			return `version = 1
requires-python = ">=3.11"

[[package]]
name = "app"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "flynn-greeting" },
    { name = "flynn-extra", marker = "sys_platform == 'win32'" },
]

[package.dev-dependencies]
dev = [{ name = "flynn-extra" }]

[package.metadata]
requires-dist = [{ name = "flynn-greeting" }]

[[package]]
name = "flynn-greeting"
version = "2.0.0"
source = { registry = "` + index.URL + `" }
wheels = [{ url = "` + index.URL + `/flynn-greeting/flynn_greeting-2.0.0-py3-none-any.whl", hash = "` + hash + `" }]

[[package]]
name = "flynn-extra"
version = "1.0.0"
source = { registry = "` + extra.URL + `" }
wheels = [{ url = "` + extra.URL + `/flynn-extra/flynn_extra-1.0.0-py3-none-any.whl", hash = "sha256:00" }]
`
		}, "[project]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"flynn-greeting\"]\n", nil,
			"[project]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"flynn-greeting\", \"flynn_new>=1\"]\n",
			"uv.lock is out of date: pyproject.toml names flynn-new, which it does not lock: run uv lock"},
		{"poetry.lock", "poetry.lock", func(hash string) string {
			return `[[package]]
name = "flynn-greeting"
version = "2.0.0"
description = ""
optional = false
python-versions = "*"
files = [{file = "flynn_greeting-2.0.0-py3-none-any.whl", hash = "` + hash + `"}]

[[package]]
name = "flynn-extra"
version = "1.0.0"
description = ""
optional = false
python-versions = "*"
files = [{file = "flynn_extra-1.0.0-py3-none-any.whl", hash = "sha256:00"}]

[metadata]
lock-version = "2.0"
python-versions = "^3.11"
content-hash = "0"
`
		}, "[tool.poetry]\nname = \"app\"\nversion = \"0.1.0\"\n\n[tool.poetry.dependencies]\npython = \"^3.11\"\nflynn-greeting = \"^2\"\n\n" +
			"[tool.poetry.group.dev.dependencies]\nflynn-extra = \"*\"\n", indexEnv,
			"[tool.poetry]\nname = \"app\"\nversion = \"0.1.0\"\n\n[tool.poetry.dependencies]\npython = \"^3.11\"\nflynn-greeting = \"^2\"\nflynn-new = \"^1\"\n",
			"poetry.lock is out of date: pyproject.toml names flynn-new, which it does not lock: run poetry lock"},
	}
	for _, tt := range lockTests {
		t.Run(tt.name, func(t *testing.T) {
			app, iodir := t.TempDir(), ioDir(t)
			writeFile(t, app, "pyproject.toml", tt.pyproject)
			writeFile(t, app, tt.file, tt.lock(wheelHash(t, greeting2)))
			writeFile(t, app, "Procfile", "web: python -c 'import flynn_greeting'\n")
			_, out := buildApp(t, rootfs, app, iodir, buildOpts{env: tt.env})
			wantOutput(t, out, "Installing dependencies from "+tt.name, "Successfully installed flynn-greeting-2.0.0")
			slug := unpackSlug(t, iodir)
			if !exists(t, filepath.Join(slug, ".venv/lib/python3.11/site-packages/flynn_greeting")) {
				t.Error("flynn_greeting is not in the slug's venv")
			}
			if exists(t, filepath.Join(slug, ".venv/lib/python3.11/site-packages/flynn_extra")) {
				t.Error("the dev group's flynn-extra is in the slug")
			}
			writeFile(t, app, tt.file, tt.lock("sha256:"+strings.Repeat("0", 64)))
			wantBuildFailure(t, rootfs, app, buildOpts{env: tt.env}, " !     "+tt.name+": THESE PACKAGES DO NOT MATCH THE HASHES")
			writeFile(t, app, tt.file, tt.lock(wheelHash(t, greeting2)))
			writeFile(t, app, "pyproject.toml", tt.stale)
			wantBuildFailure(t, rootfs, app, buildOpts{env: tt.env}, " !     "+tt.staleWant)
		})
	}

	t.Run("pyproject.toml", func(t *testing.T) {
		app, iodir := t.TempDir(), ioDir(t)
		writeFile(t, app, "pyproject.toml", "[project]\nname = \"app\"\nversion = \"0\"\ndependencies = [\"flynn-greeting>=2\"]\n")
		writeFile(t, app, "Procfile", "web: python -c 'import flynn_greeting'\n")
		_, out := buildApp(t, rootfs, app, iodir, buildOpts{env: indexEnv})
		wantOutput(t, out, "Using Debian's Python 3.11.2 (no runtime.txt or .python-version)",
			"Installing dependencies from pyproject.toml [project] dependencies", "Successfully installed flynn-greeting-2.0.0")
		if !exists(t, filepath.Join(unpackSlug(t, iodir), ".venv/lib/python3.11/site-packages/flynn_greeting")) {
			t.Error("flynn_greeting is not in the slug's venv")
		}

		writeFile(t, app, "pyproject.toml", "[tool.poetry]\nname = \"app\"\n\n[tool.poetry.dependencies]\npython = \"^3.11\"\n")
		wantBuildFailure(t, rootfs, app, buildOpts{}, " !     pyproject.toml is a Poetry project without its poetry.lock: commit it (poetry lock)")
	})

	// The version files: what the stack has is used, anything else is
	// noted and built with Debian's python3.
	for _, tt := range []struct {
		name, file, content string
		env                 []string
		want                []string
	}{
		{name: "runtime.txt patch", file: "runtime.txt", content: "python-3.11.99\n", want: []string{
			"-----> Using Python 3.11.2 (runtime.txt asks for 3.11.99)",
			" !     the stack's Python 3.11 is Debian's 3.11.2, not 3.11.99: building with 3.11.2"}},
		{name: "missing version", file: ".python-version", content: "# pyenv\n3.13\n", want: []string{
			"-----> Using Debian's Python 3.11.2",
			" !     .python-version asks for Python 3.13, which this stack does not have (it has Debian's Python 3.11):",
			" !     building with Python 3.11.2 instead; ask for 3.11 in .python-version to silence this note"}},
		{name: "not a version", file: ".python-version", content: "pypy3.10-7.3.12\n", want: []string{
			` !     .python-version says "pypy3.10-7.3.12", which is not a Python version like 3.11 or 3.11.2: building with Python 3.11.2`}},
		{name: "PYTHON_VERSION wins", file: "runtime.txt", content: "python-3.13.0\n", env: []string{"PYTHON_VERSION=3.11"}, want: []string{
			"-----> Using Python 3.11.2 (PYTHON_VERSION asks for 3.11)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			app := t.TempDir()
			writeFile(t, app, "requirements.txt", "# nothing\n")
			writeFile(t, app, "Procfile", "web: python -V\n")
			writeFile(t, app, tt.file, tt.content)
			_, out := buildApp(t, rootfs, app, ioDir(t), buildOpts{env: tt.env})
			wantOutput(t, out, append(tt.want, "-----> No dependencies in requirements.txt")...)
		})
	}
}

// TestDjangoCollectstatic: a Django app's static files are collected in
// the build, as on Heroku, with the app's env (the settings read
// SECRET_KEY from it); DISABLE_COLLECTSTATIC=1 skips it, an app without
// django.contrib.staticfiles has nothing to collect, and a collectstatic
// that fails fails the build with a line that says how to skip it.
// Django is Debian's (python3-django and what it needs), built into
// wheels for a local index.
func TestDjangoCollectstatic(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	pkgs := buildpacktest.DebianPython(t,
		buildpacktest.DebianModule{Deb: "python3-django", Module: "django", Name: "Django"},
		buildpacktest.DebianModule{Deb: "python3-asgiref", Module: "asgiref", Name: "asgiref"},
		buildpacktest.DebianModule{Deb: "python3-sqlparse", Module: "sqlparse", Name: "sqlparse"},
		buildpacktest.DebianModule{Deb: "python3-tz", Module: "pytz", Name: "pytz"})
	index := buildpacktest.NewPyIndex(t, buildpacktest.BuildWheels(t, rootfs, pkgs...)...)
	var reqs strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&reqs, "%s==%s\n", p.Name, p.Version)
	}
	app := t.TempDir()
	writeFile(t, app, "requirements.txt", reqs.String())
	writeFile(t, app, "manage.py", "import os, sys\n"+
		"os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"+
		"from django.core.management import execute_from_command_line\n"+
		"execute_from_command_line(sys.argv)\n")
	writeFile(t, app, "mysite/__init__.py", "")
	writeFile(t, app, "mysite/urls.py", "urlpatterns = []\n")
	writeFile(t, app, "mysite/settings.py", "import os\nfrom pathlib import Path\n"+
		"BASE_DIR = Path(__file__).resolve().parent.parent\n"+
		"SECRET_KEY = os.environ['SECRET_KEY']\n"+
		"DEBUG = False\nALLOWED_HOSTS = ['*']\nROOT_URLCONF = 'mysite.urls'\n"+
		"INSTALLED_APPS = [] if os.environ.get('NO_STATICFILES') else ['django.contrib.staticfiles']\n"+
		"STATIC_URL = '/static/'\nSTATIC_ROOT = BASE_DIR / 'staticfiles'\nSTATICFILES_DIRS = [BASE_DIR / 'assets']\n")
	writeFile(t, app, "assets/site.css", "body { color: black }\n")
	writeFile(t, app, "Procfile", "web: python manage.py check\n")

	indexEnv := "PIP_INDEX_URL=" + index.URL
	cmd := " python manage.py collectstatic --noinput"
	for _, tt := range []struct {
		name      string
		env       []string
		want      []string
		collected bool
	}{
		{"collected", []string{"SECRET_KEY=s3cret"}, []string{"-----> Running" + cmd, "1 static file copied to '/app/staticfiles'"}, true},
		{"disabled", []string{"SECRET_KEY=s3cret", "DISABLE_COLLECTSTATIC=1"}, nil, false},
		{"no staticfiles app", []string{"SECRET_KEY=s3cret", "NO_STATICFILES=1"}, []string{"skipped: no collectstatic command (django.contrib.staticfiles is not in INSTALLED_APPS)"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			iodir := ioDir(t)
			_, out := buildApp(t, rootfs, app, iodir, buildOpts{env: append(tt.env, indexEnv)})
			wantOutput(t, out, append(tt.want, "Successfully installed")...)
			if !tt.collected && strings.Contains(out, "static file") {
				t.Errorf("static files were collected:\n%s", out)
			}
			if got := exists(t, filepath.Join(unpackSlug(t, iodir), "staticfiles/site.css")); got != tt.collected {
				t.Errorf("staticfiles/site.css in the slug: %v, want %v", got, tt.collected)
			}
		})
	}
	t.Run("fails", func(t *testing.T) {
		out := wantBuildFailure(t, rootfs, app, buildOpts{env: []string{indexEnv}},
			" !    "+cmd+" failed (see above): fix the settings, or set DISABLE_COLLECTSTATIC=1 to skip it")
		wantOutput(t, out, "KeyError: 'SECRET_KEY'")
	})
}

// TestRubyBuildpack covers the Ruby buildpack: an app with its gem in
// vendor/cache builds with no network and its web process runs from the
// bundle in the slug; a warm build reuses the installed gems and leaves
// the cache as it was; gems from a gem source, a changed version
// replacing the cached one; and one-line errors.
func TestRubyBuildpack(t *testing.T) {
	rootfs := stacktest.DefaultStack(t)
	gems := buildpacktest.BuildGems(t, rootfs, buildpacktest.RubyGreeting("1.0.0"), buildpacktest.RubyGreeting("2.0.0"))
	gem1, gem2 := gems[0], gems[1]

	// vendored copies the Ruby sample app with gem in vendor/cache.
	vendored := func(t *testing.T, gem string) string {
		app := copySample(t, "ruby")
		data, err := os.ReadFile(gem)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, app, "vendor/cache/"+filepath.Base(gem), string(data))
		return app
	}

	t.Run("vendor/cache", func(t *testing.T) {
		app, iodir := vendored(t, gem1), ioDir(t)
		res, out := buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "-----> Ruby app detected", "-----> Using Ruby 3.1.2 and Bundler 2.3.15 (Debian's)",
			"Gemfile.lock was written by Bundler 2.4.22; installing with 2.3.15",
			"-----> Installing gems from vendor/cache (bundle install --local, no network)", "Installing flynn-greeting 1.0.0")
		if res.Buildpack != "Ruby" || res.ProcessTypes["web"] != "bundle exec ruby app.rb" || res.ProcessTypes["rake"] != "bundle exec rake" {
			t.Errorf("result = %+v", res)
		}
		slug := unpackSlug(t, iodir)
		if m, _ := filepath.Glob(filepath.Join(slug, "vendor/bundle/ruby/*/cache")); len(m) > 0 {
			t.Errorf("the slug holds the bundle's .gem cache %v", m)
		}
		body := runWeb(t, rootfs, slug, "/")
		if want := "hello from the ruby app: flynn-greeting 1.0.0, ruby 3.1.2, bundle at /app/vendor/bundle/ruby/3.1.0"; !strings.Contains(body, want) {
			t.Errorf("body = %q, want %q", body, want)
		}

		_, out = buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "restored 1 installed gems from the build cache", "Using flynn-greeting 1.0.0", "-----> Build cache unchanged")
	})

	t.Run("native extension", func(t *testing.T) {
		native := buildpacktest.BuildGems(t, rootfs, buildpacktest.Package{Name: "flynn-native", Version: "1.0.0", Files: map[string]string{
			"ext/flynn_native/extconf.rb": "require \"mkmf\"\ncreate_makefile(\"flynn_native\")\n",
			"ext/flynn_native/flynn_native.c": "#include <ruby.h>\n\nstatic VALUE answer(VALUE self) { return INT2FIX(42); }\n\n" +
				"void Init_flynn_native(void) {\n  VALUE m = rb_define_module(\"FlynnNative\");\n  rb_define_singleton_method(m, \"answer\", answer, 0);\n}\n",
		}})[0]
		app, iodir := t.TempDir(), ioDir(t)
		data, err := os.ReadFile(native)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, app, "vendor/cache/flynn-native-1.0.0.gem", string(data))
		writeFile(t, app, "Gemfile", "source \"https://rubygems.org\"\ngem \"flynn-native\"\n")
		writeFile(t, app, "Gemfile.lock", "GEM\n  remote: https://rubygems.org/\n  specs:\n    flynn-native (1.0.0)\n\n"+
			"PLATFORMS\n  ruby\n\nDEPENDENCIES\n  flynn-native\n\nBUNDLED WITH\n   2.3.15\n")
		writeFile(t, app, "Procfile", "web: bundle exec ruby -e 'sleep'\n")
		_, out := buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "Installing flynn-native 1.0.0 with native extensions")
		slug := unpackSlug(t, iodir)
		if got := runInSlug(t, rootfs, slug, `bundle exec ruby -e 'require "flynn_native"; print FlynnNative.answer'`); got != "42" {
			t.Errorf("the compiled extension answers %q, want 42", got)
		}
		// Warm: the compiled gem comes from the cache, not compiled again.
		_, out = buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "Using flynn-native 1.0.0", "-----> Build cache unchanged")
		if strings.Contains(out, "with native extensions") {
			t.Errorf("the warm build compiled the extension again:\n%s", out)
		}
	})

	// rake assets:precompile runs, with the app's env, when the bundle
	// has rake and the Rakefile defines it; its failure fails the build.
	t.Run("assets:precompile", func(t *testing.T) {
		rake := buildpacktest.BuildGems(t, rootfs, buildpacktest.StackGem(t, rootfs, "rake", "13.0.6"))[0]
		data, err := os.ReadFile(rake)
		if err != nil {
			t.Fatal(err)
		}
		app := vendored(t, gem1)
		writeFile(t, app, "vendor/cache/rake-13.0.6.gem", string(data))
		writeFile(t, app, "Gemfile", "source \"https://rubygems.org\"\ngem \"flynn-greeting\", \"1.0.0\"\ngem \"rake\"\n")
		writeFile(t, app, "Gemfile.lock", "GEM\n  remote: https://rubygems.org/\n  specs:\n    flynn-greeting (1.0.0)\n    rake (13.0.6)\n\n"+
			"PLATFORMS\n  ruby\n\nDEPENDENCIES\n  flynn-greeting (= 1.0.0)\n  rake\n\nBUNDLED WITH\n   2.3.15\n")
		rakefile := func(body string) string {
			return "namespace :assets do\n  task :precompile do\n" + body + "\n  end\n  task :clean do\n    puts \"cleaned\"\n  end\nend\n"
		}
		writeFile(t, app, "Rakefile", rakefile(`    mkdir_p "public/assets"
    File.write("public/assets/app.css", "for #{ENV.fetch("RAILS_ENV")} at #{ENV.fetch("ASSET_HOST")}")`))
		iodir := ioDir(t)
		_, out := buildApp(t, rootfs, app, iodir, buildOpts{env: []string{"ASSET_HOST=cdn.example"}})
		wantOutput(t, out, "Installing rake 13.0.6", "-----> Running rake assets:precompile", "cleaned")
		css, err := os.ReadFile(filepath.Join(unpackSlug(t, iodir), "public/assets/app.css"))
		if err != nil || string(css) != "for production at cdn.example" {
			t.Errorf("public/assets/app.css = %q (%v), want %q", css, err, "for production at cdn.example")
		}

		writeFile(t, app, "Rakefile", rakefile(`    abort "no asset host" unless ENV["ASSET_HOST"]`))
		out = wantBuildFailure(t, rootfs, app, buildOpts{},
			" !     rake assets:precompile failed (see above): fix it, or set DISABLE_ASSETS_PRECOMPILE=1 to skip it")
		wantOutput(t, out, "no asset host")
		_, out = buildApp(t, rootfs, app, ioDir(t), buildOpts{env: []string{"DISABLE_ASSETS_PRECOMPILE=1"}})
		if strings.Contains(out, "assets:precompile") {
			t.Errorf("assets:precompile ran with DISABLE_ASSETS_PRECOMPILE=1:\n%s", out)
		}
	})

	t.Run("gem source", func(t *testing.T) {
		src := buildpacktest.NewGemSource(t, rootfs, gem1, gem2)
		app, iodir := copySample(t, "ruby"), ioDir(t)
		os.RemoveAll(filepath.Join(app, "vendor"))
		edit(t, app, "Gemfile", `source "https://rubygems.org"`, `source "`+src.URL+`"`)
		edit(t, app, "Gemfile.lock", "remote: https://rubygems.org/", "remote: "+src.URL+"/")
		_, out := buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "-----> Installing gems (bundle install)", "Installing flynn-greeting 1.0.0")
		if src.Requests() == 0 {
			t.Error("the build did not ask the gem source")
		}

		// Version 2: installed over the cached 1.0.0, which goes.
		for _, f := range []string{"Gemfile", "Gemfile.lock"} {
			edit(t, app, f, "1.0.0", "2.0.0")
		}
		_, out = buildApp(t, rootfs, app, iodir, buildOpts{})
		wantOutput(t, out, "restored 1 installed gems from the build cache", "Installing flynn-greeting 2.0.0")
		slug := unpackSlug(t, iodir)
		got, _ := filepath.Glob(filepath.Join(slug, "vendor/bundle/ruby/*/gems/*"))
		if len(got) != 1 || filepath.Base(got[0]) != "flynn-greeting-2.0.0" {
			t.Errorf("the slug's gems are %v, want flynn-greeting-2.0.0 alone", got)
		}
		if body := runWeb(t, rootfs, slug, "/"); !strings.Contains(body, "flynn-greeting 2.0.0") {
			t.Errorf("body = %q, want flynn-greeting 2.0.0", body)
		}
	})

	t.Run("errors", func(t *testing.T) {
		app := vendored(t, gem1)
		os.Remove(filepath.Join(app, "Gemfile.lock"))
		wantBuildFailure(t, rootfs, app, buildOpts{},
			" !     Gemfile.lock is missing: run bundle lock (or bundle install) and commit Gemfile.lock")

		app = vendored(t, gem1)
		edit(t, app, "Gemfile", `source "https://rubygems.org"`, "source \"https://rubygems.org\"\nruby \"3.3.0\"")
		wantBuildFailure(t, rootfs, app, buildOpts{},
			" !     bundle install: Your Ruby version is 3.1.2, but your Gemfile specified 3.3.0; the stack has Debian's Ruby 3.1.2 only: change or drop the Gemfile's ruby line")

		// vendor/cache without the gem: no network to fall back on.
		app = vendored(t, gem2)
		wantBuildFailure(t, rootfs, app, buildOpts{}, " !     bundle install: Could not find flynn-greeting-1.0.0 in any of the sources")
	})
}

// writeFile writes content to name (slash-separated, parents made) in dir.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
