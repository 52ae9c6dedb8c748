// Package rediscmd is the entrypoint of the Redis appliance: its command, flags and
// wiring, run by flynn-data (cmd/flynn-data, what the system job runs) and by
// `flynn-host component`.
package rediscmd

import (
	"errors"
	"net"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/appliance/redis"
	"github.com/flynnrebuilt/flynn/internal/component"
)

// New is `flynn-host component redis`: the Redis appliance (a
// server per database, their proxy and the provider API) in the redis
// app's job.
func New(env component.Env) *cobra.Command {
	var (
		cfg        redis.Config
		publicPort int
		logLevel   string
	)
	atoi := func(k string) int { n, _ := strconv.Atoi(env.Get(k)); return n }
	cmd := &cobra.Command{
		Use:   "redis",
		Short: "Run the Redis appliance: a redis-server per database on --data-dir, their proxy and the provider API",
		Long: `Run a redis-server (Debian's package) for every database in --data-dir (a volume),
each on a unix socket of its own, and one TCP port (--port) where a client's
AUTH password leads it to its database's server. The resource provider API:
POST /databases starts a new server, DELETE /databases?id=ID stops it and
removes its data. The API's key comes from $REDIS_API_KEY, never from a flag.`,
		Example: "  REDIS_API_KEY=... flynn-host component redis --data-dir /data --port 6379 --api-listen :6380",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := (&component.ServerFlags{LogLevel: logLevel}).Logger(env, "redis")
			if err != nil {
				return err
			}
			cfg.PublicPort = publicPort
			cfg.APIKey = env.Get("REDIS_API_KEY")
			if cfg.APIListen != "" && cfg.APIKey == "" {
				return errors.New("set $REDIS_API_KEY: the provider API needs a key")
			}
			return redis.Run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/data", "where the databases live (a volume)")
	f.IntVar(&cfg.Port, "port", component.OrDefaultInt(atoi("PORT_0"), atoi("PORT")), "the proxy's port (default $PORT_0, else $PORT)")
	api := ""
	if p := env.Get("PORT_1"); p != "" {
		api = ":" + p
	}
	f.StringVar(&cfg.APIListen, "api-listen", api, "the provider API's address (default :$PORT_1; empty: no API)")
	f.StringVar(&cfg.PublicHost, "public-host", "leader.redis.discoverd", "the host name apps are given (REDIS_HOST)")
	f.IntVar(&publicPort, "public-port", 0, "the port apps are given (REDIS_PORT; default --port)")
	f.StringVar(&cfg.MaxMemory, "maxmemory", "64mb", "each database's memory limit (a full database refuses writes)")
	f.StringVar(&logLevel, "log-level", component.OrDefault(env.Get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	return cmd
}

// NewRestore is `flynn-host component redis-restore`: what flynn
// redis restore runs as a one-off job of the redis appliance's release.
func NewRestore(env component.Env) *cobra.Command {
	return &cobra.Command{
		Use:   "redis-restore",
		Short: "Replace a Redis database's data with an RDB dump read from stdin",
		Long: `Load an RDB dump (flynn redis dump) from stdin into a redis-server of this
job's own, empty the database at $REDIS_HOST:$REDIS_PORT (password in
$REDIS_PASSWORD) and copy every key to it with its TTL. Run by flynn redis
restore as a one-off job of the redis appliance's release.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			host, port, pass := env.Get("REDIS_HOST"), env.Get("REDIS_PORT"), env.Get("REDIS_PASSWORD")
			if host == "" || port == "" || pass == "" {
				return errors.New("set $REDIS_HOST, $REDIS_PORT and $REDIS_PASSWORD")
			}
			log, err := (&component.ServerFlags{LogLevel: "warn"}).Logger(env, "redis-restore")
			if err != nil {
				return err
			}
			return redis.Restore(cmd.Context(), cmd.InOrStdin(), net.JoinHostPort(host, port), pass, cmd.ErrOrStderr(), log)
		},
	}
}
