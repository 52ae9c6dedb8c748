package deployer

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

// jobSim is a simController that runs one-off jobs: a release command
// exits at once with exit[release] (0 when unset), or, when hold is set,
// stays up until end or DeleteJob.
type jobSim struct {
	*simController
	exit    map[string]int32
	hold    bool
	ran     []*api.NewJob
	deleted []string
}

func (c *jobSim) RunJob(ctx context.Context, appID string, nj *api.NewJob) (*api.Job, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ran = append(c.ran, nj)
	c.n++
	j := &api.Job{UUID: fmt.Sprintf("u%d", c.n), ID: fmt.Sprintf("h1-u%d", c.n), AppID: appID, ReleaseID: nj.ReleaseID, Meta: nj.Meta, State: api.JobStateStarting, CreatedAt: time.Now()}
	c.order = append(c.order, j.UUID)
	c.record(j)
	j.State = api.JobStateUp
	c.record(j)
	if !c.hold {
		code := c.exit[nj.ReleaseID]
		j.State, j.ExitStatus = api.JobStateDown, &code
		c.record(j)
	}
	cp := *j
	return &cp, nil
}

// end ends a running job with an exit status.
func (c *jobSim) end(uuid string, code int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j := *c.jobs[uuid]
	j.State, j.ExitStatus, j.UpdatedAt = api.JobStateDown, &code, time.Now()
	c.record(&j)
}

func (c *jobSim) DeleteJob(ctx context.Context, appID, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deleted = append(c.deleted, id)
	for _, j := range c.jobs {
		if j.ID == id && j.State != api.JobStateDown {
			cp := *j
			code := int32(-1)
			cp.State, cp.ExitStatus = api.JobStateDown, &code
			c.record(&cp)
		}
	}
	return nil
}

// add records a job as it is.
func (c *jobSim) add(j *api.Job) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order = append(c.order, j.UUID)
	c.record(j)
}

// releaseSetup is setup with a release command in r2, run through the
// slug runner as a push's release has it.
func releaseSetup(t *testing.T) (*jobSim, *Deployer) {
	t.Helper()
	sim, _ := setup(t)
	c := &jobSim{simController: sim, exit: make(map[string]int32)}
	r2 := c.releases["r2"]
	r2.Processes = map[string]*api.ProcessType{"web": {}, "worker": {},
		api.ProcessTypeRelease: {Args: []string{"/usr/local/bin/flynn-host", "slugrunner", "start", "release"}}}
	d, err := New(Config{Controller: c}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return c, d
}

var rolled = []string{
	"running r2 web up", "running r2 web up", "running r2 worker up",
	"running r1 web down", "running r1 web down", "running r1 worker down",
	"complete r2",
}

func TestReleasePhaseRunsBeforeTheDeploy(t *testing.T) {
	c, d := releaseSetup(t)
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending}
	if err := d.Deploy(context.Background(), dep); err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	want := append([]string{"running r2", "running r2 release starting", "running r2 release down"}, rolled...)
	if diff := cmp.Diff(want, c.events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if len(c.ran) != 1 {
		t.Fatalf("ran %d jobs, want the release command once", len(c.ran))
	}
	nj := c.ran[0]
	if !slices.Equal(nj.Args, []string{"start", "release"}) || nj.ReleaseID != "r2" || !nj.ReleaseEnv || nj.MountsFrom != api.ProcessTypeRelease ||
		nj.Meta[api.JobMetaReleasePhase] != "true" || nj.Meta[api.JobMetaDeployment] != "d1" || !strings.HasPrefix(nj.Env["DYNO"], "release.") {
		t.Errorf("release command job = %+v", nj)
	}
	if c.appRelease["a1"] != "r2" {
		t.Errorf("app release = %q, want r2", c.appRelease["a1"])
	}
}

func TestReleasePhaseFailureKeepsTheOldRelease(t *testing.T) {
	c, d := releaseSetup(t)
	c.exit["r2"] = 4
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending}
	err := d.Deploy(context.Background(), dep)
	if err == nil || !strings.Contains(err.Error(), "the release command failed (exit status 4): release r2 is not deployed and the app goes on running release r1 (the command's output: flynn log -j h1-u4)") {
		t.Fatalf("Deploy = %v, want the release command's failure", err)
	}
	if diff := cmp.Diff(map[string]int{"r1 web": 2, "r1 worker": 1}, c.running("a1")); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
	if got := c.deployments["d1"]; got.Status != api.DeploymentFailed {
		t.Errorf("deployment status = %q, want failed", got.Status)
	}
	if c.appRelease["a1"] != "r1" {
		t.Errorf("app release = %q, want r1", c.appRelease["a1"])
	}
	if last := c.events[len(c.events)-1]; !strings.HasPrefix(last, "failed r2: the release command failed (exit status 4)") {
		t.Errorf("last event = %q, want the failure", last)
	}
}

func TestReleasePhaseSkipped(t *testing.T) {
	t.Run("a push ran it", func(t *testing.T) {
		c, d := releaseSetup(t)
		dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", ReleasePhaseJob: "h1-u99", Status: api.DeploymentPending}
		if err := d.Deploy(context.Background(), dep); err != nil {
			t.Fatalf("Deploy: %v", err)
		}
		if len(c.ran) != 0 {
			t.Errorf("ran %+v, want no release command", c.ran)
		}
	})
	t.Run("no release command", func(t *testing.T) {
		c, d := releaseSetup(t)
		dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r2", NewReleaseID: "r1", Status: api.DeploymentPending}
		c.formations["a1/r2"] = c.formations["a1/r1"]
		if err := d.Deploy(context.Background(), dep); err != nil {
			t.Fatalf("Deploy: %v", err)
		}
		if len(c.ran) != 0 {
			t.Errorf("ran %+v, want no release command", c.ran)
		}
	})
}

// A deployment with no process running still runs the release command:
// the release becomes current only once it succeeds.
func TestReleasePhaseWithNothingScaled(t *testing.T) {
	c, d := releaseSetup(t)
	dep := &api.Deployment{ID: "d1", AppID: "a1", NewReleaseID: "r2", Processes: map[string]int{}, Status: api.DeploymentPending}
	if err := d.Deploy(context.Background(), dep); err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	if diff := cmp.Diff([]string{"running r2", "running r2 release starting", "running r2 release down", "complete r2"}, c.events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if c.appRelease["a1"] != "r2" || len(c.ran) != 1 {
		t.Errorf("app release = %q after %d release commands, want r2 after 1", c.appRelease["a1"], len(c.ran))
	}
}

// An earlier release command of the app that still runs (a push's, or one
// a killed gitreceive left) is waited for; one this deployment started
// before the deployer restarted is taken up, not run again.
func TestReleasePhaseWaitsAndTakesUp(t *testing.T) {
	c, d := releaseSetup(t)
	c.hold = true
	earlier := &api.Job{UUID: "e1", ID: "h1-e1", AppID: "a1", ReleaseID: "r1", State: api.JobStateUp, CreatedAt: time.Now(),
		Meta: map[string]string{api.JobMetaReleasePhase: "true"}}
	c.add(earlier)
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var derr error
	go func() {
		defer wg.Done()
		derr = d.Deploy(ctx, dep)
	}()
	ran := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.ran)
	}
	time.Sleep(100 * time.Millisecond)
	if n := ran(); n != 0 {
		t.Fatalf("ran %d release commands while an earlier one ran, want 0", n)
	}
	c.end("e1", 0)
	waitCond(t, func() bool { return ran() == 1 })
	// The deployer stops (a restart) while its release command runs.
	cancel()
	wg.Wait()
	if derr == nil {
		t.Fatal("Deploy returned nil when stopped")
	}

	// The next deployer takes the job up.
	d2, err := New(Config{Controller: c}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	c.events = nil
	wg.Add(1)
	go func() {
		defer wg.Done()
		derr = d2.Deploy(context.Background(), dep)
	}()
	time.Sleep(100 * time.Millisecond)
	c.mu.Lock()
	var uuid string
	for _, j := range c.jobs {
		if j.Meta[api.JobMetaDeployment] == "d1" {
			uuid = j.UUID
		}
	}
	c.mu.Unlock()
	c.end(uuid, 0)
	wg.Wait()
	if derr != nil {
		t.Fatalf("Deploy after the restart: %v", derr)
	}
	if n := ran(); n != 1 {
		t.Errorf("ran %d release commands, want 1 (taken up after the restart)", n)
	}
	want := append([]string{"running r2", "running r2 release starting", "running r2 release down"}, rolled...)
	if diff := cmp.Diff(want, c.events); diff != "" {
		t.Errorf("events after the restart (-want +got):\n%s", diff)
	}
}

// A controller that cannot run jobs fails a deployment whose release has
// a release command, rather than skipping it.
func TestReleasePhaseNeedsAJobRunner(t *testing.T) {
	c, _ := releaseSetup(t)
	d, err := New(Config{Controller: c.simController}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	dep := &api.Deployment{ID: "d1", AppID: "a1", OldReleaseID: "r1", NewReleaseID: "r2", Status: api.DeploymentPending}
	if err := d.Deploy(context.Background(), dep); err == nil || !strings.Contains(err.Error(), "cannot run jobs") {
		t.Fatalf("Deploy = %v, want an error", err)
	}
	if c.appRelease["a1"] != "r1" {
		t.Errorf("app release = %q, want r1", c.appRelease["a1"])
	}
}

func waitCond(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
