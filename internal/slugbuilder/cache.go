package slugbuilder

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

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

// fingerprints returns a fingerprint of each chunk of dir.
func fingerprints(dir string) (map[string]string, error) {
	hashes := map[string]hash.Hash{}
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
		return nil, fmt.Errorf("fingerprint the build cache: %w", err)
	}
	prints := map[string]string{}
	for chunk, h := range hashes {
		prints[chunk] = hex.EncodeToString(h.Sum(nil))
	}
	return prints, nil
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
	rc, err := open(ctx, b.cfg.CacheIn)
	switch {
	case errors.Is(err, os.ErrNotExist):
		b.step("No build cache yet")
	case err != nil:
		return fmt.Errorf("restore build cache: %w", err)
	default:
		b.step("Restoring build cache")
		members, err := restoreChunks(rc, b.cache)
		rc.Close()
		if err != nil {
			// A damaged cache must not fail the build: start from scratch.
			b.info("build cache unusable (%v); building without it", err)
			if err := os.RemoveAll(b.cache); err != nil {
				return err
			}
			if err := os.MkdirAll(b.cache, 0o755); err != nil {
				return err
			}
		} else {
			b.cacheState.restored, b.cacheState.members = true, members
		}
	}
	prints, err := fingerprints(b.cache)
	if err != nil {
		return err
	}
	b.cacheState.prints = prints
	return nil
}

func (b *build) saveCache(ctx context.Context) error {
	if b.cfg.CacheOut == "" {
		return nil
	}
	now, err := fingerprints(b.cache)
	if err != nil {
		return fmt.Errorf("save build cache: %w", err)
	}
	plan := planCacheSave(b.cacheState, now)
	if b.cfg.CacheOut == b.cfg.CacheIn && plan.unchanged(b.cacheState) {
		b.step("Build cache unchanged")
		return nil
	}
	if len(plan.copy) > 0 {
		b.step("Saving build cache (changed: %s)", listOrNone(plan.write))
	} else {
		b.step("Saving build cache")
	}
	err = store(ctx, b.cfg.CacheOut, func(w io.Writer) error {
		if len(plan.copy) > 0 {
			if err := b.copyMembers(ctx, w, plan.copy); err != nil {
				return err
			}
		}
		var buf bytes.Buffer
		for _, name := range plan.write {
			if err := writeCacheMember(w, &buf, b.cache, name, os.Getuid(), os.Getgid()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save build cache: %w", err)
	}
	return nil
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// copyMembers copies members (in blob order) from CacheIn to w.
func (b *build) copyMembers(ctx context.Context, w io.Writer, members []cacheMember) error {
	rc, err := open(ctx, b.cfg.CacheIn)
	if err != nil {
		return fmt.Errorf("read the previous cache: %w", err)
	}
	defer rc.Close()
	var pos int64
	for _, m := range members {
		if _, err := io.CopyN(io.Discard, rc, m.start-pos); err != nil {
			return fmt.Errorf("read the previous cache: %w", err)
		}
		if _, err := io.CopyN(w, rc, m.end-m.start); err != nil {
			return fmt.Errorf("copy cache entry %s: %w", m.name, err)
		}
		pos = m.end
	}
	return nil
}

// writeCacheMember writes the entry name of dir (see writeChunk) as one
// cache member: its header and its tar as one zstd frame, compressed on a
// second core into buf (reused between members) to learn its length.
func writeCacheMember(w io.Writer, buf *bytes.Buffer, dir, name string, uid, gid int) error {
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
	_, err = w.Write(b)
	return err
}

// writeChunk writes the entry name of dir (all of dir when name is empty;
// a directory alone, without its contents, when name ends in "/") as one
// gzip member with names under prefix (see writeTar), compressed on a
// second core.
func writeChunk(w io.Writer, dir, name, prefix string, uid, gid int) error {
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	wb := newWriteBehind(zw)
	err := writeTar(wb, dir, name, prefix, uid, gid)
	if cerr := wb.Close(); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	return zw.Close()
}
