package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

func newReleaseCmd(s *state) *cobra.Command {
	var quiet, asJSON bool
	list := func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, app, err := s.appClient(ctx)
		if err != nil {
			return err
		}
		rels, err := newestReleases(ctx, c, app.ID)
		if err != nil {
			return err
		}
		if quiet && !asJSON {
			return printIDs(cmd, rels, func(r *api.Release) string { return r.ID })
		}
		return printList(cmd, asJSON, rels, "ID\tCREATED\tCURRENT", func(r *api.Release) []string {
			cur := ""
			if r.ID == app.ReleaseID {
				cur = "*"
			}
			return []string{r.ID, ago(r.CreatedAt), cur}
		})
	}
	c := &cobra.Command{
		Use:   "release [-q]",
		Short: "List, show, add, update, delete and roll back releases",
		Example: `  flynn release
  flynn release show
  flynn release add -f config.json docker://registry/app:v2
  flynn release update update.json
  flynn release delete -y 5d1f...
  flynn release rollback -y`,
		Args: cobra.NoArgs,
		RunE: list,
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only IDs")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	lc := &cobra.Command{Use: "list", Short: "List releases, newest first", Example: "  flynn release list -q", Args: cobra.NoArgs, RunE: list}
	lc.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only IDs")
	lc.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var showJSON bool
	show := &cobra.Command{
		Use:     "show [--json] [ID]",
		Short:   "Show a release (default: the current one)",
		Example: "  flynn release show\n  flynn release show --json 5d1f...",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			id := app.ReleaseID
			if len(args) == 1 {
				id = args[0]
			}
			if id == "" {
				return fmt.Errorf("app %s has no release yet: deploy code first (git push flynn main)", app.Name)
			}
			r, err := c.GetRelease(ctx, id)
			if errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("release %q not found: see flynn release", id)
			}
			if err != nil {
				return err
			}
			if showJSON {
				return writeJSON(cmd, r)
			}
			tw := table(cmd)
			fmt.Fprintf(tw, "ID:\t%s\n", r.ID)
			fmt.Fprintf(tw, "Artifacts:\t%s\n", strings.Join(r.ArtifactIDs, ", "))
			fmt.Fprintf(tw, "Created:\t%s\n", r.CreatedAt.Local().Format("2006-01-02 15:04:05"))
			for _, k := range sortedKeys(r.Env) {
				fmt.Fprintf(tw, "ENV[%s]:\t%s\n", k, r.Env[k])
			}
			for _, t := range sortedKeys(r.Processes) {
				fmt.Fprintf(tw, "Process[%s]:\t%s\n", t, strings.Join(r.Processes[t].Args, " "))
			}
			for _, k := range sortedKeys(r.Meta) {
				fmt.Fprintf(tw, "Meta[%s]:\t%s\n", k, r.Meta[k])
			}
			return tw.Flush()
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	var (
		artType, file string
	)
	add := &cobra.Command{
		Use:   "add [-t TYPE] [-f FILE] URI",
		Short: "Create a release from an image and deploy it",
		Long: `Create an artifact for the image URI (docker://REF or REF, an OCI reference,
type docker by default), a release of it and deploy that. FILE is JSON with
the release's "processes" (and optionally "env", "meta"); the current env is
kept and FILE's env is merged over it. Without FILE the current release's
process types are kept, and an app's first release gets one, web: the image's
own entrypoint and cmd serving HTTP on $PORT, scaled to 1. Processes run with
the image's env, working dir and user (not root: nobody instead).`,
		Example: `  flynn release add -f release.json docker://registry.example.com/app:v2
  flynn create web && flynn -a web release add docker://ghcr.io/example/web:v1
  echo '{"processes":{"web":{"args":["./server"]}}}' > r.json && flynn release add -f r.json docker://busybox`,
		Args: exactArgs(1, "an image URI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var spec api.Release
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("read -f file: %w", err)
				}
				if err := json.Unmarshal(b, &spec); err != nil {
					return fmt.Errorf("%s is not valid release JSON: %v", file, err)
				}
			}
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			docker := artType == api.ArtifactTypeDocker
			// An app's first image release without process types: the
			// image's own command is web, scaled to 1.
			defaultWeb := docker && spec.Processes == nil && app.ReleaseID == ""
			if defaultWeb {
				spec.Processes = map[string]*api.ProcessType{"web": webProcess(app.Name)}
			}
			if docker && spec.Processes != nil {
				if err := checkImageCommand(ctx, cmd.OutOrStdout(), args[0], &spec); err != nil {
					return err
				}
			}
			art := &api.Artifact{Type: artType, URI: args[0]}
			if err := c.CreateArtifact(ctx, art); err != nil {
				return fmt.Errorf("create artifact: %w", explain(err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created artifact %s\n", art.ID)
			var created *api.Release
			err = newRelease(ctx, cmd, c, app, func(r *api.Release) error {
				created = r
				r.ArtifactIDs = []string{art.ID}
				if spec.Processes != nil {
					r.Processes = spec.Processes
				}
				if r.Env == nil {
					r.Env = map[string]string{}
				}
				for k, v := range spec.Env {
					r.Env[k] = v
				}
				if spec.Meta != nil {
					r.Meta = spec.Meta
				}
				return nil
			})
			if err != nil || !defaultWeb {
				return err
			}
			return s.scaleFirstWeb(ctx, cmd.OutOrStdout(), c, app, created)
		},
	}
	add.Flags().StringVarP(&artType, "type", "t", api.ArtifactTypeDocker, "artifact type (docker or flynn)")
	add.Flags().StringVarP(&file, "file", "f", "", "JSON file with processes, env and meta")

	var yes bool
	rollback := &cobra.Command{
		Use:   "rollback [-y] [ID]",
		Short: "Deploy an earlier release (default: the one before the current)",
		Example: `  flynn release rollback
  flynn release rollback -y 5d1f...`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			// The release before the one a deployment under way makes
			// current.
			if app, err = waitDeployments(ctx, cmd.OutOrStdout(), c, app); err != nil {
				return err
			}
			rels, err := newestReleases(ctx, c, app.ID)
			if err != nil {
				return err
			}
			target := ""
			if len(args) == 1 {
				for _, r := range rels {
					if r.ID == args[0] {
						target = r.ID
					}
				}
				if target == "" {
					return fmt.Errorf("release %q not found in app %s: see flynn release", args[0], app.Name)
				}
				if target == app.ReleaseID {
					return fmt.Errorf("release %s is already the current release", target)
				}
			} else {
				for i, r := range rels {
					if r.ID == app.ReleaseID && i+1 < len(rels) {
						target = rels[i+1].ID
					}
				}
				if target == "" {
					return fmt.Errorf("app %s has no release before the current one to roll back to", app.Name)
				}
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Roll back %s to release %s?", app.Name, target), "not rolled back: answer yes, or pass -y"); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Rolling back to release %s\n", target)
			return deploy(ctx, cmd, c, app, target)
		},
	}
	rollback.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")

	var clean bool
	update := &cobra.Command{
		Use:   "update FILE [ID] [--clean]",
		Short: "Make a new release from a release and a JSON file of changes, and deploy it",
		Long: `Make a new release from release ID (default: the current one) with the
changes in FILE, JSON in the shape of a release ("env", "meta", "processes"),
and deploy it. Env and meta keys are merged in; a process type in FILE is
added, or merged into the existing one field by field (args, env, ports,
volumes, mounts, resources, service, omni, host_network, resurrect). With
--clean the new release is FILE alone, with the release's artifacts.`,
		Example: `  echo '{"env":{"WORKERS":"4"},"processes":{"worker":{"args":["./worker"]}}}' > update.json
  flynn release update update.json
  flynn release update --clean release.json 5d1f...`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read %s: %w", args[0], err)
			}
			var upd api.Release
			if err := json.Unmarshal(b, &upd); err != nil {
				return fmt.Errorf("%s is not valid release JSON: %v", args[0], err)
			}
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			// On top of what a deployment under way deploys.
			if app, err = waitDeployments(ctx, cmd.OutOrStdout(), c, app); err != nil {
				return err
			}
			base := app.ReleaseID
			if len(args) == 2 {
				base = args[1]
			}
			if base == "" {
				return fmt.Errorf("app %s has no release yet: deploy code first (git push flynn main), or give a release ID", app.Name)
			}
			rel, err := c.GetRelease(ctx, base)
			if errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("release %q not found: see flynn release", base)
			}
			if err != nil {
				return err
			}
			next := mergeRelease(rel, &upd, clean)
			next.AppID = app.ID
			if err := c.CreateRelease(ctx, next); err != nil {
				return err
			}
			return deploy(ctx, cmd, c, app, next.ID)
		},
	}
	update.Flags().BoolVar(&clean, "clean", false, "start from FILE alone (keeping only the artifacts)")

	var delYes bool
	del := &cobra.Command{
		Use:   "delete [-y] ID",
		Short: "Delete a release that is not the current one",
		Long: `Delete a release of the app: its formation is removed (its jobs stop) and the
layers only it used are deleted from the blobstore. The current release cannot
be deleted: deploy another one first.`,
		Example: "  flynn release delete 5d1f...\n  flynn release delete -y 5d1f...",
		Args:    exactArgs(1, "a release ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if err := confirm(cmd, delYes, fmt.Sprintf("Are you sure you want to delete release %q?", args[0]), "release not deleted: answer yes, or pass -y"); err != nil {
				return err
			}
			res, err := c.DeleteRelease(ctx, app.ID, args[0])
			if errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("release %q not found in app %s: see flynn release", args[0], app.Name)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted release %s (deleted %d files)\n", res.ReleaseID, len(res.DeletedFiles))
			return nil
		},
	}
	del.Flags().BoolVarP(&delYes, "yes", "y", false, "do not ask for confirmation")
	c.AddCommand(lc, show, add, update, del, rollback)
	return c
}

// mergeRelease is the release `release update` makes: rel with upd's
// env, meta and process fields merged in (Flynn's rules), or with clean,
// upd alone with rel's artifacts.
func mergeRelease(rel, upd *api.Release, clean bool) *api.Release {
	if clean {
		next := *upd
		next.ID, next.CreatedAt, next.ArtifactIDs = "", time.Time{}, rel.ArtifactIDs
		return &next
	}
	// Deep copy through JSON so the merge cannot change rel.
	b, _ := json.Marshal(rel)
	next := &api.Release{}
	json.Unmarshal(b, next)
	next.ID, next.CreatedAt = "", time.Time{}
	if len(upd.Env) > 0 && next.Env == nil {
		next.Env = map[string]string{}
	}
	maps.Copy(next.Env, upd.Env)
	if len(upd.Meta) > 0 && next.Meta == nil {
		next.Meta = map[string]string{}
	}
	maps.Copy(next.Meta, upd.Meta)
	if len(upd.Processes) > 0 && next.Processes == nil {
		next.Processes = map[string]*api.ProcessType{}
	}
	for typ, u := range upd.Processes {
		p := next.Processes[typ]
		if p == nil || u == nil {
			next.Processes[typ] = u
			continue
		}
		if len(u.Args) > 0 {
			p.Args = u.Args
		}
		if len(u.Env) > 0 && p.Env == nil {
			p.Env = map[string]string{}
		}
		maps.Copy(p.Env, u.Env)
		if len(u.Ports) > 0 {
			p.Ports = u.Ports
		}
		if len(u.Volumes) > 0 {
			p.Volumes = u.Volumes
		}
		if len(u.Mounts) > 0 {
			p.Mounts = u.Mounts
		}
		if len(u.Resources) > 0 && p.Resources == nil {
			p.Resources = api.Resources{}
		}
		maps.Copy(p.Resources, u.Resources)
		if u.Service != "" {
			p.Service = u.Service
		}
		p.Omni = p.Omni || u.Omni
		p.HostNetwork = p.HostNetwork || u.HostNetwork
		p.Resurrect = p.Resurrect || u.Resurrect
	}
	return next
}

// newestReleases lists the app's releases, newest first.
func newestReleases(ctx context.Context, c *controllerclient.Client, appID string) ([]*api.Release, error) {
	rels, err := c.AppReleaseList(ctx, appID)
	sort.SliceStable(rels, func(i, j int) bool { return rels[i].CreatedAt.After(rels[j].CreatedAt) })
	return rels, err
}

func newDeploymentCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "deployment",
		Short: "List an app's deployments and set how it deploys",
		Example: `  flynn deployment
  flynn deployment timeout 300
  flynn deployment strategy in-batches
  flynn deployment batch-size 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			ds, err := c.DeploymentList(ctx, app.ID)
			if err != nil {
				return err
			}
			sort.SliceStable(ds, func(i, j int) bool { return ds[i].CreatedAt.After(ds[j].CreatedAt) })
			return printList(cmd, asJSON, ds, "ID\tSTATUS\tCREATED\tFINISHED\tOLD RELEASE\tNEW RELEASE", func(d *api.Deployment) []string {
				fin := ""
				if d.FinishedAt != nil {
					fin = ago(*d.FinishedAt)
				}
				return []string{d.ID, d.Status, ago(d.CreatedAt), fin, d.OldReleaseID, d.NewReleaseID}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	timeout := &cobra.Command{
		Use:     "timeout [SECONDS]",
		Short:   "Show or set how long a deployment may take",
		Example: "  flynn deployment timeout\n  flynn deployment timeout 300",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				t := app.DeployTimeout
				if t == 0 {
					t = api.DefaultDeployTimeout
				}
				fmt.Fprintln(cmd.OutOrStdout(), t)
				return nil
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n <= 0 {
				return fmt.Errorf("invalid timeout %q: give a positive number of seconds", args[0])
			}
			if err := c.UpdateApp(ctx, &api.App{ID: app.ID, DeployTimeout: int32(n)}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deploy timeout of %s set to %ds.\n", app.Name, n)
			return nil
		},
	}
	batch := &cobra.Command{
		Use:   "batch-size [N]",
		Short: "Show or set the batch size of the in-batches strategy",
		Long: `Show or set how many jobs of a process type the in-batches deploy strategy
starts (then stops) at a time; without one it uses the number of hosts.`,
		Example: "  flynn deployment batch-size\n  flynn deployment batch-size 3",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				v, ok := app.Meta[api.MetaDeployBatchSize]
				if !ok {
					v = "not set"
				}
				fmt.Fprintln(cmd.OutOrStdout(), v)
				return nil
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n <= 0 {
				return fmt.Errorf("invalid batch size %q: give a positive number of jobs", args[0])
			}
			meta := maps.Clone(app.Meta)
			if meta == nil {
				meta = map[string]string{}
			}
			meta[api.MetaDeployBatchSize] = strconv.Itoa(n)
			if _, err := c.UpdateAppMeta(ctx, app.ID, meta); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deploy batch size of %s set to %d.\n", app.Name, n)
			return nil
		},
	}
	strategy := &cobra.Command{
		Use:   "strategy [NAME]",
		Short: "Show or set how the app's deployments replace jobs",
		Long: `Show or set the app's deploy strategy: all-at-once (the default: start the
whole new formation, then stop the old one), one-by-one (per process type,
start a new job, then stop an old one), in-batches (one-by-one in batches of
flynn deployment batch-size jobs) or one-down-one-up (per process type, stop
an old job, then start a new one).`,
		Example: "  flynn deployment strategy\n  flynn deployment strategy one-by-one",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), orDefault(app.Strategy, api.StrategyAllAtOnce))
				return nil
			}
			if err := c.UpdateApp(ctx, &api.App{ID: app.ID, Strategy: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deploy strategy of %s set to %s.\n", app.Name, args[0])
			return nil
		},
	}
	c.AddCommand(timeout, batch, strategy)
	return c
}
