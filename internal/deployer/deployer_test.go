package deployer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

// simController is an in-memory Controller with a built-in instant
// scheduler: putting a formation starts or stops its jobs at once.
type simController struct {
	mu          sync.Mutex
	releases    map[string]*api.Release
	formations  map[string]*api.Formation // by app/release
	jobs        map[string]*api.Job       // by UUID
	order       []string                  // job UUIDs in creation order
	subs        map[chan *api.Job]string  // → app
	events      []string
	deployments map[string]*api.Deployment
	appRelease  map[string]string
	crash       map[string]bool // release → its jobs exit at once
	block       map[string]bool // release → its jobs stay blocked
	pending     []*api.Deployment
	n           int
}

func newSim() *simController {
	return &simController{
		releases:    make(map[string]*api.Release),
		formations:  make(map[string]*api.Formation),
		jobs:        make(map[string]*api.Job),
		subs:        make(map[chan *api.Job]string),
		deployments: make(map[string]*api.Deployment),
		appRelease:  make(map[string]string),
		crash:       make(map[string]bool),
		block:       make(map[string]bool),
	}
}

func (c *simController) record(j *api.Job) {
	cp := *j
	c.jobs[j.UUID] = &cp
	for ch, app := range c.subs {
		if app == j.AppID {
			ch <- &cp
		}
	}
}

func (c *simController) PutFormation(ctx context.Context, f *api.Formation) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *f
	cp.Processes = maps.Clone(f.Processes)
	c.formations[f.AppID+"/"+f.ReleaseID] = &cp
	types := maps.Clone(f.Processes)
	if types == nil {
		types = make(map[string]int)
	}
	for _, j := range c.jobs {
		if j.AppID == f.AppID && j.ReleaseID == f.ReleaseID {
			types[j.Type] += 0
		}
	}
	for _, typ := range slices.Sorted(maps.Keys(types)) {
		var active []*api.Job
		for _, uuid := range c.order {
			j := c.jobs[uuid]
			if j.AppID == f.AppID && j.ReleaseID == f.ReleaseID && j.Type == typ && j.State != api.JobStateDown {
				active = append(active, j)
			}
		}
		want := f.Processes[typ]
		for i := len(active); i < want; i++ {
			c.n++
			j := &api.Job{UUID: fmt.Sprintf("u%d", c.n), ID: fmt.Sprintf("h1-u%d", c.n), AppID: f.AppID, ReleaseID: f.ReleaseID, Type: typ}
			c.order = append(c.order, j.UUID)
			switch {
			case c.block[f.ReleaseID]:
				j.State = api.JobStateBlocked
				c.record(j)
			case c.crash[f.ReleaseID]:
				j.State = api.JobStateStarting
				c.record(j)
				j.State = api.JobStateDown
				code := int32(1)
				j.ExitStatus = &code
				c.record(j)
			default:
				j.State = api.JobStateStarting
				c.record(j)
				j.State = api.JobStateUp
				c.record(j)
			}
		}
		// Stop the newest first.
		for i := len(active) - 1; i >= want; i-- {
			j := *active[i]
			j.State = api.JobStateStopping
			c.record(&j)
			j.State = api.JobStateDown
			c.record(&j)
		}
	}
	return nil
}

func (c *simController) StreamJobs(ctx context.Context, appID string, fn func(*api.Job)) error {
	ch := make(chan *api.Job, 4096)
	c.mu.Lock()
	var current []*api.Job
	for _, uuid := range c.order {
		if j := c.jobs[uuid]; j.AppID == appID {
			current = append(current, j)
		}
	}
	c.subs[ch] = appID
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.subs, ch)
		c.mu.Unlock()
	}()
	for _, j := range current {
		fn(j)
	}
	for {
		select {
		case j := <-ch:
			fn(j)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *simController) ListJobs(ctx context.Context, appID string) ([]*api.Job, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.Job
	for _, uuid := range c.order {
		if j := c.jobs[uuid]; j.AppID == appID {
			cp := *j
			out = append(out, &cp)
		}
	}
	return out, nil
}

func (c *simController) StreamDeployments(ctx context.Context, fn func(*api.Deployment)) error {
	c.mu.Lock()
	pending := slices.Clone(c.pending)
	c.mu.Unlock()
	for _, d := range pending {
		fn(d)
	}
	<-ctx.Done()
	return ctx.Err()
}

func (c *simController) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.releases[id]; r != nil {
		return r, nil
	}
	return nil, api.ErrNotFound
}

func (c *simController) GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.formations[appID+"/"+releaseID]; f != nil {
		cp := *f
		cp.Processes = maps.Clone(f.Processes)
		return &cp, nil
	}
	return nil, api.ErrNotFound
}

func (c *simController) UpdateDeployment(ctx context.Context, d *api.Deployment) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *d
	c.deployments[d.ID] = &cp
	if d.Status == api.DeploymentComplete {
		// The controller records a complete event with the status.
		c.events = append(c.events, "complete "+d.NewReleaseID)
	}
	return nil
}

func (c *simController) AddDeploymentEvent(ctx context.Context, e *api.DeploymentEvent) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	line := strings.Join(slices.DeleteFunc([]string{e.Status, e.ReleaseID, e.JobType, e.JobState}, func(s string) bool { return s == "" }), " ")
	if e.Error != "" {
		line += ": " + e.Error
	}
	c.events = append(c.events, line)
	return nil
}

func (c *simController) SetAppRelease(ctx context.Context, appID, releaseID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.appRelease[appID] = releaseID
	return nil
}

// running counts the app's non-down jobs per "release type".
func (c *simController) running(appID string) map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int)
	for _, j := range c.jobs {
		if j.AppID == appID && j.State != api.JobStateDown {
			m[j.ReleaseID+" "+j.Type]++
		}
	}
	return m
}

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// setup makes app a1 with release r1 running web=2, worker=1 and release r2.
func setup(t *testing.T) (*simController, *Deployer) {
	t.Helper()
	c := newSim()
	procs := map[string]*api.ProcessType{"web": {}, "worker": {}}
	c.releases["r1"] = &api.Release{ID: "r1", AppID: "a1", Processes: procs}
	c.releases["r2"] = &api.Release{ID: "r2", AppID: "a1", Processes: procs}
	if err := c.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: map[string]int{"web": 2, "worker": 1}}); err != nil {
		t.Fatal(err)
	}
	c.appRelease["a1"] = "r1"
	d, err := New(Config{Controller: c}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return c, d
}

func TestDeployStrategies(t *testing.T) {
	tests := []struct {
		strategy string
		batch    int
		want     []string
	}{
		{api.StrategyAllAtOnce, 0, []string{
			"running r2",
			"running r2 web up", "running r2 web up", "running r2 worker up",
			"running r1 web down", "running r1 web down", "running r1 worker down",
			"complete r2",
		}},
		{"", 0, []string{ // the default is all-at-once
			"running r2",
			"running r2 web up", "running r2 web up", "running r2 worker up",
			"running r1 web down", "running r1 web down", "running r1 worker down",
			"complete r2",
		}},
		{api.StrategyOneByOne, 0, []string{
			"running r2",
			"running r2 web up", "running r1 web down",
			"running r2 web up", "running r1 web down",
			"running r2 worker up", "running r1 worker down",
			"complete r2",
		}},
		{api.StrategyInBatches, 2, []string{
			"running r2",
			"running r2 web up", "running r2 web up", "running r1 web down", "running r1 web down",
			"running r2 worker up", "running r1 worker down",
			"complete r2",
		}},
		{api.StrategyInBatches, 0, []string{ // no batch size: batches of one
			"running r2",
			"running r2 web up", "running r1 web down",
			"running r2 web up", "running r1 web down",
			"running r2 worker up", "running r1 worker down",
			"complete r2",
		}},
		{api.StrategyOneDownOneUp, 0, []string{
			"running r2",
			"running r1 web down", "running r2 web up",
			"running r1 web down", "running r2 web up",
			"running r1 worker down", "running r2 worker up",
			"complete r2",
		}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s batch %d", cmpOr(tt.strategy, "default"), tt.batch), func(t *testing.T) {
			c, d := setup(t)
			dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Strategy: tt.strategy, Status: api.DeploymentPending}
			if tt.batch > 0 {
				dep.DeployBatchSize = &tt.batch
			}
			if err := d.Deploy(context.Background(), dep); err != nil {
				t.Fatalf("Deploy: %v", err)
			}
			if diff := cmp.Diff(tt.want, c.events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[string]int{"r2 web": 2, "r2 worker": 1}, c.running("a1")); diff != "" {
				t.Errorf("jobs (-want +got):\n%s", diff)
			}
			if got := c.deployments["d1"]; got.Status != api.DeploymentComplete || got.FinishedAt == nil {
				t.Errorf("deployment = %+v, want complete with finish time", got)
			}
			if c.appRelease["a1"] != "r2" {
				t.Errorf("app release = %q, want r2", c.appRelease["a1"])
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestDeployFailureRestoresOldFormation(t *testing.T) {
	tests := []struct {
		name     string
		strategy string
		crash    bool
		timeout  int32
		events   []string
	}{
		{"crash all-at-once", api.StrategyAllAtOnce, true, 0, []string{
			"running r2",
			"running r2 web down: exited with status 1",
			"failed r2: a web job of release r2 exited with status 1",
		}},
		{"crash one-by-one", api.StrategyOneByOne, true, 0, []string{
			"running r2",
			"running r2 web down: exited with status 1",
			"failed r2: a web job of release r2 exited with status 1",
		}},
		{"timeout", api.StrategyAllAtOnce, false, 1, []string{
			"running r2",
			"failed r2: deployment timed out after 1s",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, d := setup(t)
			if tt.crash {
				c.crash["r2"] = true
			} else {
				c.block["r2"] = true
			}
			dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Strategy: tt.strategy, DeployTimeout: tt.timeout}
			if err := d.Deploy(context.Background(), dep); err == nil {
				t.Fatal("Deploy succeeded, want failure")
			}
			if diff := cmp.Diff(tt.events, c.events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[string]int{"r1 web": 2, "r1 worker": 1}, c.running("a1")); diff != "" {
				t.Errorf("jobs after rollback (-want +got):\n%s", diff)
			}
			old, _ := c.GetFormation(context.Background(), "a1", "r1")
			if diff := cmp.Diff(map[string]int{"web": 2, "worker": 1}, old.Processes); diff != "" {
				t.Errorf("old formation (-want +got):\n%s", diff)
			}
			nf, _ := c.GetFormation(context.Background(), "a1", "r2")
			if n := nf.Processes["web"] + nf.Processes["worker"]; n != 0 {
				t.Errorf("new formation %v, want scaled to zero", nf.Processes)
			}
			if got := c.deployments["d1"]; got.Status != api.DeploymentFailed {
				t.Errorf("deployment status = %q, want failed", got.Status)
			}
			if c.appRelease["a1"] != "r1" {
				t.Errorf("app release = %q, want r1", c.appRelease["a1"])
			}
		})
	}
}

// fakeDiscoverd registers instances only when told.
type fakeDiscoverd struct {
	mu   sync.Mutex
	up   map[string]chan struct{}
	asks chan string
}

func (f *fakeDiscoverd) ch(jobID string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.up[jobID] == nil {
		f.up[jobID] = make(chan struct{})
	}
	return f.up[jobID]
}

func (f *fakeDiscoverd) WaitInstance(ctx context.Context, service, jobID string) error {
	f.asks <- service + " " + jobID
	select {
	case <-f.ch(jobID):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestDeployWaitsForDiscoverd(t *testing.T) {
	c := newSim()
	c.releases["r1"] = &api.Release{ID: "r1", AppID: "a1", Processes: map[string]*api.ProcessType{"web": {}}}
	c.releases["r2"] = &api.Release{ID: "r2", AppID: "a1", Processes: map[string]*api.ProcessType{"web": {
		Ports: []api.Port{{Port: 8080, Service: &api.Service{Name: "a1-web", Check: &api.HealthCheck{Type: "http"}}}},
	}}}
	c.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: map[string]int{"web": 1}})
	disc := &fakeDiscoverd{up: make(map[string]chan struct{}), asks: make(chan string, 10)}
	d, err := New(Config{Controller: c, Discoverd: disc}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- d.Deploy(context.Background(), &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2"})
	}()
	ask := <-disc.asks
	if ask != "a1-web h1-u2" {
		t.Fatalf("waited for %q, want a1-web h1-u2", ask)
	}
	// Until the instance registers, the old job keeps running.
	if got := c.running("a1"); got["r1 web"] != 1 {
		t.Fatalf("old job stopped before the new one registered: %v", got)
	}
	close(disc.ch("h1-u2"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("deployment did not finish")
	}
	if diff := cmp.Diff(map[string]int{"r2 web": 1}, c.running("a1")); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
}

func TestRunDeploysPending(t *testing.T) {
	c, d := setup(t)
	c.pending = []*api.Deployment{
		{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending},
		{ID: "done", AppID: "a1", Status: api.DeploymentComplete},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.mu.Lock()
		dep := c.deployments["d1"]
		c.mu.Unlock()
		if dep != nil && dep.Status == api.DeploymentComplete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pending deployment was not run")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, ok := c.deployments["done"]; ok {
		t.Error("a complete deployment was run again")
	}
}

// TestRunTakesUpRunning: a deployment left running by a deployer that
// stopped part way (killed, or no longer the leader) is taken up by the
// next one from where it stands, and a failure then restores the old
// formation as it was before the deployment, not as it was left.
func TestRunTakesUpRunning(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			c, d := setup(t)
			bg := context.Background()
			// Left part way through all-at-once: one new web job up, the
			// old formation part-scaled down.
			c.PutFormation(bg, &api.Formation{AppID: "a1", ReleaseID: "r2", Processes: map[string]int{"web": 1}})
			c.PutFormation(bg, &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: map[string]int{"web": 1, "worker": 1}})
			if fail {
				c.crash["r2"] = true
			}
			c.pending = []*api.Deployment{{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2",
				Processes: map[string]int{"web": 2, "worker": 1}, Status: api.DeploymentRunning}}
			ctx, cancel := context.WithCancel(bg)
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			waitCond(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				dep := c.deployments["d1"]
				return dep != nil && (dep.Status == api.DeploymentComplete || dep.Status == api.DeploymentFailed)
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			want, status, rel := map[string]int{"r2 web": 2, "r2 worker": 1}, api.DeploymentComplete, "r2"
			if fail {
				want, status, rel = map[string]int{"r1 web": 2, "r1 worker": 1}, api.DeploymentFailed, "r1"
			}
			if got := c.deployments["d1"].Status; got != status {
				t.Errorf("deployment status = %q, want %q", got, status)
			}
			if diff := cmp.Diff(want, c.running("a1")); diff != "" {
				t.Errorf("jobs (-want +got):\n%s", diff)
			}
			if c.appRelease["a1"] != rel {
				t.Errorf("app release = %q, want %q", c.appRelease["a1"], rel)
			}
		})
	}
}

// TestDeployToReleaseThatRanBefore: rolling back to a release whose jobs
// ended before the deployment (they are in the app's job history) deploys
// it; those old ends are not crashes of the new jobs.
func TestDeployToReleaseThatRanBefore(t *testing.T) {
	c, d := setup(t)
	c.mu.Lock()
	for i, uuid := range []string{"old-r2-a", "old-r2-b"} {
		status := int32(143)
		j := &api.Job{UUID: uuid, ID: "h-" + uuid, AppID: "a1", ReleaseID: "r2", Type: "web", State: api.JobStateDown,
			ExitStatus: &status, UpdatedAt: time.Now().Add(-time.Duration(i+1) * time.Minute)}
		c.jobs[uuid] = j
		c.order = append(c.order, uuid)
	}
	c.mu.Unlock()
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending, CreatedAt: time.Now()}
	if err := d.Deploy(context.Background(), dep); err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	if got := c.deployments["d1"]; got.Status != api.DeploymentComplete {
		t.Fatalf("deployment = %+v, want complete", got)
	}
}

// scaleSim is a simController that also hands out scale requests.
type scaleSim struct {
	*simController
	reqs      chan *api.ScaleRequest
	completed chan *api.ScaleRequest
	// atComplete, when set, runs as a request is completed.
	atComplete func(*api.ScaleRequest)
}

func newScaleSim() *scaleSim {
	return &scaleSim{simController: newSim(), reqs: make(chan *api.ScaleRequest, 4), completed: make(chan *api.ScaleRequest, 4)}
}

// runDeployer runs d until the test ends.
func runDeployer(t *testing.T, d *Deployer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func (s *scaleSim) StreamScaleRequests(ctx context.Context, fn func(*api.ScaleRequest)) error {
	for {
		select {
		case r := <-s.reqs:
			fn(r)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *scaleSim) CompleteScaleRequest(ctx context.Context, req *api.ScaleRequest) error {
	if s.atComplete != nil {
		s.atComplete(req)
	}
	s.completed <- req
	return nil
}

// TestScaleRequestCompletesWhenServing: a scale request is complete once
// the formation runs the jobs asked for and each one with a service is
// registered in discoverd, not merely up; a cancelled request is dropped.
func TestScaleRequestCompletesWhenServing(t *testing.T) {
	sim := newScaleSim()
	sim.releases["r1"] = &api.Release{ID: "r1", AppID: "a1", Processes: map[string]*api.ProcessType{
		"web":    {Ports: []api.Port{{Port: 8080, Service: &api.Service{Name: "a1-web"}}}},
		"worker": {},
	}}
	disc := &fakeDiscoverd{up: make(map[string]chan struct{}), asks: make(chan string, 10)}
	var registered []string
	var regMu sync.Mutex
	sim.atComplete = func(req *api.ScaleRequest) {
		regMu.Lock()
		defer regMu.Unlock()
		if len(registered) != 2 {
			t.Errorf("scale request %s completed with %d of 2 web jobs registered", req.ID, len(registered))
		}
	}
	d, err := New(Config{Controller: sim, Discoverd: disc}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	runDeployer(t, d)

	// The controller applies the request to the formation as it records it.
	newProcs := map[string]int{"web": 2, "worker": 1}
	req := &api.ScaleRequest{ID: "s1", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestPending, NewProcesses: &newProcs}
	if err := sim.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: newProcs}); err != nil {
		t.Fatal(err)
	}
	sim.reqs <- req
	asked := map[string]bool{}
	for len(asked) < 2 {
		select {
		case a := <-disc.asks:
			asked[a] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("waited for 2 discoverd registrations to be awaited; saw %v", asked)
		}
	}
	for a := range asked {
		job := strings.TrimPrefix(a, "a1-web ")
		regMu.Lock()
		registered = append(registered, job)
		regMu.Unlock()
		close(disc.ch(job))
	}
	select {
	case got := <-sim.completed:
		if got.ID != "s1" {
			t.Fatalf("completed %s, want s1", got.ID)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("scale request s1 not completed after its jobs registered (jobs: %v)", sim.running("a1"))
	}

	// Scaling down completes once the surplus jobs are gone; a request
	// cancelled while pending is not completed.
	blocked := map[string]int{"worker": 3}
	sim.block["r1"] = true
	req2 := &api.ScaleRequest{ID: "s2", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestPending, OldProcesses: newProcs, NewProcesses: &blocked}
	sim.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: map[string]int{"web": 2, "worker": 3}})
	sim.reqs <- req2
	down := map[string]int{"web": 1, "worker": 0}
	sim.block["r1"] = false
	sim.reqs <- &api.ScaleRequest{ID: "s2", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestCancelled}
	req3 := &api.ScaleRequest{ID: "s3", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestPending, OldProcesses: map[string]int{"web": 2, "worker": 3}, NewProcesses: &down}
	sim.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: down})
	sim.reqs <- req3
	select {
	case got := <-sim.completed:
		if got.ID != "s3" {
			t.Fatalf("completed %s, want s3 (s2 was cancelled)", got.ID)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("scale request s3 not completed (jobs: %v)", sim.running("a1"))
	}
	if diff := cmp.Diff(map[string]int{"r1 web": 1}, sim.running("a1")); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
}

func (s *scaleSim) FailScaleRequest(ctx context.Context, req *api.ScaleRequest, reason string) error {
	cp := *req
	cp.State, cp.Error = api.ScaleRequestFailed, reason
	s.completed <- &cp
	return nil
}

// TestScaleRequestFailsOnCrashLoop: a scale request whose new jobs keep
// crashing fails after three crashes, saying which type and how the last
// ended, rather than waiting out its timeout; jobs stopped on purpose
// (stopping, then down) are not crashes.
func TestScaleRequestFailsOnCrashLoop(t *testing.T) {
	sim := newScaleSim()
	sim.releases["r1"] = &api.Release{ID: "r1", AppID: "a1", Processes: map[string]*api.ProcessType{"web": {}}}
	d, err := New(Config{Controller: sim}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	runDeployer(t, d)
	procs := map[string]int{"web": 1}
	sim.crash["r1"] = true // its first job is down before the deployer looks
	sim.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: procs})
	sim.reqs <- &api.ScaleRequest{ID: "s1", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestPending, NewProcesses: &procs}
	// Once the deployer follows the app's jobs: one job stopped on
	// purpose, then crash after crash (as the scheduler restarts them).
	deadline := time.Now().Add(20 * time.Second)
	for {
		sim.mu.Lock()
		n := len(sim.subs)
		sim.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deployer never followed the app's jobs")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sim.mu.Lock()
	for i, states := range [][]string{
		{api.JobStateStarting, api.JobStateStopping, api.JobStateDown},
		{api.JobStateStarting, api.JobStateDown},
		{api.JobStateStarting, api.JobStateDown},
		{api.JobStateStarting, api.JobStateDown},
	} {
		code := int32(2)
		j := &api.Job{UUID: fmt.Sprintf("c%d", i), ID: fmt.Sprintf("h1-c%d", i), AppID: "a1", ReleaseID: "r1", Type: "web"}
		for _, st := range states {
			j.State = st
			if st == api.JobStateDown {
				j.ExitStatus = &code
			}
			sim.record(j)
		}
	}
	sim.mu.Unlock()
	select {
	case got := <-sim.completed:
		if got.State != api.ScaleRequestFailed || got.Error != "web crashed 3 times; the last exited with status 2" {
			t.Fatalf("scale request ended %s (%q), want failed after 3 crashes", got.State, got.Error)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the scale request neither failed nor completed")
	}
}

// flakyScaleSim is a scaleSim whose release and job listings fail the
// first times they are asked for, as when the controller instance the
// deployer reaches is the one a scale of the controller stops.
type flakyScaleSim struct {
	*scaleSim
	mu                      sync.Mutex
	releaseFails, listFails int
	releaseCalls            int
}

var errUnreachable = fmt.Errorf("dial controller: connection refused")

func (s *flakyScaleSim) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	s.mu.Lock()
	s.releaseCalls++
	fail := s.releaseFails > 0
	s.releaseFails--
	s.mu.Unlock()
	if fail {
		return nil, errUnreachable
	}
	return s.scaleSim.GetRelease(ctx, id)
}

func (s *flakyScaleSim) ListJobs(ctx context.Context, appID string) ([]*api.Job, error) {
	s.mu.Lock()
	fail := s.listFails > 0
	s.listFails--
	s.mu.Unlock()
	if fail {
		return nil, errUnreachable
	}
	return s.scaleSim.ListJobs(ctx, appID)
}

// TestScaleRequestSurvivesUnreachableController: a scale request whose
// release or jobs cannot be read at first (the controller out of reach)
// is still completed once they can, not dropped while it stays pending.
func TestScaleRequestSurvivesUnreachableController(t *testing.T) {
	sim := &flakyScaleSim{scaleSim: newScaleSim(), releaseFails: 2, listFails: 2}
	sim.releases["r1"] = &api.Release{ID: "r1", AppID: "a1", Processes: map[string]*api.ProcessType{"web": {}}}
	d, err := New(Config{Controller: sim, RetryInterval: 10 * time.Millisecond}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	runDeployer(t, d)
	procs := map[string]int{"web": 2}
	sim.PutFormation(context.Background(), &api.Formation{AppID: "a1", ReleaseID: "r1", Processes: procs})
	sim.reqs <- &api.ScaleRequest{ID: "s1", AppID: "a1", ReleaseID: "r1", State: api.ScaleRequestPending, NewProcesses: &procs}
	select {
	case got := <-sim.completed:
		if got.ID != "s1" || got.State == api.ScaleRequestFailed {
			t.Fatalf("scale request %s failed (%q), want s1 completed", got.ID, got.Error)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("scale request s1 not completed after the controller came back")
	}
	sim.mu.Lock()
	defer sim.mu.Unlock()
	if sim.releaseFails > 0 || sim.listFails > 0 {
		t.Errorf("completed without asking again: %d release and %d job listing failures left", sim.releaseFails, sim.listFails)
	}
}

// TestDeploySurvivesUnreachableController: a deployment whose release and
// jobs cannot be read at first (the controller out of reach) is still
// deployed once they can; a release the controller says is not there
// fails it at once.
func TestDeploySurvivesUnreachableController(t *testing.T) {
	c, _ := setup(t)
	flaky := &flakyScaleSim{scaleSim: &scaleSim{simController: c}, releaseFails: 2, listFails: 2}
	d, err := New(Config{Controller: flaky, RetryInterval: 10 * time.Millisecond}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending, CreatedAt: time.Now()}
	if err := d.Deploy(ctx, dep); err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	if got := c.deployments["d1"]; got.Status != api.DeploymentComplete {
		t.Fatalf("deployment = %+v, want complete", got)
	}
	if flaky.releaseFails > 0 || flaky.listFails > 0 {
		t.Errorf("deployed without asking again: %d release and %d job listing failures left", flaky.releaseFails, flaky.listFails)
	}

	calls := flaky.releaseCalls
	dep = &api.Deployment{ID: "d2", AppID: "a1", OldReleaseID: "r2", NewReleaseID: "gone", Status: api.DeploymentPending, CreatedAt: time.Now()}
	if err := d.Deploy(ctx, dep); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("Deploy of a release that is not there: %v, want not found", err)
	}
	if n := flaky.releaseCalls - calls; n != 1 {
		t.Errorf("a release that is not there was asked for %d times, want once", n)
	}
}

// TestRetryWarnsSparingly: a controller request that keeps failing is
// warned of at its first failure and every tenth, and its success after
// retries is said once.
func TestRetryWarnsSparingly(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	d, err := New(Config{Controller: newSim(), RetryInterval: time.Millisecond},
		slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = d.retry(context.Background(), func() error {
		if calls++; calls <= 25 {
			return errors.New("connection refused")
		}
		return nil
	})
	if err != nil || calls != 26 {
		t.Fatalf("retry: %v after %d calls, want success after 26", err, calls)
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if n := strings.Count(out, "controller request failed; retrying"); n != 3 {
		t.Errorf("%d warnings for 25 failures, want 3 (the 1st, 11th, 21st):\n%s", n, out)
	}
	if !strings.Contains(out, "controller request succeeded after retries") || !strings.Contains(out, "failed=25") {
		t.Errorf("no line about the success after 25 failures:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
