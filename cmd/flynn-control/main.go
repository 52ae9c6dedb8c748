// Command flynn-control runs the platform's components that work on etcd:
// the controller, the scheduler, the router and gitreceive. A system job
// mounts it as /bin/flynn-NAME and runs component NAME that way; it does
// what `flynn-host component NAME` does, in a binary that links only
// these components (see internal/component).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/controllercmd"
	"github.com/flynnrebuilt/flynn/internal/component/gitreceivecmd"
	"github.com/flynnrebuilt/flynn/internal/component/routercmd"
	"github.com/flynnrebuilt/flynn/internal/component/schedulercmd"
)

func main() {
	cmds := map[string]func(component.Env) *cobra.Command{
		"controller": controllercmd.New,
		"scheduler":  schedulercmd.New,
		"router":     routercmd.New,
		"gitreceive": gitreceivecmd.New,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := component.Multi(ctx, "flynn-control", "Run a platform component that works on etcd", cmds, os.Args[0], os.Args[1:], component.OSEnv())
	stop()
	os.Exit(code)
}
