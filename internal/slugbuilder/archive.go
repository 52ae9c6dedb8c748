package slugbuilder

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// maybeGunzip returns a reader of the uncompressed stream, whether r is
// gzipped or plain.
func maybeGunzip(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return gzip.NewReader(br)
	}
	return br, nil
}

// untar extracts a tar or tar.gz stream into dir. It refuses entries that
// would land outside dir (absolute paths, "..", writing through a
// symlink), keeps permission bits and the mtimes of files, and ignores
// ownership and device nodes.
func untar(r io.Reader, dir string) error {
	_, err := untarChunks(r, dir)
	return err
}

// untarChunks is untar that also returns the build cache chunks (see
// chunkOf) of the entries it extracted, in the order first seen.
func untarChunks(r io.Reader, dir string) ([]string, error) {
	r, err := maybeGunzip(r)
	if err != nil {
		return nil, fmt.Errorf("untar: %w", err)
	}
	tr := tar.NewReader(r)
	x := &extractor{dir: dir, dirs: map[string]bool{}}
	var chunks []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return chunks, nil
		}
		if err != nil {
			return nil, fmt.Errorf("untar: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == "." || hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if path.IsAbs(hdr.Name) || name == ".." || strings.HasPrefix(name, "../") {
			return nil, fmt.Errorf("untar: entry %q leaves the target directory", hdr.Name)
		}
		if c := chunkOf(name, hdr.Typeflag == tar.TypeDir); !slices.Contains(chunks, c) {
			chunks = append(chunks, c)
		}
		if err := x.entry(tr, hdr, name); err != nil {
			return nil, err
		}
	}
}

// extractor writes tar entries under dir. dirs holds the relative paths
// known to be real directories (made or checked by it), so each parent is
// checked once per archive, not once per entry: a restored build cache
// has thousands of files, and on overlayfs every lookup costs.
type extractor struct {
	dir  string
	dirs map[string]bool
}

// entry writes one tar entry, whose cleaned relative name is name.
func (x *extractor) entry(tr *tar.Reader, hdr *tar.Header, name string) error {
	target := filepath.Join(x.dir, filepath.FromSlash(name))
	if err := x.checkParents(name); err != nil {
		return err
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("untar: %w", err)
		}
		os.Chmod(target, mode|0o700)
	case tar.TypeReg:
		x.replaced(name)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode|0o600)
		if errors.Is(err, fs.ErrExist) {
			os.Remove(target)
			f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode|0o600)
		}
		if err != nil {
			return fmt.Errorf("untar: %w", err)
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("untar %s: %w", hdr.Name, err)
		}
		// Tools key caches by mtimes (the go command's package index of
		// GOROOT, for one): a restored cache keeps them.
		if !hdr.ModTime.IsZero() {
			if err := os.Chtimes(target, hdr.ModTime, hdr.ModTime); err != nil {
				return fmt.Errorf("untar: %w", err)
			}
		}
	case tar.TypeSymlink:
		x.replaced(name)
		os.Remove(target)
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return fmt.Errorf("untar: %w", err)
		}
	case tar.TypeLink:
		src := path.Clean(strings.TrimPrefix(hdr.Linkname, "./"))
		if path.IsAbs(hdr.Linkname) || src == ".." || strings.HasPrefix(src, "../") {
			return fmt.Errorf("untar: hard link %q leaves the target directory", hdr.Name)
		}
		if err := x.checkParents(src); err != nil {
			return err
		}
		x.replaced(name)
		os.Remove(target)
		if err := os.Link(filepath.Join(x.dir, filepath.FromSlash(src)), target); err != nil {
			return fmt.Errorf("untar: %w", err)
		}
	default:
		// Devices, fifos and the like have no place in an app.
	}
	return nil
}

// replaced forgets name and everything under it as known directories
// before an entry replaces name. A known directory has entries, so the
// replacement fails today; this keeps a symlink that did replace one from
// being written through.
func (x *extractor) replaced(name string) {
	if !x.dirs[name] {
		return
	}
	for d := range x.dirs {
		if d == name || strings.HasPrefix(d, name+"/") {
			delete(x.dirs, d)
		}
	}
}

// checkParents makes sure no directory above name (relative to dir) is a
// symlink, so an entry cannot be written through one; missing parents are
// created.
func (x *extractor) checkParents(name string) error {
	parent := path.Dir(name)
	if parent == "." || x.dirs[parent] {
		return nil
	}
	cur, rel := x.dir, ""
	for _, p := range strings.Split(parent, "/") {
		cur, rel = filepath.Join(cur, p), path.Join(rel, p)
		if x.dirs[rel] {
			continue
		}
		fi, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(cur, 0o755); err != nil {
				return fmt.Errorf("untar: %w", err)
			}
			x.dirs[rel] = true
			continue
		}
		if err != nil {
			return fmt.Errorf("untar: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("untar: %q: %s is not a directory", name, p)
		}
		x.dirs[rel] = true
	}
	return nil
}

// writeTarGz writes the tree under dir as a gzipped tar with "./"-relative
// names, owned by uid:gid. It compresses on a second core (writeBehind).
func writeTarGz(w io.Writer, dir string, uid, gid int) error {
	return writeChunk(w, dir, "", "./", uid, gid)
}

// writeTar writes the tree under dir as a tar whose names are prefix
// (which ends in "/") and the path relative to dir, owned by uid:gid; with
// only set, just the entry at that relative path (alone, without what is
// in it, when only ends in "/").
func writeTar(w io.Writer, dir, only, prefix string, uid, gid int) error {
	return writeTarOpts(w, dir, prefix, uid, gid, tarOpts{only: only})
}

// tarOpts select what writeTarOpts writes, and how.
type tarOpts struct {
	// only: see writeTar.
	only string
	// top, when set, selects the top-level entries of dir written, by
	// name (dir itself is always written).
	top func(name string) bool
	// skip, when set, leaves out the entries it is true for, by path
	// relative to dir (slash-separated), with all that is under them
	// (not the entries that follow links).
	skip func(rel string) bool
	// fixedTimes gives directories and symbolic links the modification
	// time fixedTime: a build makes them anew each time, so without it
	// the tar of the same files would differ from build to build. Files
	// keep theirs.
	fixedTimes bool
	// follow maps top-level entries of dir that are symbolic links to
	// the directories they lead to: each is written as a directory of
	// that name holding what its target holds.
	follow map[string]string
}

// fixedTime is the modification time of directories and links in a tar
// written with tarOpts.fixedTimes.
var fixedTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// writeTarOpts is writeTar with more choices (tarOpts). Entries are
// written in lexical order, so the same tree gives the same tar.
func writeTarOpts(w io.Writer, dir, prefix string, uid, gid int, o tarOpts) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	root, alone := dir, strings.HasSuffix(o.only, "/")
	if o.only != "" {
		root = filepath.Join(dir, filepath.FromSlash(o.only))
	}
	// write writes the entry at p as rel, the path relative to dir.
	write := func(p, rel string, d fs.DirEntry) error {
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil // sockets and the like are skipped
		}
		hdr.Name = prefix + filepath.ToSlash(rel)
		if rel == "." {
			hdr.Name = prefix
		}
		if fi.IsDir() && rel != "." {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = uid, gid, "", ""
		if o.fixedTimes && (fi.IsDir() || hdr.Typeflag == tar.TypeSymlink) {
			hdr.ModTime = fixedTime
		}
		if fi.Mode().IsRegular() {
			if id, ok := inode(fi); ok {
				if first, seen := links[id]; seen {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					links[id] = hdr.Name
				}
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if alone && p != root {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		top := rel != "." && !strings.ContainsRune(rel, filepath.Separator)
		if o.top != nil && top && !o.top(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if o.skip != nil && rel != "." && o.skip(filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if target, ok := o.follow[rel]; ok && top {
			return filepath.WalkDir(target, func(q string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				in, err := filepath.Rel(target, q)
				if err != nil {
					return err
				}
				return write(q, filepath.Join(rel, in), d)
			})
		}
		return write(p, rel, d)
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return tw.Close()
}
