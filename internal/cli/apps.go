package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

func newCreateCmd(s *state) *cobra.Command {
	var (
		remote string
		ssh    bool
		yes    bool
		src    gitSource
	)
	c := &cobra.Command{
		Use:   "create [-r REMOTE] [--ssh] [--git URL [--branch BRANCH]] [NAME]",
		Short: "Create an app",
		Long: `Create an app (with a generated name when NAME is not given). Inside a git
repo it also adds a git remote (default "flynn") to push the app's code to:
over HTTPS with this flynn binary as the credential helper, or over SSH with
--ssh (add your key first with flynn key add). -r "" adds no remote.

With --git URL it adds no remote: the cluster fetches the repository and
builds and deploys it as flynn deploy --git does.`,
		Example: `  flynn create myapp
  flynn create -r production myapp
  flynn create --ssh myapp
  flynn create --git https://github.com/flynn-examples/go-flynn-example myapp
  flynn create            # generated name`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			app := &api.App{}
			if len(args) == 1 {
				if !validAppName(args[0]) {
					return fmt.Errorf("invalid app name %q: use lower-case letters, digits and single dashes", args[0])
				}
				app.Name = args[0]
			}
			c, cl, err := s.client()
			if err != nil {
				return err
			}
			addRemote := remote != "" && src.url == "" && inGitRepo(ctx, ".")
			if addRemote && !yes && gitRemoteURL(ctx, ".", remote) != "" {
				return fmt.Errorf("git remote %q already exists: use -r to pick another name, or -y to replace it", remote)
			}
			if err := c.CreateApp(ctx, app); err != nil {
				if errors.Is(err, api.ErrObjectExists) || errors.Is(err, api.ErrConflict) {
					return fmt.Errorf("app %q already exists: pick another name, or use flynn remote add -a %s", app.Name, app.Name)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created %s\n", app.Name)
			if src.url != "" {
				if err := s.gitDeploy(ctx, cmd.OutOrStdout(), app.Name, &src); err != nil {
					return fmt.Errorf("%w (the app was created: try again with flynn -a %s deploy --git URL)", err, app.Name)
				}
				return nil
			}
			if addRemote {
				if err := s.setRemote(ctx, cmd, c, cl, app.Name, remote, ssh); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&remote, "remote", "r", "flynn", `name of the git remote to add ("" for none)`)
	f.BoolVar(&ssh, "ssh", false, "push over SSH instead of HTTPS")
	f.BoolVarP(&yes, "yes", "y", false, "replace an existing git remote of the same name")
	src.flags(c, false)
	return c
}

func newRemoteCmd(s *state) *cobra.Command {
	c := &cobra.Command{
		Use:     "remote",
		Short:   "Manage the git remote of an app",
		Example: "  flynn -a myapp remote add\n  flynn -a myapp remote add staging",
	}
	var (
		ssh, yes bool
	)
	add := &cobra.Command{
		Use:   "add [REMOTE]",
		Short: "Add a git remote for the app (default name flynn)",
		Example: `  flynn -a myapp remote add
  flynn -a myapp remote add --ssh staging`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			remote := "flynn"
			if len(args) == 1 {
				remote = args[0]
			}
			if !inGitRepo(ctx, ".") {
				return errors.New("not in a git repo: run it inside your app's repo (git init first)")
			}
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			_, cl, _ := s.client()
			if !yes && gitRemoteURL(ctx, ".", remote) != "" {
				return fmt.Errorf("git remote %q already exists: pass -y to replace it", remote)
			}
			return s.setRemote(ctx, cmd, c, cl, app.Name, remote, ssh)
		},
	}
	add.Flags().BoolVar(&ssh, "ssh", false, "push over SSH instead of HTTPS")
	add.Flags().BoolVarP(&yes, "yes", "y", false, "replace an existing remote of the same name")
	c.AddCommand(add)
	return c
}

// setRemote adds (or replaces) a git remote for app and configures git to
// authenticate to the cluster: the credential helper and the cluster CA for
// HTTPS, nothing for SSH.
func (s *state) setRemote(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, cl *Cluster, app, remote string, ssh bool) error {
	var u string
	if ssh {
		if cl.SSHGitURL == "" {
			return fmt.Errorf("cluster %q has no SSH git address: re-add it with flynn cluster add -f --ssh-git HOST:PORT ..., or drop --ssh", cl.Name)
		}
		u = "ssh://git@" + cl.SSHGitURL + "/" + app + ".git"
	} else {
		if cl.GitURL == "" {
			return fmt.Errorf("cluster %q has no git URL: re-add it with flynn cluster add -f --git-url URL ...", cl.Name)
		}
		u = cl.GitURL + "/" + app + ".git"
	}
	if gitRemoteURL(ctx, ".", remote) != "" {
		if err := git(ctx, ".", "remote", "set-url", remote, u); err != nil {
			return err
		}
	} else if err := git(ctx, ".", "remote", "add", remote, u); err != nil {
		return err
	}
	if !ssh {
		if err := s.configureGitHTTPS(ctx, cmd, c, cl); err != nil {
			return err
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Added git remote %s: %s\n", remote, u)
	return nil
}

// configureGitHTTPS makes this binary git's credential helper for the
// cluster's git URL and, for a cluster with a pinned certificate, tells git
// to trust the cluster CA (fetched from GET /ca-cert into ~/.flynn/).
func (s *state) configureGitHTTPS(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, cl *Cluster) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the flynn binary for the git credential helper: %w", err)
	}
	helper := exe + " git-credentials"
	if strings.ContainsAny(exe, " \t'\"") {
		helper = "'" + strings.ReplaceAll(exe, "'", `'\''`) + "' git-credentials"
	}
	if err := git(ctx, ".", "config", "--replace-all", "credential."+cl.GitURL+".helper", helper); err != nil {
		return err
	}
	gu, err := url.Parse(cl.GitURL)
	if err != nil || gu.Scheme != "https" || cl.TLSPin == "" {
		return nil
	}
	pem, err := c.CACert(ctx)
	if err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: could not fetch the cluster CA (%v); git push over HTTPS may fail certificate checks\n", explain(errOr(err, "no certificate in reply")))
		return nil
	}
	home, err := s.homeDir()
	if err != nil {
		return err
	}
	// The CA goes in a directory of its own, named both as sslCAInfo and
	// sslCAPath: GIT_SSL_CAINFO (often set to the system bundle)
	// overrides the first but not the second, and libcurl trusts both.
	dir := filepath.Join(home, ".flynn", "ca-certs", cl.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save cluster CA: %w", err)
	}
	file := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(file, pem, 0o644); err != nil {
		return fmt.Errorf("save cluster CA: %w", err)
	}
	// OpenSSL builds of libcurl look certificates up by subject hash.
	if out, err := exec.CommandContext(ctx, "openssl", "x509", "-noout", "-subject_hash", "-in", file).Output(); err == nil {
		if h := strings.TrimSpace(string(out)); h != "" {
			link := filepath.Join(dir, h+".0")
			os.Remove(link)
			os.Symlink("ca.pem", link)
		}
	}
	if err := git(ctx, ".", "config", "--replace-all", "http."+cl.GitURL+".sslCAInfo", file); err != nil {
		return err
	}
	if err := git(ctx, ".", "config", "--replace-all", "http."+cl.GitURL+".sslCAPath", dir); err != nil {
		return err
	}
	if v := s.getenv("GIT_SSL_CAPATH"); v != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: GIT_SSL_CAPATH=%s overrides the cluster CA git was told to trust (%s): unset it for git push\n", v, dir)
	}
	return nil
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

func newDeleteCmd(s *state) *cobra.Command {
	var (
		yes    bool
		remote string
	)
	c := &cobra.Command{
		Use:   "delete [-y] [-r REMOTE]",
		Short: "Delete an app",
		Long: `Delete an app with its releases, formations and routes. It asks for
confirmation unless -y is given, and removes the app's git remote.`,
		Example: "  flynn -a myapp delete\n  flynn -a myapp delete -y",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Are you sure you want to delete the app %q?", app.Name), "app not deleted: answer yes, or pass -y"); err != nil {
				return err
			}
			del, err := c.DeleteApp(ctx, app.ID)
			if err != nil {
				return err
			}
			if u := gitRemoteURL(ctx, ".", remote); u != "" && appFromGitURL(u) == app.Name {
				if err := git(ctx, ".", "remote", "remove", remote); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted %s (removed %d routes, deleted %d releases, detached %d resources)\n",
				app.Name, len(del.DeletedRoutes), len(del.DeletedReleases), len(del.DeletedResources))
			return nil
		},
	}
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	c.Flags().StringVarP(&remote, "remote", "r", "flynn", "git remote to remove")
	return c
}

func newAppsCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "apps",
		Short:   "List apps",
		Example: "  flynn apps\n  flynn apps --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := s.client()
			if err != nil {
				return err
			}
			apps, err := c.ListApps(cmd.Context())
			if err != nil {
				return err
			}
			return printList(cmd, asJSON, apps, "ID\tNAME\tRELEASE\tCREATED", func(a *api.App) []string {
				return []string{a.ID, a.Name, a.ReleaseID, ago(a.CreatedAt)}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newInfoCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "info",
		Short:   "Show an app's details",
		Example: "  flynn info\n  flynn -a myapp info --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			_, cl, _ := s.client()
			routes, err := c.RouteList(ctx, app.ID)
			if err != nil {
				return err
			}
			var procs map[string]int
			if app.ReleaseID != "" {
				f, err := c.GetFormation(ctx, app.ID, app.ReleaseID)
				if err != nil && !errors.Is(err, api.ErrNotFound) {
					return err
				}
				if err == nil {
					procs = f.Processes
				}
			}
			if asJSON {
				return writeJSON(cmd, map[string]any{"app": app, "routes": routes, "processes": procs})
			}
			tw := table(cmd)
			fmt.Fprintf(tw, "=== %s\n", app.Name)
			fmt.Fprintf(tw, "ID:\t%s\n", app.ID)
			fmt.Fprintf(tw, "Release:\t%s\n", orNone(app.ReleaseID))
			fmt.Fprintf(tw, "Strategy:\t%s\n", orDefault(app.Strategy, api.StrategyAllAtOnce))
			if cl.GitURL != "" {
				fmt.Fprintf(tw, "Git URL:\t%s/%s.git\n", cl.GitURL, app.Name)
			}
			for _, r := range routes {
				if r.Type == api.RouteHTTP {
					fmt.Fprintf(tw, "Web URL:\thttp://%s%s\n", r.Domain, r.Path)
				}
			}
			for _, t := range sortedKeys(procs) {
				fmt.Fprintf(tw, "Processes %s:\t%d\n", t, procs[t])
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func orNone(s string) string { return orDefault(s, "(none)") }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
