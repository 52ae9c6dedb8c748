// Package mysqlcmd is the entrypoint of the MySQL (MariaDB) appliance: its command, flags and
// wiring, run by flynn-data (cmd/flynn-data, what the system job runs) and by
// `flynn-host component`.
package mysqlcmd

import (
	"errors"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/appliance/mysql"
	"github.com/flynnrebuilt/flynn/internal/component"
)

// New is `flynn-host component mysql`: the MariaDB appliance
// (server and provider API) in the mysql app's job.
func New(env component.Env) *cobra.Command {
	var (
		cfg        mysql.Config
		port       int
		publicPort int
		logLevel   string
	)
	atoi := func(k string) int { n, _ := strconv.Atoi(env.Get(k)); return n }
	cmd := &cobra.Command{
		Use:   "mysql",
		Short: "Run the MySQL (MariaDB) appliance: the server on --data-dir and the provider API",
		Long: `Run a MariaDB server (Debian's packages) with its data in --data-dir (a volume),
and the resource provider API: POST /databases makes a database and its user,
DELETE /databases?id=ID drops them. The API's key comes from $MYSQL_API_KEY,
never from a flag.`,
		Example: "  MYSQL_API_KEY=... flynn-host component mysql --data-dir /data --port 3306 --api-listen :3307",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := (&component.ServerFlags{LogLevel: logLevel}).Logger(env, "mysql")
			if err != nil {
				return err
			}
			cfg.Port, cfg.PublicPort = port, publicPort
			cfg.APIKey = env.Get("MYSQL_API_KEY")
			if cfg.APIListen != "" && cfg.APIKey == "" {
				return errors.New("set $MYSQL_API_KEY: the provider API needs a key")
			}
			return mysql.Run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/data", "where the server's data lives (a volume)")
	f.IntVar(&port, "port", component.OrDefaultInt(atoi("PORT_0"), atoi("PORT")), "the server's port (default $PORT_0, else $PORT)")
	api := ""
	if p := env.Get("PORT_1"); p != "" {
		api = ":" + p
	}
	f.StringVar(&cfg.APIListen, "api-listen", api, "the provider API's address (default :$PORT_1; empty: no API)")
	f.StringVar(&cfg.PublicHost, "public-host", "leader.mysql.discoverd", "the host name apps are given (MYSQL_HOST)")
	f.IntVar(&publicPort, "public-port", 0, "the port apps are given (MYSQL_PORT; default --port)")
	f.StringVar(&logLevel, "log-level", component.OrDefault(env.Get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	return cmd
}
