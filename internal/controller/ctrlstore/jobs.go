package ctrlstore

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// jobKey is the key a job is stored under: its UUID when it has one (so a
// job is one record from pending, before it has a host and an id, to
// down), else its id.
func jobKey(job *api.Job) string {
	if job.UUID != "" {
		return job.UUID
	}
	return job.ID
}

// uuidLen is the length of a job UUID, the tail of a job id
// "<host-id>-<uuid>".
const uuidLen = 36

// PutJob creates or updates a job's record (the scheduler reports job
// states this way). The creation time of an existing job is kept, and so
// is its id once it has one; a formation job without args gets its process
// type's.
func (s *Store) PutJob(ctx context.Context, job *api.Job) (*api.Job, error) {
	if len(job.Args) == 0 && job.Type != "" && job.ReleaseID != "" {
		// A formation job runs its process type's command (flynn ps -c).
		if rel, err := s.GetRelease(ctx, job.ReleaseID); err == nil && rel.Processes[job.Type] != nil {
			job.Args = rel.Processes[job.Type].Args
		}
	}
	for range maxRetries {
		key := s.key(pJobs, job.AppID, jobKey(job))
		old := &api.Job{}
		rev, err := s.get(ctx, key, old)
		if err != nil && err != errMissing {
			return nil, err
		}
		now := s.now()
		job.UpdatedAt = now
		if rev == 0 {
			if job.CreatedAt.IsZero() {
				job.CreatedAt = now
			}
		} else {
			job.CreatedAt = old.CreatedAt
			if job.ID == "" {
				job.ID = old.ID
			}
			// A state report (the scheduler's) carries what its reporter
			// knows: what it leaves out, such as a one-off job's command
			// and meta, stays as recorded.
			if job.Meta == nil {
				job.Meta = old.Meta
			}
			if len(job.Args) == 0 {
				job.Args = old.Args
			}
			if job.Type == "" {
				job.Type = old.Type
			}
			if job.ReleaseID == "" {
				job.ReleaseID = old.ReleaseID
			}
			if job.HostID == "" {
				job.HostID = old.HostID
			}
		}
		t := s.txn()
		t.unchanged(key, rev)
		t.put(key, job)
		t.event(job.AppID, api.EventTypeJob, jobKey(job), job)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("put job %s: %w", job.ID, err)
		}
		if ok {
			return job, nil
		}
	}
	return nil, errRetry
}

// GetJob returns a job of an app by its id or its UUID.
func (s *Store) GetJob(ctx context.Context, appID, id string) (*api.Job, error) {
	j := &api.Job{}
	_, err := s.getObj(ctx, s.key(pJobs, appID, id), "job", id, j)
	if err != nil && len(id) > uuidLen+1 && id[len(id)-uuidLen-1] == '-' {
		// A placed job's id: the record is under its UUID.
		j = &api.Job{}
		if _, err2 := s.getObj(ctx, s.key(pJobs, appID, id[len(id)-uuidLen:]), "job", id, j); err2 == nil && j.ID == id {
			return j, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return j, nil
}

// ListJobs returns an app's jobs.
func (s *Store) ListJobs(ctx context.Context, appID string) ([]*api.Job, error) {
	items, err := listOf[api.Job](ctx, s, s.key(pJobs, appID)+"/", nil)
	return newestFirst(items, err, func(j *api.Job) time.Time { return j.CreatedAt })
}

// ListActiveJobs returns every job that is not down.
func (s *Store) ListActiveJobs(ctx context.Context) ([]*api.Job, error) {
	return listOf(ctx, s, s.key(pJobs), func(j *api.Job) bool { return j.State != api.JobStateDown })
}

// CreateDeployment starts a deployment of release to app. When the app's
// current formation runs no process, and the release has no release
// command to run, the deployment completes at once: the release becomes
// current and the formation moves to it. Otherwise a pending deployment
// is stored for the deployer. Only one deployment per app runs at a time:
// a second one is a conflict.
func (s *Store) CreateDeployment(ctx context.Context, appID, releaseID string) (*api.Deployment, error) {
	return s.CreateDeploymentAfterReleasePhase(ctx, appID, releaseID, "")
}

// CreateDeploymentAfterReleasePhase is CreateDeployment of a release whose
// release command has run as job releaseJob (the deployment's
// ReleasePhaseJob): the deployer does not run it again.
func (s *Store) CreateDeploymentAfterReleasePhase(ctx context.Context, appID, releaseID, releaseJob string) (*api.Deployment, error) {
	for range maxRetries {
		app, appRev, err := s.getApp(ctx, appID)
		if err != nil {
			return nil, err
		}
		rel, relRev, err := s.getRelease(ctx, releaseID)
		if err != nil {
			if e, ok := api.AsError(err); ok && e.Code == api.CodeNotFound {
				return nil, api.Validation("id", "release %q not found", releaseID)
			}
			return nil, err
		}
		if rel.AppID != "" && rel.AppID != app.ID {
			return nil, api.Validation("id", "release %s belongs to another app", releaseID)
		}
		now := s.now()
		d := &api.Deployment{
			ID: NewID(), AppID: app.ID, OldReleaseID: app.ReleaseID, NewReleaseID: rel.ID,
			Strategy: app.Strategy, DeployTimeout: app.DeployTimeout, CreatedAt: now,
			ReleasePhaseJob: releaseJob,
		}
		if d.Strategy == "" {
			d.Strategy = api.StrategyAllAtOnce
		}
		if d.DeployTimeout == 0 {
			d.DeployTimeout = api.DefaultDeployTimeout
		}
		if d.Strategy == api.StrategyInBatches {
			// The app's batch size, else the number of hosts (Flynn's
			// default).
			n, err := strconv.Atoi(app.Meta[api.MetaDeployBatchSize])
			if err != nil || n < 1 {
				hosts, err := s.ListHosts(ctx)
				if err != nil {
					return nil, err
				}
				n = max(len(hosts), 1)
			}
			d.DeployBatchSize = &n
		}
		var oldForm api.Formation
		oldRev := int64(0)
		if app.ReleaseID != "" {
			oldRev, err = s.get(ctx, s.key(pFormations, app.ID, app.ReleaseID), &oldForm)
			if err != nil && err != errMissing {
				return nil, err
			}
		}
		d.Processes = maps.Clone(oldForm.Processes)
		d.Tags = maps.Clone(oldForm.Tags)

		lock := s.key(pDeployLock, app.ID)
		t := s.txn()
		t.missing(lock)
		t.unchanged(s.key(pApps, app.ID), appRev)
		t.unchanged(s.key(pReleases, rel.ID), relRev)
		if app.ReleaseID != "" {
			t.unchanged(s.key(pFormations, app.ID, app.ReleaseID), oldRev)
		}
		releasePhase := rel.Processes[api.ProcessTypeRelease] != nil && releaseJob == "" && rel.ID != app.ReleaseID
		if !active(d.Processes) && !releasePhase {
			d.Status = api.DeploymentComplete
			d.FinishedAt = &now
			app.ReleaseID = rel.ID
			app.UpdatedAt = now
			t.put(s.key(pApps, app.ID), app)
			f := &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: d.Processes, Tags: d.Tags, CreatedAt: now, UpdatedAt: now}
			t.put(s.key(pFormations, app.ID, rel.ID), f)
			t.event(app.ID, api.EventTypeAppRelease, app.ID, map[string]any{"release": rel})
		} else {
			d.Status = api.DeploymentPending
			t.putRaw(lock, d.ID)
		}
		t.put(s.key(pDeployments, d.ID), d)
		t.event(app.ID, api.EventTypeDeployment, d.ID, deploymentEvent(d, ""))
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("create deployment: %w", err)
		}
		if ok {
			return d, nil
		}
		res, err := s.cli.Get(ctx, lock)
		if err != nil {
			return nil, fmt.Errorf("create deployment: %w", err)
		}
		if len(res.Kvs) > 0 {
			return nil, api.Conflict("app %s has a deployment in progress (%s); wait for it to finish", app.Name, res.Kvs[0].Value)
		}
	}
	return nil, errRetry
}

func deploymentEvent(d *api.Deployment, errMsg string) *api.DeploymentEvent {
	return &api.DeploymentEvent{AppID: d.AppID, DeploymentID: d.ID, ReleaseID: d.NewReleaseID, Status: d.Status, Error: errMsg}
}

// GetDeployment returns a deployment.
func (s *Store) GetDeployment(ctx context.Context, id string) (*api.Deployment, error) {
	d := &api.Deployment{}
	if _, err := s.getObj(ctx, s.key(pDeployments, id), "deployment", id, d); err != nil {
		return nil, err
	}
	return d, nil
}

// ListDeployments returns deployments, filtered by app and status when
// they are not empty.
func (s *Store) ListDeployments(ctx context.Context, appID, status string) ([]*api.Deployment, error) {
	items, err := listOf(ctx, s, s.key(pDeployments), func(d *api.Deployment) bool {
		return (appID == "" || d.AppID == appID) && (status == "" || d.Status == status)
	})
	return newestFirst(items, err, func(d *api.Deployment) time.Time { return d.CreatedAt })
}

// validTransition lists the deployment status changes a deployer may make.
var validTransition = map[string][]string{
	api.DeploymentPending: {api.DeploymentRunning, api.DeploymentComplete, api.DeploymentFailed},
	api.DeploymentRunning: {api.DeploymentComplete, api.DeploymentFailed},
}

// UpdateDeployment moves a deployment to status. Completing it makes the
// new release the app's current one; completing or failing it releases the
// app's deployment lock. errMsg is recorded in the deployment event.
func (s *Store) UpdateDeployment(ctx context.Context, id, status, errMsg string) (*api.Deployment, error) {
	for range maxRetries {
		key := s.key(pDeployments, id)
		d := &api.Deployment{}
		rev, err := s.getObj(ctx, key, "deployment", id, d)
		if err != nil {
			return nil, err
		}
		allowed := false
		for _, st := range validTransition[d.Status] {
			allowed = allowed || st == status
		}
		if d.Status == status && status == api.DeploymentRunning {
			allowed = true
		}
		if !allowed {
			return nil, api.Validation("status", "deployment %s cannot go from %s to %s", id, d.Status, status)
		}
		now := s.now()
		d.Status = status
		t := s.txn()
		t.unchanged(key, rev)
		if status == api.DeploymentComplete || status == api.DeploymentFailed {
			d.FinishedAt = &now
			lock := s.key(pDeployLock, d.AppID)
			res, err := s.cli.Get(ctx, lock)
			if err != nil {
				return nil, fmt.Errorf("update deployment: %w", err)
			}
			if len(res.Kvs) > 0 && string(res.Kvs[0].Value) == d.ID {
				t.unchanged(lock, res.Kvs[0].ModRevision)
				t.del(lock)
			}
		}
		if status == api.DeploymentComplete {
			app, appRev, err := s.getApp(ctx, d.AppID)
			if err != nil {
				return nil, err
			}
			rel, err := s.GetRelease(ctx, d.NewReleaseID)
			if err != nil {
				return nil, err
			}
			app.ReleaseID = d.NewReleaseID
			app.UpdatedAt = now
			t.unchanged(s.key(pApps, app.ID), appRev)
			t.put(s.key(pApps, app.ID), app)
			t.event(app.ID, api.EventTypeAppRelease, app.ID, map[string]any{"release": rel})
		}
		t.put(key, d)
		t.event(d.AppID, api.EventTypeDeployment, d.ID, deploymentEvent(d, errMsg))
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("update deployment: %w", err)
		}
		if ok {
			return d, nil
		}
	}
	return nil, errRetry
}

// AddDeploymentEvent records a step of a deployment's progress.
func (s *Store) AddDeploymentEvent(ctx context.Context, id string, ev *api.DeploymentEvent) error {
	d, err := s.GetDeployment(ctx, id)
	if err != nil {
		return err
	}
	ev.AppID, ev.DeploymentID = d.AppID, d.ID
	if ev.ReleaseID == "" {
		ev.ReleaseID = d.NewReleaseID
	}
	if ev.Status == "" {
		ev.Status = d.Status
	}
	t := s.txn()
	t.event(d.AppID, api.EventTypeDeployment, d.ID, ev)
	if _, err := t.commit(ctx); err != nil {
		return fmt.Errorf("add deployment event: %w", err)
	}
	return nil
}
