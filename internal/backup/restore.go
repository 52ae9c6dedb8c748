package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// Target is the cluster a backup is restored on.
type Target struct {
	Controller *controllerclient.Client
	Blobs      *blobclient.Client
	// BlobURL is the target blobstore's base URL as artifacts name it.
	BlobURL string
	// Progress gets a line per step (nil: none).
	Progress io.Writer
}

// Check reads the whole backup in file and returns its contents, or why
// it is not a whole backup.
func Check(file string) (*Contents, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := Read(f, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// Restore checks the backup in file, then restores it on t, which must
// not have any of its apps yet (a fresh cluster). Nothing changes when
// the file is bad.
func Restore(ctx context.Context, file string, t Target) (*Contents, error) {
	progress := t.Progress
	if progress == nil {
		progress = io.Discard
	}
	c, err := Check(file)
	if err != nil {
		return nil, err
	}
	have, err := t.Controller.ListApps(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore: list the cluster's apps: %w", err)
	}
	names := map[string]bool{}
	for _, a := range have {
		names[a.Name] = true
	}
	for _, a := range c.State.Apps {
		if names[a.App.Name] {
			return nil, fmt.Errorf("restore: app %s exists on this cluster already: restore on a fresh cluster", a.App.Name)
		}
	}
	fmt.Fprintf(progress, "restoring %d apps and %d blobs from a backup of %s made %s\n",
		len(c.State.Apps), len(c.Blobs), c.Meta.Domain, c.Meta.CreatedAt.Format(time.RFC3339))

	// Blobs first: the apps' artifacts point at them.
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var done int64
	var total int64
	for _, b := range c.Blobs {
		total += b.Size
	}
	last := time.Now()
	_, err = Read(f, func(b Blob, r io.Reader) error {
		if _, err := t.Blobs.Put(ctx, b.Path, r, nil); err != nil {
			return fmt.Errorf("restore: upload blob %s: %w", b.Path, err)
		}
		done += b.Size
		if time.Since(last) > time.Second {
			fmt.Fprintf(progress, "  blobs: %s of %s\n", size(done), size(total))
			last = time.Now()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "  blobs: %d (%s) uploaded\n", len(c.Blobs), size(total))

	for _, k := range c.State.Keys {
		if _, err := t.Controller.CreateKey(ctx, k.Key); err != nil && !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrObjectExists) {
			return nil, fmt.Errorf("restore: key %s: %w", k.Fingerprint, err)
		}
	}
	providers, err := t.restoreProviders(ctx, c.State.Providers)
	if err != nil {
		return nil, err
	}
	for _, a := range c.State.Apps {
		if err := t.restoreApp(ctx, a, c.Meta.BlobURL); err != nil {
			return nil, fmt.Errorf("restore: app %s: %w", a.App.Name, err)
		}
		fmt.Fprintf(progress, "  app %s: %d releases, %d routes\n", a.App.Name, len(a.Releases), len(a.Routes))
	}
	for _, r := range c.State.Resources {
		p := providers[r.ProviderID]
		if p == nil {
			fmt.Fprintf(progress, "  resource %s skipped: its provider is not on this cluster\n", r.ID)
			continue
		}
		cp := *r
		cp.ProviderID = p.ID
		if err := t.Controller.PutResource(ctx, &cp); err != nil {
			return nil, fmt.Errorf("restore: resource %s: %w", r.ID, err)
		}
	}
	return c, nil
}

// restoreProviders maps the backup's providers to the target's by name,
// creating those it lacks.
func (t Target) restoreProviders(ctx context.Context, ps []*api.Provider) (map[string]*api.Provider, error) {
	out := map[string]*api.Provider{}
	if len(ps) == 0 {
		return out, nil
	}
	have, err := t.Controller.ProviderList(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore: list providers: %w", err)
	}
	byName := map[string]*api.Provider{}
	for _, p := range have {
		byName[p.Name] = p
	}
	for _, p := range ps {
		if q := byName[p.Name]; q != nil {
			out[p.ID] = q
			continue
		}
		q := &api.Provider{Name: p.Name, URL: p.URL}
		if err := t.Controller.CreateProvider(ctx, q); err != nil {
			return nil, fmt.Errorf("restore: provider %s: %w", p.Name, err)
		}
		out[p.ID] = q
	}
	return out, nil
}

func (t Target) restoreApp(ctx context.Context, a *AppState, oldBlobURL string) error {
	app := *a.App
	current := app.ReleaseID
	app.ReleaseID = ""
	if err := t.Controller.CreateApp(ctx, &app); err != nil {
		return err
	}
	for _, art := range a.Artifacts {
		cp := rewriteArtifact(art, oldBlobURL, t.BlobURL)
		if err := t.Controller.CreateArtifact(ctx, cp); err != nil && !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrObjectExists) {
			return fmt.Errorf("artifact %s: %w", art.ID, err)
		}
	}
	for _, r := range a.Releases {
		cp := *r
		if err := t.Controller.CreateRelease(ctx, &cp); err != nil {
			return fmt.Errorf("release %s: %w", r.ID, err)
		}
	}
	if current != "" {
		if err := t.Controller.SetAppRelease(ctx, app.ID, current); err != nil {
			return fmt.Errorf("set release %s: %w", current, err)
		}
	}
	for _, rt := range a.Routes {
		cp := *rt
		cp.ID = ""
		if err := t.Controller.CreateRoute(ctx, app.ID, &cp); err != nil && !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrObjectExists) {
			return fmt.Errorf("route %s: %w", rt.Domain, err)
		}
	}
	// Formations last: the scheduler starts their jobs.
	for _, f := range a.Formations {
		cp := *f
		if err := t.Controller.PutFormation(ctx, &cp); err != nil {
			return fmt.Errorf("formation of release %s: %w", f.ReleaseID, err)
		}
	}
	return nil
}

// rewriteArtifact returns art with URLs under the old blobstore moved to
// the new one.
func rewriteArtifact(art *api.Artifact, oldBase, newBase string) *api.Artifact {
	cp := *art
	move := func(u string) string {
		if oldBase != "" && newBase != "" && strings.HasPrefix(u, strings.TrimSuffix(oldBase, "/")+"/") {
			return strings.TrimSuffix(newBase, "/") + strings.TrimPrefix(u, strings.TrimSuffix(oldBase, "/"))
		}
		return u
	}
	cp.URI = move(art.URI)
	if art.Manifest != nil {
		m := *art.Manifest
		m.Rootfs = nil
		for _, rfs := range art.Manifest.Rootfs {
			if rfs == nil {
				continue
			}
			r := *rfs
			r.Layers = nil
			for _, l := range rfs.Layers {
				if l == nil {
					continue
				}
				lc := *l
				lc.URL = move(l.URL)
				r.Layers = append(r.Layers, &lc)
			}
			m.Rootfs = append(m.Rootfs, &r)
		}
		cp.Manifest = &m
	}
	return &cp
}

// size is n bytes for people.
func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
