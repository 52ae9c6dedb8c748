package deployer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// releasePhase runs the new release's release command (api.ReleasePhaseJob),
// when it has one and the deployment's client has not run it already
// (Deployment.ReleasePhaseJob), as a one-off job of the release, and waits
// for it to exit. A non-zero exit, or none within api.ReleasePhaseTimeout,
// fails the deployment before any job of the new release starts: the app
// goes on running its current release. Release commands of an app never
// run two at once: one still running (an older gitreceive's, or another
// deployment's) is waited for, and one this deployment started before
// the deployer restarted is taken up, not run again. Its output is the job's log
// (flynn log -j); the deployment's events name the job.
func (r *run) releasePhase(ctx context.Context) error {
	dep := r.dep
	if dep.ReleasePhaseJob != "" || dep.OldReleaseID == dep.NewReleaseID {
		return nil
	}
	nj := api.ReleasePhaseJob(r.newRelease, map[string]string{api.JobMetaDeployment: dep.ID})
	if nj == nil {
		return nil
	}
	jr, ok := r.ctl().(JobRunner)
	if !ok {
		return fmt.Errorf("release %s has a release command, and this deployer cannot run jobs", dep.NewReleaseID)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, api.ReleasePhaseTimeout)
	defer cancel()
	timedOut := func(err error) error {
		if parent.Err() == nil && ctx.Err() != nil {
			return fmt.Errorf("the release command did not finish within %s: release %s is not deployed", api.ReleasePhaseTimeout, dep.NewReleaseID)
		}
		return err
	}

	releaseJob := func(j *api.Job) bool { return j.Meta[api.JobMetaReleasePhase] == "true" }
	mine := func(j *api.Job) bool { return releaseJob(j) && j.Meta[api.JobMetaDeployment] == dep.ID }
	stopped := make(map[string]bool)
	othersDone := func() bool {
		done := true
		for _, j := range r.jobs {
			if !releaseJob(j) || mine(j) || j.State == api.JobStateDown {
				continue
			}
			if !j.CreatedAt.IsZero() && time.Since(j.CreatedAt) > api.ReleasePhaseTimeout {
				if !stopped[j.ID] {
					stopped[j.ID] = true
					r.d.log.Warn("stopping a release command that ran past its timeout", "app", dep.AppID, "job", j.ID)
					if err := jr.DeleteJob(ctx, dep.AppID, j.ID); err != nil && !errors.Is(err, api.ErrNotFound) {
						r.d.log.Warn("stop a release command", "app", dep.AppID, "job", j.ID, "err", err)
					}
				}
				continue
			}
			done = false
		}
		return done
	}
	if !othersDone() {
		r.d.log.Info("waiting for an earlier release command to end", "app", dep.AppID, "deployment", dep.ID)
	}
	if err := r.waitUntil(ctx, othersDone); err != nil {
		return timedOut(err)
	}

	var job *api.Job
	for _, j := range r.jobs {
		if mine(j) && (job == nil || j.CreatedAt.After(job.CreatedAt)) {
			job = j
		}
	}
	if job == nil {
		var err error
		job, err = jr.RunJob(ctx, dep.AppID, nj)
		if err != nil {
			return timedOut(fmt.Errorf("start the release command of release %s: %w", dep.NewReleaseID, err))
		}
	}
	id := job.ID
	r.event(ctx, api.DeploymentEvent{ReleaseID: dep.NewReleaseID, JobType: api.ProcessTypeRelease, JobState: api.JobStateStarting, JobID: id})
	var end *api.Job
	err := r.waitUntil(ctx, func() bool {
		for _, j := range r.jobs {
			if j.ID == id && j.State == api.JobStateDown {
				end = j
				return true
			}
		}
		return false
	})
	if err != nil {
		if parent.Err() == nil && ctx.Err() != nil {
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if err := jr.DeleteJob(dctx, dep.AppID, id); err != nil && !errors.Is(err, api.ErrNotFound) {
				r.d.log.Warn("stop a release command", "app", dep.AppID, "job", id, "err", err)
			}
			dcancel()
			return fmt.Errorf("the release command did not finish within %s (job %s): release %s is not deployed", api.ReleasePhaseTimeout, id, dep.NewReleaseID)
		}
		// Shutting down (the next deployer takes the job up), or a
		// new-release job failed.
		return err
	}
	if end.ExitStatus != nil && *end.ExitStatus == 0 {
		r.event(ctx, api.DeploymentEvent{ReleaseID: dep.NewReleaseID, JobType: api.ProcessTypeRelease, JobState: api.JobStateDown, JobID: id})
		return nil
	}
	how := end.End()
	if end.ExitStatus != nil && (end.HostError == nil || *end.HostError == "") {
		how = fmt.Sprintf("exit status %d", *end.ExitStatus)
	}
	still := "the app has no release deployed yet"
	if dep.OldReleaseID != "" {
		still = "the app goes on running release " + dep.OldReleaseID
	}
	return fmt.Errorf("the release command failed (%s): release %s is not deployed and %s (the command's output: flynn log -j %s)", how, dep.NewReleaseID, still, id)
}
