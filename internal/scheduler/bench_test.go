package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// simCluster builds 1,000 hosts (a tenth tagged disk=ssd) and 100 apps
// wanting 10,000 jobs in all: web=80 and worker=19 with memory requests,
// plus one omni type on the ssd hosts (100 jobs).
func simCluster() ([]*api.Host, []*api.ExpandedFormation) {
	var hosts []*api.Host
	for i := range 1000 {
		h := host(fmt.Sprintf("host%04d", i), 64<<30)
		if i%10 == 0 {
			h.Tags = map[string]string{"disk": "ssd"}
		}
		hosts = append(hosts, h)
	}
	var forms []*api.ExpandedFormation
	for i := range 100 {
		procs := map[string]*api.ProcessType{
			"web":    {Resources: mem(256 << 20)},
			"worker": {Resources: mem(512 << 20)},
		}
		counts := map[string]int{"web": 80, "worker": 19}
		f := formation(fmt.Sprintf("app%03d", i), "rel1", procs, counts)
		if i == 0 {
			procs["agent"] = &api.ProcessType{Omni: true}
			counts["agent"] = 1
			f.Tags = map[string]map[string]string{"agent": {"disk": "ssd"}}
		}
		forms = append(forms, f)
	}
	return hosts, forms
}

// converged returns the jobs of a fully placed simCluster.
func converged(b *testing.B) ([]*api.Host, []*api.ExpandedFormation, []*Job) {
	hosts, forms := simCluster()
	plan := Place(&Snapshot{Now: t0, Hosts: hosts, Formations: forms}, counter())
	if len(plan.Start) != 10000 || len(plan.Blocked) != 0 {
		b.Fatalf("placed %d jobs (%d blocked), want 10000", len(plan.Start), len(plan.Blocked))
	}
	for _, j := range plan.Start {
		j.State = api.JobStateUp
	}
	return hosts, forms, plan.Start
}

// BenchmarkPlace places 10,000 jobs on 1,000 empty hosts.
func BenchmarkPlace(b *testing.B) {
	hosts, forms := simCluster()
	b.ReportAllocs()
	for b.Loop() {
		plan := Place(&Snapshot{Now: t0, Hosts: hosts, Formations: forms}, counter())
		if len(plan.Start) != 10000 {
			b.Fatalf("placed %d", len(plan.Start))
		}
	}
}

// BenchmarkPlaceConverged checks 10,000 placed jobs on 1,000 hosts
// against their formations (nothing to do).
func BenchmarkPlaceConverged(b *testing.B) {
	hosts, forms, jobs := converged(b)
	b.ReportAllocs()
	for b.Loop() {
		plan := Place(&Snapshot{Now: t0, Hosts: hosts, Formations: forms, Jobs: jobs}, counter())
		if n := len(plan.Start) + len(plan.Stop) + len(plan.Blocked) + len(plan.Cancel); n != 0 {
			b.Fatalf("plan has %d actions, want none", n)
		}
	}
}

type nopCluster struct{}

func (nopCluster) ListHosts(context.Context) ([]*api.Host, error)                    { return nil, nil }
func (nopCluster) StreamHosts(ctx context.Context, fn func(HostEvent)) error         { return nil }
func (nopCluster) ListJobs(context.Context, string) ([]*api.ActiveJob, error)        { return nil, nil }
func (nopCluster) StreamJobs(context.Context, string, func(*api.HostJobEvent)) error { return nil }
func (nopCluster) AddJob(context.Context, string, *api.HostJob) error                { return nil }
func (nopCluster) StopJob(context.Context, string, string) error                     { return nil }

type nopController struct{}

func (nopController) ListFormations(context.Context) ([]*api.ExpandedFormation, error) {
	return nil, nil
}
func (nopController) StreamFormations(context.Context, func(*api.ExpandedFormation)) error {
	return nil
}
func (nopController) PutJob(context.Context, *api.Job) error { return nil }

// benchLoop is a loop holding hosts and formations, and jobs when given.
func benchLoop(hosts []*api.Host, forms []*api.ExpandedFormation, jobs []*Job) *loop {
	l := newLoop(Config{Cluster: nopCluster{}, Controller: nopController{}, Clock: fixedClock{}, Parallel: 32}, testLogger())
	for _, h := range hosts {
		l.hosts[h.ID] = &hostState{host: h, synced: true}
	}
	for _, f := range forms {
		l.formations[FormationKey(f.App.ID, f.Release.ID)] = f
	}
	for _, j := range jobs {
		c := j.clone()
		l.jobs[c.UUID] = c
		l.byID[c.ID] = c
	}
	return l
}

// fixedClock stays at t0.
type fixedClock struct{}

func (fixedClock) Now() time.Time                       { return t0 }
func (fixedClock) After(time.Duration) <-chan time.Time { return nil }

// BenchmarkReconcileStart is one reconcile pass of the loop from empty
// hosts: place 10,000 jobs, record them and call AddJob for each (on a
// cluster that does nothing).
func BenchmarkReconcileStart(b *testing.B) {
	hosts, forms := simCluster()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		l := benchLoop(hosts, forms, nil)
		ctx, cancel := context.WithCancel(context.Background())
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for {
				select {
				case <-l.events:
				case <-ctx.Done():
					return
				}
			}
		}()
		b.StartTimer()
		l.rectify(ctx)
		l.wg.Wait()
		b.StopTimer()
		cancel()
		<-drained
		if len(l.jobs) != 10000 {
			b.Fatalf("tracking %d jobs", len(l.jobs))
		}
		b.StartTimer()
	}
}

// BenchmarkReconcileConverged is one reconcile pass of the loop over
// 10,000 running jobs on 1,000 hosts with nothing to change.
func BenchmarkReconcileConverged(b *testing.B) {
	hosts, forms, jobs := converged(b)
	l := benchLoop(hosts, forms, jobs)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l.rectify(ctx)
	}
	if len(l.inflight) != 0 {
		b.Fatalf("%d operations started", len(l.inflight))
	}
}
