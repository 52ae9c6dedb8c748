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
		all, quiet, asJSON, command bool
		typ                         string
	)
	c := &cobra.Command{
		Use:   "ps [-a] [-c] [-q] [-t TYPE]",
		Short: "List an app's jobs",
		Long:  "List the app's running jobs; -a includes jobs that have stopped, -c shows each job's command.",
		Example: `  flynn ps
  flynn ps -a -t web
  flynn ps -c
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
			header := "ID\tTYPE\tSTATE\tCREATED\tRELEASE"
			if command {
				header += "\tCOMMAND"
			}
			rels := map[string]*api.Release{}
			return printList(cmd, asJSON, shown, header, func(j *api.Job) []string {
				t := j.Type
				if t == "" {
					t = "run"
					if len(j.Args) > 0 && !command {
						t = "run " + strings.Join(j.Args, " ")
					}
				}
				row := []string{j.ID, t, j.State, ago(j.CreatedAt), j.ReleaseID}
				if command {
					row = append(row, strings.Join(jobCommand(ctx, c, rels, j), " "))
				}
				return row
			})
		},
	}
	f := c.Flags()
	f.BoolVarP(&all, "all", "a", false, "include stopped jobs")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only job IDs")
	f.BoolVarP(&command, "command", "c", false, "show each job's command")
	f.StringVarP(&typ, "type", "t", "", "only jobs of this process type")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// jobCommand is a job's command: its own args (a one-off job), else its
// process type's in its release (looked up once per release in rels).
func jobCommand(ctx context.Context, c *controllerclient.Client, rels map[string]*api.Release, j *api.Job) []string {
	if len(j.Args) > 0 || j.Type == "" || j.ReleaseID == "" {
		return j.Args
	}
	rel, ok := rels[j.ReleaseID]
	if !ok {
		rel, _ = c.GetRelease(ctx, j.ReleaseID)
		rels[j.ReleaseID] = rel
	}
	if rel == nil || rel.Processes[j.Type] == nil {
		return nil
	}
	return rel.Processes[j.Type].Args
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
		noWait, all bool
		release     string
		timeout     time.Duration
	)
	c := &cobra.Command{
		Use:   "scale [-n] [-r RELEASE] [-a] [TYPE=N[,KEY=VALUE...]...]",
		Short: "Show or change how many processes of each type run",
		Long: `Without arguments, show the formation of the app's current release (-a: the
non-zero formations of every release). With TYPE=N arguments, set those counts
(other types keep theirs) and wait until the new formation runs and serves:
every new job is up and, when its type has a service, registered and passing
its health check, so traffic reaches it. Progress shows each job's state; -n
does not wait. KEY=VALUE after a count places that type's jobs only on hosts
with those tags (a KEY alone means KEY=true).`,
		Example: `  flynn scale
  flynn scale -a
  flynn scale web=3 worker=1
  flynn scale web=2,disk=ssd
  flynn scale --no-wait web=0`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			want, tags, err := parseScaleSpecs(args)
			if err != nil {
				return err
			}
			if all && (len(want) > 0 || release != "") {
				return errors.New("-a only shows formations: it cannot be combined with TYPE=N or -r")
			}
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if all {
				return showAllFormations(ctx, cmd, c, app)
			}
			if release == "" && (len(want) > 0 || len(tags) > 0) {
				// The release a deployment under way deploys takes
				// the formation over: scale it once it has.
				if app, err = waitDeployments(ctx, cmd.OutOrStdout(), c, app); err != nil {
					return err
				}
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
				fmt.Fprintln(cmd.OutOrStdout(), formatFormation(rel, f.Processes, false))
				return nil
			}
			changed := false
			for t, n := range want {
				if f.Processes[t] != n {
					changed = true
				}
			}
			for t, kv := range tags {
				if !maps.Equal(f.Tags[t], kv) {
					changed = true
				}
			}
			if !changed {
				fmt.Fprintln(cmd.OutOrStdout(), "requested scale equals current scale, nothing to do!")
				return nil
			}
			// Follow the app's job and scale request events from before
			// the request, so none is missed.
			var stream *controllerclient.EventStream
			if !noWait {
				stream, err = c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeJob, api.EventTypeScaleRequest}})
				if err != nil {
					return err
				}
				defer stream.Close()
			}
			var diff []string
			for _, t := range sortedKeys(want) {
				if f.Processes[t] != want[t] {
					diff = append(diff, fmt.Sprintf("%s: %d=>%d", t, f.Processes[t], want[t]))
				}
			}
			start := time.Now()
			var tagArg map[string]map[string]string
			if len(tags) > 0 {
				tagArg = tags
			}
			req, err := c.ScaleAppRelease(ctx, app.ID, release, want, tagArg)
			if err != nil {
				if errors.Is(err, api.ErrValidation) {
					return fmt.Errorf("%v: see the release's process types with flynn scale", explain(err))
				}
				return err
			}
			// Said once the controller took the request: one it refused
			// (a type the release lacks) changes nothing.
			if len(diff) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "scaling %s\n", strings.Join(diff, ", "))
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "changing tags")
			}
			if noWait {
				return nil
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			go func() { <-ctx.Done(); stream.Close() }()
			lastLines := func(typ, job string) []string {
				return s.lastLogLines(context.WithoutCancel(ctx), req.AppID, typ, job, 10)
			}
			if err := waitScaleRequest(ctx, cmd.OutOrStdout(), stream, req, lastLines); err != nil {
				if ctx.Err() == context.DeadlineExceeded {
					return fmt.Errorf("timed out after %s waiting for the new formation to serve: see flynn ps and flynn log", timeout)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "scale completed in %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := c.Flags()
	f.BoolVarP(&noWait, "no-wait", "n", false, "do not wait for the new formation to serve")
	f.StringVarP(&release, "release", "r", "", "release to scale (default: the current one)")
	f.BoolVarP(&all, "all", "a", false, "show the non-zero formations of every release")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait")
	return c
}

// parseScaleSpecs parses TYPE=N[,KEY=VALUE...] arguments into counts and
// host tags per type.
func parseScaleSpecs(args []string) (map[string]int, map[string]map[string]string, error) {
	counts := make([]string, 0, len(args))
	tags := map[string]map[string]string{}
	for _, a := range args {
		spec, rest, _ := strings.Cut(a, ",")
		counts = append(counts, spec)
		if rest == "" {
			continue
		}
		typ, _, _ := strings.Cut(spec, "=")
		kv := map[string]string{}
		for _, t := range strings.Split(rest, ",") {
			k, v, ok := strings.Cut(t, "=")
			if k == "" {
				return nil, nil, fmt.Errorf("invalid tag %q in %q: use KEY=VALUE or KEY, e.g. web=2,disk=ssd", t, a)
			}
			if !ok {
				v = "true"
			}
			kv[k] = v
		}
		tags[typ] = kv
	}
	want, err := parseScaleArgs(counts)
	return want, tags, err
}

// formatFormation renders counts as "web=2 worker=0", for every process
// type of the release (only the non-zero ones with nonZero).
func formatFormation(rel *api.Release, counts map[string]int, nonZero bool) string {
	procs := map[string]int{}
	for t := range rel.Processes {
		procs[t] = 0
	}
	maps.Copy(procs, counts)
	var parts []string
	for _, t := range sortedKeys(procs) {
		if nonZero && procs[t] == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%d", t, procs[t]))
	}
	return strings.Join(parts, " ")
}

// showAllFormations prints the non-zero formation of every release of the
// app, newest first, marking the current one.
func showAllFormations(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, app *api.App) error {
	rels, err := newestReleases(ctx, c, app.ID)
	if err != nil {
		return err
	}
	forms, err := c.FormationList(ctx, app.ID)
	if err != nil {
		return err
	}
	byRel := map[string]*api.Formation{}
	for _, f := range forms {
		byRel[f.ReleaseID] = f
	}
	first := true
	for _, r := range rels {
		f := byRel[r.ID]
		if f == nil || formatFormation(r, f.Processes, true) == "" {
			continue
		}
		if !first {
			fmt.Fprintln(cmd.OutOrStdout())
		}
		first = false
		suffix := ""
		if r.ID == app.ReleaseID {
			suffix = " (current)"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s%s\n%s\n", r.ID, suffix, formatFormation(r, f.Processes, true))
	}
	return nil
}

// waitScaleRequest follows job and scale request events, printing the
// jobs of the request's release as they change, until the deployer
// completes the request (the formation runs and serves) or it is
// cancelled by a newer one.
func waitScaleRequest(ctx context.Context, out io.Writer, stream *controllerclient.EventStream, req *api.ScaleRequest, lastLines func(typ, job string) []string) error {
	downJob := map[string]string{} // by type, the last job that went down
	for {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("event stream ended while waiting for the formation: %w (see flynn ps)", err)
		}
		switch ev.ObjectType {
		case api.EventTypeJob:
			j := &api.Job{}
			if err := json.Unmarshal(ev.Data, j); err != nil || j.ReleaseID != req.ReleaseID || j.Type == "" {
				continue
			}
			fmt.Fprintf(out, "%s ==> %s %s %s\n", time.Now().Format("15:04:05.000"), j.Type, j.ID, j.State)
			if j.State == api.JobStateDown {
				downJob[j.Type] = j.ID
			}
		case api.EventTypeScaleRequest:
			r := &api.ScaleRequest{}
			if err := json.Unmarshal(ev.Data, r); err != nil || r.ID != req.ID {
				continue
			}
			switch r.State {
			case api.ScaleRequestComplete:
				return nil
			case api.ScaleRequestCancelled:
				return errors.New("the scale request was replaced by a newer one before it completed: see flynn scale")
			case api.ScaleRequestFailed:
				// Say why, with what the crashing process printed last.
				typ, _, _ := strings.Cut(r.Error, " ")
				if lines := lastLines(typ, downJob[typ]); len(lines) > 0 {
					if job := downJob[typ]; job != "" {
						fmt.Fprintf(out, "Last log lines of %s (job %s):\n", typ, job)
					} else {
						fmt.Fprintf(out, "Last log lines of %s:\n", typ)
					}
					for _, l := range lines {
						fmt.Fprintf(out, "  %s\n", l)
					}
				}
				return fmt.Errorf("scale failed: %s (see flynn log -t %s)", r.Error, typ)
			}
		}
	}
}
