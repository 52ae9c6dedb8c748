package scheduler

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/deployer"
)

// TestDeployThroughScheduler runs the deployer against a live scheduler
// loop on fake hosts: a good release replaces the old one, and a release
// whose web process crashes fails and leaves the old formation running.
func TestDeployThroughScheduler(t *testing.T) {
	c := newFakeCluster(host("h1", 0), host("h2", 0))
	c.crashOnStart = func(j *api.HostJob) bool { return j.Metadata[api.JobMetaRelease] == "bad" }
	ctl := newFakeController()
	app := &api.App{ID: "app1", Name: "app1"}
	for _, id := range []string{"rel1", "rel2", "bad"} {
		ctl.addRelease(app, &api.Release{ID: id, AppID: "app1", Processes: map[string]*api.ProcessType{"web": {}}})
	}
	if err := ctl.PutFormation(context.Background(), &api.Formation{AppID: "app1", ReleaseID: "rel1", Processes: map[string]int{"web": 2}}); err != nil {
		t.Fatal(err)
	}
	runScheduler(t, c, ctl, nil)
	waitFor(t, "2 rel1 jobs", func() bool { return len(c.running()) == 2 })

	d, err := deployer.New(deployer.Config{Controller: ctl}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	releases := func() map[string]int {
		m := make(map[string]int)
		for _, r := range c.running() {
			m[r.release]++
		}
		return m
	}
	err = d.Deploy(context.Background(), &api.Deployment{ID: "d1", AppID: "app1", OldReleaseID: "rel1", NewReleaseID: "rel2", Strategy: api.StrategyOneByOne})
	if err != nil {
		t.Fatalf("deploy rel2: %v", err)
	}
	if diff := cmp.Diff(map[string]int{"rel2": 2}, releases()); diff != "" {
		t.Errorf("running after deploy (-want +got):\n%s", diff)
	}

	err = d.Deploy(context.Background(), &api.Deployment{ID: "d2", AppID: "app1", OldReleaseID: "rel2", NewReleaseID: "bad"})
	if err == nil {
		t.Fatal("deploy of a crashing release succeeded")
	}
	waitFor(t, "only rel2 running", func() bool { return cmp.Equal(map[string]int{"rel2": 2}, releases()) })
	last := ctl.deployEvents[len(ctl.deployEvents)-1]
	if last.Status != api.DeploymentFailed || last.DeploymentID != "d2" {
		t.Errorf("last deployment event %+v, want d2 failed", last)
	}
	if app.ReleaseID != "rel2" {
		t.Errorf("app release %q, want rel2", app.ReleaseID)
	}
}
