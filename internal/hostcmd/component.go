package hostcmd

import (
	"maps"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/blobstorecmd"
	"github.com/flynnrebuilt/flynn/internal/component/controllercmd"
	"github.com/flynnrebuilt/flynn/internal/component/gitreceivecmd"
	"github.com/flynnrebuilt/flynn/internal/component/logaggcmd"
	"github.com/flynnrebuilt/flynn/internal/component/mysqlcmd"
	"github.com/flynnrebuilt/flynn/internal/component/postgrescmd"
	"github.com/flynnrebuilt/flynn/internal/component/rediscmd"
	"github.com/flynnrebuilt/flynn/internal/component/routercmd"
	"github.com/flynnrebuilt/flynn/internal/component/schedulercmd"
)

// newComponentCmd groups the entrypoints of the platform's components.
// Each runs inside its own job (or in the foreground, for development).
// A system job runs the component from a lean binary, flynn-control or
// flynn-data (see package component); flynn-host stands in for it on a
// host where it is missing (ComponentCmd).
func newComponentCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "component",
		Short: "Run a platform component (inside its job)",
		Long: `Run one of the platform's components. In a cluster these run as jobs that
flynn-host bootstrap deploys; run them by hand only for development.`,
	}
	for _, name := range slices.Sorted(maps.Keys(componentCmds)) {
		cmd.AddCommand(componentCmds[name](component.Env(env)))
	}
	return cmd
}

// componentCmds are the components' commands by name.
var componentCmds = map[string]func(component.Env) *cobra.Command{
	"controller":    controllercmd.New,
	"scheduler":     schedulercmd.New,
	"router":        routercmd.New,
	"blobstore":     blobstorecmd.New,
	"logaggregator": logaggcmd.New,
	"gitreceive":    gitreceivecmd.New,
	"postgres":      postgrescmd.New,
	"mysql":         mysqlcmd.New,
	"redis":         rediscmd.New,
	"redis-restore": rediscmd.NewRestore,
}

// ComponentCmd returns the command of the component a job runs as
// argv0 /bin/flynn-NAME (api.ComponentBinaries), when flynn-host is
// mounted there in the place of the binary that runs it: flynn-host then
// runs it as flynn-control and flynn-data do, as the root command (so that
// gitreceive's hooks, which it runs as its own executable, find their
// subcommands the same way).
func ComponentCmd(argv0 string) (func(component.Env) *cobra.Command, bool) {
	name, ok := api.ComponentBinary(filepath.Base(argv0))
	if !ok {
		return nil, false
	}
	c := componentCmds[name]
	return c, c != nil
}
