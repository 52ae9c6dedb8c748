package test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// The database add-on tests (postgres, mysql, redis) push a sample app
// whose GET / answers "rows: a,b" from its database and POST /rows?v=X
// adds X, and kill the appliance's job.

// postRow adds a row through the app.
func (a *pushApp) postRow(v string) {
	a.t.Helper()
	out, err := exec.Command("curl", "-sS", "-m", "10", "-X", "POST", a.c.url(a.name+"."+a.c.domain, "/rows?v="+v)).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "rows: ") {
		a.t.Fatalf("POST /rows?v=%s: %v %s", v, err, out)
	}
}

// waitRows waits until the app serves the rows want ("a,b").
func (a *pushApp) waitRows(want string) {
	a.t.Helper()
	waitFor(a.t, within(a.t, 2*time.Minute), "rows "+want, a.c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 200 && strings.TrimSpace(body) == strings.TrimSpace("rows: "+want), fmt.Errorf("%d %s", status, body)
	})
}

// envVar is the value of KEY in `flynn env`'s output.
func envVar(env, key string) string {
	for _, l := range strings.Split(env, "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// applianceJob is the running job of the appliance app on the first host,
// or nil.
func (c *e2eCluster) applianceJob(app string) *api.ActiveJob {
	c.t.Helper()
	jobs, err := c.hostClient(c.hosts[0]).ListJobs(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, j := range jobs {
		if j.Job.Metadata[api.JobMetaAppName] == app && j.Status == api.HostJobRunning && j.Job.Metadata[api.JobMetaProcessType] == app {
			return j
		}
	}
	return nil
}

// runningJobID is the id of a running job of the system app on the first
// host, or "".
func (c *e2eCluster) runningJobID(app string) string {
	c.t.Helper()
	jobs, err := c.hostClient(c.hosts[0]).ListJobs(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, j := range jobs {
		if j.Job.Metadata[api.JobMetaAppName] == app && j.Status == api.HostJobRunning {
			return j.Job.ID
		}
	}
	return ""
}

// killApplianceJob SIGKILLs the running job of the appliance app's
// process type (named as the app) on the first host, waits for the
// scheduler to start another, checks that it got the same volume and
// returns that volume's id.
func (c *e2eCluster) killApplianceJob(app string) (volumeID string) {
	c.t.Helper()
	ctx := context.Background()
	hc := c.hostClient(c.hosts[0])
	old := c.applianceJob(app)
	if old == nil || len(old.Job.Config.Volumes) != 1 {
		c.t.Fatalf("no running %s job with a volume:\n%s", app, c.jobTable(c.hosts[0]))
	}
	if err := hc.SignalJob(ctx, old.Job.ID, "KILL"); err != nil {
		c.t.Fatal(err)
	}
	var j *api.ActiveJob
	waitFor(c.t, within(c.t, 2*time.Minute), "a new "+app+" job", c.watch(), func() (bool, error) {
		j = c.applianceJob(app)
		return j != nil && j.Job.ID != old.Job.ID, nil
	})
	if j.Job.Config.Volumes[0].VolumeID != old.Job.Config.Volumes[0].VolumeID {
		c.t.Fatalf("the new %s job has volume %s, the old one had %s", app, j.Job.Config.Volumes[0].VolumeID, old.Job.Config.Volumes[0].VolumeID)
	}
	return j.Job.Config.Volumes[0].VolumeID
}
