package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

func newPsCmd(s *state) *cobra.Command {
	var (
		all, quiet, asJSON bool
		typ                string
	)
	c := &cobra.Command{
		Use:   "ps [-a] [-q] [-t TYPE]",
		Short: "List an app's jobs",
		Long:  "List the app's running jobs; -a includes jobs that have stopped.",
		Example: `  flynn ps
  flynn ps -a -t web
  flynn ps -q | xargs flynn kill`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			jobs, err := c.JobList(ctx, app.ID)
			if err != nil {
				return err
			}
			shown := jobs[:0]
			for _, j := range jobs {
				if (all || j.State != api.JobStateDown) && (typ == "" || j.Type == typ) {
					shown = append(shown, j)
				}
			}
			if quiet && !asJSON {
				return printIDs(cmd, shown, func(j *api.Job) string { return j.ID })
			}
			return printList(cmd, asJSON, shown, "ID\tTYPE\tSTATE\tCREATED\tRELEASE", func(j *api.Job) []string {
				t := j.Type
				if t == "" {
					t = "run"
					if len(j.Args) > 0 {
						t = "run " + strings.Join(j.Args, " ")
					}
				}
				return []string{j.ID, t, j.State, ago(j.CreatedAt), j.ReleaseID}
			})
		},
	}
	f := c.Flags()
	f.BoolVarP(&all, "all", "a", false, "include stopped jobs")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only job IDs")
	f.StringVarP(&typ, "type", "t", "", "only jobs of this process type")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newKillCmd(s *state) *cobra.Command {
	return &cobra.Command{
		Use:     "kill JOB...",
		Short:   "Stop jobs",
		Example: "  flynn kill host1-5b1a...\n  flynn ps -q -t worker | xargs flynn kill",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.DeleteJob(ctx, app.ID, id); err != nil {
					if errors.Is(err, api.ErrNotFound) {
						return fmt.Errorf("job %q not found in app %s: see flynn ps -a", id, app.Name)
					}
					return fmt.Errorf("kill job %s: %w", id, explain(err))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Job %s stopped.\n", id)
			}
			return nil
		},
	}
}

func newScaleCmd(s *state) *cobra.Command {
	var (
		noWait  bool
		release string
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "scale [-n] [-r RELEASE] [TYPE=N...]",
		Short: "Show or change how many processes of each type run",
		Long: `Without arguments, show the formation of the app's current release. With
TYPE=N arguments, set those counts (other types keep theirs) and wait until the
new formation is up, showing each job's progress; -n does not wait.`,
		Example: `  flynn scale
  flynn scale web=3 worker=1
  flynn scale --no-wait web=0`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			want, err := parseScaleArgs(args)
			if err != nil {
				return err
			}
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if release == "" {
				release = app.ReleaseID
			}
			if release == "" {
				return fmt.Errorf("app %s has no release yet: deploy code first (git push flynn main)", app.Name)
			}
			f, err := c.GetFormation(ctx, app.ID, release)
			if err != nil && !errors.Is(err, api.ErrNotFound) {
				return err
			}
			if f == nil || err != nil {
				f = &api.Formation{}
			}
			if len(want) == 0 {
				rel, err := c.GetRelease(ctx, release)
				if err != nil {
					return err
				}
				procs := map[string]int{}
				for t := range rel.Processes {
					procs[t] = 0
				}
				maps.Copy(procs, f.Processes)
				var parts []string
				for _, t := range sortedKeys(procs) {
					parts = append(parts, fmt.Sprintf("%s=%d", t, procs[t]))
				}
				fmt.Fprintln(cmd.OutOrStdout(), strings.Join(parts, " "))
				return nil
			}
			procs := maps.Clone(f.Processes)
			if procs == nil {
				procs = map[string]int{}
			}
			changed := false
			for t, n := range want {
				if procs[t] != n {
					changed = true
				}
				procs[t] = n
			}
			if !changed {
				fmt.Fprintln(cmd.OutOrStdout(), "requested scale equals current scale, nothing to do!")
				return nil
			}
			// Follow job events from before the scale request, and take the
			// snapshot of jobs after the stream is open, so no change is missed.
			var (
				stream *controllerclient.EventStream
				before []*api.Job
			)
			if !noWait {
				stream, err = c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeJob}})
				if err != nil {
					return err
				}
				defer stream.Close()
				if before, err = c.JobList(ctx, app.ID); err != nil {
					return err
				}
			}
			var diff []string
			for _, t := range sortedKeys(want) {
				diff = append(diff, fmt.Sprintf("%s: %d=>%d", t, f.Processes[t], procs[t]))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "scaling %s\n", strings.Join(diff, ", "))
			start := time.Now()
			if _, err := c.ScaleAppRelease(ctx, app.ID, release, procs, nil); err != nil {
				if errors.Is(err, api.ErrValidation) {
					return fmt.Errorf("%v: see the release's process types with flynn scale", explain(err))
				}
				return err
			}
			if noWait {
				return nil
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			go func() { <-ctx.Done(); stream.Close() }()
			if err := waitScale(ctx, cmd.OutOrStdout(), stream, before, release, procs); err != nil {
				if ctx.Err() == context.DeadlineExceeded {
					return fmt.Errorf("timed out after %s waiting for the new formation to come up: see flynn ps and flynn log", timeout)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "scale completed in %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := c.Flags()
	f.BoolVarP(&noWait, "no-wait", "n", false, "do not wait for the new formation to come up")
	f.StringVarP(&release, "release", "r", "", "release to scale (default: the current one)")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait")
	return c
}

// waitScale follows job events until, for every process type in want, the
// release runs exactly that many jobs and all of them are up.
func waitScale(ctx context.Context, out io.Writer, stream *controllerclient.EventStream, list []*api.Job, release string, want map[string]int) error {
	jobs := map[string]*api.Job{}
	for _, j := range list {
		if j.ReleaseID == release && j.Type != "" {
			jobs[j.ID] = j
		}
	}
	done := func() bool {
		up, live := map[string]int{}, map[string]int{}
		for _, j := range jobs {
			if j.State == api.JobStateUp {
				up[j.Type]++
			}
			if j.State != api.JobStateDown {
				live[j.Type]++
			}
		}
		for t, n := range want {
			if up[t] != n || live[t] != n {
				return false
			}
		}
		return true
	}
	for !done() {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("event stream ended while waiting for the formation: %w (see flynn ps)", err)
		}
		j := &api.Job{}
		if err := json.Unmarshal(ev.Data, j); err != nil || j.ReleaseID != release || j.Type == "" {
			continue
		}
		jobs[j.ID] = j
		fmt.Fprintf(out, "%s ==> %s %s %s\n", time.Now().Format("15:04:05.000"), j.Type, j.ID, j.State)
	}
	return nil
}
