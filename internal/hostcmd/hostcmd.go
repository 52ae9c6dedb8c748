// Package hostcmd implements flynn-host, the one server-side binary: the
// host daemon, cluster set-up, host administration commands, and the
// entrypoints of the platform's components. One file per command group.
package hostcmd

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/gitreceivecmd"
	"github.com/flynnrebuilt/flynn/internal/version"
)

// Env is what a command needs from the outside world (the same as the
// components' component.Env).
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// Run runs flynn-host with args (without the program name) and returns the
// process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	root := newRoot(env)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		// An exitError passes on a status that was already reported (a
		// job's exit status, a rejected push): print nothing more.
		if ee, ok := err.(exitError); ok {
			return ee.code
		}
		if ee, ok := err.(component.ExitError); ok {
			return ee.Code
		}
		fmt.Fprintf(env.Stderr, "flynn-host: %v\n", err)
		return 1
	}
	return 0
}

func newRoot(env Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "flynn-host",
		Short: "Run and administer a Flynn host",
		Long: `flynn-host is the server side of Flynn: the host daemon that runs jobs in
containers, cluster set-up (init, join, bootstrap, up, down), host
administration, and the entrypoints of the platform's components.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.AddCommand(
		newVersionCmd(),
		newComponentCmd(env),
		newStackCmd(env), newSlugbuilderCmd(env), newSlugrunnerCmd(env),
		newDaemonCmd(env), newInitCmd(env), newJoinCmd(env), newStatusCmd(env), newListCmd(env), newForwardCmd(env),
		// git hooks and SSH clients of repositories gitreceive set up
		// when it ran as flynn-host component gitreceive.
		gitreceivecmd.NewHook(component.Env(env)),
		gitreceivecmd.NewGitSSH(component.Env(env)),
		newBootstrapCmd(env), newUpCmd(env), newDownCmd(env),
	)
	root.AddCommand(newJobCmds(env)...)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the flynn-host version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), version.String())
			return nil
		},
	}
}

// exitError carries a specific exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
