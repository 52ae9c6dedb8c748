// Package postgrescmd is the entrypoint of the PostgreSQL appliance: its command, flags and
// wiring, run by flynn-data (cmd/flynn-data, what the system job runs) and by
// `flynn-host component`.
package postgrescmd

import (
	"errors"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/appliance/postgres"
	"github.com/flynnrebuilt/flynn/internal/component"
)

// New is `flynn-host component postgres`: the PostgreSQL
// appliance (server and provider API) in the postgres app's job.
func New(env component.Env) *cobra.Command {
	var (
		cfg        postgres.Config
		port       int
		publicPort int
		logLevel   string
	)
	atoi := func(k string) int { n, _ := strconv.Atoi(env.Get(k)); return n }
	cmd := &cobra.Command{
		Use:   "postgres",
		Short: "Run the PostgreSQL appliance: the server on --data-dir and the provider API",
		Long: `Run a PostgreSQL server (Debian's packages) with its data in --data-dir (a
volume), and the resource provider API: POST /databases makes a database and
its user, DELETE /databases?id=ID drops them. The API's key comes from
$POSTGRES_API_KEY, never from a flag.`,
		Example: "  POSTGRES_API_KEY=... flynn-host component postgres --data-dir /data --port 5432 --api-listen :5433",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := (&component.ServerFlags{LogLevel: logLevel}).Logger(env, "postgres")
			if err != nil {
				return err
			}
			cfg.Port, cfg.PublicPort = port, publicPort
			cfg.APIKey = env.Get("POSTGRES_API_KEY")
			if cfg.APIListen != "" && cfg.APIKey == "" {
				return errors.New("set $POSTGRES_API_KEY: the provider API needs a key")
			}
			return postgres.Run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/data", "where the database cluster lives (a volume)")
	f.StringVar(&cfg.BinDir, "bin-dir", "", "PostgreSQL's bin dir (default the newest /usr/lib/postgresql/*/bin)")
	f.IntVar(&port, "port", component.OrDefaultInt(atoi("PORT_0"), atoi("PORT")), "the server's port (default $PORT_0, else $PORT)")
	api := ""
	if p := env.Get("PORT_1"); p != "" {
		api = ":" + p
	}
	f.StringVar(&cfg.APIListen, "api-listen", api, "the provider API's address (default :$PORT_1; empty: no API)")
	f.StringVar(&cfg.PublicHost, "public-host", "leader.postgres.discoverd", "the host name apps are given (PGHOST)")
	f.IntVar(&publicPort, "public-port", atoi("PG_PUBLIC_PORT"), "the port apps are given (PGPORT; default $PG_PUBLIC_PORT, else --port)")
	f.StringVar(&logLevel, "log-level", component.OrDefault(env.Get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	return cmd
}
