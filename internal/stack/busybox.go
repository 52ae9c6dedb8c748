package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is where Debian's busybox-static package puts the binary.
const BusyboxPath = "/bin/busybox"

// BuildBusybox writes a tiny stack to dir: a static busybox with its applets
// as symlinks, /etc account files holding root and app, and an empty /app
// owned by app. Tests that need a shell but no toolchain run in it.
func BuildBusybox(ctx context.Context, dir string) error {
	out, err := exec.CommandContext(ctx, BusyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox stack: %w (install busybox-static with `make deps`)", err)
	}
	for _, d := range []string{"bin", "etc", "tmp", "proc", "dev", "usr/local/bin", "app"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("busybox stack: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return fmt.Errorf("busybox stack: %w", err)
	}
	data, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return fmt.Errorf("busybox stack: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		return fmt.Errorf("busybox stack: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		err := os.Symlink("busybox", filepath.Join(dir, "bin", applet))
		if err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("busybox stack: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd":      fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\napp:x:%d:%d:app:/app:/bin/sh\n", AppUID, AppGID),
		"etc/group":       fmt.Sprintf("root:x:0:\napp:x:%d:\n", AppGID),
		"etc/resolv.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("busybox stack: %w", err)
		}
	}
	return os.Chown(filepath.Join(dir, "app"), AppUID, AppGID)
}

// writeLayer writes rootfs as an uncompressed tar with numeric owners.
func writeLayer(rootfs, dst string) error {
	tmp := dst + ".tmp"
	cmd := exec.Command("tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", tmp, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("stack: write layer: %w: %s", err, out)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("stack: write layer: %w", err)
	}
	return nil
}
