package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// fakeCluster is an in-memory Cluster whose hosts "run" jobs at once.
type fakeCluster struct {
	mu       sync.Mutex
	hosts    map[string]*fakeHost
	hostSubs map[chan HostEvent]bool
	// adds counts AddJob calls; dupes counts AddJob calls for an id the
	// host already had.
	adds, dupes int
	// crashOnStart makes jobs whose host job satisfies it crash as soon
	// as they start.
	crashOnStart func(*api.HostJob) bool
	// log records drains and stops in order.
	log []string
}

type fakeHost struct {
	host *api.Host
	jobs map[string]*api.ActiveJob
	subs map[chan *api.HostJobEvent]bool
}

func newFakeCluster(hosts ...*api.Host) *fakeCluster {
	c := &fakeCluster{hosts: make(map[string]*fakeHost), hostSubs: make(map[chan HostEvent]bool)}
	for _, h := range hosts {
		c.addHost(h)
	}
	return c
}

func (c *fakeCluster) addHost(h *api.Host) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts[h.ID] = &fakeHost{host: h, jobs: make(map[string]*api.ActiveJob), subs: make(map[chan *api.HostJobEvent]bool)}
	for ch := range c.hostSubs {
		ch <- HostEvent{Up: true, Host: h}
	}
}

// removeHost kills a host: its streams break and it is reported down.
func (c *fakeCluster) removeHost(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fh := c.hosts[id]
	delete(c.hosts, id)
	for ch := range fh.subs {
		close(ch)
	}
	for ch := range c.hostSubs {
		ch <- HostEvent{Up: false, Host: fh.host}
	}
}

func (c *fakeCluster) ListHosts(ctx context.Context) ([]*api.Host, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.Host
	for _, fh := range c.hosts {
		out = append(out, fh.host)
	}
	return out, nil
}

func (c *fakeCluster) StreamHosts(ctx context.Context, fn func(HostEvent)) error {
	ch := make(chan HostEvent, 1024)
	c.mu.Lock()
	c.hostSubs[ch] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.hostSubs, ch)
		c.mu.Unlock()
	}()
	for {
		select {
		case ev := <-ch:
			fn(ev)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *fakeCluster) host(id string) (*fakeHost, error) {
	fh := c.hosts[id]
	if fh == nil {
		return nil, fmt.Errorf("host %s: connection refused", id)
	}
	return fh, nil
}

func (c *fakeCluster) ListJobs(ctx context.Context, hostID string) ([]*api.ActiveJob, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fh, err := c.host(hostID)
	if err != nil {
		return nil, err
	}
	var out []*api.ActiveJob
	for _, aj := range fh.jobs {
		cp := *aj
		out = append(out, &cp)
	}
	return out, nil
}

func (c *fakeCluster) StreamJobs(ctx context.Context, hostID string, fn func(*api.HostJobEvent)) error {
	ch := make(chan *api.HostJobEvent, 4096)
	c.mu.Lock()
	fh, err := c.host(hostID)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	fh.subs[ch] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if fh.subs[ch] {
			delete(fh.subs, ch)
		}
		c.mu.Unlock()
	}()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return errors.New("host went away")
			}
			fn(ev)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// emit sends an event about aj to the host's subscribers; c.mu is held.
func (fh *fakeHost) emit(event string, aj *api.ActiveJob) {
	cp := *aj
	for ch := range fh.subs {
		ch <- &api.HostJobEvent{Event: event, JobID: aj.Job.ID, Job: &cp}
	}
}

func (c *fakeCluster) AddJob(ctx context.Context, hostID string, job *api.HostJob) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	fh, err := c.host(hostID)
	if err != nil {
		return err
	}
	c.adds++
	if fh.jobs[job.ID] != nil {
		c.dupes++
		return fmt.Errorf("job %s: %w", job.ID, api.ErrConflict)
	}
	aj := &api.ActiveJob{Job: job, HostID: hostID, Status: api.HostJobRunning, StartedAt: time.Now()}
	fh.jobs[job.ID] = aj
	fh.emit(api.HostEventStart, aj)
	if c.crashOnStart != nil && c.crashOnStart(job) {
		c.end(fh, aj, api.HostJobCrashed, 1)
	}
	return nil
}

func (c *fakeCluster) end(fh *fakeHost, aj *api.ActiveJob, status string, code int) {
	aj.Status = status
	aj.ExitStatus = &code
	fh.emit(api.HostEventStop, aj)
}

func (c *fakeCluster) StopJob(ctx context.Context, hostID, jobID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log = append(c.log, "stop "+jobID)
	fh, err := c.host(hostID)
	if err != nil {
		return err
	}
	aj := fh.jobs[jobID]
	if aj == nil {
		return api.ErrNotFound
	}
	if aj.Status == api.HostJobRunning {
		c.end(fh, aj, api.HostJobDone, 0)
	}
	return nil
}

func (c *fakeCluster) Drain(ctx context.Context, hostID, jobID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log = append(c.log, "drain "+jobID)
	return nil
}

// crash makes a running job exit with status 1.
func (c *fakeCluster) crash(hostID, jobID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fh := c.hosts[hostID]
	c.end(fh, fh.jobs[jobID], api.HostJobCrashed, 1)
}

// runJob starts a job on a host outside the scheduler (a one-off).
func (c *fakeCluster) runJob(hostID string, job *api.HostJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fh := c.hosts[hostID]
	aj := &api.ActiveJob{Job: job, HostID: hostID, Status: api.HostJobRunning, StartedAt: time.Now()}
	fh.jobs[job.ID] = aj
	fh.emit(api.HostEventStart, aj)
}

// running lists running jobs as "host type id", sorted.
func (c *fakeCluster) running() []runningJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []runningJob
	for _, fh := range c.hosts {
		for _, aj := range fh.jobs {
			if aj.Status == api.HostJobRunning {
				out = append(out, runningJob{fh.host.ID, aj.Job.Metadata[api.JobMetaRelease], aj.Job.Metadata[api.JobMetaProcessType], aj.Job.ID})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

type runningJob struct{ host, release, typ, id string }

func (c *fakeCluster) counts() (adds, dupes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.adds, c.dupes
}

// fakeController is an in-memory Controller.
type fakeController struct {
	mu         sync.Mutex
	formations map[string]*api.ExpandedFormation
	subs       map[chan *api.ExpandedFormation]bool
	jobs       map[string]*api.Job // by UUID
	jobSubs    map[chan *api.Job]bool

	releases     map[string]*api.Release
	apps         map[string]*api.App
	deployEvents []api.DeploymentEvent
}

func newFakeController() *fakeController {
	return &fakeController{
		formations: make(map[string]*api.ExpandedFormation),
		subs:       make(map[chan *api.ExpandedFormation]bool),
		jobs:       make(map[string]*api.Job),
		jobSubs:    make(map[chan *api.Job]bool),
	}
}

func (c *fakeController) setFormation(f *api.ExpandedFormation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *f
	c.formations[FormationKey(f.App.ID, f.Release.ID)] = &cp
	for ch := range c.subs {
		ch <- &cp
	}
}

func (c *fakeController) ListFormations(ctx context.Context) ([]*api.ExpandedFormation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.ExpandedFormation
	for _, f := range c.formations {
		out = append(out, f)
	}
	return out, nil
}

func (c *fakeController) StreamFormations(ctx context.Context, fn func(*api.ExpandedFormation)) error {
	ch := make(chan *api.ExpandedFormation, 1024)
	c.mu.Lock()
	c.subs[ch] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.subs, ch)
		c.mu.Unlock()
	}()
	for {
		select {
		case f := <-ch:
			fn(f)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *fakeController) PutJob(ctx context.Context, j *api.Job) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *j
	c.jobs[j.UUID] = &cp
	for ch := range c.jobSubs {
		ch <- &cp
	}
	return nil
}

// job returns the recorded state of the job with host job id id.
func (c *fakeController) jobByID(id string) *api.Job {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range c.jobs {
		if j.ID == id {
			cp := *j
			return &cp
		}
	}
	return nil
}

func (c *fakeController) findJobs(pred func(*api.Job) bool) []*api.Job {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.Job
	for _, j := range c.jobs {
		if pred(j) {
			cp := *j
			out = append(out, &cp)
		}
	}
	return out
}

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
			continue
		}
		keep = append(keep, w)
	}
	c.waiters = keep
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The deployer.Controller half of fakeController, over the same formations
// and jobs the scheduler uses.

func (c *fakeController) addRelease(app *api.App, r *api.Release) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.releases == nil {
		c.releases = make(map[string]*api.Release)
		c.apps = make(map[string]*api.App)
	}
	c.releases[r.ID] = r
	c.apps[app.ID] = app
}

func (c *fakeController) StreamDeployments(ctx context.Context, fn func(*api.Deployment)) error {
	<-ctx.Done()
	return ctx.Err()
}

func (c *fakeController) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.releases[id]; r != nil {
		return r, nil
	}
	return nil, api.ErrNotFound
}

func (c *fakeController) GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.formations[FormationKey(appID, releaseID)]
	if f == nil {
		return nil, api.ErrNotFound
	}
	return &api.Formation{AppID: appID, ReleaseID: releaseID, Processes: maps.Clone(f.Processes), Tags: f.Tags}, nil
}

func (c *fakeController) PutFormation(ctx context.Context, f *api.Formation) error {
	c.mu.Lock()
	app, rel := c.apps[f.AppID], c.releases[f.ReleaseID]
	c.mu.Unlock()
	if app == nil || rel == nil {
		return api.ErrNotFound
	}
	c.setFormation(&api.ExpandedFormation{App: app, Release: rel, Processes: maps.Clone(f.Processes), Tags: f.Tags})
	return nil
}

func (c *fakeController) StreamJobs(ctx context.Context, appID string, fn func(*api.Job)) error {
	ch := make(chan *api.Job, 4096)
	c.mu.Lock()
	var current []*api.Job
	for _, j := range c.jobs {
		if j.AppID == appID {
			current = append(current, j)
		}
	}
	c.jobSubs[ch] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.jobSubs, ch)
		c.mu.Unlock()
	}()
	for _, j := range current {
		fn(j)
	}
	for {
		select {
		case j := <-ch:
			if j.AppID == appID {
				fn(j)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *fakeController) UpdateDeployment(ctx context.Context, d *api.Deployment) error { return nil }

func (c *fakeController) AddDeploymentEvent(ctx context.Context, e *api.DeploymentEvent) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deployEvents = append(c.deployEvents, *e)
	return nil
}

func (c *fakeController) SetAppRelease(ctx context.Context, appID, releaseID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apps[appID].ReleaseID = releaseID
	return nil
}

// ListActiveJobs implements JobRecords.
func (c *fakeController) ListActiveJobs(ctx context.Context) ([]*api.Job, error) {
	return c.findJobs(func(j *api.Job) bool { return j.State != api.JobStateDown }), nil
}

// endedJob puts a job that has ended on a host, as a host keeps it after
// its supervisor died in a power loss.
func (c *fakeCluster) endedJob(hostID string, job *api.HostJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	code := -1
	msg := "the job's supervisor is gone"
	c.hosts[hostID].jobs[job.ID] = &api.ActiveJob{Job: job, HostID: hostID, Status: api.HostJobFailed, ExitStatus: &code, Error: &msg}
}
