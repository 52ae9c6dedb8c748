package scheduler

import (
	"context"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

func testLogger() *slog.Logger {
	if os.Getenv("SCHEDULER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// runScheduler runs a scheduler on c and ctl until the test ends.
func runScheduler(t *testing.T, c *fakeCluster, ctl *fakeController, clock Clock) {
	t.Helper()
	s, err := New(Config{Cluster: c, Controller: ctl, Drainer: c, Clock: clock, ResyncInterval: 200 * time.Millisecond, RetryInterval: 20 * time.Millisecond}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func webFormation(n int) *api.ExpandedFormation {
	return formation("app1", "rel1", map[string]*api.ProcessType{"web": {Args: []string{"serve"}}}, map[string]int{"web": n})
}

// perHost counts running jobs per host.
func perHost(jobs []runningJob) map[string]int {
	m := make(map[string]int)
	for _, j := range jobs {
		m[j.host]++
	}
	return m
}

func TestScaleUpAndDown(t *testing.T) {
	c := newFakeCluster(host("h1", 0), host("h2", 0), host("h3", 0))
	ctl := newFakeController()
	runScheduler(t, c, ctl, nil)

	ctl.setFormation(webFormation(6))
	waitFor(t, "6 web jobs", func() bool { return len(c.running()) == 6 })
	if diff := cmp.Diff(map[string]int{"h1": 2, "h2": 2, "h3": 2}, perHost(c.running())); diff != "" {
		t.Errorf("spread (-want +got):\n%s", diff)
	}
	waitFor(t, "jobs recorded up", func() bool {
		return len(ctl.findJobs(func(j *api.Job) bool { return j.State == api.JobStateUp })) == 6
	})

	ctl.setFormation(webFormation(2))
	waitFor(t, "2 web jobs", func() bool { return len(c.running()) == 2 })
	waitFor(t, "stopped jobs recorded down", func() bool {
		return len(ctl.findJobs(func(j *api.Job) bool { return j.State == api.JobStateDown })) == 4
	})
	// Every stop was preceded by a drain of the same job.
	c.mu.Lock()
	log := slices.Clone(c.log)
	c.mu.Unlock()
	for i, line := range log {
		if id, ok := strings.CutPrefix(line, "stop "); ok {
			if !slices.Contains(log[:i], "drain "+id) {
				t.Errorf("job %s stopped without being drained first; log %q", id, log)
			}
		}
	}
	if adds, dupes := c.counts(); adds != 6 || dupes != 0 {
		t.Errorf("AddJob calls = %d (dupes %d), want 6 (0)", adds, dupes)
	}

	ctl.setFormation(webFormation(0))
	waitFor(t, "no jobs", func() bool { return len(c.running()) == 0 })
}

func TestRestartBackoff(t *testing.T) {
	c := newFakeCluster(host("h1", 0))
	ctl := newFakeController()
	clock := newFakeClock()
	runScheduler(t, c, ctl, clock)
	ctl.setFormation(webFormation(1))

	// one returns the single running web job, waiting for it to differ
	// from prev.
	one := func(prev string) runningJob {
		t.Helper()
		var j runningJob
		waitFor(t, "a new web job", func() bool {
			for _, r := range c.running() {
				if r.typ == "web" && r.id != prev {
					j = r
					return true
				}
			}
			return false
		})
		return j
	}
	j := one("")
	// The first 5 restarts are immediate.
	for i := 1; i <= 5; i++ {
		c.crash(j.host, j.id)
		j = one(j.id)
		rec := ctl.jobByID(j.id)
		if rec == nil || rec.Restarts == nil || *rec.Restarts != int32(i) {
			t.Fatalf("restart %d: recorded job %+v, want Restarts %d", i, rec, i)
		}
	}
	// The 6th waits 10 s.
	c.crash(j.host, j.id)
	waitFor(t, "a pending replacement due in 10s", func() bool {
		return len(ctl.findJobs(func(r *api.Job) bool {
			return r.State == api.JobStatePending && r.RunAt != nil && r.RunAt.Equal(clock.Now().Add(10*time.Second))
		})) == 1
	})
	if r := c.running(); len(r) != 0 {
		t.Fatalf("running before backoff elapsed: %v", r)
	}
	clock.Advance(9 * time.Second)
	// A one-off job ended meanwhile is never restarted; its event also
	// shows the scheduler has handled events after the advance.
	c.runJob("h1", &api.HostJob{ID: "h1-oneoff", Metadata: map[string]string{api.JobMetaApp: "app1"}})
	waitFor(t, "one-off recorded up", func() bool {
		j := ctl.jobByID("h1-oneoff")
		return j != nil && j.State == api.JobStateUp
	})
	c.crash("h1", "h1-oneoff")
	waitFor(t, "one-off recorded down", func() bool {
		j := ctl.jobByID("h1-oneoff")
		return j != nil && j.State == api.JobStateDown
	})
	if r := c.running(); len(r) != 0 {
		t.Fatalf("running after 9s of a 10s backoff: %v", r)
	}
	clock.Advance(time.Second)
	j = one(j.id)

	// After 5 minutes up the count resets: the next crash restarts at once.
	waitFor(t, "job recorded up", func() bool {
		rec := ctl.jobByID(j.id)
		return rec != nil && rec.State == api.JobStateUp
	})
	clock.Advance(RestartResetAfter)
	c.crash(j.host, j.id)
	j = one(j.id)
	if rec := ctl.jobByID(j.id); rec == nil || rec.Restarts == nil || *rec.Restarts != 1 {
		t.Fatalf("after reset: recorded job %+v, want Restarts 1", rec)
	}
	if adds, dupes := c.counts(); dupes != 0 || adds != 8 {
		t.Errorf("AddJob calls = %d (dupes %d), want 8 (0)", adds, dupes)
	}
}

func TestHostLossMovesJobs(t *testing.T) {
	c := newFakeCluster(host("h1", 0), host("h2", 0), host("h3", 0))
	ctl := newFakeController()
	runScheduler(t, c, ctl, nil)
	ctl.setFormation(webFormation(3))
	waitFor(t, "3 web jobs", func() bool { return len(c.running()) == 3 })
	var lost string
	for _, r := range c.running() {
		if r.host == "h2" {
			lost = r.id
		}
	}
	c.removeHost("h2")
	waitFor(t, "3 web jobs on h1 and h3", func() bool {
		r := c.running()
		return len(r) == 3 && (cmp.Equal(map[string]int{"h1": 2, "h3": 1}, perHost(r)) || cmp.Equal(map[string]int{"h1": 1, "h3": 2}, perHost(r)))
	})
	waitFor(t, "lost job recorded down", func() bool {
		j := ctl.jobByID(lost)
		return j != nil && j.State == api.JobStateDown
	})
}

func TestOmniFollowsHosts(t *testing.T) {
	c := newFakeCluster(host("h1", 0), host("h2", 0))
	ctl := newFakeController()
	runScheduler(t, c, ctl, nil)
	ctl.setFormation(formation("router", "r1", map[string]*api.ProcessType{"app": {Omni: true}}, map[string]int{"app": 1}))
	waitFor(t, "omni job on each host", func() bool {
		return cmp.Equal(map[string]int{"h1": 1, "h2": 1}, perHost(c.running()))
	})
	c.addHost(host("h3", 0))
	waitFor(t, "omni job on the new host", func() bool {
		return cmp.Equal(map[string]int{"h1": 1, "h2": 1, "h3": 1}, perHost(c.running()))
	})
	// A crashed omni job comes back on its own host.
	for _, r := range c.running() {
		if r.host == "h2" {
			c.crash(r.host, r.id)
		}
	}
	waitFor(t, "omni job back on h2", func() bool {
		return cmp.Equal(map[string]int{"h1": 1, "h2": 1, "h3": 1}, perHost(c.running()))
	})
}

func TestBlockedUntilHostFits(t *testing.T) {
	c := newFakeCluster(host("h1", 0))
	ctl := newFakeController()
	runScheduler(t, c, ctl, nil)
	f := webFormation(1)
	f.Tags = map[string]map[string]string{"web": {"gpu": "yes"}}
	ctl.setFormation(f)
	waitFor(t, "blocked job", func() bool {
		return len(ctl.findJobs(func(j *api.Job) bool {
			return j.State == api.JobStateBlocked && j.HostError != nil && *j.HostError == ReasonNoMatchingTag
		})) == 1
	})
	c.addHost(host("h2", 0, "gpu", "yes"))
	waitFor(t, "job on h2", func() bool { return cmp.Equal(map[string]int{"h2": 1}, perHost(c.running())) })
}

func TestLeaderFailover(t *testing.T) {
	cli := etcdtest.KV(t)
	c := newFakeCluster(host("h1", 0), host("h2", 0))
	ctl := newFakeController()
	ctl.setFormation(webFormation(4))

	type replica struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	replicas := make(map[string]*replica)
	for _, id := range []string{"a", "b"} {
		s, err := New(Config{Cluster: c, Controller: ctl, ResyncInterval: 200 * time.Millisecond, RetryInterval: 20 * time.Millisecond}, testLogger().With("replica", id))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{cancel, make(chan struct{})}
		replicas[id] = r
		go func() {
			defer close(r.done)
			Lead(ctx, cli, ElectionConfig{ID: id, TTL: 2 * time.Second}, testLogger(), s.Run)
		}()
		t.Cleanup(func() { cancel(); <-r.done })
	}
	waitFor(t, "4 web jobs", func() bool { return len(c.running()) == 4 })

	leader := func() string {
		resp, err := cli.Get(context.Background(), ElectionConfig{}.ElectionKey()+"/", clientOpts()...)
		if err != nil || len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}
	first := leader()
	if replicas[first] == nil {
		t.Fatalf("leader %q is not a replica", first)
	}
	replicas[first].cancel()
	<-replicas[first].done
	waitFor(t, "the other replica to lead", func() bool { l := leader(); return l != "" && l != first })

	// The new leader adopts the running jobs without starting any.
	ctl.setFormation(webFormation(6))
	waitFor(t, "6 web jobs", func() bool { return len(c.running()) == 6 })
	if diff := cmp.Diff(map[string]int{"h1": 3, "h2": 3}, perHost(c.running())); diff != "" {
		t.Errorf("spread (-want +got):\n%s", diff)
	}
	if adds, dupes := c.counts(); adds != 6 || dupes != 0 {
		t.Errorf("AddJob calls = %d (dupes %d), want 6 (0)", adds, dupes)
	}
	c.removeHost("h1")
	waitFor(t, "6 web jobs on h2", func() bool { return cmp.Equal(map[string]int{"h2": 6}, perHost(c.running())) })
}

// clientOpts reads an election's leader: the oldest key under its prefix.
func clientOpts() []etcdkv.OpOption {
	return []etcdkv.OpOption{etcdkv.WithPrefix(), etcdkv.WithSort(etcdkv.SortByCreateRevision, etcdkv.SortAscend), etcdkv.WithLimit(1)}
}

// TestJobsWithoutReleaseAreLeftAlone: a job that names an app and a
// process type but no release (a build job) is no formation's job: the
// scheduler never stops it, even while formations converge.
func TestJobsWithoutReleaseAreLeftAlone(t *testing.T) {
	c := newFakeCluster(host("h1", 0))
	ctl := newFakeController()
	runScheduler(t, c, ctl, nil)
	c.runJob("h1", &api.HostJob{ID: "h1-build", Metadata: map[string]string{api.JobMetaApp: "app1", api.JobMetaProcessType: "slugbuilder"}})
	ctl.setFormation(webFormation(1))
	waitFor(t, "the web job and the build job", func() bool { return len(c.running()) == 2 })
	ctl.setFormation(webFormation(0))
	waitFor(t, "the build job alone", func() bool {
		r := c.running()
		return len(r) == 1 && r[0].id == "h1-build"
	})
}

// TestStaleRecordsSettled: a scheduler that starts after every job ended
// with no scheduler running (a power loss) records down the controller's
// records no job backs: a job its host reports ended, a pending job of an
// earlier scheduler, a job of a host that is gone. A recent record its
// host does not know yet (a one-off being started) is left alone.
func TestStaleRecordsSettled(t *testing.T) {
	c := newFakeCluster(host("h1", 0))
	ctl := newFakeController()
	meta := map[string]string{api.JobMetaApp: "app1", api.JobMetaRelease: "rel1", api.JobMetaProcessType: "web"}
	c.endedJob("h1", &api.HostJob{ID: "h1-aaaa", Metadata: meta})
	old := time.Now().Add(-time.Hour)
	for _, j := range []*api.Job{
		{UUID: "aaaa", ID: "h1-aaaa", HostID: "h1", AppID: "app1", ReleaseID: "rel1", Type: "web", State: api.JobStateUp, UpdatedAt: old},
		{UUID: "bbbb", AppID: "app1", ReleaseID: "rel1", Type: "web", State: api.JobStatePending, UpdatedAt: old},
		{UUID: "cccc", ID: "h1-cccc", HostID: "h1", AppID: "app1", ReleaseID: "rel1", State: api.JobStateStarting, UpdatedAt: time.Now()},
		{UUID: "dddd", ID: "h9-dddd", HostID: "h9", AppID: "app1", ReleaseID: "rel1", Type: "web", State: api.JobStateUp, UpdatedAt: old},
	} {
		ctl.PutJob(context.Background(), j)
	}
	ctl.setFormation(webFormation(1))
	runScheduler(t, c, ctl, nil)
	waitFor(t, "the web job", func() bool { return len(c.running()) == 1 })
	waitFor(t, "the stale records down", func() bool {
		for _, id := range []string{"h1-aaaa", "h9-dddd"} {
			if j := ctl.jobByID(id); j == nil || j.State != api.JobStateDown {
				return false
			}
		}
		return len(ctl.findJobs(func(j *api.Job) bool { return j.UUID == "bbbb" && j.State == api.JobStateDown })) == 1
	})
	if j := ctl.jobByID("h1-aaaa"); j.ExitStatus == nil || *j.ExitStatus != -1 || j.HostError == nil {
		t.Errorf("the ended job's record = %+v, want its exit status and error from the host", j)
	}
	if j := ctl.jobByID("h1-cccc"); j.State != api.JobStateStarting {
		t.Errorf("the recent one-off's record = %s, want it left starting", j.State)
	}
}
