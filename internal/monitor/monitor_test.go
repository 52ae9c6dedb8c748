package monitor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// fakeCluster is two hosts whose jobs the test controls.
type fakeCluster struct {
	scheduler.Cluster // unused methods panic
	mu                sync.Mutex
	jobs              map[string][]*api.ActiveJob // by host
	added             []*api.HostJob
	addedOn           []string
	addedAt           []time.Time
}

func (c *fakeCluster) ListHosts(ctx context.Context) ([]*api.Host, error) {
	return []*api.Host{{ID: "h1"}, {ID: "h2"}}, nil
}

func (c *fakeCluster) ListJobs(ctx context.Context, hostID string) ([]*api.ActiveJob, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*api.ActiveJob(nil), c.jobs[hostID]...), nil
}

func (c *fakeCluster) AddJob(ctx context.Context, hostID string, job *api.HostJob) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.added = append(c.added, job)
	c.addedOn = append(c.addedOn, hostID)
	c.addedAt = append(c.addedAt, time.Now())
	c.jobs[hostID] = append(c.jobs[hostID], &api.ActiveJob{Job: job, HostID: hostID, Status: api.HostJobRunning})
	return nil
}

// endAll makes every job end, as a power loss does.
func (c *fakeCluster) endAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, jobs := range c.jobs {
		for _, j := range jobs {
			j.Status = api.HostJobFailed
		}
	}
}

func (c *fakeCluster) adds() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.added)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestoresMarkedApp: with no job of the scheduler app running, the
// elected monitor starts its formation on its own host after the grace
// period, once; the jobs carry the formation's metadata so the scheduler
// adopts them; an app without the mark is left to the scheduler; after
// every job ended the monitor starts it again, backing off.
func TestRestoresMarkedApp(t *testing.T) {
	cli := etcdtest.KV(t)
	store := ctrlstore.New(cli)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mk := func(name string, meta map[string]string) *api.App {
		app := &api.App{ID: ctrlstore.NewID(), Name: name, Meta: meta}
		if err := store.CreateApp(ctx, app, nil); err != nil {
			t.Fatal(err)
		}
		art := &api.Artifact{ID: ctrlstore.NewID(), Type: api.ArtifactTypeFlynn, URI: "file:///layer"}
		if err := store.CreateArtifact(ctx, art); err != nil {
			t.Fatal(err)
		}
		rel := &api.Release{ID: ctrlstore.NewID(), AppID: app.ID, ArtifactIDs: []string{art.ID},
			Processes: map[string]*api.ProcessType{"scheduler": {Args: []string{"/bin/flynn-host", "component", "scheduler"}}}}
		if err := store.CreateRelease(ctx, rel); err != nil {
			t.Fatal(err)
		}
		if _, err := store.PutFormation(ctx, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"scheduler": 1}}); err != nil {
			t.Fatal(err)
		}
		if _, err := store.SetAppRelease(ctx, app.ID, rel.ID); err != nil {
			t.Fatal(err)
		}
		return app
	}
	sched := mk("scheduler", map[string]string{api.MetaSystemRestore: "true"})
	mk("other", nil)

	c := &fakeCluster{jobs: map[string][]*api.ActiveJob{}}
	grace := 200 * time.Millisecond
	mctx, mcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(mctx, Config{Etcd: cli, Cluster: c, HostID: "h2", Interval: 20 * time.Millisecond, Grace: grace, MaxBackoff: time.Hour, ElectionTTL: time.Second},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() {
		mcancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	start := time.Now()
	waitFor(t, "the scheduler started", func() bool { return c.adds() == 1 })
	if d := time.Since(start); d < grace {
		t.Errorf("restored after %s, before the grace period of %s", d, grace)
	}
	c.mu.Lock()
	j, on := c.added[0], c.addedOn[0]
	c.mu.Unlock()
	if on != "h1" {
		t.Errorf("started on %s, want h1 (no host has jobs: the first by id)", on)
	}
	if j.Metadata[api.JobMetaApp] != sched.ID || j.Metadata[api.JobMetaProcessType] != "scheduler" || j.Metadata[api.JobMetaRelease] == "" {
		t.Errorf("job metadata %v does not name the formation", j.Metadata)
	}
	if len(j.ID) < 4 || j.ID[:3] != "h1-" {
		t.Errorf("job id %q is not HOSTID-UUID", j.ID)
	}
	time.Sleep(3 * grace)
	if n := c.adds(); n != 1 {
		t.Fatalf("%d jobs started while one runs (or for the unmarked app)", n)
	}

	// Its job ends: restored again; it ends at once again: the third
	// attempt waits twice as long after the second (backoff).
	c.endAll()
	waitFor(t, "the scheduler started again", func() bool { return c.adds() == 2 })
	c.endAll()
	waitFor(t, "a third start", func() bool { return c.adds() == 3 })
	c.mu.Lock()
	gap := c.addedAt[2].Sub(c.addedAt[1])
	c.mu.Unlock()
	// (A little less than 2*grace: the monitor reads its clock just
	// before the fake records the second start.)
	if gap < 2*grace-grace/4 {
		t.Errorf("third attempt %s after the second, want a backoff of about %s", gap, 2*grace)
	}
}

func TestConfigRequired(t *testing.T) {
	if err := Run(context.Background(), Config{}, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Run with no config: %v", err)
	}
}
