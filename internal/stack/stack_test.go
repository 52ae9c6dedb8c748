package stack

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMirrorIn(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"one-line", "# c\ndeb http://ftp.example.org/debian bookworm main\n", "http://ftp.example.org/debian"},
		{"one-line with options", "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n", "http://m.example/debian"},
		{"deb822", "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n", "http://deb.debian.org/debian"},
		{"security only", "Types: deb\nURIs: http://deb.debian.org/debian-security\n", ""},
		{"third party", "deb https://packages.cloud.google.com/apt cloud-sdk main\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mirrorIn(tt.in); got != tt.want {
				t.Errorf("mirrorIn = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAptMirror(t *testing.T) {
	dir := t.TempDir()
	if got := AptMirror(dir); got != DefaultMirror {
		t.Errorf("empty dir: %q, want the default", got)
	}
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "a.list"), []byte("deb https://other.example/apt x main\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte("URIs: http://mirror.example/debian\n"), 0o644)
	if got := AptMirror(dir); got != "http://mirror.example/debian" {
		t.Errorf("AptMirror = %q", got)
	}
}

func TestKey(t *testing.T) {
	a := Key("bookworm", []string{"curl", "git"})
	if b := Key("bookworm", []string{"git", "curl", "git"}); a != b {
		t.Errorf("order or duplicates change the key: %s vs %s", a, b)
	}
	if b := Key("bookworm", []string{"curl"}); a == b {
		t.Error("a different package list has the same key")
	}
	if b := Key("trixie", []string{"curl", "git"}); a == b {
		t.Error("a different suite has the same key")
	}
}

func TestAddAppUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	for range 2 { // idempotent
		if err := addAppUser(root); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if diff := cmp.Diff("root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000:app:/app:/bin/sh\n", string(got)); diff != "" {
		t.Errorf("passwd (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(filepath.Join(root, "app"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("/app: %v", err)
	}
}

func TestBuildBusybox(t *testing.T) {
	dir := t.TempDir()
	if err := BuildBusybox(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("chroot", "--userspec=1000:1000", dir, "/bin/sh", "-c", "id -u; id -un; ls -d /app").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if diff := cmp.Diff("1000\napp\n/app\n", string(out)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestBuildDefault builds the default stack into the shared test cache
// (or reuses it) and checks what builds need is in it. It reports how
// long the build took.
func TestBuildDefault(t *testing.T) {
	if testing.Short() {
		t.Skip("debootstrap takes about a minute the first time")
	}
	dir := "/var/cache/flynn-test/stack"
	var progress bytes.Buffer
	start := time.Now()
	res, err := Build(context.Background(), Config{Dir: dir, Progress: &progress})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	t.Logf("stack %s: cached=%v, took %s", res.Key, res.Cached, time.Since(start).Round(time.Millisecond))
	if !res.Cached && !strings.Contains(progress.String(), "Building stack") {
		t.Errorf("no progress output:\n%s", progress.String())
	}
	for _, p := range []string{"usr/bin/curl", "usr/bin/git", "usr/bin/gcc", "usr/bin/make", "usr/bin/unzip", "usr/bin/xz", "bin/busybox", "etc/ssl/certs",
		"usr/bin/python3", "usr/bin/pip3", "usr/bin/ruby", "usr/bin/bundle"} {
		if _, err := os.Stat(filepath.Join(res.Rootfs, p)); err != nil {
			t.Errorf("stack lacks %s: %v", p, err)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(res.Rootfs, "etc/passwd"))
	if !strings.Contains(string(passwd), "app:x:1000:1000:") {
		t.Error("stack has no app user")
	}
	// A second build is a cache hit.
	again, err := Build(context.Background(), Config{Dir: dir})
	if err != nil || !again.Cached || again.Rootfs != res.Rootfs {
		t.Errorf("second build: %+v, %v; want a cache hit at %s", again, err, res.Rootfs)
	}
}

func TestWriteLayer(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("x"), 0o644)
	os.Symlink("hostname", filepath.Join(root, "etc/link"))
	dst := filepath.Join(t.TempDir(), "layer.tar")
	if err := writeLayer(root, dst); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tar", "-tf", dst).Output()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("./\n./etc/\n./etc/hostname\n./etc/link\n", sortLines(string(out))); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
}

func sortLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}
