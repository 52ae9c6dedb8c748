package cli

import (
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
)

// redisEnv are the variables a redis resource gives an app.
var redisEnv = []string{"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"}

// newRedisCmd is `flynn redis`: redis-cli, dump and restore against the
// app's Redis database, as one-off jobs of the redis appliance's release
// with the app's credentials (the password in the job's env, never on a
// command line).
func newRedisCmd(s *state) *cobra.Command {
	c := &cobra.Command{
		Use:   "redis",
		Short: "Use the app's Redis database: redis-cli, dump, restore",
		Example: `  flynn redis redis-cli
  flynn redis redis-cli -- keys '*'
  flynn redis dump -f redis.rdb
  flynn redis restore -f redis.rdb`,
	}
	cli := &cobra.Command{
		Use:   "redis-cli [-- ARG...]",
		Short: "Open redis-cli on the app's database (arguments go to it)",
		Example: `  flynn redis redis-cli
  flynn redis redis-cli -- info keyspace`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.runRedis(cmd, append([]string{"redis-cli"}, args...), "", cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	dump := dumpCommand("Dump the app's database (an RDB file) to FILE, or stdout", "  flynn redis dump -f redis.rdb", func(cmd *cobra.Command, w io.Writer) error {
		return s.runRedis(cmd, []string{"redis-cli", "--rdb", "-"}, "", strings.NewReader(""), w)
	})
	restore := restoreCommand("Replace the app's database with a dump (flynn redis dump) from FILE, or stdin",
		`Replace the app's database with a dump (flynn redis dump) from FILE, or stdin:
every key of the database is removed, then every key of the dump is copied in
with its TTL.`, "  flynn redis restore -f redis.rdb", func(cmd *cobra.Command, r io.Reader) error {
			return s.runRedis(cmd, []string{"/bin/flynn-host", "component", "redis-restore"}, "redis", r, cmd.OutOrStdout())
		})
	c.AddCommand(cli, dump, restore)
	return c
}

// runRedis runs args as a one-off job of the redis appliance's current
// release with the app's REDIS_* env: redis-cli's -h and -p are added
// after args[0] when it is redis-cli; the password goes in REDISCLI_AUTH
// (redis-cli's) and REDIS_PASSWORD. mountsFrom names the appliance's
// process type whose mounts the job gets ("" for none).
func (s *state) runRedis(cmd *cobra.Command, args []string, mountsFrom string, stdin io.Reader, stdout io.Writer) error {
	db, err := s.appDatabase(cmd.Context(), "redis", redisEnv, "FLYNN_REDIS")
	if err != nil {
		return err
	}
	e := db.env
	if args[0] == "redis-cli" {
		args = append([]string{"redis-cli", "-h", e["REDIS_HOST"], "-p", e["REDIS_PORT"]}, args[1:]...)
	}
	env := map[string]string{"REDISCLI_AUTH": e["REDIS_PASSWORD"], "REDIS_PASSWORD": e["REDIS_PASSWORD"],
		"REDIS_HOST": e["REDIS_HOST"], "REDIS_PORT": e["REDIS_PORT"]}
	nj := &api.NewJob{ReleaseID: db.appliance.ReleaseID, Args: args, Env: env, DisableLog: true, MountsFrom: mountsFrom}
	return s.runAttachedIO(cmd.Context(), cmd, db.appliance, nj, stdin, stdout)
}
