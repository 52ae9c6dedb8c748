// Command flynn-data runs the platform's components that keep data and
// need no etcd: the blobstore, the log aggregator and the database
// appliances (postgres, mysql, redis). A system job mounts it as
// /bin/flynn-NAME and runs component NAME that way; it does what
// `flynn-host component NAME` does, in a binary that links only these
// components (see internal/component).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/blobstorecmd"
	"github.com/flynnrebuilt/flynn/internal/component/logaggcmd"
	"github.com/flynnrebuilt/flynn/internal/component/mysqlcmd"
	"github.com/flynnrebuilt/flynn/internal/component/postgrescmd"
	"github.com/flynnrebuilt/flynn/internal/component/rediscmd"
)

func main() {
	cmds := map[string]func(component.Env) *cobra.Command{
		"blobstore":     blobstorecmd.New,
		"logaggregator": logaggcmd.New,
		"postgres":      postgrescmd.New,
		"mysql":         mysqlcmd.New,
		"redis":         rediscmd.New,
		"redis-restore": rediscmd.NewRestore,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := component.Multi(ctx, "flynn-data", "Run a platform component that keeps data", cmds, os.Args[0], os.Args[1:], component.OSEnv())
	stop()
	os.Exit(code)
}
