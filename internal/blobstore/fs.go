package blobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
)

// stateDirName is the directory under the root where an instance keeps
// its own records (the tombstones of deleted blobs).
const stateDirName = ".blobstore-state"

// tmpDirName is the directory under the root where uploads are written
// before they are renamed into place. It is on the same filesystem as the
// blobs, so the rename is atomic, and it is emptied on start.
const tmpDirName = ".blobstore-tmp"

// shaXattr is the extended attribute holding a blob's sha256 (hex). It is
// set on the temporary file before the rename, so a blob and its checksum
// appear together.
const shaXattr = "user.flynn.sha256"

// copyBufSize is the buffer used to stream uploads to disk.
const copyBufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// FS is a Backend that keeps blobs as files under a root directory, one file
// per blob at the blob's path. Checksums live in an extended attribute; on
// filesystems without user xattrs they are computed when first asked for
// and kept in memory.
type FS struct {
	root   string
	tmp    string
	noSync bool

	// commit serializes, per path (by hash), the last step of a write or
	// delete: comparing versions and renaming or removing.
	commit [64]sync.Mutex

	mu      sync.Mutex
	shaMemo map[shaKey]string // used only when xattrs are unsupported
}

type shaKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

// FSOptions tunes the filesystem backend.
type FSOptions struct {
	// NoSync skips fsync of each upload before it is renamed into place.
	// Faster, but a crash may leave a blob empty.
	NoSync bool
}

// NewFS returns a filesystem backend rooted at root, creating it if needed
// and removing uploads left unfinished by an earlier process.
func NewFS(root string, opts FSOptions) (*FS, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blobstore root: %w", err)
	}
	tmp := filepath.Join(abs, tmpDirName)
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("clean blobstore temp dir: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("create blobstore dir: %w", err)
	}
	return &FS{root: abs, tmp: tmp, noSync: opts.NoSync, shaMemo: map[shaKey]string{}}, nil
}

// lock locks the commit step of name and returns the unlock function.
func (b *FS) lock(name string) func() {
	h := fnv.New32a()
	h.Write([]byte(name))
	m := &b.commit[h.Sum32()%uint32(len(b.commit))]
	m.Lock()
	return m.Unlock
}

func (b *FS) path(name string) string {
	return filepath.Join(b.root, filepath.FromSlash(name))
}

// Put implements Backend.
func (b *FS) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, api.Validation("path", "cannot write the root directory")
	}
	full := b.path(name)
	if fi, err := os.Lstat(full); err == nil && fi.IsDir() {
		return api.BlobInfo{}, api.Conflict("%q is a directory", "/"+name)
	}
	// Create the parents first, so a path clash fails before the upload.
	if err := b.mkdirParents(name); err != nil {
		return api.BlobInfo{}, err
	}
	f, err := os.CreateTemp(b.tmp, "put-*")
	if err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	tmpName := f.Name()
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(tmpName)
		}
	}()

	h := sha256.New()
	bufp := bufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, r}, *bufp)
	bufPool.Put(bufp)
	if err != nil {
		return api.BlobInfo{}, uploadError(name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := checkSHA(sum, opts.SHA256); err != nil {
		return api.BlobInfo{}, err
	}
	if err := unix.Fsetxattr(int(f.Fd()), shaXattr, []byte(sum), 0); err != nil && !xattrUnsupported(err) {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	if !b.noSync {
		if err := f.Sync(); err != nil {
			return api.BlobInfo{}, errorf("put", name, err)
		}
	}
	if err := f.Close(); err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}

	unlock := b.lock(name)
	defer unlock()
	var cur time.Time
	if fi, err := os.Lstat(full); err == nil && fi.Mode().IsRegular() {
		cur = fi.ModTime()
	}
	mod := opts.Modified
	if mod.IsZero() {
		mod = stampTime(time.Now(), opts.NotBefore, cur)
	} else if !cur.IsZero() && !mod.After(cur) {
		info, err := b.Stat(ctx, name)
		if err != nil {
			return api.BlobInfo{}, err
		}
		return info, ErrStale
	}
	if err := os.Chtimes(tmpName, mod, mod); err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	// The filesystem may keep coarser times than asked for: the time it
	// kept is the version.
	fi, err := os.Lstat(tmpName)
	if err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	// A concurrent Delete may remove an emptied parent between mkdir and
	// rename; make it again and retry.
	for attempt := 0; ; attempt++ {
		err = os.Rename(tmpName, full)
		if err == nil || attempt == 3 || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err := b.mkdirParents(name); err != nil {
			return api.BlobInfo{}, err
		}
	}
	if err != nil {
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return api.BlobInfo{}, api.Conflict("%q is a directory", "/"+name)
		}
		return api.BlobInfo{}, errorf("put", name, err)
	}
	keep = true
	return api.BlobInfo{Path: "/" + name, Size: n, SHA256: sum, Modified: fi.ModTime().UTC()}, nil
}

func (b *FS) mkdirParents(name string) error {
	dir := filepath.Dir(b.path(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, fs.ErrExist) {
			return api.Conflict("a parent of %q is a blob, not a directory", "/"+name)
		}
		return errorf("put", name, err)
	}
	return nil
}

// Open implements Backend.
func (b *FS) Open(ctx context.Context, name string) (Object, error) {
	if name == "" {
		return nil, notFound(name)
	}
	f, err := os.Open(b.path(name))
	if err != nil {
		return nil, b.statErr(name, err)
	}
	info, err := b.fileInfo(f, name)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fileObject{File: f, info: info}, nil
}

// Stat implements Backend.
func (b *FS) Stat(ctx context.Context, name string) (api.BlobInfo, error) {
	o, err := b.Open(ctx, name)
	if err != nil {
		return api.BlobInfo{}, err
	}
	defer o.Close()
	return o.Info(), nil
}

func (b *FS) statErr(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return notFound(name)
	}
	return errorf("open", name, err)
}

// fileInfo describes the open file f, reading its checksum from the xattr,
// or computing it when the file has none.
func (b *FS) fileInfo(f *os.File, name string) (api.BlobInfo, error) {
	fi, err := f.Stat()
	if err != nil {
		return api.BlobInfo{}, errorf("stat", name, err)
	}
	if !fi.Mode().IsRegular() {
		return api.BlobInfo{}, api.NotFound("%q is a directory; add a trailing slash to list it", "/"+name)
	}
	info := api.BlobInfo{Path: "/" + name, Size: fi.Size(), Modified: fi.ModTime().UTC()}
	buf := make([]byte, 64)
	n, err := unix.Fgetxattr(int(f.Fd()), shaXattr, buf)
	if err == nil && n == 64 {
		info.SHA256 = string(buf[:n])
		return info, nil
	}
	if err != nil && !errors.Is(err, unix.ENODATA) && !xattrUnsupported(err) {
		return api.BlobInfo{}, errorf("stat", name, err)
	}
	// No stored checksum (a file put there by hand, or no xattr support):
	// hash it once.
	var key shaKey
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key = shaKey{dev: st.Dev, ino: st.Ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	b.mu.Lock()
	sum, ok := b.shaMemo[key]
	b.mu.Unlock()
	if !ok {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
			return api.BlobInfo{}, errorf("hash", name, err)
		}
		sum = hex.EncodeToString(h.Sum(nil))
		if err := unix.Fsetxattr(int(f.Fd()), shaXattr, []byte(sum), 0); err != nil {
			b.mu.Lock()
			b.shaMemo[key] = sum
			b.mu.Unlock()
		}
	}
	info.SHA256 = sum
	return info, nil
}

// Delete implements Backend. Parent directories left empty are removed.
func (b *FS) Delete(ctx context.Context, name string, opts DeleteOptions) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, api.Validation("path", "cannot delete the root directory")
	}
	full := b.path(name)
	unlock := b.lock(name)
	defer unlock()
	fi, err := os.Lstat(full)
	if err != nil {
		return api.BlobInfo{}, b.statErr(name, err)
	}
	if fi.IsDir() {
		return api.BlobInfo{}, api.Conflict("%q is a directory; delete the blobs in it instead", "/"+name)
	}
	info := api.BlobInfo{Path: "/" + name, Size: fi.Size(), Modified: fi.ModTime().UTC()}
	if !opts.Before.IsZero() && fi.ModTime().After(opts.Before) {
		return info, ErrStale
	}
	if err := os.Remove(full); err != nil {
		return api.BlobInfo{}, b.statErr(name, err)
	}
	for dir := filepath.Dir(full); dir != b.root && strings.HasPrefix(dir, b.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return info, nil
}

// List implements Backend.
func (b *FS) List(ctx context.Context, dir string) ([]api.BlobEntry, error) {
	des, err := os.ReadDir(b.path(dir))
	if err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			return nil, api.Validation("path", "%q is a blob, not a directory", "/"+dir)
		}
		if errors.Is(err, fs.ErrNotExist) {
			if dir == "" {
				return []api.BlobEntry{}, nil
			}
			return nil, api.NotFound("directory %q not found", "/"+dir)
		}
		return nil, errorf("list", dir, err)
	}
	out := make([]api.BlobEntry, 0, len(des))
	for _, de := range des {
		if dir == "" && reserved[de.Name()] {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed while listing
		}
		e := api.BlobEntry{Name: de.Name(), Dir: fi.IsDir()}
		if !e.Dir {
			if !fi.Mode().IsRegular() {
				continue
			}
			e.Size = fi.Size()
			e.Modified = fi.ModTime().UTC()
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type fileObject struct {
	*os.File
	info api.BlobInfo
}

func (o *fileObject) Info() api.BlobInfo { return o.info }

// uploadError maps a failure to read an upload: a body that ends early is
// the client's doing, not an internal error.
func uploadError(name string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return api.Validation("body", "upload of %q ended before Content-Length bytes arrived; nothing was stored", "/"+name)
	}
	return errorf("put", name, err)
}

func xattrUnsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
