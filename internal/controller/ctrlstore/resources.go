package ctrlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

func clientKeysOnlyPrefix() []etcdkv.OpOption {
	return []etcdkv.OpOption{etcdkv.WithPrefix(), etcdkv.WithKeysOnly()}
}

// CreateProvider stores a new provider; names are unique.
func (s *Store) CreateProvider(ctx context.Context, p *api.Provider) error {
	existing, err := s.ListProviders(ctx)
	if err != nil {
		return err
	}
	for _, e := range existing {
		if e.Name == p.Name {
			return api.Exists("provider %q already exists", p.Name)
		}
	}
	t := s.txn()
	t.missing(s.key(pProviders, p.ID))
	t.put(s.key(pProviders, p.ID), p)
	t.event("", api.EventTypeProvider, p.ID, p)
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("create provider: %w", err)
	}
	if !ok {
		return api.Exists("provider %s already exists", p.ID)
	}
	return nil
}

// GetProvider returns a provider by id or name.
func (s *Store) GetProvider(ctx context.Context, idOrName string) (*api.Provider, error) {
	p := &api.Provider{}
	_, err := s.get(ctx, s.key(pProviders, idOrName), p)
	if err == nil {
		return p, nil
	}
	if err != errMissing {
		return nil, err
	}
	all, err := s.ListProviders(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range all {
		if p.Name == idOrName {
			return p, nil
		}
	}
	return nil, api.NotFound("provider %q not found", idOrName)
}

// ListProviders returns all providers.
func (s *Store) ListProviders(ctx context.Context) ([]*api.Provider, error) {
	items, err := listOf[api.Provider](ctx, s, s.key(pProviders), nil)
	return newestFirst(items, err, func(p *api.Provider) time.Time { return p.CreatedAt })
}

// PutResource creates or replaces a resource and, for each app in
// newReleases, stores the release (the app's release with the resource's
// env merged in). An app with no current release gets it as current; any
// other app's release is for the caller to deploy.
func (s *Store) PutResource(ctx context.Context, r *api.Resource, newReleases map[string]*api.Release) error {
	t := s.txn()
	t.put(s.key(pResources, r.ID), r)
	t.event("", api.EventTypeResource, r.ID, r)
	for _, appID := range r.Apps {
		rel := newReleases[appID]
		if rel == nil {
			continue
		}
		app, rev, err := s.getApp(ctx, appID)
		if err != nil {
			return err
		}
		t.unchanged(s.key(pApps, app.ID), rev)
		t.missing(s.key(pReleases, rel.ID))
		t.put(s.key(pReleases, rel.ID), rel)
		t.event(app.ID, api.EventTypeRelease, rel.ID, rel)
		if app.ReleaseID == "" {
			// Nothing runs yet: the release is simply current. Otherwise
			// the caller deploys it (CreateDeployment), so running jobs
			// get the env.
			app.ReleaseID = rel.ID
			app.UpdatedAt = s.now()
			t.put(s.key(pApps, app.ID), app)
			t.event(app.ID, api.EventTypeAppRelease, app.ID, map[string]any{"release": rel})
		}
	}
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("put resource: %w", err)
	}
	if !ok {
		return errRetry
	}
	return nil
}

// GetResource returns a resource of a provider.
func (s *Store) GetResource(ctx context.Context, providerID, id string) (*api.Resource, error) {
	r, _, err := s.getResource(ctx, providerID, id)
	return r, err
}

func (s *Store) getResource(ctx context.Context, providerID, id string) (*api.Resource, int64, error) {
	r := &api.Resource{}
	rev, err := s.getObj(ctx, s.key(pResources, id), "resource", id, r)
	if err != nil {
		return nil, 0, err
	}
	if providerID != "" && r.ProviderID != providerID {
		return nil, 0, api.NotFound("resource %q not found", id)
	}
	return r, rev, nil
}

// ListResources returns resources, filtered by provider and app when they
// are not empty.
func (s *Store) ListResources(ctx context.Context, providerID, appID string) ([]*api.Resource, error) {
	items, err := listOf(ctx, s, s.key(pResources), func(r *api.Resource) bool {
		return (providerID == "" || r.ProviderID == providerID) && (appID == "" || slices.Contains(r.Apps, appID))
	})
	return newestFirst(items, err, func(r *api.Resource) time.Time { return r.CreatedAt })
}

// DeleteResource deletes a resource record.
func (s *Store) DeleteResource(ctx context.Context, providerID, id string) (*api.Resource, error) {
	r, rev, err := s.getResource(ctx, providerID, id)
	if err != nil {
		return nil, err
	}
	t := s.txn()
	t.unchanged(s.key(pResources, id), rev)
	t.del(s.key(pResources, id))
	t.event("", api.EventTypeResourceDeletion, id, r)
	ok, err := t.commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete resource: %w", err)
	}
	if !ok {
		return nil, errRetry
	}
	return r, nil
}

// AttachResource links a resource to an app.
func (s *Store) AttachResource(ctx context.Context, providerID, id, appID string) (*api.Resource, error) {
	return s.updateResource(ctx, providerID, id, func(r *api.Resource) {
		if !slices.Contains(r.Apps, appID) {
			r.Apps = append(r.Apps, appID)
		}
	})
}

// DetachResource unlinks a resource from an app.
func (s *Store) DetachResource(ctx context.Context, providerID, id, appID string) (*api.Resource, error) {
	return s.updateResource(ctx, providerID, id, func(r *api.Resource) {
		r.Apps = slices.DeleteFunc(r.Apps, func(a string) bool { return a == appID })
	})
}

func (s *Store) updateResource(ctx context.Context, providerID, id string, fn func(*api.Resource)) (*api.Resource, error) {
	for range maxRetries {
		r, rev, err := s.getResource(ctx, providerID, id)
		if err != nil {
			return nil, err
		}
		fn(r)
		t := s.txn()
		t.unchanged(s.key(pResources, id), rev)
		t.put(s.key(pResources, id), r)
		t.event("", api.EventTypeResource, id, r)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("update resource: %w", err)
		}
		if ok {
			return r, nil
		}
	}
	return nil, errRetry
}

// CreateKey stores an SSH key; a key that is already stored is an
// object_exists error.
func (s *Store) CreateKey(ctx context.Context, k *api.Key) error {
	t := s.txn()
	t.missing(s.key(pKeys, k.ID))
	t.put(s.key(pKeys, k.ID), k)
	t.event("", api.EventTypeKey, k.ID, k)
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	if !ok {
		return api.Exists("key %s is already added", k.Fingerprint)
	}
	return nil
}

// ListKeys returns all SSH keys.
func (s *Store) ListKeys(ctx context.Context) ([]*api.Key, error) {
	return listOf[api.Key](ctx, s, s.key(pKeys), nil)
}

// DeleteKey deletes an SSH key.
func (s *Store) DeleteKey(ctx context.Context, id string) error {
	k := &api.Key{}
	rev, err := s.getObj(ctx, s.key(pKeys, id), "key", id, k)
	if err != nil {
		return err
	}
	t := s.txn()
	t.unchanged(s.key(pKeys, id), rev)
	t.del(s.key(pKeys, id))
	t.event("", api.EventTypeKeyDeletion, id, k)
	if _, err := t.commit(ctx); err != nil {
		return fmt.Errorf("delete key: %w", err)
	}
	return nil
}

// ListHosts returns the hosts registered under api.KeyHosts.
func (s *Store) ListHosts(ctx context.Context) ([]*api.Host, error) {
	out := []*api.Host{}
	err := s.list(ctx, api.KeyHosts, func(b []byte) error {
		h := &api.Host{}
		if err := json.Unmarshal(b, h); err != nil {
			return err
		}
		out = append(out, h)
		return nil
	})
	return out, err
}
