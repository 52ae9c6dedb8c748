package hostcmd

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logagg"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// blobComponentFlags are the flags every component entrypoint shares.
type blobComponentFlags struct {
	listen   string
	keys     []string
	logLevel string
	logJSON  bool
}

func (f *blobComponentFlags) register(cmd *cobra.Command, env Env, defaultPort string) {
	listen := ":" + defaultPort
	if p := blobGetenv(env, "PORT"); p != "" {
		listen = ":" + p
	}
	var keys []string
	if k := blobGetenv(env, "FLYNN_AUTH_KEY"); k != "" {
		keys = strings.Split(k, ",")
	}
	cmd.Flags().StringVar(&f.listen, "listen", listen, "address to serve HTTP on (default :$PORT when set)")
	cmd.Flags().StringSliceVar(&f.keys, "auth-key", keys, "cluster key(s) clients must present; repeat or comma-separate for rotation (default $FLYNN_AUTH_KEY)")
	cmd.Flags().StringVar(&f.logLevel, "log-level", blobOrDefault(blobGetenv(env, "FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	cmd.Flags().BoolVar(&f.logJSON, "log-json", false, "log JSON lines instead of text")
}

func (f *blobComponentFlags) logger(env Env, component string) (*slog.Logger, error) {
	log, err := logging.New(env.Stderr, logging.Config{Level: f.logLevel, JSON: f.logJSON})
	if err != nil {
		return nil, err
	}
	return log.With("component", component), nil
}

func blobGetenv(env Env, k string) string {
	if env.Getenv == nil {
		return ""
	}
	return env.Getenv(k)
}

func blobOrDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runComponent treats a shutdown caused by ctx as a normal exit.
func blobRunComponent(ctx context.Context, err error) error {
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// newBlobstoreCmd is `flynn-host component blobstore`.
func newBlobstoreCmd(env Env) *cobra.Command {
	var (
		flags blobComponentFlags
		cfg   blobstore.Config
	)
	cmd := &cobra.Command{
		Use:   "blobstore",
		Short: "Run the blobstore: an HTTP file store for slugs, caches and layers",
		Long: `Serve blobs over HTTP: PUT, GET, HEAD and DELETE on any path, range
requests, sha256 checksums (ETag and Blob-Sha256 header), and directory
listings (GET on a path ending in / or with ?dir=true). Blobs are kept as
files under --dir. With --auth-key, PUT and DELETE need the cluster key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := flags.logger(env, "blobstore")
			if err != nil {
				return err
			}
			cfg.Listen = flags.listen
			cfg.Keys = flags.keys
			return blobRunComponent(cmd.Context(), blobstore.Run(cmd.Context(), cfg, log))
		},
	}
	flags.register(cmd, env, "5380")
	cmd.Flags().StringVar(&cfg.Dir, "dir", blobOrDefault(blobGetenv(env, "BLOBSTORE_DIR"), "/var/lib/flynn/blobstore"), "directory to keep blobs in (default $BLOBSTORE_DIR)")
	cmd.Flags().BoolVar(&cfg.NoSync, "no-sync", false, "do not fsync uploads (faster; a crash may lose recent blobs)")
	cmd.Flags().Int64Var(&cfg.MaxBlobSize, "max-size", 0, "largest accepted upload in bytes (0: no limit)")
	return cmd
}

// newLogaggCmd is `flynn-host component logaggregator`.
func newLogaggCmd(env Env) *cobra.Command {
	var (
		flags blobComponentFlags
		cfg   logagg.Config
		peers logaggPeerFlags
	)
	cmd := &cobra.Command{
		Use:   "logaggregator",
		Short: "Run the log aggregator: per-app ring buffers of job output",
		Long: `Receive job output lines from hosts (POST /log, newline-delimited JSON
api.LogMessage values), keep the last --buffer-lines lines of every app in
memory, and serve them on GET /log/{app} with follow, lines, job_id,
process_type and stream_types, as newline-delimited JSON or Server-Sent Events.
With --auth-key every request but GET /.well-known/status needs the key.

Every host ships each line to every instance of the discoverd service
logaggregator, numbered, so that each instance holds every line once and
in order. With --discoverd, a starting instance first copies the logs of
a live instance of --service (GET /snapshot), then listens.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := flags.logger(env, "logaggregator")
			if err != nil {
				return err
			}
			cfg.Listen = flags.listen
			cfg.Keys = flags.keys
			peers.apply(&cfg, env, log)
			return blobRunComponent(cmd.Context(), logagg.Run(cmd.Context(), cfg, log))
		},
	}
	flags.register(cmd, env, "5381")
	cmd.Flags().IntVar(&cfg.BufferLines, "buffer-lines", logagg.DefaultBufferLines, "lines kept per app")
	peers.register(cmd, env)
	return cmd
}
