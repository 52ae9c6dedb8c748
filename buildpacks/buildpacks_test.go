package buildpacks_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/buildpacks"
)

// These tests run the shipped buildpacks' bin/detect and bin/release on
// app directories, as the slugbuilder does after bin/compile. Builds with
// bin/compile run in the stack: see internal/slugbuilder's integration
// tests.

// extract writes the shipped buildpacks to a directory, scripts
// executable, and returns it.
func extract(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(buildpacks.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := fs.ReadFile(buildpacks.FS, p)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if path.Base(path.Dir(p)) == "bin" {
			mode = 0o755
		}
		return os.WriteFile(target, data, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// appDir writes files (path -> content; an executable when the content
// starts with "#!") into a new directory.
func appDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if len(content) > 1 && content[:2] == "#!" {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// script runs a buildpack's bin/<name> on app and returns its stdout and
// stderr.
func script(t *testing.T, packs, pack, name, app string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(packs, pack, "bin", name), app)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestDetectOrder: the first shipped buildpack, in Order, whose
// bin/detect accepts an app is the one that builds it.
func TestDetectOrder(t *testing.T) {
	packs := extract(t)
	for _, tt := range []struct {
		name  string
		files []string
		want  string // "" when none accepts
	}{
		{"requirements.txt", []string{"requirements.txt"}, "python"},
		{"Pipfile.lock", []string{"Pipfile.lock"}, "python"},
		{"pyproject.toml", []string{"pyproject.toml"}, "python"},
		{"a Pipfile alone is not enough", []string{"Pipfile"}, ""},
		{"Python with a Procfile and index.html", []string{"requirements.txt", "Procfile", "index.html"}, "python"},
		{"Gemfile", []string{"Gemfile"}, "ruby"},
		{"Rails with a package.json is Ruby, as on Heroku", []string{"Gemfile", "package.json"}, "ruby"},
		{"Node.js before Python, as on Heroku", []string{"package.json", "requirements.txt"}, "nodejs"},
		{"Go first", []string{"go.mod", "Gemfile"}, "go"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{}
			for _, f := range tt.files {
				files[f] = "{}\n"
			}
			app := appDir(t, files)
			got := ""
			for _, pack := range buildpacks.Order {
				if _, _, err := script(t, packs, pack, "detect", app); err == nil {
					got = pack
					break
				}
			}
			if got != tt.want {
				t.Errorf("detected by %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPythonRelease: Django, Flask and WSGI apps get a gunicorn web
// process when gunicorn is installed in the venv, as with Heroku; without
// gunicorn they get none and a hint (unless the Procfile has web).
func TestPythonRelease(t *testing.T) {
	packs := extract(t)
	gunicorn := map[string]string{".venv/bin/gunicorn": "#!/bin/sh\n"}
	with := func(m ...map[string]string) map[string]string {
		out := map[string]string{}
		for _, x := range m {
			for k, v := range x {
				out[k] = v
			}
		}
		return out
	}
	const none = "---\ndefault_process_types: {}\n"
	web := func(cmd string) string { return "---\ndefault_process_types:\n  web: " + cmd + "\n" }
	for _, tt := range []struct {
		name     string
		files    map[string]string
		want     string
		wantHint string
	}{
		{"Django", with(gunicorn, map[string]string{"manage.py": "", "mysite/settings.py": "", "mysite/wsgi.py": ""}),
			web("gunicorn mysite.wsgi"), ""},
		{"Django one level down", with(gunicorn, map[string]string{"src/manage.py": "", "src/mysite/settings.py": "", "src/mysite/wsgi.py": ""}),
			web("gunicorn --chdir src mysite.wsgi"), ""},
		{"Flask", with(gunicorn, map[string]string{"app.py": "from flask import Flask\n\napp = Flask(__name__)\n"}),
			web("gunicorn 'app:app'"), ""},
		{"Flask under another name", with(gunicorn, map[string]string{"main.py": "import flask\nserver = Flask(__name__)\n"}),
			web("gunicorn 'main:server'"), ""},
		{"Flask app factory", with(gunicorn, map[string]string{"wsgi.py": "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n"}),
			web("gunicorn 'wsgi:create_app()'"), ""},
		{"WSGI module", with(gunicorn, map[string]string{"wsgi.py": "def application(environ, start_response): pass\n"}),
			web("gunicorn wsgi"), ""},
		{"Flask without gunicorn", map[string]string{"app.py": "app = Flask(__name__)\n"},
			none, " !     Flask app without gunicorn in its dependencies: add gunicorn, or a Procfile with a web process\n"},
		{"Django without gunicorn but a Procfile", map[string]string{"manage.py": "", "mysite/wsgi.py": "", "Procfile": "web: python manage.py runserver\n"},
			none, ""},
		{"plain app", with(gunicorn, map[string]string{"server.py": "print('hi')\n"}), none, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := script(t, packs, "python", "release", appDir(t, tt.files))
			if err != nil {
				t.Fatalf("bin/release: %v: %s", err, stderr)
			}
			if diff := cmp.Diff(tt.want, stdout); diff != "" {
				t.Errorf("release (-want +got):\n%s", diff)
			}
			if stderr != tt.wantHint {
				t.Errorf("stderr = %q, want %q", stderr, tt.wantHint)
			}
		})
	}
}

// TestRubyRelease: the process types Heroku's Ruby buildpack gives, told
// by the gems in Gemfile.lock.
func TestRubyRelease(t *testing.T) {
	packs := extract(t)
	lock := func(specs string) string {
		return "GEM\n  remote: https://rubygems.org/\n  specs:\n" + specs + "\nPLATFORMS\n  ruby\n\nDEPENDENCIES\n  x\n"
	}
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"Rails 7", map[string]string{"Gemfile.lock": lock("    rack (2.2.8)\n    railties (7.1.3)\n      rack (>= 2.2.4)\n"), "config.ru": ""},
			"  web: bin/rails server -p ${PORT:-5000} -e $RAILS_ENV\n  console: bin/rails console\n"},
		{"Rails 3", map[string]string{"Gemfile.lock": lock("    railties (3.2.22.5)\n")},
			"  web: bundle exec rails server -p ${PORT:-5000}\n  console: bundle exec rails console\n"},
		{"Rack", map[string]string{"Gemfile.lock": lock("    rack (3.0.8)\n    rack-test (2.1.0)\n      rack (>= 1.3)\n"), "config.ru": "run App\n"},
			"  web: bundle exec rackup config.ru -p ${PORT:-5000}\n  console: bundle exec irb\n"},
		{"rack without config.ru", map[string]string{"Gemfile.lock": lock("    rack (3.0.8)\n")},
			"  console: bundle exec irb\n"},
		{"a dependency's railties is not Rails", map[string]string{"Gemfile.lock": lock("    foo (1.0)\n      railties (>= 6)\n")},
			"  console: bundle exec irb\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := script(t, packs, "ruby", "release", appDir(t, tt.files))
			if err != nil {
				t.Fatalf("bin/release: %v: %s", err, stderr)
			}
			want := "---\ndefault_process_types:\n" + tt.want + "  rake: bundle exec rake\n"
			if diff := cmp.Diff(want, stdout); diff != "" {
				t.Errorf("release (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNodeSemverRanges checks the Node.js buildpack's reading of
// engines ranges (lib/semver.py, run with the host's python3 as a build
// runs it with the stack's): the newest listed release each range allows,
// as npm's semver package picks it.
func TestNodeSemverRanges(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	script := filepath.Join(extract(t), "nodejs", "lib", "semver.py")
	versions := "0.0.3\n0.0.4\n0.2.3\n0.2.9\n0.3.0\n1.0.0\n1.2.0\n1.2.3\n1.2.9\n1.3.0\n2.0.0\n2.3.4\n2.4.1\n" +
		"16.20.2\n18.0.0\n18.17.0\n18.20.4\n20.0.0\n20.18.1\n21.7.3\n22.11.0\n23.3.0\n23.4.0-rc.1\n"
	for _, tt := range []struct{ rng, want string }{
		{"", "23.3.0"},
		{"*", "23.3.0"},
		{"x", "23.3.0"},
		{">=18", "23.3.0"},
		{">= 18.17", "23.3.0"},
		{"18.x", "18.20.4"},
		{"18", "18.20.4"},
		{"v18.17.0", "18.17.0"},
		{"=18.17.0", "18.17.0"},
		{"^18.17.0", "18.20.4"},
		{"~18.17.0", "18.17.0"},
		{"~18", "18.20.4"},
		{"18.x || 20.x", "20.18.1"},
		{"^16 || ^18 || ^20", "20.18.1"},
		{">=16 <21", "20.18.1"},
		{">=16.0.0 <=20", "20.18.1"},
		{"<20", "18.20.4"},
		{"<=18.5", "18.0.0"},
		{">20 <22", "21.7.3"},
		{">20.18", "23.3.0"},
		{"18.0.0 - 20", "20.18.1"},
		{"1.2 - 2.3.4", "2.3.4"},
		{"1.2.3 - 2.3", "2.3.4"},
		{"^1.2.x", "1.3.0"},
		{"~1.2", "1.2.9"},
		{"~0.2.3", "0.2.9"},
		{"^0.2.3", "0.2.9"},
		{"^0.0.3", "0.0.3"},
		{"^0.0", "0.0.4"},
		{"^0.x", "0.3.0"},
		{"1.2.x", "1.2.9"},
		{"1.x.3", "1.3.0"},
		{">=23.4.0", ""},   // only a prerelease: none
		{"99.x", ""},       // none
		{"<0.0.1", ""},     // none
		{"lts/*", "ERROR"}, // not a range
	} {
		cmd := exec.Command(py, script, tt.rng)
		cmd.Stdin = bytes.NewBufferString(versions)
		out, err := cmd.Output()
		got := string(bytes.TrimSpace(out))
		if err != nil {
			got = "ERROR"
		}
		if got != tt.want {
			t.Errorf("range %q: got %q, want %q", tt.rng, got, tt.want)
		}
	}
}
