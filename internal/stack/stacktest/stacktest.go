// Package stacktest runs commands inside a stack for tests, the way a job
// would run them but without the host agent: a private mount and pid
// namespace (unshare), an overlay of a per-run upper directory over the
// stack, bind mounts, and chroot as the app user. The host's network
// namespace is shared, so servers started this way answer on loopback.
// It also builds the static flynn-host binary and the cached test stacks.
package stacktest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/stack"
)

// CacheDir is where tests keep stacks between runs.
const CacheDir = "/var/cache/flynn-test/stack"

// FlynnHostPath is where the flynn-host binary appears inside a job.
const FlynnHostPath = "/usr/local/bin/flynn-host"

// HostCABundle is the Debian path of the CA bundle, on the host and in
// the stack.
const HostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// Bind is a bind mount into the container.
type Bind struct {
	Src, Dst string
	RW       bool
}

// Spec is one command to run in a stack.
type Spec struct {
	Rootfs string
	Binds  []Bind
	// User is "uid:gid"; default the app user.
	User string
	Env  []string
	Args []string
}

// Command returns an unstarted command running spec; its writes land in a
// temporary upper directory that is removed when the test ends.
func Command(ctx context.Context, t testing.TB, spec Spec) *exec.Cmd {
	t.Helper()
	if spec.User == "" {
		spec.User = fmt.Sprintf("%d:%d", stack.AppUID, stack.AppGID)
	}
	tmp := t.TempDir()
	upper, work, merged := filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"), filepath.Join(tmp, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var s strings.Builder
	s.WriteString("set -e\n")
	fmt.Fprintf(&s, "mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s\n", q(spec.Rootfs), q(upper), q(work), q(merged))
	fmt.Fprintf(&s, "mkdir -p %[1]s/proc %[1]s/dev %[1]s/tmp %[1]s/etc\n", q(merged))
	fmt.Fprintf(&s, "chmod 1777 %s/tmp\n", q(merged))
	fmt.Fprintf(&s, "mount -t proc proc %s/proc\n", q(merged))
	fmt.Fprintf(&s, "mount --rbind /dev %s/dev\n", q(merged))
	fmt.Fprintf(&s, "touch %[1]s/etc/resolv.conf && mount --bind /etc/resolv.conf %[1]s/etc/resolv.conf\n", q(merged))
	// The host's CA bundle, as the host agent gives jobs: egress here may
	// go through a TLS proxy that only the host's trust store knows.
	binds := spec.Binds
	if _, err := os.Stat(HostCABundle); err == nil {
		binds = append([]Bind{{Src: HostCABundle, Dst: HostCABundle}}, binds...)
	}
	for _, b := range binds {
		dst := q(merged + b.Dst)
		fi, err := os.Stat(b.Src)
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() {
			fmt.Fprintf(&s, "mkdir -p %s\n", dst)
		} else {
			fmt.Fprintf(&s, "mkdir -p $(dirname %[1]s) && touch %[1]s\n", dst)
		}
		fmt.Fprintf(&s, "mount --bind %s %s\n", q(b.Src), dst)
		if !b.RW {
			fmt.Fprintf(&s, "mount -o remount,bind,ro %s\n", dst)
		}
	}
	fmt.Fprintf(&s, "exec chroot --userspec=%s %s env -i", spec.User, q(merged))
	for _, kv := range spec.Env {
		s.WriteString(" " + q(kv))
	}
	for _, a := range spec.Args {
		s.WriteString(" " + q(a))
	}
	s.WriteString("\n")
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", s.String())
	// unshare's --kill-child does not survive chroot's change of user, so
	// cancelling kills the whole process group; when the namespace's first
	// process dies the kernel kills the rest.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

func q(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// BuildFlynnHost builds a static flynn-host into dir and returns its path.
func BuildFlynnHost(dir string) (string, error) {
	out := filepath.Join(dir, "flynn-host")
	cmd := exec.Command("go", "build", "-o", out, "github.com/flynnrebuilt/flynn/cmd/flynn-host")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build flynn-host: %w: %s", err, b)
	}
	return out, nil
}

// DefaultStack returns the default Debian stack, building it into
// CacheDir once (serialised by a lock file across test processes). It
// skips the test under -short.
func DefaultStack(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the debootstrap stack (slow to build the first time)")
	}
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(CacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	res, err := stack.Build(context.Background(), stack.Config{Dir: CacheDir, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	return res.Rootfs
}

// BusyboxStack builds a busybox stack in a temporary directory.
func BusyboxStack(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := stack.BuildBusybox(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
