package backup

import (
	"context"
	"fmt"
	"io"
	"path"
	"sort"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
)

// StoreSource is the Source of a running cluster: the controller's store
// in etcd and the blobstore.
type StoreSource struct {
	Store     *ctrlstore.Store
	Blobstore *blobclient.Client
}

// State reads every app that is not the platform's own, with what belongs
// to it, and the keys, providers and resources.
func (s StoreSource) State(ctx context.Context) (*State, error) {
	apps, err := s.Store.ListApps(ctx)
	if err != nil {
		return nil, err
	}
	st := &State{Apps: []*AppState{}}
	for _, app := range apps {
		if app.Meta[api.MetaSystemApp] == "true" {
			continue // the new cluster's bootstrap makes its own
		}
		a := &AppState{App: app}
		if a.Releases, err = s.Store.ListReleases(ctx, app.ID); err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, r := range a.Releases {
			for _, id := range r.ArtifactIDs {
				if seen[id] {
					continue
				}
				seen[id] = true
				art, err := s.Store.GetArtifact(ctx, id)
				if err != nil {
					return nil, fmt.Errorf("artifact %s of release %s: %w", id, r.ID, err)
				}
				a.Artifacts = append(a.Artifacts, art)
			}
		}
		if a.Formations, err = s.Store.ListFormations(ctx, app.ID); err != nil {
			return nil, err
		}
		if a.Routes, err = s.Store.ListRoutes(ctx, app.ID); err != nil {
			return nil, err
		}
		st.Apps = append(st.Apps, a)
	}
	if st.Keys, err = s.Store.ListKeys(ctx); err != nil {
		return nil, err
	}
	if st.Providers, err = s.Store.ListProviders(ctx); err != nil {
		return nil, err
	}
	if st.Resources, err = s.Store.ListResources(ctx, "", ""); err != nil {
		return nil, err
	}
	return st, nil
}

// derivedBlobs are the blobstore's directories that a cluster makes
// again by itself, which backups leave out: the platform's shared builds
// of Go (gitreceive makes one again after the next build that wants it).
var derivedBlobs = map[string]bool{"/go-std": true}

// Blobs lists every blob of the blobstore but derivedBlobs, depth first,
// sorted.
func (s StoreSource) Blobs(ctx context.Context) ([]Blob, error) {
	var out []Blob
	var walk func(dir string) error
	walk = func(dir string) error {
		ents, err := s.Blobstore.List(ctx, dir)
		if err != nil {
			return err
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
		for _, e := range ents {
			p := path.Join(dir, e.Name)
			if e.Dir && derivedBlobs[p] {
				continue
			}
			if e.Dir {
				if err := walk(p + "/"); err != nil {
					return err
				}
				continue
			}
			out = append(out, Blob{Path: p, Size: e.Size})
		}
		return nil
	}
	return out, walk("/")
}

// OpenBlob opens a blob.
func (s StoreSource) OpenBlob(ctx context.Context, p string) (io.ReadCloser, int64, error) {
	rc, info, err := s.Blobstore.Get(ctx, p)
	if err != nil {
		return nil, 0, err
	}
	return rc, info.Size, nil
}
