package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeLayer is returned when a layer tar holds an entry that would land
// outside the directory it is extracted into (an absolute or ".." path, a
// hard link out of the tree, or a path through a symbolic link).
var ErrUnsafeLayer = errors.New("unsafe layer")

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Untar extracts the tar stream r into dir, which must exist. Entries are
// written as overlayfs expects a lower layer: a whiteout ".wh.NAME" becomes
// a 0/0 character device NAME and an opaque marker sets the directory's
// trusted.overlay.opaque attribute. Owners, modes and times are kept. Any
// entry that would escape dir makes Untar fail with ErrUnsafeLayer; the
// caller removes the partial tree.
func Untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	type dirTime struct {
		path  string
		mtime time.Time
	}
	var dirs []dirTime
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		rel, err := cleanEntry(hdr.Name)
		if err != nil {
			return err
		}
		if rel == "." {
			continue
		}
		if err := checkParents(dir, rel); err != nil {
			return err
		}
		parent, base := path.Split(rel)
		if base == whiteoutOpaque {
			if err := os.MkdirAll(filepath.Join(dir, parent), 0o755); err != nil {
				return err
			}
			if err := unix.Setxattr(filepath.Join(dir, parent), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				return fmt.Errorf("mark %s opaque: %w", parent, err)
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			target := filepath.Join(dir, parent, strings.TrimPrefix(base, whiteoutPrefix))
			if err := os.RemoveAll(target); err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Join(dir, parent), 0o755); err != nil {
				return err
			}
			if err := unix.Mknod(target, unix.S_IFCHR, 0); err != nil {
				return fmt.Errorf("whiteout %s: %w", rel, err)
			}
			continue
		}
		target := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeDir {
			// A later entry replaces an earlier one of the same name.
			if fi, err := os.Lstat(target); err == nil {
				if fi.IsDir() {
					if err := os.RemoveAll(target); err != nil {
						return err
					}
				} else if err := os.Remove(target); err != nil {
					return err
				}
			}
		}
		mode := os.FileMode(hdr.Mode).Perm() | setBits(hdr.Mode)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
				if err := os.Remove(target); err != nil {
					return err
				}
			}
			if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
			dirs = append(dirs, dirTime{target, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", rel, err)
			}
		case tar.TypeSymlink:
			// The link text is not resolved here: it is resolved inside the
			// container, whose root is dir. Paths through it are refused
			// by checkParents.
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src, err := cleanEntry(hdr.Linkname)
			if err != nil || src == "." {
				return fmt.Errorf("%w: hard link %q -> %q", ErrUnsafeLayer, hdr.Name, hdr.Linkname)
			}
			if err := checkParents(dir, src); err != nil {
				return err
			}
			if err := os.Link(filepath.Join(dir, src), target); err != nil {
				return fmt.Errorf("hard link %s: %w", rel, err)
			}
			continue // a hard link shares its target's owner, mode and times
		case tar.TypeFifo:
			if err := unix.Mkfifo(target, uint32(mode)); err != nil {
				return err
			}
		default:
			// Device nodes and other special files have no place in an
			// image: the runtime provides /dev.
			continue
		}
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown %s: %w", rel, err)
		}
		if hdr.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
			if hdr.Typeflag != tar.TypeDir {
				_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Chtimes(dirs[i].path, dirs[i].mtime, dirs[i].mtime)
	}
	return nil
}

func setBits(m int64) os.FileMode {
	var mode os.FileMode
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// cleanEntry turns a tar entry name into a clean relative path, refusing
// names that leave the tree.
func cleanEntry(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: entry name has a NUL byte", ErrUnsafeLayer)
	}
	n := strings.TrimPrefix(name, "./")
	if path.IsAbs(n) {
		return "", fmt.Errorf("%w: absolute entry %q", ErrUnsafeLayer, name)
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: entry %q escapes the layer", ErrUnsafeLayer, name)
	}
	return c, nil
}

// checkParents refuses rel when one of its parent directories inside dir is
// a symbolic link, so that no write follows a link out of dir.
func checkParents(dir, rel string) error {
	parts := strings.Split(rel, "/")
	p := dir
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%w: entry %q goes through symbolic link %q", ErrUnsafeLayer, rel, part)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: entry %q goes through non-directory %q", ErrUnsafeLayer, rel, part)
		}
	}
	return nil
}
