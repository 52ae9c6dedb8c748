// Package cli implements the flynn command-line tool that developers and
// operators use to manage apps on a Flynn cluster. One file per command
// group; Run is the whole program.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/version"
)

// Env is what a command needs from the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable.
	Getenv func(string) string
}

// Run runs the flynn command line with args (without the program name) and
// returns the process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	root := newRoot(env)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if asExit(err, &ee) {
			return ee.code // the job's own exit status: nothing to add
		}
		fmt.Fprintf(env.Stderr, "flynn: %v\n", explain(err))
		return 1
	}
	return 0
}

func newRoot(env Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "flynn",
		Short: "Manage apps on a Flynn cluster",
		Long: `flynn manages apps on a Flynn cluster: create an app, push code to it with git,
scale its processes, read its logs and change its configuration.

Global flags go before the command: flynn [-a APP] [-c CLUSTER] COMMAND.`,
		Example: `  flynn create myapp
  git push flynn main
  flynn scale web=2
  flynn log -f`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Global flags come before the command, as in Flynn
		// (flynn -a APP ps -a), so commands may reuse -a and -c.
		TraverseChildren: true,
		Args:             cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q: see flynn --help", args[0])
			}
			return cmd.Help()
		},
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	s := &state{env: env}
	pf := root.Flags()
	pf.StringVarP(&s.appFlag, "app", "a", "", "app name (default: $FLYNN_APP, else the app of the git remote \"flynn\")")
	pf.StringVarP(&s.clusterFlag, "cluster", "c", "", "cluster name (default: $FLYNN_CLUSTER, else the default cluster)")
	root.AddCommand(
		newVersionCmd(),
		newClusterCmd(s),
		newGitCredentialsCmd(s),
		newKeyCmd(s),
		newCreateCmd(s),
		newDeleteCmd(s),
		newAppsCmd(s),
		newInfoCmd(s),
		newRemoteCmd(s),
		newPsCmd(s),
		newKillCmd(s),
		newScaleCmd(s),
		newLogCmd(s),
		newRunCmd(s),
		newEnvCmd(s),
		newMetaCmd(s),
		newLimitCmd(s),
		newReleaseCmd(s),
		newDockerCmd(s),
		newDeploymentCmd(s),
		newDeployCmd(s),
		newRouteCmd(s),
		newProviderCmd(s),
		newResourceCmd(s),
		newVolumeCmd(s),
		newPgCmd(s),
		newMySQLCmd(s),
		newRedisCmd(s),
		newExportCmd(s),
		newImportCmd(s),
	)
	// Give cobra's generated completion commands examples too.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Example = "  source <(flynn completion bash)\n  flynn completion zsh > \"${fpath[1]}/_flynn\""
			for _, sub := range c.Commands() {
				sub.Example = "  flynn completion " + sub.Name() + " --help"
			}
		}
	}
	return root
}

// state is what every command shares: the global flags and lazily loaded
// config. It is built once per Run; there are no package globals.
type state struct {
	env         Env
	appFlag     string
	clusterFlag string
	cfg         *Config
}

func (s *state) getenv(k string) string {
	if s.env.Getenv == nil {
		return ""
	}
	return s.env.Getenv(k)
}

// config loads ~/.flynnrc (or $FLYNNRC) once.
func (s *state) config() (*Config, error) {
	if s.cfg != nil {
		return s.cfg, nil
	}
	c, err := loadConfig(s.getenv)
	if err != nil {
		return nil, err
	}
	s.cfg = c
	return c, nil
}

// cluster returns the cluster to talk to.
func (s *state) cluster() (*Cluster, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	return clusterFor(cfg, s.clusterFlag, s.getenv)
}

// app returns the app name: -a, then $FLYNN_APP, then the git remote
// "flynn" of the repo in the working directory.
func (s *state) app(ctx context.Context) (string, error) {
	if s.appFlag != "" {
		return s.appFlag, nil
	}
	if a := s.getenv("FLYNN_APP"); a != "" {
		return a, nil
	}
	if u := gitRemoteURL(ctx, ".", "flynn"); u != "" {
		if a := appFromGitURL(u); a != "" {
			return a, nil
		}
		return "", fmt.Errorf("cannot tell the app from git remote flynn (%s): use -a APP", u)
	}
	return "", errors.New("no app given: use -a APP, set $FLYNN_APP, or run inside a repo with a flynn git remote (flynn create adds it)")
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Show the flynn version",
		Example: "  flynn version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), version.String())
			return nil
		},
	}
}

// exitError carries a specific exit code (e.g. the status of a job run
// with flynn run) out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func asExit(err error, target *exitError) bool {
	e, ok := err.(exitError)
	if ok {
		*target = e
	}
	return ok
}
