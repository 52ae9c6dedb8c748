package runtime

import (
	"os"

	"golang.org/x/sys/unix"
)

// fsTopDirFlag is FS_TOPDIR_FL (linux/fs.h; chattr +T), which x/sys/unix
// does not name.
const fsTopDirFlag = 0x00020000

// MarkTopDir marks dir as the top of directory hierarchies for ext4's
// Orlov allocator (chattr +T): each directory made in it is placed in a
// block group of its own choosing (one with few directories and room),
// as directories made in a filesystem's root are, instead of in dir's
// group. The host agent marks the directories that get one directory per
// job, whose trees are made and removed all the time.
//
// It matters on ext4 without a journal, as this project's test machines
// have: allocating an inode there passes over, one by one, every free
// inode of the group deleted in the last minute (six, while its inode
// table block is not yet written back: ext4's recently_deleted check), so
// in a group shared with busy work (/tmp beside the go tool's builds) each
// of the ~25 files and directories a job start makes cost up to half a
// millisecond: BenchmarkStartSequential went from 1.8x bare runc's time to
// 1.4-1.5x with the jobs' directories marked. Filesystems that do not know
// the flag are left as they are: it is a hint, and MarkTopDir reports
// whether it took.
func MarkTopDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	flags, err := inodeFlags(f)
	if err != nil {
		return false
	}
	if flags&fsTopDirFlag != 0 {
		return true
	}
	return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsTopDirFlag)) == nil
}

// inodeFlags reads f's inode flags (lsattr's); an error where its
// filesystem keeps none.
func inodeFlags(f *os.File) (uint32, error) {
	return unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
}
