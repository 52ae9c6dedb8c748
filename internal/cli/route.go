package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// routeFlags are the options of route add and route update.
type routeFlags struct {
	service, path, certFile, keyFile string
	port                             int
	sticky, leader, noLeader         bool
	noDrain, disableKeepAlives       bool
}

func (rf *routeFlags) register(c *cobra.Command, http bool) {
	f := c.Flags()
	f.StringVarP(&rf.service, "service", "s", "", "discoverd service to send traffic to (default <app>-web)")
	f.IntVarP(&rf.port, "port", "p", 0, "port to listen on (tcp: default a free one in 3000-3500)")
	f.BoolVar(&rf.leader, "leader", false, "send traffic only to the service's leader")
	f.BoolVar(&rf.noLeader, "no-leader", false, "send traffic to every instance (undo --leader)")
	f.BoolVar(&rf.noDrain, "no-drain-backends", false, "do not wait for in-flight requests when a backend goes away")
	if http {
		f.StringVar(&rf.path, "path", "", "path prefix (default /)")
		f.StringVarP(&rf.certFile, "tls-cert", "c", "", "PEM file of the TLS certificate (with -k)")
		f.StringVarP(&rf.keyFile, "tls-key", "k", "", "PEM file of the TLS key (with -c)")
		f.BoolVar(&rf.sticky, "sticky", false, "keep each client on one backend (cookie)")
		f.BoolVar(&rf.disableKeepAlives, "disable-keep-alives", false, "no keep-alive connections to backends")
	}
}

// apply sets the flags the user gave on r.
func (rf *routeFlags) apply(c *cobra.Command, r *api.Route) error {
	f := c.Flags()
	if f.Changed("service") {
		r.Service = rf.service
	}
	if f.Changed("port") {
		if rf.port <= 0 || rf.port > 65535 {
			return fmt.Errorf("invalid port %d: give 1-65535", rf.port)
		}
		r.Port = int32(rf.port)
	}
	if rf.leader && rf.noLeader {
		return errors.New("--leader and --no-leader contradict each other")
	}
	if rf.leader {
		r.Leader = true
	}
	if rf.noLeader {
		r.Leader = false
	}
	if f.Changed("no-drain-backends") {
		r.DrainBackends = !rf.noDrain
	}
	if r.Type != api.RouteHTTP {
		return nil
	}
	if f.Changed("path") {
		if !strings.HasPrefix(rf.path, "/") {
			return fmt.Errorf("invalid path %q: it must start with /", rf.path)
		}
		r.Path = rf.path
	}
	if f.Changed("sticky") {
		r.Sticky = rf.sticky
	}
	if f.Changed("disable-keep-alives") {
		r.DisableKeepAlives = rf.disableKeepAlives
	}
	if (rf.certFile == "") != (rf.keyFile == "") {
		return errors.New("give both -c CERT and -k KEY for a TLS certificate")
	}
	if rf.certFile != "" {
		cert, err := os.ReadFile(rf.certFile)
		if err != nil {
			return fmt.Errorf("read TLS certificate: %w", err)
		}
		key, err := os.ReadFile(rf.keyFile)
		if err != nil {
			return fmt.Errorf("read TLS key: %w", err)
		}
		r.Certificate = &api.Certificate{Cert: string(cert), Key: string(key)}
	}
	return nil
}

func newRouteCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "route",
		Short: "List and change an app's routes",
		Example: `  flynn route
  flynn route add http example.com
  flynn route add http --sticky --path /api/ -s myapp-api example.com
  flynn route add http -c cert.pem -k key.pem secure.example.com
  flynn route add tcp --leader -s myapp-db
  flynn route update http/5d1f... --no-sticky
  flynn route remove http/5d1f...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			routes, err := c.RouteList(ctx, app.ID)
			if err != nil {
				return err
			}
			return printList(cmd, asJSON, routes, "ROUTE\tSERVICE\tID\tSTICKY\tLEADER\tPATH", func(r *api.Route) []string {
				target := r.Domain
				if r.Type == api.RouteTCP || r.Port != 0 {
					target += ":" + strconv.Itoa(int(r.Port))
				}
				return []string{r.Type + ":" + target, r.Service, r.Type + "/" + r.ID, strconv.FormatBool(r.Sticky), strconv.FormatBool(r.Leader), orDefault(r.Path, pathDefault(r))}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	add := &cobra.Command{
		Use:     "add",
		Short:   "Add an http or tcp route",
		Example: "  flynn route add http example.com\n  flynn route add tcp -p 3306",
	}
	var hf, tf routeFlags
	addHTTP := &cobra.Command{
		Use:   "http [flags] DOMAIN",
		Short: "Add an http route for DOMAIN",
		Example: `  flynn route add http example.com
  flynn route add http --sticky --path /api/ -s myapp-api example.com
  flynn route add http -c cert.pem -k key.pem secure.example.com`,
		Args: exactArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := &api.Route{Type: api.RouteHTTP, Domain: args[0], DrainBackends: true}
			return s.addRoute(cmd, &hf, r)
		},
	}
	hf.register(addHTTP, true)
	addTCP := &cobra.Command{
		Use:     "tcp [flags]",
		Short:   "Add a tcp route",
		Example: "  flynn route add tcp\n  flynn route add tcp -p 3306 -s myapp-db --leader",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r := &api.Route{Type: api.RouteTCP, DrainBackends: true}
			return s.addRoute(cmd, &tf, r)
		},
	}
	tf.register(addTCP, false)
	add.AddCommand(addHTTP, addTCP)

	var uf routeFlags
	var noSticky bool
	update := &cobra.Command{
		Use:   "update TYPE/ID [flags]",
		Short: "Change a route",
		Example: `  flynn route update http/5d1f... --sticky
  flynn route update tcp/9a2b... -s myapp-db --leader`,
		Args: exactArgs(1, "a route TYPE/ID (see flynn route)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			r, err := findRoute(ctx, c, app, args[0])
			if err != nil {
				return err
			}
			if err := uf.apply(cmd, r); err != nil {
				return err
			}
			if noSticky {
				r.Sticky = false
			}
			if err := c.UpdateRoute(ctx, app.ID, r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "updated %s/%s\n", r.Type, r.ID)
			return nil
		},
	}
	uf.register(update, true)
	update.Flags().BoolVar(&noSticky, "no-sticky", false, "turn sticky sessions off")

	remove := &cobra.Command{
		Use:     "remove TYPE/ID",
		Short:   "Remove a route",
		Example: "  flynn route remove http/5d1f...",
		Args:    exactArgs(1, "a route TYPE/ID (see flynn route)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			r, err := findRoute(ctx, c, app, args[0])
			if err != nil {
				return err
			}
			if err := c.DeleteRoute(ctx, app.ID, r.Type, r.ID); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Route %s/%s removed.\n", r.Type, r.ID)
			return nil
		},
	}
	c.AddCommand(add, update, remove)
	return c
}

func pathDefault(r *api.Route) string {
	if r.Type == api.RouteHTTP {
		return "/"
	}
	return ""
}

func (s *state) addRoute(cmd *cobra.Command, rf *routeFlags, r *api.Route) error {
	ctx := cmd.Context()
	c, app, err := s.appClient(ctx)
	if err != nil {
		return err
	}
	r.Service = app.Name + "-web"
	if err := rf.apply(cmd, r); err != nil {
		return err
	}
	if err := c.CreateRoute(ctx, app.ID, r); err != nil {
		if errors.Is(err, api.ErrObjectExists) || errors.Is(err, api.ErrConflict) {
			return fmt.Errorf("%v: see the existing routes with flynn route", explain(err))
		}
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s/%s\n", r.Type, r.ID)
	return nil
}

// findRoute finds an app's route by "type/id" or bare id.
func findRoute(ctx context.Context, c *controllerclient.Client, app *api.App, ref string) (*api.Route, error) {
	typ, id, ok := strings.Cut(ref, "/")
	if !ok {
		typ, id = "", ref
	}
	routes, err := c.RouteList(ctx, app.ID)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if r.ID == id && (typ == "" || r.Type == typ) {
			return r, nil
		}
	}
	return nil, fmt.Errorf("route %q not found in app %s: see flynn route", ref, app.Name)
}
