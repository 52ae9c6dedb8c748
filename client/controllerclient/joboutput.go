package controllerclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// JobOutput prints the output of an app's jobs from the app's log, one
// job at a time, each line after Prefix: a deployment's release command
// (the deployer runs it detached), as `flynn env set` and a push show it.
// It is not safe for concurrent use.
type JobOutput struct {
	c      *Client
	appID  string
	w      io.Writer
	prefix string

	job    string
	done   chan struct{}
	cancel context.CancelFunc
}

// NewJobOutput prints the output of appID's jobs to w, each line after
// prefix.
func NewJobOutput(c *Client, appID string, w io.Writer, prefix string) *JobOutput {
	return &JobOutput{c: c, appID: appID, w: w, prefix: prefix}
}

// jobOutputDrain is how long Wait lets a job's last lines arrive: its
// host ships them in the background, and writes the line about the job's
// exit after them.
var jobOutputDrain = 5 * time.Second

// Follow starts printing job's stdout and stderr, from its first line up
// to the platform's line about its exit, after any job followed before
// (Wait). Following the job already followed does nothing: a deployer
// that takes a deployment up names its release command again.
func (o *JobOutput) Follow(ctx context.Context, job string) {
	if job == o.job {
		return
	}
	o.Wait()
	o.job = job
	ctx, o.cancel = context.WithCancel(ctx)
	o.done = make(chan struct{})
	go func() {
		defer close(o.done)
		rc, err := o.c.GetAppLog(ctx, o.appID, LogOptions{Follow: true, JobID: job,
			StreamTypes: []string{api.LogStdout, api.LogStderr, api.LogInit}})
		if err != nil {
			return
		}
		defer rc.Close()
		dec := json.NewDecoder(rc)
		for {
			var m api.LogMessage
			if err := dec.Decode(&m); err != nil {
				return
			}
			if m.Stream == api.LogInit {
				if strings.HasPrefix(m.Msg, api.LogInitExit) || strings.HasPrefix(m.Msg, api.LogInitFailed) {
					return
				}
				continue
			}
			fmt.Fprintf(o.w, "%s%s\n", o.prefix, m.Msg)
		}
	}()
}

// Wait lets the job followed print up to its exit, for a few seconds at
// most (jobOutputDrain), and stops following it. Call it when the job is
// known to have ended, and before printing what follows its output.
func (o *JobOutput) Wait() {
	if o.done == nil {
		return
	}
	select {
	case <-o.done:
	case <-time.After(jobOutputDrain):
	}
	o.cancel()
	<-o.done
	o.done = nil
}
