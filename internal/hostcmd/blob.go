package hostcmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
listings (GET on a path ending in / or with ?dir=true). With --auth-key,
every request but GET /.well-known/status needs the key, a read key
($FLYNN_BLOB_READ_KEY: GET and HEAD only; the platform gives it the
service token, which host agents fetch layers with) or a URL signed with
the key for that path (what build jobs get).

Blobs are kept as files under --dir (--backend fs, the default), or in an
S3-compatible bucket (--backend s3 --s3-endpoint ... --s3-bucket ...; the
credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_SESSION_TOKEN in the environment, never from flags).

With --discoverd and the fs backend, the instances registered in discoverd
as --service replicate each other: a PUT returns once --min-copies
instances hold the blob (fewer when fewer answer), deletes propagate, an
instance fills in what it lacks from its peers (on a read, and every
--sync-interval), and deletes are remembered for --tombstone-ttl. Instances
sharing an S3 bucket do not replicate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := flags.logger(env, "blobstore")
			if err != nil {
				return err
			}
			cfg.Listen = flags.listen
			cfg.Keys = flags.keys
			if k := blobGetenv(env, "FLYNN_BLOB_READ_KEY"); k != "" {
				cfg.ReadKeys = strings.Split(k, ",")
			}
			switch cfg.Backend {
			case blobstore.BackendFS, blobstore.BackendS3:
			default:
				return fmt.Errorf("--backend %q: use fs or s3", cfg.Backend)
			}
			if cfg.Backend == blobstore.BackendS3 {
				if cfg.S3.Endpoint == "" || cfg.S3.Bucket == "" {
					return errors.New("--backend s3 needs --s3-endpoint and --s3-bucket")
				}
				cfg.S3.AccessKey = blobGetenv(env, "AWS_ACCESS_KEY_ID")
				cfg.S3.SecretKey = blobGetenv(env, "AWS_SECRET_ACCESS_KEY")
				cfg.S3.SessionToken = blobGetenv(env, "AWS_SESSION_TOKEN")
			}
			if cfg.MinCopies < 1 {
				return fmt.Errorf("--min-copies %d: give 1 or more", cfg.MinCopies)
			}
			if cfg.DiscoverdToken == "" {
				// Read here, not as the flag's default, so --help does
				// not print it.
				cfg.DiscoverdToken = blobOrDefault(blobGetenv(env, "FLYNN_CLUSTER_TOKEN"), blobGetenv(env, "CLUSTER_TOKEN"))
			}
			if cfg.Advertise == "" {
				cfg.Advertise = blobAdvertise(blobGetenv(env, "EXTERNAL_IP"), cfg.Listen)
			}
			return blobRunComponent(cmd.Context(), blobstore.Run(cmd.Context(), cfg, log))
		},
	}
	flags.register(cmd, env, "5380")
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", blobOrDefault(blobGetenv(env, "BLOBSTORE_DIR"), "/var/lib/flynn/blobstore"), "directory to keep blobs in (default $BLOBSTORE_DIR)")
	f.BoolVar(&cfg.NoSync, "no-sync", false, "do not fsync uploads (faster; a crash may lose recent blobs)")
	f.Int64Var(&cfg.MaxBlobSize, "max-size", 0, "largest accepted upload in bytes (0: no limit)")
	f.StringVar(&cfg.Backend, "backend", blobOrDefault(blobGetenv(env, "BLOBSTORE_BACKEND"), blobstore.BackendFS), "where blobs are kept: fs (files under --dir) or s3 (default $BLOBSTORE_BACKEND)")
	f.StringVar(&cfg.S3.Endpoint, "s3-endpoint", blobGetenv(env, "BLOBSTORE_S3_ENDPOINT"), "S3 server, host:port or http(s)://host:port (default $BLOBSTORE_S3_ENDPOINT)")
	f.StringVar(&cfg.S3.Bucket, "s3-bucket", blobGetenv(env, "BLOBSTORE_S3_BUCKET"), "S3 bucket, which must exist (default $BLOBSTORE_S3_BUCKET)")
	f.StringVar(&cfg.S3.Region, "s3-region", blobGetenv(env, "BLOBSTORE_S3_REGION"), "S3 region (default $BLOBSTORE_S3_REGION; empty: found by the client)")
	f.StringVar(&cfg.S3.Prefix, "s3-prefix", blobGetenv(env, "BLOBSTORE_S3_PREFIX"), "key prefix for the blobs in the bucket (default $BLOBSTORE_S3_PREFIX)")
	f.BoolVar(&cfg.S3.Insecure, "s3-insecure", false, "plain HTTP to an --s3-endpoint given without a scheme")
	f.BoolVar(&cfg.S3.UnsignedPayload, "s3-unsigned-payload", false, "send uploads without a payload signature, for servers that mishandle streaming signatures over plain HTTP")
	f.StringVar(&cfg.Discoverd, "discoverd", blobGetenv(env, "DISCOVERD"), "discoverd URL, to find and replicate with the other instances (default $DISCOVERD; empty: this instance stands alone)")
	f.StringVar(&cfg.DiscoverdToken, "discoverd-token", "", "cluster token for discoverd (default $FLYNN_CLUSTER_TOKEN or $CLUSTER_TOKEN)")
	f.StringVar(&cfg.Service, "service", blobstore.DefaultService, "discoverd service the instances are registered as")
	f.StringVar(&cfg.Advertise, "advertise", "", "host:port this instance is registered as (default $EXTERNAL_IP with the --listen port; optional, instances also recognize themselves)")
	f.IntVar(&cfg.MinCopies, "min-copies", blobstore.DefaultMinCopies, "instances that must hold a blob before a PUT succeeds (capped at the instances that answer)")
	f.DurationVar(&cfg.SyncInterval, "sync-interval", blobstore.DefaultSyncInterval, "time between anti-entropy passes with the other instances, the first at start (negative: none)")
	f.DurationVar(&cfg.TombstoneTTL, "tombstone-ttl", blobstore.DefaultTombstoneTTL, "how long deletes are remembered, so an instance that was away does not bring deleted blobs back")
	return cmd
}

// blobAdvertise is ip with the port of listen, or "" when either is
// missing.
func blobAdvertise(ip, listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if ip == "" || err != nil || port == "" || port == "0" {
		return ""
	}
	return net.JoinHostPort(ip, port)
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
