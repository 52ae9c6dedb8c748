package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// topDirFlag reads dir's FS_TOPDIR_FL; ok is false where the filesystem
// keeps no such flags.
func topDirFlag(t *testing.T, dir string) (set, ok bool) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := inodeFlags(f)
	if err != nil {
		return false, false
	}
	return flags&fsTopDirFlag != 0, true
}

func isExt4(t *testing.T, dir string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.EXT4_SUPER_MAGIC
}

func TestMarkTopDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "jobs")
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if set, _ := topDirFlag(t, dir); set {
		t.Fatal("a new directory already has the top-dir flag")
	}
	took := MarkTopDir(dir)
	set, ok := topDirFlag(t, dir)
	if took != set {
		t.Fatalf("MarkTopDir reported %v, the flag is %v", took, set)
	}
	if isExt4(t, dir) && !set {
		t.Fatal("on ext4 the flag was not set")
	}
	if ok && set && !MarkTopDir(dir) {
		t.Fatal("marking again reported failure")
	}
	// Where there is nothing to mark it says so and changes nothing.
	if MarkTopDir("/proc") {
		t.Error("MarkTopDir(/proc) reported success")
	}
	if MarkTopDir(filepath.Join(dir, "missing")) {
		t.Error("MarkTopDir of a missing directory reported success")
	}
}
