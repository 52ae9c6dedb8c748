package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

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
		Short: "List, show, add and roll back releases",
		Example: `  flynn release
  flynn release show
  flynn release add -f config.json docker://registry/app:v2
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
		Long: `Create an artifact for the image URI (an OCI reference, type docker by
default), a release of it and deploy that. FILE is JSON with the release's
"processes" (and optionally "env", "meta"); the current env is kept and FILE's
env is merged over it.`,
		Example: `  flynn release add -f release.json docker://registry.example.com/app:v2
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
			art := &api.Artifact{Type: artType, URI: args[0]}
			if err := c.CreateArtifact(ctx, art); err != nil {
				return fmt.Errorf("create artifact: %w", explain(err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created artifact %s\n", art.ID)
			return newRelease(ctx, cmd, c, app, func(r *api.Release) error {
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
	c.AddCommand(lc, show, add, rollback)
	return c
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
		Short: "List an app's deployments and set its deploy timeout",
		Example: `  flynn deployment
  flynn deployment timeout
  flynn deployment timeout 300`,
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
	c.AddCommand(timeout)
	return c
}
