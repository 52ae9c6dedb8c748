package gitreceive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// ReleasePhaseTimeout bounds a release command, as Heroku's does.
const ReleasePhaseTimeout = api.ReleasePhaseTimeout

// releasePhase runs rel's release process type (api.ProcessTypeRelease:
// `release: bundle exec rake db:migrate` in the Procfile), when it has
// one, as a one-off job of rel (its artifact, env and mounts), with the
// command's output in the push's, and returns the job's ID (the
// deployment's ReleasePhaseJob, so the deployer does not run it again).
// A command that fails (a non-zero exit, or no exit within
// ReleasePhaseTimeout) fails the push: rel is not deployed and the app
// goes on running prev.
func (r *BuildReceiver) releasePhase(ctx context.Context, app *api.App, prev, rel *api.Release, out io.Writer) (string, error) {
	nj := api.ReleasePhaseJob(rel, nil)
	if nj == nil {
		return "", nil
	}
	if err := r.waitEarlierReleasePhase(ctx, app, out); err != nil {
		return "", err
	}
	fmt.Fprintln(out, "-----> Running release command...")
	ctx, cancel := context.WithTimeout(ctx, ReleasePhaseTimeout)
	defer cancel()
	conn, jobID, err := r.cfg.Controller.RunJobAttached(ctx, app.ID, nj)
	if err != nil {
		return "", fmt.Errorf("start the release command: %w", err)
	}
	defer conn.Close()
	// A push given up on (the client gone, the timeout) ends the stream,
	// and then the job (below).
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	// The command reads no input: its stdin ends at once.
	if err := api.WriteAttachData(conn, api.AttachStdin, nil); err != nil {
		return "", fmt.Errorf("release command (job %s): %w", jobID, err)
	}
	pw := &logging.PrefixWriter{W: out, Prefix: "       "}
	defer pw.EndLine()
	for {
		f, err := api.ReadAttachFrame(conn)
		if err != nil {
			if ctx.Err() != nil {
				dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				r.cfg.Controller.DeleteJob(dctx, app.ID, jobID)
				dcancel()
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return "", fmt.Errorf("the release command did not finish within %s (job %s): release %s is not deployed", ReleasePhaseTimeout, jobID, rel.ID)
				}
				return "", ctx.Err()
			}
			return "", fmt.Errorf("release command (job %s): the connection to it was lost: %v", jobID, err)
		}
		switch f.Type {
		case api.AttachData:
			if f.Stream == api.AttachStdout || f.Stream == api.AttachStderr {
				pw.Write(f.Data)
			}
		case api.AttachError:
			return "", fmt.Errorf("release command (job %s): %s", jobID, f.Data)
		case api.AttachExit:
			pw.EndLine()
			if f.Value != 0 {
				still := "the app has no release deployed yet"
				if prev != nil {
					still = "the app goes on running release " + prev.ID
				}
				return "", fmt.Errorf("the release command failed (exit status %d): release %s is not deployed and %s (the command's output: flynn log -j %s)", f.Value, rel.ID, still, jobID)
			}
			return jobID, nil
		}
	}
}

// waitEarlierReleasePhase waits for the app's release commands that still
// run, so that two never run at once: a push's is stopped when the push
// is given up on, but one whose gitreceive was killed runs on (to its
// end; its release is not deployed), and a deployment's (the deployer
// runs the release command of deployments that are not a push's) runs to
// its end. Pushes to an app take turns, so any found belongs to a push
// that has ended or to a deployment. One past ReleasePhaseTimeout
// since it started is stopped.
func (r *BuildReceiver) waitEarlierReleasePhase(ctx context.Context, app *api.App, out io.Writer) error {
	said := map[string]bool{}
	for {
		jobs, err := r.cfg.Controller.JobList(ctx, app.ID)
		if err != nil {
			return fmt.Errorf("list the app's jobs: %w", err)
		}
		running := false
		for _, j := range jobs {
			if j.Meta[api.JobMetaReleasePhase] != "true" || j.State == api.JobStateDown {
				continue
			}
			if time.Since(j.CreatedAt) > ReleasePhaseTimeout {
				fmt.Fprintf(out, "       Stopping an earlier release command (job %s): it ran past %s\n", j.ID, ReleasePhaseTimeout)
				if err := r.cfg.Controller.DeleteJob(ctx, app.ID, j.ID); err != nil && !errors.Is(err, api.ErrNotFound) {
					fmt.Fprintf(out, "       (could not stop it: %v)\n", err)
				}
				continue
			}
			running = true
			if !said[j.ID] {
				said[j.ID] = true
				fmt.Fprintf(out, "-----> Waiting for an earlier release command to end (job %s; flynn -a %s kill %s stops it)...\n", j.ID, app.Name, j.ID)
			}
		}
		if !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
