package slugbuilder

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// The build cache is stored as a series of members, one per chunk of
// CACHE_DIR. A chunk is an entry two levels down (toolchain/go1.22.5,
// gobuild/0e, node/22.1.0), or a top-level file, or a top-level directory
// itself without its contents (its mode). Each member is a tar of its
// chunk with names relative to CACHE_DIR, compressed as one zstd frame at
// the fastest level and preceded by a zstd skippable frame that holds the
// compressed frame's length (so a restore knows where each member ends).
// The whole blob is still a valid zstd stream of tars (zstd -dc | tar
// -x --ignore-zeros). zstd rather than gzip: a Go app's cache is some
// 250 MB of toolchain and build cache, which zstd decompresses several
// times faster, and compresses faster, than gzip. Chunks let a save skip
// the cache when none changed,
// and copy the compressed bytes of unchanged chunks from the previous
// cache instead of compressing them again: a Go build that adds a few
// entries to its build cache compresses those few buckets, not the
// toolchain or the rest of the build cache. A cache written in another
// layout (an older slugbuilder's single member of the whole tree, say) is
// restored all the same and rewritten in chunks by the next save.
//
// Whether a chunk changed is told by a fingerprint of its tree (the path
// and mode of every entry; size, mtime, ctime and inode of every file;
// symlink targets), taken after the restore and again before the save.
// ctime cannot be set by a process, so any write, rename or chmod shows.

// cacheMember is one gzip member of a restored cache.
type cacheMember struct {
	name       string // the one chunk it holds (see chunkOf), "" when several
	start, end int64  // byte offsets in the cache blob
	zstd       bool   // a zstd member (else an older cache's gzip member)
}

// cacheState is what the restore learned, for the save.
type cacheState struct {
	restored bool // CacheIn was read completely
	members  []cacheMember
	prints   map[string]string // fingerprint per chunk after restore
	// local says the members lie in the volume's cache.blob (a copy of
	// the blob restored, whose sha256 is sha256), not only at CacheIn.
	local  bool
	sha256 string
	// noBlob says there was no blob at CacheIn to restore.
	noBlob bool
	// left, for a volume reused though its last build's save was
	// stopped, is the fingerprints of cache/ as that build left it.
	left map[string]string
}

// countingReader counts the bytes consumed from a bufio.Reader. It is an
// io.ByteReader, so the gzip reader reads exactly up to the end of each
// member and the count gives member boundaries.
type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// zstd's skippable frame magic numbers are 0x184D2A50 to 0x184D2A5F; a
// cache member's header is one, with an 8-byte payload: the length of the
// zstd frame that follows.
const (
	memberMagic   = 0x184D2A5F
	memberHdrSize = 16
)

// restoreChunks extracts every member of r into dir and returns where each
// member lies in r and which chunk it holds. A cache of gzip members (an
// older slugbuilder's) is read too; the next save rewrites its members.
func restoreChunks(r io.Reader, dir string) ([]cacheMember, error) {
	cr := &countingReader{r: bufio.NewReaderSize(r, 256<<10)}
	magic, err := cr.r.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(magic) == 4 && binary.LittleEndian.Uint32(magic) == memberMagic {
		return restoreZstdChunks(cr, dir)
	}
	var members []cacheMember
	zr := new(gzip.Reader)
	for {
		start := cr.n
		if _, err := cr.r.Peek(1); errors.Is(err, io.EOF) {
			return members, nil
		}
		if err := zr.Reset(cr); err != nil {
			return nil, fmt.Errorf("cache member at byte %d: %w", start, err)
		}
		zr.Multistream(false)
		ra := newReadAhead(zr)
		chunks, err := untarChunks(ra, dir)
		if err == nil {
			// Read the rest of the member (tar padding, gzip trailer).
			if _, err = io.Copy(io.Discard, ra); err != nil {
				err = fmt.Errorf("cache member at byte %d: %w", start, err)
			}
		}
		ra.Close()
		if err != nil {
			return nil, err
		}
		m := cacheMember{start: start, end: cr.n}
		if len(chunks) == 1 {
			m.name = chunks[0]
		}
		members = append(members, m)
	}
}

func restoreZstdChunks(cr *countingReader, dir string) ([]cacheMember, error) {
	var members []cacheMember
	zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	var hdr [memberHdrSize]byte
	for {
		start := cr.n
		if _, err := io.ReadFull(cr, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return members, nil
			}
			return nil, fmt.Errorf("cache member at byte %d: %w", start, err)
		}
		if binary.LittleEndian.Uint32(hdr[0:]) != memberMagic || binary.LittleEndian.Uint32(hdr[4:]) != 8 {
			return nil, fmt.Errorf("cache member at byte %d: bad header", start)
		}
		size := int64(binary.LittleEndian.Uint64(hdr[8:]))
		frame := io.LimitReader(cr, size)
		if err := zr.Reset(frame); err != nil {
			return nil, fmt.Errorf("cache member at byte %d: %w", start, err)
		}
		chunks, err := untarChunks(zr, dir)
		if err == nil {
			// Read the rest of the member (the tar's end blocks).
			_, err = io.Copy(io.Discard, zr)
		}
		if err == nil && cr.n != start+memberHdrSize+size {
			_, err = io.Copy(io.Discard, frame)
			if cr.n != start+memberHdrSize+size {
				err = io.ErrUnexpectedEOF
			}
		}
		if err != nil {
			return nil, fmt.Errorf("cache member at byte %d: %w", start, err)
		}
		m := cacheMember{start: start, end: cr.n, zstd: true}
		if len(chunks) == 1 {
			m.name = chunks[0]
		}
		members = append(members, m)
	}
}

// chunkOf returns the chunk a path relative to CACHE_DIR belongs to: a
// top-level directory itself is "name/", an entry two levels down and
// everything under it "name/child", a top-level file "name".
func chunkOf(rel string, isDir bool) string {
	top, rest, nested := strings.Cut(rel, "/")
	if !nested {
		if isDir {
			return top + "/"
		}
		return top
	}
	child, _, _ := strings.Cut(rest, "/")
	return top + "/" + child
}

// fingerprints returns a fingerprint of each chunk of dir, and the size
// of each chunk's files.
func fingerprints(dir string) (map[string]string, map[string]int64, error) {
	hashes := map[string]hash.Hash{}
	sizes := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		chunk := chunkOf(rel, fi.IsDir())
		h := hashes[chunk]
		if h == nil {
			h = sha256.New()
			hashes[chunk] = h
		}
		if fi.IsDir() {
			// Entries come and go with their own lines; a directory's
			// times change even when a file was made and removed again
			// (a tool's scratch space).
			fmt.Fprintf(h, "%q %v\n", rel, fi.Mode())
			return nil
		}
		fmt.Fprintf(h, "%q %v %d %d %s\n", rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano(), statKey(fi))
		sizes[chunk] += fi.Size()
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %q\n", target)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("fingerprint the build cache: %w", err)
	}
	prints := map[string]string{}
	for chunk, h := range hashes {
		prints[chunk] = hex.EncodeToString(h.Sum(nil))
	}
	return prints, sizes, nil
}

// cachePlan says what a save has to do.
type cachePlan struct {
	copy  []cacheMember // unchanged members to copy from CacheIn, in order
	write []string      // entries to archive afresh
}

// planCacheSave compares the fingerprints after the build with those after
// the restore.
func planCacheSave(st cacheState, now map[string]string) cachePlan {
	var p cachePlan
	kept := map[string]bool{}
	if st.restored {
		for _, m := range st.members {
			if m.name == "" || kept[m.name] || !m.zstd {
				continue
			}
			if before, ok := st.prints[m.name]; ok && now[m.name] == before {
				p.copy = append(p.copy, m)
				kept[m.name] = true
			}
		}
	}
	for name := range now {
		if !kept[name] {
			p.write = append(p.write, name)
		}
	}
	slices.Sort(p.write)
	return p
}

// unchanged says whether the cache at CacheIn already is what a save
// would write.
func (p cachePlan) unchanged(st cacheState) bool {
	return st.restored && len(p.write) == 0 && len(p.copy) == len(st.members)
}

func (b *build) restoreCache(ctx context.Context) error {
	if b.cfg.CacheIn == "" {
		return nil
	}
	if b.cfg.CacheVolume != "" {
		reused, err := b.reuseVolume(ctx)
		if err != nil || reused {
			return err
		}
	}
	rc, err := open(ctx, b.cfg.CacheIn)
	switch {
	case errors.Is(err, os.ErrNotExist):
		b.step("No build cache yet")
		b.cacheState.noBlob = true
	case err != nil:
		return fmt.Errorf("restore build cache: %w", err)
	default:
		b.step("Restoring build cache")
		var r io.Reader = rc
		var keep *blobCopy
		if b.cfg.CacheVolume != "" {
			// Keep the blob beside the restored copy, for the save to
			// copy unchanged members from.
			if keep, err = b.newBlobCopy(); err != nil {
				rc.Close()
				return err
			}
			r = io.TeeReader(rc, keep)
		}
		members, err := restoreChunks(r, b.cache)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		rc.Close()
		if err != nil {
			keep.discard()
			// A damaged cache must not fail the build: start from scratch.
			b.info("build cache unusable (%v); building without it", err)
			if err := b.emptyCache(); err != nil {
				return err
			}
		} else {
			b.cacheState.restored, b.cacheState.members = true, members
			if keep != nil {
				if b.cacheState.sha256, err = keep.commit(); err != nil {
					// The save copies from CacheIn instead.
					b.log.Warn("keep the build cache blob", "err", err)
				} else {
					b.cacheState.local = true
				}
			}
		}
	}
	prints, _, err := fingerprints(b.cache)
	if err != nil {
		return err
	}
	b.cacheState.prints = prints
	return nil
}

func (b *build) saveCache(ctx context.Context) error {
	s, err := b.prepareSave()
	if err != nil || s == nil {
		return err
	}
	return b.finishSave(ctx, s)
}

// cacheSave is a save of the build cache as prepareSave planned it.
type cacheSave struct {
	now       map[string]string // fingerprint per chunk
	sizes     map[string]int64
	plan      cachePlan
	unchanged bool
}

// prepareSave fingerprints the cache, says what its save does (whether the
// cache changed and which chunks) and returns the save for finishSave, or
// nil when there is nothing to save to. The cache must not change between
// the two.
func (b *build) prepareSave() (*cacheSave, error) {
	if b.cfg.CacheOut == "" {
		return nil, nil
	}
	now, sizes, err := fingerprints(b.cache)
	if err != nil {
		return nil, fmt.Errorf("save build cache: %w", err)
	}
	s := &cacheSave{now: now, sizes: sizes, plan: planCacheSave(b.cacheState, now)}
	switch {
	case b.cfg.CacheOut == b.cfg.CacheIn && s.plan.unchanged(b.cacheState):
		s.unchanged = true
		b.step("Build cache unchanged")
	case b.cacheState.left != nil && maps.Equal(b.cacheState.left, now):
		// Unchanged by this build, but not stored yet.
		b.step("Build cache unchanged (storing it: the last build's save was stopped)")
	case len(s.plan.copy) > 0:
		b.step("Saving build cache (changed: %s)", listOrNone(s.plan.write))
	default:
		b.step("Saving build cache")
	}
	return s, nil
}

// finishSave stores the cache as s planned.
func (b *build) finishSave(ctx context.Context, s *cacheSave) error {
	now, sizes, plan, st := s.now, s.sizes, s.plan, b.cacheState
	if s.unchanged {
		if b.cfg.CacheVolume != "" && st.local {
			return b.writeMarker(&volumeMarker{SHA256: st.sha256, Members: toMarkerMembers(st.members), Prints: now})
		}
		return nil
	}
	var keep *blobCopy
	var err error
	if b.cfg.CacheVolume != "" {
		if keep, err = b.newBlobCopy(); err != nil {
			return err
		}
	}
	var members []cacheMember
	etag, err := storeTagged(ctx, b.cfg.CacheOut, func(w io.Writer) error {
		cw := &offsetWriter{w: w}
		if keep != nil {
			cw.w = io.MultiWriter(w, keep)
		}
		if len(plan.copy) > 0 {
			copied, err := b.copyMembers(ctx, cw, plan.copy)
			if err != nil {
				return err
			}
			members = append(members, copied...)
		}
		written, err := writeCacheMembers(cw, b.cache, largestFirst(plan.write, sizes), os.Getuid(), os.Getgid())
		members = append(members, written...)
		return err
	})
	if err != nil {
		keep.discard()
		return fmt.Errorf("save build cache: %w", err)
	}
	if keep == nil {
		return nil
	}
	sha, err := keep.commit()
	if err != nil {
		// Saved all the same; without a marker the next build restores.
		b.log.Warn("keep the build cache blob", "err", err)
		return nil
	}
	if etag != "" && etag != sha {
		// The blobstore holds something else than what was sent: the
		// next build restores it.
		b.log.Warn("build cache stored with another sha256", "sent", sha, "stored", etag)
		return nil
	}
	return b.writeMarker(&volumeMarker{SHA256: sha, Members: toMarkerMembers(members), Prints: now})
}

// offsetWriter counts the bytes written through it.
type offsetWriter struct {
	w io.Writer
	n int64
}

func (o *offsetWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.n += int64(n)
	return n, err
}

// blobCopy writes a copy of a cache blob into the volume (cache.blob.tmp)
// and hashes it; commit makes it the volume's cache.blob. A write that
// fails (a full disk) does not fail the restore or save it copies: commit
// reports it, and the volume is then restored by the next build.
type blobCopy struct {
	b   *build
	f   *os.File
	h   hash.Hash
	err error
}

func (b *build) newBlobCopy() (*blobCopy, error) {
	f, err := os.Create(b.volPath(volBlob + ".tmp"))
	if err != nil {
		return nil, fmt.Errorf("keep the build cache blob: %w", err)
	}
	return &blobCopy{b: b, f: f, h: sha256.New()}, nil
}

func (c *blobCopy) Write(p []byte) (int, error) {
	if c.err == nil {
		c.h.Write(p)
		_, c.err = c.f.Write(p)
	}
	return len(p), nil
}

// commit closes the copy, renames it to cache.blob and returns its
// sha256.
func (c *blobCopy) commit() (string, error) {
	if c.err != nil {
		c.discard()
		return "", fmt.Errorf("keep the build cache blob: %w", c.err)
	}
	if err := c.f.Close(); err != nil {
		os.Remove(c.f.Name())
		return "", fmt.Errorf("keep the build cache blob: %w", err)
	}
	if err := os.Rename(c.f.Name(), c.b.volPath(volBlob)); err != nil {
		return "", fmt.Errorf("keep the build cache blob: %w", err)
	}
	return hex.EncodeToString(c.h.Sum(nil)), nil
}

// discard drops the copy; a nil copy is none.
func (c *blobCopy) discard() {
	if c == nil {
		return
	}
	c.f.Close()
	os.Remove(c.f.Name())
}

// emptyCache empties CACHE_DIR.
func (b *build) emptyCache() error {
	if b.cfg.CacheVolume != "" {
		// The volume's directory stays (it may be a mount point's child,
		// never the mount point itself, but keep it all the same).
		return b.emptyVolume()
	}
	if err := os.RemoveAll(b.cache); err != nil {
		return err
	}
	return os.MkdirAll(b.cache, 0o755)
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// copyMembers copies members (in blob order) from the previous cache
// (the volume's copy of it when there is one, else CacheIn) to w, and
// returns where they lie in what w received.
func (b *build) copyMembers(ctx context.Context, w *offsetWriter, members []cacheMember) ([]cacheMember, error) {
	src := b.cfg.CacheIn
	if b.cacheState.local {
		src = b.volPath(volBlob)
	}
	rc, err := open(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("read the previous cache: %w", err)
	}
	defer rc.Close()
	var pos int64
	var out []cacheMember
	for _, m := range members {
		if _, err := io.CopyN(io.Discard, rc, m.start-pos); err != nil {
			return nil, fmt.Errorf("read the previous cache: %w", err)
		}
		start := w.n
		if _, err := io.CopyN(w, rc, m.end-m.start); err != nil {
			return nil, fmt.Errorf("copy cache entry %s: %w", m.name, err)
		}
		out = append(out, cacheMember{name: m.name, start: start, end: w.n, zstd: m.zstd})
		pos = m.end
	}
	return out, nil
}

// cacheCompressors is how many members a save compresses at once, and
// how many compressed ones it holds before writing them: a Go app's first
// save compresses the toolchain (115 MB) on one core and the rest of the
// cache on the other, about half the time of one after the other.
const cacheCompressors = 2

// writeCacheMembers writes the entries names of dir as cache members
// (see compressMember) to w, and returns where they lie. They are
// compressed in the order given and written as each is done: a member's
// place in the blob does not matter to a restore, and a large member
// does not hold up the small ones behind it.
func writeCacheMembers(w *offsetWriter, dir string, names []string, uid, gid int) ([]cacheMember, error) {
	type result struct {
		name string
		buf  *bytes.Buffer
		err  error
	}
	results := make(chan result, len(names)) // a worker never waits on the writer
	// A slot is taken before a member is compressed and given back once
	// it is written: at most cacheCompressors buffers at any time.
	slots := make(chan struct{}, cacheCompressors)
	work := make(chan string)
	stop := make(chan struct{})
	var pool sync.Pool
	var wg sync.WaitGroup
	for range cacheCompressors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				buf, _ := pool.Get().(*bytes.Buffer)
				if buf == nil {
					buf = new(bytes.Buffer)
				}
				err := compressMember(buf, dir, name, uid, gid)
				results <- result{name, buf, err}
			}
		}()
	}
	go func() {
		defer close(work)
		for _, name := range names {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			select {
			case work <- name:
			case <-stop:
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	var out []cacheMember
	for range names {
		r := <-results
		if r.err != nil {
			return out, r.err
		}
		start := w.n
		_, err := w.Write(r.buf.Bytes())
		<-slots
		if err != nil {
			return out, err
		}
		out = append(out, cacheMember{name: r.name, start: start, end: w.n, zstd: true})
		pool.Put(r.buf)
	}
	return out, nil
}

// largestFirst orders the chunks names by size (see fingerprints),
// largest first (then by name), so that the save's compressors both work
// until the end rather than one compressing the toolchain alone.
func largestFirst(names []string, size map[string]int64) []string {
	out := slices.Clone(names)
	slices.SortFunc(out, func(a, b string) int {
		if c := cmp.Compare(size[b], size[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return out
}

// compressMember makes the entry name of dir (see writeChunk) one cache
// member in buf: its header and its tar as one zstd frame, compressed on
// a second core.
func compressMember(buf *bytes.Buffer, dir, name string, uid, gid int) error {
	buf.Reset()
	buf.Write(make([]byte, memberHdrSize))
	zw, err := zstd.NewWriter(buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return err
	}
	wb := newWriteBehind(zw)
	err = writeTar(wb, dir, name, "./", uid, gid)
	if cerr := wb.Close(); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	b := buf.Bytes()
	binary.LittleEndian.PutUint32(b[0:], memberMagic)
	binary.LittleEndian.PutUint32(b[4:], 8)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(b)-memberHdrSize))
	return nil
}

// writeChunk writes the entry name of dir (all of dir when name is empty;
// a directory alone, without its contents, when name ends in "/") as one
// gzip member with names under prefix (see writeTar), compressed on a
// second core.
func writeChunk(w io.Writer, dir, name, prefix string, uid, gid int) error {
	return writeTarGzOpts(w, nil, dir, prefix, uid, gid, tarOpts{only: name})
}

// writeTarGzOpts writes writeTarOpts's tar gzipped to w, compressed on a
// second core; raw, when set, gets the tar uncompressed too.
func writeTarGzOpts(w, raw io.Writer, dir, prefix string, uid, gid int, o tarOpts) error {
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	wb := newWriteBehind(zw)
	var tw io.Writer = wb
	if raw != nil {
		tw = io.MultiWriter(wb, raw)
	}
	err := writeTarOpts(tw, dir, prefix, uid, gid, o)
	if cerr := wb.Close(); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	return zw.Close()
}
