// Package blobstorecmd is the entrypoint of the blobstore: its command, flags and
// wiring, run by flynn-data (cmd/flynn-data, what the system job runs) and by
// `flynn-host component`.
package blobstorecmd

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/component"
)

// New is `flynn-host component blobstore`.
func New(env component.Env) *cobra.Command {
	var (
		flags component.ServerFlags
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
			log, err := flags.Logger(env, "blobstore")
			if err != nil {
				return err
			}
			cfg.Listen = flags.Listen
			cfg.Keys = flags.Keys
			if k := env.Get("FLYNN_BLOB_READ_KEY"); k != "" {
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
				cfg.S3.AccessKey = env.Get("AWS_ACCESS_KEY_ID")
				cfg.S3.SecretKey = env.Get("AWS_SECRET_ACCESS_KEY")
				cfg.S3.SessionToken = env.Get("AWS_SESSION_TOKEN")
			}
			if cfg.MinCopies < 1 {
				return fmt.Errorf("--min-copies %d: give 1 or more", cfg.MinCopies)
			}
			if cfg.DiscoverdToken == "" {
				// Read here, not as the flag's default, so --help does
				// not print it.
				cfg.DiscoverdToken = component.OrDefault(env.Get("FLYNN_CLUSTER_TOKEN"), env.Get("CLUSTER_TOKEN"))
			}
			if cfg.Advertise == "" {
				cfg.Advertise = blobAdvertise(env.Get("EXTERNAL_IP"), cfg.Listen)
			}
			return component.Exit(cmd.Context(), blobstore.Run(cmd.Context(), cfg, log))
		},
	}
	flags.Register(cmd, env, "5380")
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", component.OrDefault(env.Get("BLOBSTORE_DIR"), "/var/lib/flynn/blobstore"), "directory to keep blobs in (default $BLOBSTORE_DIR)")
	f.BoolVar(&cfg.NoSync, "no-sync", false, "do not fsync uploads (faster; a crash may lose recent blobs)")
	f.Int64Var(&cfg.MaxBlobSize, "max-size", 0, "largest accepted upload in bytes (0: no limit)")
	f.StringVar(&cfg.Backend, "backend", component.OrDefault(env.Get("BLOBSTORE_BACKEND"), blobstore.BackendFS), "where blobs are kept: fs (files under --dir) or s3 (default $BLOBSTORE_BACKEND)")
	f.StringVar(&cfg.S3.Endpoint, "s3-endpoint", env.Get("BLOBSTORE_S3_ENDPOINT"), "S3 server, host:port or http(s)://host:port (default $BLOBSTORE_S3_ENDPOINT)")
	f.StringVar(&cfg.S3.Bucket, "s3-bucket", env.Get("BLOBSTORE_S3_BUCKET"), "S3 bucket, which must exist (default $BLOBSTORE_S3_BUCKET)")
	f.StringVar(&cfg.S3.Region, "s3-region", env.Get("BLOBSTORE_S3_REGION"), "S3 region (default $BLOBSTORE_S3_REGION; empty: found by the client)")
	f.StringVar(&cfg.S3.Prefix, "s3-prefix", env.Get("BLOBSTORE_S3_PREFIX"), "key prefix for the blobs in the bucket (default $BLOBSTORE_S3_PREFIX)")
	f.BoolVar(&cfg.S3.Insecure, "s3-insecure", false, "plain HTTP to an --s3-endpoint given without a scheme")
	f.BoolVar(&cfg.S3.UnsignedPayload, "s3-unsigned-payload", false, "send uploads without a payload signature, for servers that mishandle streaming signatures over plain HTTP")
	f.StringVar(&cfg.Discoverd, "discoverd", env.Get("DISCOVERD"), "discoverd URL, to find and replicate with the other instances (default $DISCOVERD; empty: this instance stands alone)")
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
