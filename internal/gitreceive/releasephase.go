package gitreceive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// ReleaseType is the Procfile's process type for the release phase, as
// on Heroku: `release: bundle exec rake db:migrate` runs once for each
// pushed release, after its build and before it is deployed.
const ReleaseType = "release"

// ReleasePhaseTimeout bounds a release command, as Heroku's does.
const ReleasePhaseTimeout = time.Hour

// releasePhase runs rel's release process type, when it has one, as a
// one-off job of rel (its artifact, env and mounts), with the command's
// output in the push's. A command that fails (a non-zero exit, or no exit
// within ReleasePhaseTimeout) fails the push: rel is not deployed and the
// app goes on running its current release.
func (r *BuildReceiver) releasePhase(ctx context.Context, app *api.App, prev, rel *api.Release, out io.Writer) error {
	pt := rel.Processes[ReleaseType]
	if pt == nil {
		return nil
	}
	fmt.Fprintln(out, "-----> Running release command...")
	ctx, cancel := context.WithTimeout(ctx, ReleasePhaseTimeout)
	defer cancel()
	// The controller runs a slug's one-off jobs through its slug runner
	// itself: the job is given the runner's arguments (start release).
	args := pt.Args
	if len(args) >= 2 && args[0] == FlynnHostPath && args[1] == "slugrunner" {
		args = args[2:]
	}
	conn, jobID, err := r.cfg.Controller.RunJobAttached(ctx, app.ID, &api.NewJob{
		ReleaseID:  rel.ID,
		ReleaseEnv: true,
		Args:       args,
		MountsFrom: ReleaseType,
		// As Heroku names a release phase's dyno.
		Env:  map[string]string{"DYNO": fmt.Sprintf("%s.%d", ReleaseType, 1000+mrand.IntN(9000))},
		Meta: map[string]string{"gitreceive.release_phase": "true"},
	})
	if err != nil {
		return fmt.Errorf("start the release command: %w", err)
	}
	defer conn.Close()
	// The command reads no input: its stdin ends at once.
	if err := api.WriteAttachData(conn, api.AttachStdin, nil); err != nil {
		return fmt.Errorf("release command (job %s): %w", jobID, err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		// A push given up on (the client gone, the timeout) stops the job.
		select {
		case <-ctx.Done():
			conn.Close()
		case <-done:
		}
	}()
	lw := &indentWriter{w: out}
	defer lw.flush()
	for {
		f, err := api.ReadAttachFrame(conn)
		if err != nil {
			if ctx.Err() != nil {
				dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				r.cfg.Controller.DeleteJob(dctx, app.ID, jobID)
				dcancel()
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return fmt.Errorf("the release command did not finish within %s (job %s): release %s is not deployed", ReleasePhaseTimeout, jobID, rel.ID)
				}
				return ctx.Err()
			}
			return fmt.Errorf("release command (job %s): the connection to it was lost: %v", jobID, err)
		}
		switch f.Type {
		case api.AttachData:
			if f.Stream == api.AttachStdout || f.Stream == api.AttachStderr {
				lw.Write(f.Data)
			}
		case api.AttachError:
			return fmt.Errorf("release command (job %s): %s", jobID, f.Data)
		case api.AttachExit:
			lw.flush()
			if f.Value != 0 {
				still := "the app has no release deployed yet"
				if prev != nil {
					still = "the app goes on running release " + prev.ID
				}
				return fmt.Errorf("the release command failed (exit status %d): release %s is not deployed and %s (the command's output: flynn log -j %s)", f.Value, rel.ID, still, jobID)
			}
			return nil
		}
	}
}

// indentWriter writes lines indented as a buildpack's output is (seven
// spaces), a line at a time (a line longer than maxIndentLine in pieces).
type indentWriter struct {
	w   io.Writer
	buf []byte
}

const maxIndentLine = 16 << 10

func (iw *indentWriter) Write(p []byte) (int, error) {
	iw.buf = append(iw.buf, p...)
	for {
		i := bytes.IndexByte(iw.buf, '\n')
		if i < 0 {
			if len(iw.buf) >= maxIndentLine {
				iw.flush()
			}
			break
		}
		fmt.Fprintf(iw.w, "       %s\n", bytes.TrimRight(iw.buf[:i], "\r"))
		iw.buf = iw.buf[i+1:]
	}
	return len(p), nil
}

// flush writes a last line that has no newline.
func (iw *indentWriter) flush() {
	if len(iw.buf) > 0 {
		fmt.Fprintf(iw.w, "       %s\n", iw.buf)
		iw.buf = nil
	}
}
