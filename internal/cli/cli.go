// Package cli implements the flynn command-line tool that developers and
// operators use to manage apps on a Flynn cluster. One file per command
// group; Run is the whole program.
package cli

import (
	"context"
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
		fmt.Fprintf(env.Stderr, "flynn: %v\n", err)
		var ee exitError
		if asExit(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func newRoot(env Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "flynn",
		Short: "Manage apps on a Flynn cluster",
		Long: `flynn manages apps on a Flynn cluster: create an app, push code to it with git,
scale its processes, read its logs and change its configuration.`,
		Example: `  flynn create myapp
  git push flynn main
  flynn scale web=2
  flynn log -f`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.AddCommand(newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the flynn version",
		Args:  cobra.NoArgs,
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
