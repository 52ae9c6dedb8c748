package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// currentRelease returns a copy of the app's current release, or an empty
// release when it has none.
func currentRelease(ctx context.Context, c *controllerclient.Client, app *api.App) (*api.Release, error) {
	if app.ReleaseID == "" {
		return &api.Release{AppID: app.ID}, nil
	}
	return c.GetRelease(ctx, app.ReleaseID)
}

// newRelease creates a release from the app's current one changed by
// mutate, and deploys it. A deployment of the app under way (a push's) is
// waited for first, and the change made on top of what it deployed.
func newRelease(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, app *api.App, mutate func(*api.Release) error) error {
	app, err := waitDeployments(ctx, cmd.OutOrStdout(), c, app)
	if err != nil {
		return err
	}
	cur, err := currentRelease(ctx, c, app)
	if err != nil {
		return err
	}
	// Deep copy through JSON so mutate cannot change cur.
	b, _ := json.Marshal(cur)
	rel := &api.Release{}
	json.Unmarshal(b, rel)
	rel.ID, rel.CreatedAt, rel.AppID = "", time.Time{}, app.ID
	if err := mutate(rel); err != nil {
		return err
	}
	if err := c.CreateRelease(ctx, rel); err != nil {
		return err
	}
	return deploy(ctx, cmd, c, app, rel.ID)
}

// deploy deploys a release and follows the deployment's events until it
// completes or fails. Callers wait for a deployment under way first
// (waitDeployments), before they read the release they build on.
func deploy(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, app *api.App, releaseID string) error {
	out := cmd.OutOrStdout()
	stream, err := c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeDeployment}})
	if err != nil {
		return err
	}
	defer stream.Close()
	start := time.Now()
	d, err := c.CreateDeployment(ctx, app.ID, releaseID)
	if err != nil {
		if errors.Is(err, api.ErrConflict) {
			return fmt.Errorf("a deployment of %s is already running: wait for it (flynn deployment) and retry", app.Name)
		}
		return err
	}
	if d.Status != api.DeploymentComplete {
		fmt.Fprintf(out, "Deploying release %s (%s)\n", releaseID, d.Strategy)
		timeout := time.Duration(d.DeployTimeout)*time.Second + 30*time.Second
		// The release command (the release phase) runs before the
		// deploy, for up to an hour.
		if rel, err := c.GetRelease(ctx, releaseID); err != nil || rel.Processes[api.ProcessTypeRelease] != nil {
			timeout += api.ReleasePhaseTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		go func() { <-ctx.Done(); stream.Close() }()
		if err := waitDeployment(ctx, cmd, c, stream, d); err != nil {
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("timed out after %s waiting for deployment %s: see flynn deployment and flynn ps", timeout, d.ID)
			}
			return err
		}
	}
	fmt.Fprintf(out, "Created release %s\nDeployed in %s\n", releaseID, time.Since(start).Round(time.Millisecond))
	return nil
}

func waitDeployment(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, stream *controllerclient.EventStream, d *api.Deployment) error {
	// The deployment may have finished before the stream caught up.
	if cur, err := c.GetDeployment(ctx, d.ID); err == nil && finished(cur.Status) {
		msg := ""
		evs, _ := c.ListEvents(ctx, controllerclient.EventOptions{AppID: d.AppID, ObjectTypes: []string{api.EventTypeDeployment}, ObjectID: d.ID})
		for _, ev := range evs {
			var de api.DeploymentEvent
			if json.Unmarshal(ev.Data, &de) != nil {
				continue
			}
			if de.JobType != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "%s ==> %s\n", ev.CreatedAt.Local().Format("15:04:05.000"), jobEvent(&de))
			}
			if de.Error != "" {
				msg = de.Error
			}
		}
		return deploymentResult(cur.Status, msg, d.ID)
	}
	// The release command's output, each line indented as a push
	// indents it.
	out := controllerclient.NewJobOutput(c, d.AppID, cmd.OutOrStdout(), "       ")
	defer out.Wait()
	for {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("event stream ended during deployment %s: %w (see flynn deployment)", d.ID, err)
		}
		if ev.ObjectID != d.ID {
			continue
		}
		var de api.DeploymentEvent
		if err := json.Unmarshal(ev.Data, &de); err != nil {
			continue
		}
		release := de.JobType == api.ProcessTypeRelease && de.JobID != ""
		if release && de.JobState != api.JobStateStarting || finished(de.Status) {
			out.Wait() // its output before what follows it
		}
		if de.JobType != "" {
			fmt.Fprintf(cmd.OutOrStdout(), "%s ==> %s\n", time.Now().Format("15:04:05.000"), jobEvent(&de))
		}
		if release && de.JobState == api.JobStateStarting {
			out.Follow(ctx, de.JobID)
		}
		if finished(de.Status) {
			return deploymentResult(de.Status, de.Error, d.ID)
		}
	}
}

// waitDeployments waits while app has a deployment in progress (a push's,
// another change's), as Heroku lets a config change follow a deploy
// rather than refuse it (controllerclient.WaitAppDeployments), and
// returns the app as it then is: a release made from its current one
// builds on what that deployment deployed.
func waitDeployments(ctx context.Context, w io.Writer, c *controllerclient.Client, app *api.App) (*api.App, error) {
	waited, err := c.WaitAppDeployments(ctx, app.ID, func(d *api.Deployment) {
		fmt.Fprintf(w, "Waiting for deployment %s (release %s) of %s to end first...\n", d.ID, d.NewReleaseID, app.Name)
	})
	if err != nil || !waited {
		return app, err
	}
	return c.GetApp(ctx, app.ID)
}

// jobEvent is a deployment event's job step as the CLI shows it: "web
// up", or "release starting (job ID)" for the release command's.
func jobEvent(de *api.DeploymentEvent) string {
	s := de.JobType + " " + de.JobState
	if de.JobID != "" {
		s += " (job " + de.JobID + ")"
	}
	return s
}

func finished(status string) bool {
	return status == api.DeploymentComplete || status == api.DeploymentFailed
}

func deploymentResult(status, msg, id string) error {
	if status == api.DeploymentComplete {
		return nil
	}
	if msg == "" {
		msg = "no reason given"
	}
	return fmt.Errorf("deployment %s failed (%s): the old release is still running; see flynn log", id, msg)
}

// currentEnv is the environment of the app's current release (of one
// process type when typ is set).
func (s *state) currentEnv(ctx context.Context, typ string) (map[string]string, error) {
	c, app, err := s.appClient(ctx)
	if err != nil {
		return nil, err
	}
	rel, err := currentRelease(ctx, c, app)
	if err != nil {
		return nil, err
	}
	return releaseEnv(rel, typ)
}

func newEnvCmd(s *state) *cobra.Command {
	var (
		typ    string
		asJSON bool
	)
	show := func(cmd *cobra.Command, args []string) error {
		env, err := s.currentEnv(cmd.Context(), typ)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd, env)
		}
		for _, k := range sortedKeys(env) {
			fmt.Fprintf(cmd.OutOrStdout(), "%s=%s\n", k, env[k])
		}
		return nil
	}
	c := &cobra.Command{
		Use:   "env [-t TYPE]",
		Short: "Show or change an app's environment variables",
		Long: `Without a subcommand, list the environment of the app's current release (or
of one process type with -t). set and unset make a new release and deploy it;
when the app's Procfile has a release: command, it runs first (flynn log -j
shows its output) and a failure leaves the app on its current release.`,
		Example: `  flynn env
  flynn env set DATABASE_URL=postgres://db/app DEBUG=1
  flynn env get DEBUG
  flynn env unset DEBUG
  flynn env -t worker set QUEUE=high`,
		Args: cobra.NoArgs,
		RunE: show,
	}
	c.PersistentFlags().StringVarP(&typ, "process-type", "t", "", "the env of this process type only")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	get := &cobra.Command{
		Use:     "get KEY",
		Short:   "Print one environment variable",
		Example: "  flynn env get DATABASE_URL",
		Args:    exactArgs(1, "KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := s.currentEnv(cmd.Context(), typ)
			if err != nil {
				return err
			}
			v, ok := env[args[0]]
			if !ok {
				return fmt.Errorf("%s is not set: see flynn env", args[0])
			}
			fmt.Fprintln(cmd.OutOrStdout(), v)
			return nil
		},
	}
	set := &cobra.Command{
		Use:     "set KEY=VALUE...",
		Short:   "Set environment variables and deploy",
		Example: "  flynn env set FOO=bar BAZ=\"two words\"",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kv, err := parseKeyValues(args, "env var")
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			return newRelease(ctx, cmd, c, app, func(r *api.Release) error {
				env, err := mutableEnv(r, typ)
				if err != nil {
					return err
				}
				maps.Copy(env, kv)
				return nil
			})
		},
	}
	unset := &cobra.Command{
		Use:     "unset KEY...",
		Short:   "Remove environment variables and deploy",
		Example: "  flynn env unset FOO BAZ",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, k := range args {
				if !envKeyRE.MatchString(k) {
					return fmt.Errorf("invalid env var name %q (give names only, e.g. flynn env unset FOO)", k)
				}
			}
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			return newRelease(ctx, cmd, c, app, func(r *api.Release) error {
				env, err := mutableEnv(r, typ)
				if err != nil {
					return err
				}
				for _, k := range args {
					delete(env, k)
				}
				return nil
			})
		},
	}
	c.AddCommand(get, set, unset)
	return c
}

func releaseEnv(rel *api.Release, typ string) (map[string]string, error) {
	if typ == "" {
		return rel.Env, nil
	}
	p, ok := rel.Processes[typ]
	if !ok {
		return nil, fmt.Errorf("the release has no process type %q: see flynn scale", typ)
	}
	return p.Env, nil
}

func mutableEnv(rel *api.Release, typ string) (map[string]string, error) {
	if typ == "" {
		if rel.Env == nil {
			rel.Env = map[string]string{}
		}
		return rel.Env, nil
	}
	p, ok := rel.Processes[typ]
	if !ok {
		return nil, fmt.Errorf("the release has no process type %q: see flynn scale", typ)
	}
	if p.Env == nil {
		p.Env = map[string]string{}
	}
	return p.Env, nil
}

func newMetaCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "meta",
		Short: "Show or change an app's metadata",
		Example: `  flynn meta
  flynn meta set owner=alice tier=gold
  flynn meta unset tier`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, app, err := s.appClient(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, app.Meta)
			}
			tw := table(cmd)
			fmt.Fprintln(tw, "KEY\tVALUE")
			for _, k := range sortedKeys(app.Meta) {
				fmt.Fprintf(tw, "%s\t%s\n", k, app.Meta[k])
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	update := func(cmd *cobra.Command, change func(map[string]string)) error {
		ctx := cmd.Context()
		c, app, err := s.appClient(ctx)
		if err != nil {
			return err
		}
		meta := maps.Clone(app.Meta)
		if meta == nil {
			meta = map[string]string{}
		}
		change(meta)
		if _, err := c.UpdateAppMeta(ctx, app.ID, meta); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Updated the metadata of %s.\n", app.Name)
		return nil
	}
	set := &cobra.Command{
		Use:     "set KEY=VALUE...",
		Short:   "Set metadata keys",
		Example: "  flynn meta set owner=alice",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kv, err := parseKeyValues(args, "meta pair")
			if err != nil {
				return err
			}
			return update(cmd, func(m map[string]string) { maps.Copy(m, kv) })
		},
	}
	unset := &cobra.Command{
		Use:     "unset KEY...",
		Short:   "Remove metadata keys",
		Example: "  flynn meta unset owner",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return update(cmd, func(m map[string]string) {
				for _, k := range args {
					delete(m, k)
				}
			})
		},
	}
	c.AddCommand(set, unset)
	return c
}

var limitNames = []string{api.ResourceMemory, api.ResourceCPU, api.ResourceTempDisk, api.ResourceMaxFD, api.ResourceMaxProcs}

func newLimitCmd(s *state) *cobra.Command {
	var typ string
	c := &cobra.Command{
		Use:   "limit [-t TYPE]",
		Short: "Show or set resource limits of process types",
		Long: `Show the resource limits of each process type of the current release.
limit set makes a new release with changed limits and deploys it. Limits:
memory and temp_disk in bytes with an optional unit (KB, MB, GB, KiB, MiB,
GiB), cpu in milli-cores (1000 = one core), max_fd and max_procs as counts.`,
		Example: `  flynn limit
  flynn limit -t web
  flynn limit set web memory=512MB cpu=500`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			rel, err := currentRelease(ctx, c, app)
			if err != nil {
				return err
			}
			if typ != "" {
				if _, ok := rel.Processes[typ]; !ok {
					return fmt.Errorf("the release has no process type %q: see flynn scale", typ)
				}
			}
			for _, t := range sortedKeys(rel.Processes) {
				if typ != "" && t != typ {
					continue
				}
				var parts []string
				for _, n := range limitNames {
					if spec, ok := rel.Processes[t].Resources[n]; ok && spec.Limit != nil {
						parts = append(parts, n+"="+formatLimit(n, *spec.Limit))
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", t, strings.Join(parts, " "))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&typ, "process-type", "t", "", "show only this process type")
	set := &cobra.Command{
		Use:     "set TYPE LIMIT=VALUE...",
		Short:   "Set resource limits of a process type and deploy",
		Example: "  flynn limit set web memory=1GB max_fd=20000\n  flynn limit set worker cpu=250",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := args[0]
			limits := map[string]int64{}
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return fmt.Errorf("invalid limit %q: use LIMIT=VALUE, e.g. memory=512MB", a)
				}
				n, err := parseLimit(k, v)
				if err != nil {
					return err
				}
				limits[k] = n
			}
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			return newRelease(ctx, cmd, c, app, func(r *api.Release) error {
				p, ok := r.Processes[t]
				if !ok {
					return fmt.Errorf("the release has no process type %q: see flynn limit", t)
				}
				if p.Resources == nil {
					p.Resources = api.Resources{}
				}
				for k, n := range limits {
					n := n
					p.Resources[k] = api.ResourceSpec{Request: &n, Limit: &n}
				}
				return nil
			})
		},
	}
	c.AddCommand(set)
	return c
}

// parseLimitList parses comma-separated LIMIT=VALUE pairs (flynn run
// --limits) into resources with equal request and limit.
func parseLimitList(s string) (api.Resources, error) {
	res := api.Resources{}
	for _, a := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(a), "=")
		if !ok {
			return nil, fmt.Errorf("invalid limit %q: use LIMIT=VALUE,..., e.g. memory=512MB,cpu=500", a)
		}
		n, err := parseLimit(k, v)
		if err != nil {
			return nil, err
		}
		res[k] = api.ResourceSpec{Request: &n, Limit: &n}
	}
	return res, nil
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
}

func parseLimit(name, v string) (int64, error) {
	known := false
	for _, n := range limitNames {
		known = known || n == name
	}
	if !known {
		return 0, fmt.Errorf("unknown limit %q: use one of %s", name, strings.Join(limitNames, ", "))
	}
	mult := int64(1)
	if name == api.ResourceMemory || name == api.ResourceTempDisk {
		for _, u := range units {
			if strings.HasSuffix(v, u.suffix) {
				v, mult = strings.TrimSuffix(v, u.suffix), u.mult
				break
			}
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid value for %s: give a positive whole number (e.g. memory=512MB, cpu=500)", name)
	}
	return n * mult, nil
}

func formatLimit(name string, n int64) string {
	if name == api.ResourceMemory || name == api.ResourceTempDisk {
		for _, u := range []struct {
			s string
			m int64
		}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}} {
			if n%u.m == 0 {
				return fmt.Sprintf("%d%s", n/u.m, u.s)
			}
		}
	}
	return strconv.FormatInt(n, 10)
}
