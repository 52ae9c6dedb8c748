// Package stack builds the root filesystems ("stacks") that build jobs and
// app jobs run in: the default Debian stack made with debootstrap, cached by
// a hash of its package list, and a tiny busybox stack for tests that need
// no toolchain.
package stack

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DefaultPackages are the Debian packages the default stack holds on top of
// debootstrap's minbase variant: what buildpacks need to fetch and build,
// and the language runtimes the Python and Ruby buildpacks use (build and
// app jobs run on the same stack, so an app's venv or bundle finds the
// interpreter it was built with).
var DefaultPackages = []string{
	"ca-certificates", "curl", "git", "unzip", "xz-utils", "gcc", "make",
	"libc6-dev", "netbase", "procps", "tzdata", "libssl3", "zlib1g", "busybox",
	// Python: the interpreter, venv (with ensurepip's wheels), pip and
	// the headers sdists with C extensions build against.
	"python3", "python3-venv", "python3-pip", "python3-dev",
	// Ruby: the interpreter, bundler and the headers native gems build
	// against.
	"ruby", "ruby-dev", "bundler",
	// PostgreSQL: the server the postgres appliance runs (on this stack),
	// and psql, pg_dump and pg_restore, which flynn pg runs.
	"postgresql",
	// MariaDB: the server the mysql appliance runs, and the mariadb
	// client and mariadb-dump, which flynn mysql runs.
	"mariadb-server", "mariadb-client",
	// Redis: the server the redis appliance runs, and redis-cli, which
	// flynn redis runs.
	"redis-server", "redis-tools",
}

// DefaultMirror is used when no Debian mirror is found in the apt sources.
const DefaultMirror = "http://deb.debian.org/debian"

// Name is the name of the default stack, given to buildpacks as $STACK.
const Name = "flynn-bookworm"

// AppUID and AppGID are the ids of the unprivileged user "app" that every
// stack holds and that build and app jobs run as.
const (
	AppUID = 1000
	AppGID = 1000
)

// layoutVersion changes when the post-processing below changes, so stacks
// built by an older binary are rebuilt.
const layoutVersion = "2"

// Config says which stack to build and where.
type Config struct {
	// Dir is the cache directory; the stack goes to Dir/<key>/rootfs.
	Dir string
	// Suite is the Debian release; default bookworm.
	Suite string
	// Mirror is the Debian mirror; default: the first one in this
	// machine's apt sources, else DefaultMirror.
	Mirror string
	// Packages are installed on top of minbase; default DefaultPackages.
	Packages []string
	// Tar, when set, also writes the rootfs as an uncompressed layer tar
	// to Dir/<key>/layer.tar.
	Tar bool
	// Progress receives debootstrap's output line by line; may be nil.
	Progress io.Writer
}

// Result says where a built stack is.
type Result struct {
	Key    string // hash of suite, packages and layout version
	Rootfs string // directory holding the root filesystem
	Layer  string // layer tar, when Config.Tar was set
	Cached bool   // true when an earlier build was reused
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		return errors.New("stack: cache directory not set")
	}
	if c.Suite == "" {
		c.Suite = "bookworm"
	}
	if len(c.Packages) == 0 {
		c.Packages = DefaultPackages
	}
	if c.Mirror == "" {
		c.Mirror = AptMirror("/etc/apt")
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return nil
}

// Key is the cache key of a stack: a hash of what goes into it. The mirror
// is not part of it: every mirror serves the same packages.
func Key(suite string, packages []string) string {
	p := slices.Clone(packages)
	slices.Sort(p)
	p = slices.Compact(p)
	h := sha256.Sum256([]byte(layoutVersion + "\n" + suite + "\n" + strings.Join(p, "\n")))
	return hex.EncodeToString(h[:8])
}

// Build builds the default stack with debootstrap, or returns the cached
// one when a stack with the same key was built before.
func Build(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	key := Key(cfg.Suite, cfg.Packages)
	base := filepath.Join(cfg.Dir, key)
	res := Result{Key: key, Rootfs: filepath.Join(base, "rootfs")}
	// One builder of a key at a time, machine-wide: another build's
	// clean-up would remove a stack in use, and two writers of the layer
	// would interleave. The lock goes with the process, however it ends.
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, ".lock-"+key), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return Result{}, fmt.Errorf("stack: wait for another build of %s: %w", key, err)
	}
	if cfg.Tar {
		res.Layer = filepath.Join(base, "layer.tar")
	}
	if _, err := os.Stat(filepath.Join(base, "done")); err == nil {
		if !cfg.Tar {
			res.Cached = true
			return res, nil
		}
		if _, err := os.Stat(res.Layer); err == nil {
			res.Cached = true
			return res, nil
		}
		fmt.Fprintf(cfg.Progress, "-----> Writing layer %s\n", res.Layer)
		return res, writeLayer(res.Rootfs, res.Layer)
	}

	if _, err := exec.LookPath("debootstrap"); err != nil {
		return Result{}, errors.New("stack: debootstrap not found; install it with `make deps`")
	}
	// Build into a temporary directory next to the final one and rename,
	// so a crashed build never looks finished.
	tmp, err := os.MkdirTemp(cfg.Dir, ".build-"+key+"-")
	if err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	defer os.RemoveAll(tmp)
	rootfs := filepath.Join(tmp, "rootfs")

	start := time.Now()
	fmt.Fprintf(cfg.Progress, "-----> Building stack %s (%s, minbase + %d packages) from %s\n",
		key, cfg.Suite, len(cfg.Packages), cfg.Mirror)
	args := []string{"--variant=minbase", "--include=" + strings.Join(cfg.Packages, ","),
		cfg.Suite, rootfs, cfg.Mirror}
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := runLines(cmd, cfg.Progress, "       "); err != nil {
		return Result{}, fmt.Errorf("stack: debootstrap: %w", err)
	}
	fmt.Fprintln(cfg.Progress, "-----> Configuring stack")
	if err := configure(rootfs); err != nil {
		return Result{}, fmt.Errorf("stack: configure: %w", err)
	}
	if cfg.Tar {
		if err := writeLayer(rootfs, filepath.Join(tmp, "layer.tar")); err != nil {
			return Result{}, err
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "packages"), []byte(strings.Join(cfg.Packages, "\n")+"\n"), 0o644); err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), nil, 0o644); err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	os.RemoveAll(base) // a partial build from an older crash
	if err := os.Rename(tmp, base); err != nil {
		return Result{}, fmt.Errorf("stack: %w", err)
	}
	fmt.Fprintf(cfg.Progress, "-----> Stack %s built in %s\n", key, time.Since(start).Round(time.Second))
	return res, nil
}

// flock takes an exclusive lock on f, waiting for it until ctx ends.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != syscall.EWOULDBLOCK {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// configure adds what every stack needs after debootstrap: the app user,
// a writable /app, and no apt caches.
func configure(rootfs string) error {
	if err := addAppUser(rootfs); err != nil {
		return err
	}
	for _, dir := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
		entries, _ := os.ReadDir(filepath.Join(rootfs, dir))
		for _, e := range entries {
			if e.Type().IsRegular() {
				os.Remove(filepath.Join(rootfs, dir, e.Name()))
			}
		}
	}
	// Name resolution inside jobs: the host agent bind-mounts its own
	// resolv.conf; an empty file keeps the mount point.
	if err := os.WriteFile(filepath.Join(rootfs, "etc/resolv.conf"), nil, 0o644); err != nil {
		return err
	}
	return nil
}

// addAppUser adds user and group "app" (1000:1000, home /app) to the
// rootfs's account files and creates /app owned by it.
func addAppUser(rootfs string) error {
	lines := []struct{ file, line string }{
		{"etc/passwd", fmt.Sprintf("app:x:%d:%d:app:/app:/bin/sh", AppUID, AppGID)},
		{"etc/group", fmt.Sprintf("app:x:%d:", AppGID)},
		{"etc/shadow", "app:!:19000:0:99999:7:::"},
		{"etc/gshadow", "app:!::"},
	}
	for _, l := range lines {
		p := filepath.Join(rootfs, l.file)
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) && (l.file == "etc/shadow" || l.file == "etc/gshadow") {
			continue
		}
		if err != nil {
			return err
		}
		if hasLinePrefix(string(data), "app:") {
			continue
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		data = append(data, l.line+"\n"...)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	app := filepath.Join(rootfs, "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		return err
	}
	return os.Chown(app, AppUID, AppGID)
}

func hasLinePrefix(s, prefix string) bool {
	for line := range strings.Lines(s) {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

// runLines runs cmd, copying its combined output line by line to w with
// prefix, and keeps the last lines for the error.
func runLines(cmd *exec.Cmd, w io.Writer, prefix string) error {
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return err
	}
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(w, prefix+sc.Text())
			tail = append(tail, sc.Text())
			if len(tail) > 5 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.Join(tail, " | "))
	}
	return nil
}

// AptMirror returns the first Debian mirror found in the apt sources under
// dir (sources.list and sources.list.d/*.list|*.sources), or DefaultMirror.
func AptMirror(dir string) string {
	files := []string{filepath.Join(dir, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(dir, "sources.list.d", "*"))
	files = append(files, more...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := mirrorIn(string(data)); m != "" {
			return m
		}
	}
	return DefaultMirror
}

// mirrorIn finds a Debian main-archive URI in one sources file, in either
// the one-line or the deb822 format.
func mirrorIn(data string) string {
	for line := range strings.Lines(data) {
		f := strings.Fields(line)
		var uris []string
		switch {
		case len(f) >= 3 && f[0] == "deb":
			u := f[1]
			if strings.HasPrefix(u, "[") { // options
				for i, x := range f {
					if strings.HasSuffix(x, "]") && i+1 < len(f) {
						u = f[i+1]
						break
					}
				}
			}
			uris = []string{u}
		case len(f) >= 2 && f[0] == "URIs:":
			uris = f[1:]
		}
		for _, u := range uris {
			u = strings.TrimSuffix(u, "/")
			if strings.HasSuffix(u, "/debian") {
				return u
			}
		}
	}
	return ""
}
