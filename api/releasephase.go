package api

import (
	"fmt"
	"math/rand/v2"
	"path"
	"time"
)

// The release phase, as Heroku's: a release's ProcessTypeRelease command
// (`release: bundle exec rake db:migrate` in a Procfile) runs once as a
// one-off job of the release before each deployment of it (a push, an env
// change, a rollback, a resource's env), and a command that fails stops
// the deployment: the app goes on running its current release. The
// deployer runs it, unless the deployment's client ran it already
// (Deployment.ReleasePhaseJob); a push and the CLI print its output from
// its log.
const (
	// ReleasePhaseTimeout bounds a release command, as Heroku's does.
	ReleasePhaseTimeout = time.Hour
	// JobMetaReleasePhase ("true") marks a release command's job.
	JobMetaReleasePhase = "gitreceive.release_phase"
	// JobMetaDeployment is the deployment a release command's job runs
	// for, when the deployer started it.
	JobMetaDeployment = "flynn-deployer.deployment"
)

// ReleasePhaseJob is the one-off job that runs rel's release command, or
// nil when rel has none. meta is added to the job's meta.
func ReleasePhaseJob(rel *Release, meta map[string]string) *NewJob {
	pt := rel.Processes[ProcessTypeRelease]
	if pt == nil {
		return nil
	}
	// The controller runs a slug's one-off jobs through its slug runner
	// itself: the job is given the runner's arguments (start release).
	args := pt.Args
	if len(args) >= 2 && path.Base(args[0]) == "flynn-host" && args[1] == "slugrunner" {
		args = args[2:]
	}
	m := map[string]string{JobMetaReleasePhase: "true"}
	for k, v := range meta {
		m[k] = v
	}
	return &NewJob{
		ReleaseID:  rel.ID,
		ReleaseEnv: true,
		Args:       args,
		MountsFrom: ProcessTypeRelease,
		// As Heroku names a release phase's dyno.
		Env:  map[string]string{"DYNO": fmt.Sprintf("%s.%d", ProcessTypeRelease, 1000+rand.IntN(9000))},
		Meta: m,
	}
}
