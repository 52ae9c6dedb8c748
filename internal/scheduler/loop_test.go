package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Listings race with live changes: a listing taken before a change must
// not undo it. These drive the loop's event handling directly.
func TestStaleListings(t *testing.T) {
	ctx := context.Background()
	newTestLoop := func() *loop {
		l := newLoop(Config{Cluster: nopCluster{}, Controller: nopController{}, Clock: fixedClock{}, Parallel: 1}, testLogger())
		l.hosts["h1"] = &hostState{host: host("h1", 0), synced: true, cancel: func() {}}
		return l
	}
	web := webFormation(1)

	t.Run("job started after the listing is not lost", func(t *testing.T) {
		l := newTestLoop()
		since := l.seq.Load()
		j := placedJob("u1", "app1", "rel1", "web", "h1", api.JobStateStarting, 0)
		l.jobs[j.UUID], l.byID[j.ID] = j, j
		l.startSeq[j.UUID] = l.seq.Add(1) // started (AddJob done, result applied)
		l.apply(ctx, hostJobsEvent{hostID: "h1", since: since, jobs: nil})
		if j.State != api.JobStateStarting || l.jobs["u1"] == nil {
			t.Fatalf("job %+v was dropped by a listing older than its start", j)
		}
		// A listing taken after the start that lacks it means it is gone.
		l.apply(ctx, hostJobsEvent{hostID: "h1", since: l.seq.Load(), jobs: nil})
		if j.State != api.JobStateDown || l.jobs["u1"] != nil {
			t.Fatalf("job %+v survived a listing without it", j)
		}
	})

	t.Run("job ended after the listing is not adopted again", func(t *testing.T) {
		l := newTestLoop()
		since := l.seq.Load()
		j := placedJob("u1", "app1", "rel1", "web", "h1", api.JobStateUp, 0)
		l.jobs[j.UUID], l.byID[j.ID] = j, j
		hj := &api.HostJob{ID: j.ID, Metadata: map[string]string{api.JobMetaApp: "app1", api.JobMetaRelease: "rel1", api.JobMetaProcessType: "web"}}
		l.apply(ctx, hostJobEvent{"h1", &api.HostJobEvent{Event: api.HostEventStop, JobID: j.ID, Job: &api.ActiveJob{Job: hj, Status: api.HostJobCrashed}}})
		if l.byID[j.ID] != nil {
			t.Fatal("crashed job still tracked")
		}
		l.apply(ctx, hostJobsEvent{hostID: "h1", since: since, jobs: []*api.ActiveJob{{Job: hj, Status: api.HostJobRunning}}})
		if l.byID[j.ID] != nil {
			t.Fatal("a stale listing brought a crashed job back")
		}
		l.apply(ctx, hostJobsEvent{hostID: "h1", since: l.seq.Load(), jobs: []*api.ActiveJob{{Job: hj, Status: api.HostJobRunning}}})
		if l.byID[j.ID] == nil {
			t.Fatal("a fresh listing of a running job was ignored")
		}
	})

	t.Run("formation streamed after the listing wins", func(t *testing.T) {
		l := newTestLoop()
		since := l.seq.Load()
		l.apply(ctx, formationEvent{webFormation(3)})
		l.apply(ctx, &fullSyncEvent{since: since, hosts: []*api.Host{host("h1", 0)}, formations: []*api.ExpandedFormation{web}, jobs: map[string][]*api.ActiveJob{"h1": nil}})
		if got := l.formations[FormationKey("app1", "rel1")].Processes["web"]; got != 3 {
			t.Fatalf("web = %d after a stale listing, want 3", got)
		}
		l.apply(ctx, &fullSyncEvent{since: l.seq.Load(), hosts: []*api.Host{host("h1", 0)}, formations: []*api.ExpandedFormation{web}, jobs: map[string][]*api.ActiveJob{"h1": nil}})
		if got := l.formations[FormationKey("app1", "rel1")].Processes["web"]; got != 1 {
			t.Fatalf("web = %d after a fresh listing, want 1", got)
		}
	})
}

// A new leader continues an adopted job's restart backoff from the count
// in its metadata.
func TestAdoptedJobKeepsRestartCount(t *testing.T) {
	ctx := context.Background()
	l := newLoop(Config{Cluster: nopCluster{}, Controller: nopController{}, Clock: fixedClock{}, Backoff: Backoff, Parallel: 1}, testLogger())
	l.hosts["h1"] = &hostState{host: host("h1", 0), synced: true, cancel: func() {}}
	l.formations[FormationKey("app1", "rel1")] = webFormation(1)
	hj := &api.HostJob{ID: "h1-u1", Metadata: map[string]string{
		api.JobMetaApp: "app1", api.JobMetaRelease: "rel1", api.JobMetaProcessType: "web", JobMetaRestarts: "7",
	}}
	l.apply(ctx, hostJobsEvent{hostID: "h1", since: l.seq.Load(), jobs: []*api.ActiveJob{{Job: hj, Status: api.HostJobRunning, StartedAt: t0}}})
	l.apply(ctx, hostJobEvent{"h1", &api.HostJobEvent{Event: api.HostEventStop, JobID: hj.ID, Job: &api.ActiveJob{Job: hj, Status: api.HostJobCrashed}}})
	var pending []*Job
	for _, j := range l.jobs {
		pending = append(pending, j)
	}
	if len(pending) != 1 || pending[0].Restarts != 8 || !pending[0].RunAt.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("replacements %+v, want one with Restarts 8 due at t0+10s", pending)
	}
}
