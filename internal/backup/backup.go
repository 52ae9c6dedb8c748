// Package backup writes a cluster's backup and restores it on a fresh
// cluster. A backup is one tar stream:
//
//	flynn.json    what it is: format, version, time, domain, blob base URL
//	state.json    every app (not the platform's own) with its releases,
//	              artifacts, formations and routes; SSH keys; providers
//	              and resources
//	blobs/<path>  every blob of the blobstore (slugs, repos, build caches,
//	              layers), streamed
//	end.json      how many blobs and bytes came before it
//
// Restore reads the whole file first and refuses a bad or truncated one
// before changing anything; then it uploads the blobs, and recreates keys,
// apps, artifacts (their blob URLs rewritten to the new blobstore),
// releases, routes and, last, formations, which the scheduler runs.
package backup

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Format is the version of the backup layout this package writes.
const Format = 1

// File names in the tar.
const (
	metaFile  = "flynn.json"
	stateFile = "state.json"
	endFile   = "end.json"
	blobDir   = "blobs/"
)

// Meta describes a backup (flynn.json).
type Meta struct {
	Format    int       `json:"format"`
	Version   string    `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Domain    string    `json:"domain,omitempty"`
	// BlobURL is the blobstore base URL the artifacts refer to; restore
	// rewrites it to the new cluster's.
	BlobURL string `json:"blob_url,omitempty"`
}

// State is the control-plane state of a backup (state.json).
type State struct {
	Apps      []*AppState     `json:"apps"`
	Keys      []*api.Key      `json:"keys,omitempty"`
	Providers []*api.Provider `json:"providers,omitempty"`
	Resources []*api.Resource `json:"resources,omitempty"`
}

// AppState is one app and what belongs to it.
type AppState struct {
	App        *api.App         `json:"app"`
	Releases   []*api.Release   `json:"releases,omitempty"`
	Artifacts  []*api.Artifact  `json:"artifacts,omitempty"`
	Formations []*api.Formation `json:"formations,omitempty"`
	Routes     []*api.Route     `json:"routes,omitempty"`
}

// end is end.json.
type end struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// Blob is one blob of the source's blobstore.
type Blob struct {
	Path string // "/slugs/x.tgz"
	Size int64
}

// Source is what a backup is made of.
type Source interface {
	// State returns the control-plane state.
	State(ctx context.Context) (*State, error)
	// Blobs lists every blob.
	Blobs(ctx context.Context) ([]Blob, error)
	// OpenBlob opens a blob and says its size as it will be read.
	OpenBlob(ctx context.Context, path string) (io.ReadCloser, int64, error)
}

// Write writes a backup of src to w. A blob that is gone by the time it
// is read (deleted meanwhile) is left out.
func Write(ctx context.Context, w io.Writer, src Source, meta Meta) error {
	meta.Format = Format
	if meta.CreatedAt.IsZero() {
		meta.CreatedAt = time.Now().UTC()
	}
	st, err := src.State(ctx)
	if err != nil {
		return fmt.Errorf("backup: read the cluster state: %w", err)
	}
	blobs, err := src.Blobs(ctx)
	if err != nil {
		return fmt.Errorf("backup: list blobs: %w", err)
	}
	tw := tar.NewWriter(w)
	if err := writeJSON(tw, metaFile, meta); err != nil {
		return err
	}
	if err := writeJSON(tw, stateFile, st); err != nil {
		return err
	}
	var e end
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		rc, size, err := src.OpenBlob(ctx, b.Path)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("backup: read blob %s: %w", b.Path, err)
		}
		err = tw.WriteHeader(&tar.Header{Name: blobDir + strings.TrimPrefix(b.Path, "/"), Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: meta.CreatedAt})
		if err == nil {
			var n int64
			n, err = io.Copy(tw, rc)
			if err == nil && n != size {
				err = fmt.Errorf("read %d bytes, the blobstore said %d", n, size)
			}
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("backup: blob %s: %w", b.Path, err)
		}
		e.Blobs++
		e.Bytes += size
	}
	if err := writeJSON(tw, endFile, e); err != nil {
		return err
	}
	return tw.Close()
}

func writeJSON(tw *tar.Writer, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("backup: encode %s: %w", name, err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
		return fmt.Errorf("backup: write %s: %w", name, err)
	}
	if _, err := tw.Write(b); err != nil {
		return fmt.Errorf("backup: write %s: %w", name, err)
	}
	return nil
}

// Contents is what Read found in a backup.
type Contents struct {
	Meta  Meta
	State State
	Blobs []Blob
}

// ErrBadBackup is wrapped by every error about a backup file's contents.
var ErrBadBackup = errors.New("not a whole Flynn backup")

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadBackup, fmt.Sprintf(format, args...))
}

// Read reads a whole backup and checks it: the tar is well formed and
// complete (end.json last, with the counts of what came before), the
// JSON files decode, every name is where it belongs. onBlob, when set, is
// called with each blob's contents in order (restore uploads them).
func Read(r io.Reader, onBlob func(b Blob, r io.Reader) error) (*Contents, error) {
	tr := tar.NewReader(r)
	c := &Contents{}
	var seenMeta, seenState, seenEnd bool
	var bytes int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, bad("the file is truncated or not a tar archive (%v)", err)
		}
		if seenEnd {
			return nil, bad("%s follows %s", h.Name, endFile)
		}
		switch {
		case h.Name == metaFile:
			if err := readJSON(tr, h, &c.Meta); err != nil {
				return nil, err
			}
			if c.Meta.Format != Format {
				return nil, bad("backup format %d, this Flynn reads format %d", c.Meta.Format, Format)
			}
			seenMeta = true
		case !seenMeta:
			return nil, bad("it does not start with %s", metaFile)
		case h.Name == stateFile:
			if err := readJSON(tr, h, &c.State); err != nil {
				return nil, err
			}
			if err := c.State.check(); err != nil {
				return nil, err
			}
			seenState = true
		case h.Name == endFile:
			var e end
			if err := readJSON(tr, h, &e); err != nil {
				return nil, err
			}
			if e.Blobs != len(c.Blobs) || e.Bytes != bytes {
				return nil, bad("%s counts %d blobs (%d bytes) but %d (%d bytes) came before it", endFile, e.Blobs, e.Bytes, len(c.Blobs), bytes)
			}
			seenEnd = true
		case strings.HasPrefix(h.Name, blobDir) && h.Typeflag == tar.TypeReg:
			p := "/" + strings.TrimPrefix(h.Name, blobDir)
			if path.Clean(p) != p || p == "/" || strings.Contains(p, "/../") {
				return nil, bad("blob name %q is not a clean path", h.Name)
			}
			b := Blob{Path: p, Size: h.Size}
			var n int64
			if onBlob != nil {
				cr := &countReader{r: tr}
				if err := onBlob(b, cr); err != nil {
					return nil, err
				}
				n = cr.n
			}
			// What onBlob left unread, and the check that the entry
			// is whole.
			m, err := io.Copy(io.Discard, tr)
			if err != nil || n+m != h.Size {
				return nil, bad("blob %s is cut short (%v)", p, err)
			}
			c.Blobs = append(c.Blobs, b)
			bytes += h.Size
		default:
			return nil, bad("unexpected entry %q", h.Name)
		}
	}
	switch {
	case !seenMeta:
		return nil, bad("no %s: the file is empty or not a backup", metaFile)
	case !seenState:
		return nil, bad("no %s", stateFile)
	case !seenEnd:
		return nil, bad("the file is truncated: it ends before %s", endFile)
	}
	return c, nil
}

func readJSON(tr *tar.Reader, h *tar.Header, v any) error {
	if h.Size > 256<<20 {
		return bad("%s is %d bytes", h.Name, h.Size)
	}
	b, err := io.ReadAll(tr)
	if err != nil || int64(len(b)) != h.Size {
		return bad("%s is cut short (%v)", h.Name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return bad("%s: %v", h.Name, err)
	}
	return nil
}

// check says whether the state hangs together: every app has an id and a
// name, and its releases, formations and routes belong to it.
func (s *State) check() error {
	names := map[string]bool{}
	for i, a := range s.Apps {
		if a == nil || a.App == nil || a.App.ID == "" || a.App.Name == "" {
			return bad("app %d of %s has no id or name", i, stateFile)
		}
		if names[a.App.Name] {
			return bad("app %s appears twice", a.App.Name)
		}
		names[a.App.Name] = true
		arts := map[string]bool{}
		for _, art := range a.Artifacts {
			if art == nil || art.ID == "" {
				return bad("app %s has an artifact with no id", a.App.Name)
			}
			arts[art.ID] = true
		}
		rels := map[string]bool{}
		for _, r := range a.Releases {
			if r == nil || r.ID == "" || r.AppID != a.App.ID {
				return bad("app %s has a release that is not its own", a.App.Name)
			}
			for _, id := range r.ArtifactIDs {
				if !arts[id] {
					return bad("release %s of %s names artifact %s, which is not in the backup", r.ID, a.App.Name, id)
				}
			}
			rels[r.ID] = true
		}
		if a.App.ReleaseID != "" && !rels[a.App.ReleaseID] {
			return bad("the current release of %s is not in the backup", a.App.Name)
		}
		for _, f := range a.Formations {
			if f == nil || f.AppID != a.App.ID || !rels[f.ReleaseID] {
				return bad("app %s has a formation of a release not in the backup", a.App.Name)
			}
		}
		for _, rt := range a.Routes {
			if rt == nil || rt.Type == "" {
				return bad("app %s has a route with no type", a.App.Name)
			}
		}
	}
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
