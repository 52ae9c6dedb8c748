package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Mem is a Backend that keeps blobs in memory, for tests.
type Mem struct {
	mu    sync.Mutex
	blobs map[string]memBlob
}

type memBlob struct {
	data []byte
	info api.BlobInfo
}

// NewMem returns an empty in-memory backend.
func NewMem() *Mem { return &Mem{blobs: map[string]memBlob{}} }

// Put implements Backend.
func (m *Mem) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, api.Validation("path", "cannot write the root directory")
	}
	data, err := io.ReadAll(ctxReader{ctx, r})
	if err != nil {
		return api.BlobInfo{}, uploadError(name, err)
	}
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if err := checkSHA(hexSum, opts.SHA256); err != nil {
		return api.BlobInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.blobs {
		if strings.HasPrefix(k, name+"/") {
			return api.BlobInfo{}, api.Conflict("%q is a directory", "/"+name)
		}
		if strings.HasPrefix(name, k+"/") {
			return api.BlobInfo{}, api.Conflict("a parent of %q is a blob, not a directory", "/"+name)
		}
	}
	var cur time.Time
	if b, ok := m.blobs[name]; ok {
		cur = b.info.Modified
	}
	mod := opts.Modified.UTC()
	if opts.Modified.IsZero() {
		mod = stampTime(time.Now(), opts.NotBefore, cur)
	} else if !cur.IsZero() && !mod.After(cur) {
		return m.blobs[name].info, ErrStale
	}
	info := api.BlobInfo{Path: "/" + name, Size: int64(len(data)), SHA256: hexSum, Modified: mod}
	m.blobs[name] = memBlob{data: data, info: info}
	return info, nil
}

// Open implements Backend.
func (m *Mem) Open(ctx context.Context, name string) (Object, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[name]
	if !ok {
		return nil, notFound(name)
	}
	return &memObject{Reader: bytes.NewReader(b.data), info: b.info}, nil
}

// Stat implements Backend.
func (m *Mem) Stat(ctx context.Context, name string) (api.BlobInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[name]
	if !ok {
		return api.BlobInfo{}, notFound(name)
	}
	return b.info, nil
}

// Delete implements Backend.
func (m *Mem) Delete(ctx context.Context, name string, opts DeleteOptions) (api.BlobInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[name]
	if !ok {
		return api.BlobInfo{}, notFound(name)
	}
	if !opts.Before.IsZero() && b.info.Modified.After(opts.Before) {
		return b.info, ErrStale
	}
	delete(m.blobs, name)
	return b.info, nil
}

// List implements Backend.
func (m *Mem) List(ctx context.Context, dir string) ([]api.BlobEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prefix := ""
	if dir != "" {
		if _, ok := m.blobs[dir]; ok {
			return nil, api.Validation("path", "%q is a blob, not a directory", "/"+dir)
		}
		prefix = dir + "/"
	}
	seen := map[string]bool{}
	out := []api.BlobEntry{}
	for k, b := range m.blobs {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if first, _, isDir := strings.Cut(rest, "/"); isDir {
			if !seen[first] {
				seen[first] = true
				out = append(out, api.BlobEntry{Name: first, Dir: true})
			}
			continue
		}
		out = append(out, api.BlobEntry{Name: rest, Size: b.info.Size, Modified: b.info.Modified})
	}
	if len(out) == 0 && dir != "" {
		return nil, api.NotFound("directory %q not found", "/"+dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type memObject struct {
	*bytes.Reader
	info api.BlobInfo
}

func (o *memObject) Close() error       { return nil }
func (o *memObject) Info() api.BlobInfo { return o.info }
