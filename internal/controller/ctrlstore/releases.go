package ctrlstore

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// CreateArtifact stores a new, immutable artifact.
func (s *Store) CreateArtifact(ctx context.Context, a *api.Artifact) error {
	t := s.txn()
	t.missing(s.key(pArtifacts, a.ID))
	t.put(s.key(pArtifacts, a.ID), a)
	t.event("", api.EventTypeArtifact, a.ID, a)
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("create artifact: %w", err)
	}
	if !ok {
		return api.Exists("artifact %s already exists", a.ID)
	}
	return nil
}

// GetArtifact returns an artifact.
func (s *Store) GetArtifact(ctx context.Context, id string) (*api.Artifact, error) {
	a := &api.Artifact{}
	if _, err := s.getObj(ctx, s.key(pArtifacts, id), "artifact", id, a); err != nil {
		return nil, err
	}
	return a, nil
}

// ListArtifacts returns all artifacts.
func (s *Store) ListArtifacts(ctx context.Context) ([]*api.Artifact, error) {
	items, err := listOf[api.Artifact](ctx, s, s.key(pArtifacts), nil)
	return newestFirst(items, err, func(a *api.Artifact) time.Time { return a.CreatedAt })
}

// CreateRelease stores a new, immutable release. Its artifacts and app
// (when set) must exist.
func (s *Store) CreateRelease(ctx context.Context, r *api.Release) error {
	t := s.txn()
	for i, id := range r.ArtifactIDs {
		res, err := s.cli.Get(ctx, s.key(pArtifacts, id))
		if err != nil {
			return fmt.Errorf("create release: %w", err)
		}
		if len(res.Kvs) == 0 {
			return api.Validation(fmt.Sprintf("artifacts[%d]", i), "artifact %q not found", id)
		}
		t.unchanged(s.key(pArtifacts, id), res.Kvs[0].ModRevision)
	}
	if r.AppID != "" {
		res, err := s.cli.Get(ctx, s.key(pApps, r.AppID))
		if err != nil {
			return fmt.Errorf("create release: %w", err)
		}
		if len(res.Kvs) == 0 {
			return api.Validation("app_id", "app %q not found", r.AppID)
		}
		t.unchanged(s.key(pApps, r.AppID), res.Kvs[0].ModRevision)
	}
	t.missing(s.key(pReleases, r.ID))
	t.put(s.key(pReleases, r.ID), r)
	t.event(r.AppID, api.EventTypeRelease, r.ID, r)
	ok, err := t.commit(ctx)
	if err != nil {
		return fmt.Errorf("create release: %w", err)
	}
	if !ok {
		if _, err := s.GetRelease(ctx, r.ID); err == nil {
			return api.Exists("release %s already exists", r.ID)
		}
		return errRetry
	}
	return nil
}

// GetRelease returns a release.
func (s *Store) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	r, _, err := s.getRelease(ctx, id)
	return r, err
}

func (s *Store) getRelease(ctx context.Context, id string) (*api.Release, int64, error) {
	r := &api.Release{}
	rev, err := s.getObj(ctx, s.key(pReleases, id), "release", id, r)
	if err != nil {
		return nil, 0, err
	}
	return r, rev, nil
}

// ListReleases returns all releases, or those of one app.
func (s *Store) ListReleases(ctx context.Context, appID string) ([]*api.Release, error) {
	items, err := listOf(ctx, s, s.key(pReleases), func(r *api.Release) bool { return appID == "" || r.AppID == appID })
	return newestFirst(items, err, func(r *api.Release) time.Time { return r.CreatedAt })
}

// DeleteRelease deletes a release of an app and its formation (which
// makes the scheduler stop its jobs). The app's current release cannot be
// deleted. files are the blobs the caller deletes with it, recorded in the
// release_deletion event.
func (s *Store) DeleteRelease(ctx context.Context, app *api.App, id string, files []string) (*api.Release, error) {
	r, rev, err := s.getRelease(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.AppID != app.ID {
		return nil, api.NotFound("release %q not found in app %s", id, app.Name)
	}
	cur, appRev, err := s.getApp(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	if cur.ReleaseID == id {
		return nil, api.Validation("id", "release %s is the app's current release; deploy another release first", id)
	}
	t := s.txn()
	t.unchanged(s.key(pReleases, id), rev)
	t.unchanged(s.key(pApps, app.ID), appRev)
	t.del(s.key(pReleases, id))
	t.del(s.key(pFormations, app.ID, id))
	t.del(s.key(pScalePending, app.ID, id))
	if files == nil {
		files = []string{}
	}
	t.event(app.ID, api.EventTypeReleaseDeletion, id, &api.ReleaseDeletionEvent{
		ReleaseDeletion: &api.ReleaseDeletion{AppID: app.ID, ReleaseID: id, RemainingApps: []string{}, DeletedFiles: files},
	})
	ok, err := t.commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete release: %w", err)
	}
	if !ok {
		return nil, errRetry
	}
	return r, nil
}

// PutFormation creates or replaces the formation of (app, release).
func (s *Store) PutFormation(ctx context.Context, f *api.Formation) (*api.Formation, error) {
	for range maxRetries {
		key := s.key(pFormations, f.AppID, f.ReleaseID)
		old := &api.Formation{}
		rev, err := s.get(ctx, key, old)
		if err != nil && err != errMissing {
			return nil, err
		}
		now := s.now()
		f.UpdatedAt = now
		f.CreatedAt = now
		if rev != 0 {
			f.CreatedAt = old.CreatedAt
		}
		t := s.txn()
		t.unchanged(key, rev)
		t.put(key, f)
		t.event(f.AppID, api.EventTypeFormation, f.AppID+":"+f.ReleaseID, f)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("put formation: %w", err)
		}
		if ok {
			return f, nil
		}
	}
	return nil, errRetry
}

// GetFormation returns the formation of (app, release).
func (s *Store) GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error) {
	f := &api.Formation{}
	if _, err := s.getObj(ctx, s.key(pFormations, appID, releaseID), "formation", releaseID, f); err != nil {
		return nil, err
	}
	return f, nil
}

// ListFormations returns an app's formations, or every formation when
// appID is empty.
func (s *Store) ListFormations(ctx context.Context, appID string) ([]*api.Formation, error) {
	prefix := s.key(pFormations)
	if appID != "" {
		prefix = s.key(pFormations, appID) + "/"
	}
	items, err := listOf[api.Formation](ctx, s, prefix, nil)
	return newestFirst(items, err, func(f *api.Formation) time.Time { return f.CreatedAt })
}

// DeleteFormation deletes the formation of (app, release).
func (s *Store) DeleteFormation(ctx context.Context, appID, releaseID string) error {
	f, err := s.GetFormation(ctx, appID, releaseID)
	if err != nil {
		return err
	}
	t := s.txn()
	t.del(s.key(pFormations, appID, releaseID))
	f.Processes = nil
	t.event(appID, api.EventTypeFormation, appID+":"+releaseID, f)
	if _, err := t.commit(ctx); err != nil {
		return fmt.Errorf("delete formation: %w", err)
	}
	return nil
}

// Expand returns a formation with its app, release and artifacts.
func (s *Store) Expand(ctx context.Context, f *api.Formation) (*api.ExpandedFormation, error) {
	app, err := s.GetApp(ctx, f.AppID)
	if err != nil {
		return nil, err
	}
	rel, err := s.GetRelease(ctx, f.ReleaseID)
	if err != nil {
		return nil, err
	}
	ef := &api.ExpandedFormation{App: app, Release: rel, Processes: f.Processes, Tags: f.Tags, UpdatedAt: f.UpdatedAt}
	for _, id := range rel.ArtifactIDs {
		a, err := s.GetArtifact(ctx, id)
		if err != nil {
			return nil, err
		}
		ef.Artifacts = append(ef.Artifacts, a)
	}
	return ef, nil
}

// ListActiveFormations returns every formation that runs at least one
// process, expanded.
func (s *Store) ListActiveFormations(ctx context.Context) ([]*api.ExpandedFormation, error) {
	forms, err := s.ListFormations(ctx, "")
	if err != nil {
		return nil, err
	}
	out := []*api.ExpandedFormation{}
	for _, f := range forms {
		if !active(f.Processes) {
			continue
		}
		ef, err := s.Expand(ctx, f)
		if err != nil {
			continue // app or release deleted concurrently
		}
		out = append(out, ef)
	}
	return out, nil
}

func active(p map[string]int) bool {
	for _, n := range p {
		if n > 0 {
			return true
		}
	}
	return false
}

// CreateScaleRequest records a pending scale request and applies it to
// the formation in one transaction, as Flynn does: the process counts and
// tags it names change, other types keep theirs. A pending request for
// the same formation is cancelled (a scale_request_cancelation event).
func (s *Store) CreateScaleRequest(ctx context.Context, req *api.ScaleRequest) (*api.ScaleRequest, error) {
	for range maxRetries {
		key := s.key(pFormations, req.AppID, req.ReleaseID)
		f := &api.Formation{}
		rev, err := s.get(ctx, key, f)
		if err != nil && err != errMissing {
			return nil, err
		}
		pendingKey := s.key(pScalePending, req.AppID, req.ReleaseID)
		pres, err := s.cli.Get(ctx, pendingKey)
		if err != nil {
			return nil, fmt.Errorf("create scale request: %w", err)
		}
		var prev *api.ScaleRequest
		var prevRev int64
		if len(pres.Kvs) > 0 {
			prev = &api.ScaleRequest{}
			prevRev, err = s.get(ctx, s.key(pScales, req.AppID, string(pres.Kvs[0].Value)), prev)
			if err == errMissing {
				prev = nil
			} else if err != nil {
				return nil, err
			}
		}
		now := s.now()
		if rev == 0 {
			f = &api.Formation{AppID: req.AppID, ReleaseID: req.ReleaseID, CreatedAt: now}
		}
		req.OldProcesses = maps.Clone(f.Processes)
		req.OldTags = maps.Clone(f.Tags)
		if req.NewProcesses != nil {
			if f.Processes == nil {
				f.Processes = map[string]int{}
			}
			maps.Copy(f.Processes, *req.NewProcesses)
		}
		if req.NewTags != nil {
			if f.Tags == nil {
				f.Tags = map[string]map[string]string{}
			}
			maps.Copy(f.Tags, *req.NewTags)
		}
		f.UpdatedAt = now
		req.State = api.ScaleRequestPending
		req.CreatedAt, req.UpdatedAt = now, now
		t := s.txn()
		t.unchanged(key, rev)
		if len(pres.Kvs) > 0 {
			t.unchanged(pendingKey, pres.Kvs[0].ModRevision)
		} else {
			t.missing(pendingKey)
		}
		if prev != nil && prev.State == api.ScaleRequestPending {
			prev.State = api.ScaleRequestCancelled
			prev.UpdatedAt = now
			t.unchanged(s.key(pScales, req.AppID, prev.ID), prevRev)
			t.put(s.key(pScales, req.AppID, prev.ID), prev)
			t.event(req.AppID, api.EventTypeScaleRequestCancelation, prev.ID, prev)
			t.event(req.AppID, api.EventTypeScaleRequest, prev.ID, prev)
		}
		t.put(key, f)
		t.put(s.key(pScales, req.AppID, req.ID), req)
		t.putRaw(pendingKey, req.ID)
		t.event(req.AppID, api.EventTypeScaleRequest, req.ID, req)
		t.event(req.AppID, api.EventTypeFormation, req.AppID+":"+req.ReleaseID, f)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("create scale request: %w", err)
		}
		if ok {
			return req, nil
		}
	}
	return nil, errRetry
}

// UpdateScaleRequest ends a pending scale request: complete (the
// formation runs as asked) or cancelled. Ending it again the same way is
// a no-op; ending a request that ended the other way is a conflict.
func (s *Store) UpdateScaleRequest(ctx context.Context, appID, id, state string) (*api.ScaleRequest, error) {
	return s.EndScaleRequest(ctx, appID, id, state, "")
}

// EndScaleRequest is UpdateScaleRequest with the reason of a failed
// request.
func (s *Store) EndScaleRequest(ctx context.Context, appID, id, state, errMsg string) (*api.ScaleRequest, error) {
	for range maxRetries {
		key := s.key(pScales, appID, id)
		req := &api.ScaleRequest{}
		rev, err := s.getObj(ctx, key, "scale request", id, req)
		if err != nil {
			return nil, err
		}
		if req.State == state {
			return req, nil
		}
		if req.State != api.ScaleRequestPending {
			return nil, api.Conflict("scale request %s is %s already", id, req.State)
		}
		req.State = state
		req.Error = errMsg
		req.UpdatedAt = s.now()
		pendingKey := s.key(pScalePending, appID, req.ReleaseID)
		t := s.txn()
		t.unchanged(key, rev)
		t.put(key, req)
		t.event(appID, api.EventTypeScaleRequest, id, req)
		if state == api.ScaleRequestCancelled {
			t.event(appID, api.EventTypeScaleRequestCancelation, id, req)
		}
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("update scale request: %w", err)
		}
		if ok {
			// Drop the pending index if it still names this request.
			s.cli.Txn(ctx).If(etcdkv.Compare(etcdkv.Value(pendingKey), "=", id)).Then(etcdkv.OpDelete(pendingKey)).Commit()
			return req, nil
		}
	}
	return nil, errRetry
}

// ListScaleRequests returns an app's scale requests.
func (s *Store) ListScaleRequests(ctx context.Context, appID string) ([]*api.ScaleRequest, error) {
	items, err := listOf[api.ScaleRequest](ctx, s, s.key(pScales, appID)+"/", nil)
	return newestFirst(items, err, func(r *api.ScaleRequest) time.Time { return r.CreatedAt })
}

// ListPendingScaleRequests returns every app's pending scale requests.
func (s *Store) ListPendingScaleRequests(ctx context.Context) ([]*api.ScaleRequest, error) {
	res, err := s.cli.Get(ctx, s.key(pScalePending), etcdkv.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list pending scale requests: %w", err)
	}
	out := []*api.ScaleRequest{}
	for _, kv := range res.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), s.key(pScalePending))
		appID, _, _ := strings.Cut(rest, "/")
		req := &api.ScaleRequest{}
		if _, err := s.get(ctx, s.key(pScales, appID, string(kv.Value)), req); err != nil {
			continue // ended or deleted meanwhile
		}
		if req.State == api.ScaleRequestPending {
			out = append(out, req)
		}
	}
	return out, nil
}
