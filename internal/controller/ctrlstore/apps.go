package ctrlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flynnrebuilt/flynn/api"
)

// CreateApp stores a new app, and its default route when route is not nil,
// in one transaction. The app's ID, Name and timestamps must be set. A
// taken name or route domain is an object_exists error.
func (s *Store) CreateApp(ctx context.Context, app *api.App, route *api.Route) error {
	t := s.txn()
	t.missing(s.key(pAppNames, app.Name))
	t.missing(s.key(pApps, app.ID))
	t.put(s.key(pApps, app.ID), app)
	t.putRaw(s.key(pAppNames, app.Name), app.ID)
	t.event(app.ID, api.EventTypeApp, app.ID, app)
	if route != nil {
		s.addRoute(t, route)
	}
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("create app %q: %w", app.Name, err)
	}
	if !ok {
		if _, err := s.GetApp(ctx, app.Name); err == nil {
			return api.Exists("app %q already exists", app.Name)
		}
		if route != nil {
			return api.Exists("the default route %s is taken by another app", route.Domain)
		}
		return api.Exists("app %q already exists", app.Name)
	}
	return nil
}

// GetApp returns the app with the given id or name.
func (s *Store) GetApp(ctx context.Context, idOrName string) (*api.App, error) {
	app, _, err := s.getApp(ctx, idOrName)
	return app, err
}

func (s *Store) getApp(ctx context.Context, idOrName string) (*api.App, int64, error) {
	app, rev, err := s.lookupApp(ctx, idOrName)
	if err == errMissing {
		return nil, 0, api.NotFound("app %q not found", idOrName)
	}
	return app, rev, err
}

func (s *Store) lookupApp(ctx context.Context, idOrName string) (*api.App, int64, error) {
	if idOrName == "" || strings.Contains(idOrName, "/") {
		return nil, 0, api.NotFound("app %q not found", idOrName)
	}
	// Ids are UUIDs and names rarely are: look up the likelier one first.
	if _, err := uuid.Parse(idOrName); err == nil {
		app, rev, err := s.appByID(ctx, idOrName)
		if err != errMissing {
			return app, rev, err
		}
		return s.appByName(ctx, idOrName)
	}
	app, rev, err := s.appByName(ctx, idOrName)
	if err != errMissing {
		return app, rev, err
	}
	return s.appByID(ctx, idOrName)
}

func (s *Store) appByID(ctx context.Context, id string) (*api.App, int64, error) {
	app := &api.App{}
	rev, err := s.get(ctx, s.key(pApps, id), app)
	if err != nil {
		return nil, 0, err // errMissing lets the caller try the name
	}
	return app, rev, nil
}

func (s *Store) appByName(ctx context.Context, name string) (*api.App, int64, error) {
	res, err := s.cli.Get(ctx, s.key(pAppNames, name))
	if err != nil {
		return nil, 0, fmt.Errorf("get app %q: %w", name, err)
	}
	if len(res.Kvs) == 0 {
		return nil, 0, errMissing
	}
	app, rev, err := s.appByID(ctx, string(res.Kvs[0].Value))
	if err == errMissing {
		return nil, 0, api.NotFound("app %q not found", name)
	}
	return app, rev, err
}

// ListApps returns all apps.
func (s *Store) ListApps(ctx context.Context) ([]*api.App, error) {
	items, err := listOf[api.App](ctx, s, s.key(pApps), nil)
	return newestFirst(items, err, func(a *api.App) time.Time { return a.CreatedAt })
}

// UpdateApp applies fn to the app and stores the result with an app event,
// retrying when another writer changed the app meanwhile.
func (s *Store) UpdateApp(ctx context.Context, idOrName string, fn func(*api.App) error) (*api.App, error) {
	for range maxRetries {
		app, rev, err := s.getApp(ctx, idOrName)
		if err != nil {
			return nil, err
		}
		if err := fn(app); err != nil {
			return nil, err
		}
		app.UpdatedAt = s.now()
		t := s.txn()
		t.unchanged(s.key(pApps, app.ID), rev)
		t.put(s.key(pApps, app.ID), app)
		t.event(app.ID, api.EventTypeApp, app.ID, app)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("update app %q: %w", app.Name, err)
		}
		if ok {
			return app, nil
		}
	}
	return nil, errRetry
}

// SetAppRelease makes release the app's current release.
func (s *Store) SetAppRelease(ctx context.Context, idOrName, releaseID string) (*api.App, error) {
	for range maxRetries {
		app, rev, err := s.getApp(ctx, idOrName)
		if err != nil {
			return nil, err
		}
		rel, relRev, err := s.getRelease(ctx, releaseID)
		if err != nil {
			return nil, err
		}
		if rel.AppID != "" && rel.AppID != app.ID {
			return nil, api.Validation("id", "release %s belongs to another app", releaseID)
		}
		app.ReleaseID = rel.ID
		app.UpdatedAt = s.now()
		t := s.txn()
		t.unchanged(s.key(pApps, app.ID), rev)
		t.unchanged(s.key(pReleases, rel.ID), relRev)
		t.put(s.key(pApps, app.ID), app)
		t.event(app.ID, api.EventTypeAppRelease, app.ID, map[string]any{"release": rel})
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("set release of app %q: %w", app.Name, err)
		}
		if ok {
			return app, nil
		}
	}
	return nil, errRetry
}

// DeleteApp removes an app: its formations (which makes the scheduler
// stop its jobs), routes, releases, scale requests, deployment lock and
// resource links, then the app itself. Each step is its own transaction so
// no transaction exceeds etcd's operation limit. It returns the app and
// what was removed, which is also the data of the app_deletion event.
func (s *Store) DeleteApp(ctx context.Context, idOrName string) (*api.App, *api.AppDeletion, error) {
	app, err := s.GetApp(ctx, idOrName)
	if err != nil {
		return nil, nil, err
	}
	del, err := s.deleteApp(ctx, app)
	return app, del, err
}

func (s *Store) deleteApp(ctx context.Context, app *api.App) (*api.AppDeletion, error) {
	del := &api.AppDeletion{AppID: app.ID, DeletedRoutes: []*api.Route{}, DeletedResources: []*api.Resource{}, DeletedReleases: []*api.Release{}}
	forms, err := s.ListFormations(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	for _, f := range forms {
		if err := s.DeleteFormation(ctx, app.ID, f.ReleaseID); err != nil && !errors.Is(err, api.ErrNotFound) {
			return nil, err
		}
	}
	routes, err := s.ListRoutes(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if _, err := s.DeleteRoute(ctx, app.ID, r.ID); err != nil && !errors.Is(err, api.ErrNotFound) {
			return nil, err
		}
		del.DeletedRoutes = append(del.DeletedRoutes, r)
	}
	resources, err := s.ListResources(ctx, "", app.ID)
	if err != nil {
		return nil, err
	}
	for _, r := range resources {
		if _, err := s.DetachResource(ctx, r.ProviderID, r.ID, app.ID); err != nil && !errors.Is(err, api.ErrNotFound) {
			return nil, err
		}
		del.DeletedResources = append(del.DeletedResources, r)
	}
	releases, err := s.ListReleases(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	for _, r := range releases {
		t := s.txn()
		t.del(s.key(pReleases, r.ID))
		t.event(app.ID, api.EventTypeReleaseDeletion, r.ID, &api.ReleaseDeletionEvent{
			ReleaseDeletion: &api.ReleaseDeletion{AppID: app.ID, ReleaseID: r.ID, RemainingApps: []string{}, DeletedFiles: []string{}},
		})
		if _, err := t.commit(ctx); err != nil {
			return nil, fmt.Errorf("delete release %s: %w", r.ID, err)
		}
		del.DeletedReleases = append(del.DeletedReleases, r)
	}
	t := s.txn()
	t.del(s.key(pApps, app.ID))
	t.del(s.key(pAppNames, app.Name))
	t.delPrefix(s.key(pScales, app.ID) + "/")
	t.delPrefix(s.key(pScalePending, app.ID) + "/")
	t.del(s.key(pDeployLock, app.ID))
	t.event(app.ID, api.EventTypeAppDeletion, app.ID, &api.AppDeletionEvent{AppDeletion: del})
	if _, err := t.commit(ctx); err != nil {
		return nil, fmt.Errorf("delete app %q: %w", app.Name, err)
	}
	return del, nil
}
