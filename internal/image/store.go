// Package image is the host's layer store: content-addressed image layers,
// each extracted once per host into a directory that every job using it
// shares as a read-only overlayfs lower layer. Layers come from tar(.gz)
// files, from URLs with a known sha256, or from OCI registries. It also
// holds the safe untar and a builder for a minimal busybox layer.
package image

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// ErrDigestMismatch is returned when a layer's content does not match the
// sha256 it was imported with.
var ErrDigestMismatch = errors.New("layer digest mismatch")

// Store keeps extracted layers under Dir/layers/<sha256 hex>.
type Store struct {
	dir  string
	http *http.Client

	mu       sync.Mutex
	inflight map[string]*sync.Mutex
}

// NewStore opens (creating if needed) a layer store rooted at dir.
func NewStore(dir string) (*Store, error) {
	for _, d := range []string{"layers", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("create layer store: %w", err)
		}
	}
	// Extractions a crash interrupted are garbage.
	if ents, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(dir, "tmp", e.Name()))
		}
	}
	if err := os.Chmod(filepath.Join(dir, "layers"), 0o711); err != nil {
		return nil, err
	}
	return &Store{dir: dir, http: http.DefaultClient, inflight: map[string]*sync.Mutex{}}, nil
}

// SetHTTPClient sets the client Fetch uses for http and https layers.
func (s *Store) SetHTTPClient(c *http.Client) { s.http = c }

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidDigest reports whether s is a lower-case hex sha256.
func ValidDigest(s string) bool { return hexDigest.MatchString(s) }

// Path is the extracted directory of layer digest (a hex sha256); it is
// only meaningful when Has reports true.
func (s *Store) Path(digest string) string { return filepath.Join(s.dir, "layers", digest) }

// Has reports whether layer digest is extracted.
func (s *Store) Has(digest string) bool {
	if !ValidDigest(digest) {
		return false
	}
	fi, err := os.Stat(s.Path(digest))
	return err == nil && fi.IsDir()
}

// lock serialises work on one digest, so a layer is fetched once even
// when many jobs ask for it at the same time.
func (s *Store) lock(digest string) func() {
	s.mu.Lock()
	m, ok := s.inflight[digest]
	if !ok {
		m = &sync.Mutex{}
		s.inflight[digest] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// Import extracts the tar or tar.gz stream r as layer digest (the hex
// sha256 of the stream as given, compressed or not). It returns the
// layer's directory. The stream is verified before the layer becomes
// visible; on any error nothing is left behind.
func (s *Store) Import(ctx context.Context, digest string, r io.Reader) (string, error) {
	if !ValidDigest(digest) {
		return "", fmt.Errorf("import layer: %q is not a hex sha256", digest)
	}
	unlock := s.lock(digest)
	defer unlock()
	if s.Has(digest) {
		return s.Path(digest), nil
	}
	h := sha256.New()
	if err := s.extract(digest, io.TeeReader(r, h), true, h); err != nil {
		return "", err
	}
	return s.Path(digest), nil
}

// extract untars r (a tar, or a gzipped tar when maybeGzip) into a temp
// dir, checks h against digest when h is not nil, and renames the result
// into place.
func (s *Store) extract(digest string, r io.Reader, maybeGzip bool, h hash.Hash) error {
	tmp := filepath.Join(s.dir, "tmp", digest+"-"+randHex())
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return fmt.Errorf("import layer: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	br := bufio.NewReaderSize(r, 64<<10)
	var tr io.Reader = br
	if maybeGzip {
		if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
			gz, err := gzip.NewReader(br)
			if err != nil {
				return fmt.Errorf("import layer %s: %w", short(digest), err)
			}
			tr = gz
		}
	}
	if err := Untar(tr, tmp); err != nil {
		return fmt.Errorf("import layer %s: %w", short(digest), err)
	}
	// Read what the tar reader left (padding, gzip trailer) so the hash
	// covers the whole stream.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("import layer %s: %w", short(digest), err)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != digest {
			return fmt.Errorf("import layer: %w: got sha256 %s, want %s", ErrDigestMismatch, got, digest)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.Path(digest)); err != nil {
		return fmt.Errorf("import layer %s: %w", short(digest), err)
	}
	ok = true
	return nil
}

// ImportFile imports the layer in file. When digest is empty the file's
// sha256 is computed first.
func (s *Store) ImportFile(ctx context.Context, file, digest string) (string, string, error) {
	if digest == "" {
		d, err := FileDigest(file)
		if err != nil {
			return "", "", err
		}
		digest = d
	}
	if s.Has(digest) {
		return digest, s.Path(digest), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", "", fmt.Errorf("import layer: %w", err)
	}
	defer f.Close()
	dir, err := s.Import(ctx, digest, f)
	return digest, dir, err
}

// Fetch imports the layer at rawURL (http, https or file) whose sha256 is
// digest, unless it is already present.
func (s *Store) Fetch(ctx context.Context, rawURL, digest string) (string, error) {
	if !ValidDigest(digest) {
		return "", fmt.Errorf("fetch layer: %q is not a hex sha256", digest)
	}
	if s.Has(digest) {
		return s.Path(digest), nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("fetch layer: %w", err)
	}
	switch u.Scheme {
	case "file":
		_, dir, err := s.ImportFile(ctx, u.Path, digest)
		return dir, err
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return "", err
		}
		res, err := s.http.Do(req)
		if err != nil {
			return "", fmt.Errorf("fetch layer: %w", err)
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return "", fmt.Errorf("fetch layer %s: %s", rawURL, res.Status)
		}
		return s.Import(ctx, digest, res.Body)
	default:
		return "", fmt.Errorf("fetch layer: unsupported URL scheme %q", u.Scheme)
	}
}

// FileDigest is the hex sha256 of a file.
func FileDigest(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func randHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func teeReader(r io.Reader, w io.Writer) io.Reader { return io.TeeReader(r, w) }
