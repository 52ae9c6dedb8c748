package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

func newProviderCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "provider",
		Short:   "List and add resource providers",
		Example: "  flynn provider\n  flynn provider add redis http://redis-api.discoverd/clusters",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := s.client()
			if err != nil {
				return err
			}
			ps, err := c.ProviderList(cmd.Context())
			if err != nil {
				return err
			}
			return printList(cmd, asJSON, ps, "ID\tNAME\tURL\tCREATED", func(p *api.Provider) []string {
				return []string{p.ID, p.Name, p.URL, ago(p.CreatedAt)}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	add := &cobra.Command{
		Use:     "add NAME URL",
		Short:   "Register a resource provider",
		Example: "  flynn provider add redis http://redis-api.discoverd/clusters",
		Args:    exactArgs(2, "NAME URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !strings.HasPrefix(args[1], "http://") && !strings.HasPrefix(args[1], "https://") {
				return fmt.Errorf("invalid provider URL %q: give an http:// or https:// URL", args[1])
			}
			c, _, err := s.client()
			if err != nil {
				return err
			}
			p := &api.Provider{Name: args[0], URL: args[1]}
			if err := c.CreateProvider(cmd.Context(), p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created provider %s (%s)\n", p.Name, p.ID)
			return nil
		},
	}
	c.AddCommand(add)
	return c
}

func newResourceCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "resource",
		Short: "List, add and remove an app's resources (databases and other add-ons)",
		Example: `  flynn resource
  flynn resource add postgres
  flynn resource remove postgres`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			rs, err := c.AppResourceList(ctx, app.ID)
			if err != nil {
				return err
			}
			names := map[string]string{}
			if ps, err := c.ProviderList(ctx); err == nil && !asJSON {
				for _, p := range ps {
					names[p.ID] = p.Name
				}
			}
			return printList(cmd, asJSON, rs, "ID\tPROVIDER\tEXTERNAL ID\tCREATED", func(r *api.Resource) []string {
				return []string{r.ID, orDefault(names[r.ProviderID], r.ProviderID), r.ExternalID, ago(r.CreatedAt)}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var config string
	add := &cobra.Command{
		Use:   "add [-c JSON] PROVIDER",
		Short: "Provision a resource for the app (its env goes into a new release)",
		Example: `  flynn resource add postgres
  flynn resource add -c '{"size":"small"}' redis`,
		Args: exactArgs(1, "PROVIDER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if config != "" && !json.Valid([]byte(config)) {
				return errors.New("-c must be valid JSON, e.g. -c '{\"size\":\"small\"}'")
			}
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			p, err := c.GetProvider(ctx, args[0])
			if errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("provider %q not found: see flynn provider", args[0])
			}
			if err != nil {
				return err
			}
			stream, err := c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeDeployment}})
			if err != nil {
				return err
			}
			defer stream.Close()
			r, err := c.ProvisionResource(ctx, p.ID, []string{app.ID}, json.RawMessage(config))
			if err != nil {
				return err
			}
			if err := waitResourceDeployment(ctx, cmd, c, stream, app); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created resource %s and deployed a release of %s with its env.\n", r.ID, app.Name)
			return nil
		},
	}
	add.Flags().StringVarP(&config, "config", "c", "", "JSON config for the provider")
	var yes bool
	remove := &cobra.Command{
		Use:   "remove [-y] PROVIDER [RESOURCE-ID|EXTERNAL-ID]",
		Short: "Strip a resource's env from the app, deploy, and deprovision the resource",
		Example: `  flynn resource remove postgres
  flynn resource remove -y postgres 5d1f...`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			p, err := c.GetProvider(ctx, args[0])
			if errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("provider %q not found: see flynn provider", args[0])
			}
			if err != nil {
				return err
			}
			rs, err := c.AppResourceList(ctx, app.ID)
			if err != nil {
				return err
			}
			var match []*api.Resource
			for _, r := range rs {
				if r.ProviderID == p.ID && (len(args) == 1 || r.ID == args[1] || r.ExternalID == args[1]) {
					match = append(match, r)
				}
			}
			switch {
			case len(match) == 0:
				return fmt.Errorf("app %s has no such %s resource: see flynn resource", app.Name, p.Name)
			case len(match) > 1:
				return fmt.Errorf("app %s has %d %s resources: name one (see flynn resource)", app.Name, len(match), p.Name)
			}
			q := fmt.Sprintf("Remove %s resource %s from %s? Its env vars leave the app (which is deployed again) and its data is deleted.", p.Name, match[0].ID, app.Name)
			if err := confirm(cmd, yes, q, "resource not removed: answer yes, or pass -y"); err != nil {
				return err
			}
			stream, err := c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeDeployment}})
			if err != nil {
				return err
			}
			defer stream.Close()
			if err := c.DeleteResource(ctx, p.ID, match[0].ID); err != nil {
				return err
			}
			if err := waitResourceDeployment(ctx, cmd, c, stream, app); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted resource %s and deployed %s without its env.\n", match[0].ID, app.Name)
			return nil
		},
	}
	remove.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	c.AddCommand(add, remove)
	return c
}

// waitResourceDeployment waits for the deployment the controller started
// for app when a resource was added or removed, if any: the command
// returns once the running processes have the new env.
func waitResourceDeployment(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, stream *controllerclient.EventStream, app *api.App) error {
	ds, err := c.DeploymentList(ctx, app.ID)
	if err != nil {
		return err
	}
	// It deploys from the release current before the change (app as it
	// was read then).
	var d *api.Deployment
	for _, x := range ds {
		if app.ReleaseID != "" && x.OldReleaseID == app.ReleaseID && x.NewReleaseID != app.ReleaseID && (d == nil || x.CreatedAt.After(d.CreatedAt)) {
			d = x
		}
	}
	if d == nil {
		return nil // the app ran nothing: its release became current at once
	}
	timeout := time.Duration(d.DeployTimeout)*time.Second + 30*time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() { <-ctx.Done(); stream.Close() }()
	if err := waitDeployment(ctx, cmd, c, stream, d); err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("timed out after %s waiting for deployment %s: see flynn deployment and flynn ps", timeout, d.ID)
		}
		return err
	}
	return nil
}
