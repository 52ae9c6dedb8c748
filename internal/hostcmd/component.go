package hostcmd

import "github.com/spf13/cobra"

// newComponentCmd groups the entrypoints of the platform's components.
// Each runs inside its own job (or in the foreground, for development).
func newComponentCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "component",
		Short: "Run a platform component (inside its job)",
		Long: `Run one of the platform's components. In a cluster these run as jobs that
flynn-host bootstrap deploys; run them by hand only for development.`,
	}
	cmd.AddCommand(
		newControllerCmd(env),
		newSchedulerCmd(env),
		newRouterCmd(env),
		newBlobstoreCmd(env),
		newLogaggCmd(env),
		newGitreceiveCmd(env),
		newPostgresCmd(env),
		newMySQLCmd(env),
		newRedisCmd(env),
		newRedisRestoreCmd(env),
	)
	return cmd
}
