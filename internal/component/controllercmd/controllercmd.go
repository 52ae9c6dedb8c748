// Package controllercmd is the entrypoint of the controller API: its command, flags and
// wiring, run by flynn-control (cmd/flynn-control, what the system job runs) and by
// `flynn-host component`.
package controllercmd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/etcdconn"
	"github.com/flynnrebuilt/flynn/internal/controller"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// New is the controller's entrypoint, `flynn-host
// component controller`.
// Flags default from the environment a controller job gets: PORT,
// ETCD_ENDPOINTS, AUTH_KEY (comma-separated for rotation), SYSTEM_KEY
// (the bootstrap's key, which alone may mark system apps; from the
// environment only, never a flag, so it stays off command lines),
// CLUSTER_DOMAIN, CA_CERT_FILE, LOGAGGREGATOR_URL and BLOBSTORE_URL.
func New(env component.Env) *cobra.Command {
	get := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return env.Getenv(k)
	}
	listen := ":1200"
	if p := get("PORT"); p != "" {
		listen = ":" + p
	}
	etcd := get("ETCD_ENDPOINTS")
	if etcd == "" {
		etcd = "http://127.0.0.1:2379"
	}
	var (
		cfg       controller.Config
		endpoints string
		keys      string
		logLevel  string
		logJSON   bool
		discURL   string
		token     string
		advertise string
		etcdTLS   string
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the controller API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logging.New(env.Stderr, logging.Config{Level: logLevel, JSON: logJSON})
			if err != nil {
				return err
			}
			for _, k := range strings.Split(keys, ",") {
				if k = strings.TrimSpace(k); k != "" {
					cfg.AuthKeys = append(cfg.AuthKeys, k)
				}
			}
			if len(cfg.AuthKeys) == 0 {
				return errors.New("no auth key: set AUTH_KEY or --auth-key")
			}
			for _, k := range strings.Split(get("SYSTEM_KEY"), ",") {
				if k = strings.TrimSpace(k); k != "" {
					cfg.SystemKeys = append(cfg.SystemKeys, k)
				}
			}
			cli, err := etcdconn.Client(endpoints, etcdTLS)
			if err != nil {
				return err
			}
			defer cli.Close()
			cfg.Etcd = cli
			ctx := cmd.Context()
			if advertise != "" {
				if _, port, err := net.SplitHostPort(advertise); err != nil || port == "" {
					return fmt.Errorf("--advertise %q: give host:port, e.g. 10.0.0.1:1200", advertise)
				}
			}
			if token != "" {
				cfg.LogAggregatorKey = api.ServiceToken(token)
				cfg.Runner = &controller.HostRunner{Token: token, Cluster: scheduler.NewHostCluster(cli, token, log)}
			}
			if discURL != "" {
				// The log aggregator and the blobstore by service name
				// (http://logaggregator.discoverd), on whichever host.
				cfg.HTTP = discoverdclient.New(discURL, token).HTTPClient()
			}
			if cfg.BlobURL != "" {
				// The blobstore takes the cluster key for writes.
				cfg.Blobs = blobclient.New(cfg.BlobURL, cfg.AuthKeys[0], cfg.HTTP)
			}
			// A controller job's host registers (and, when the job stops,
			// drains) its port itself; a second registration of the same
			// address would keep routers sending to a stopping controller.
			if discURL != "" && get("FLYNN_JOB_ID") == "" {
				dc := discoverdclient.New(discURL, token)
				cfg.OnListen = func(ctx context.Context, addr string) error {
					reg, err := dc.Register(ctx, "controller", component.AdvertiseAddr(advertise, addr, get("EXTERNAL_IP")), nil)
					if err != nil {
						return err
					}
					go func() {
						<-ctx.Done()
						dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
						defer cancel()
						reg.Deregister(dctx)
					}()
					return nil
				}
			}
			err = controller.Run(ctx, cfg, log)
			if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", listen, "address to serve HTTP on (default :$PORT when set)")
	f.StringVar(&endpoints, "etcd", etcd, "etcd endpoints, comma-separated (default $ETCD_ENDPOINTS)")
	etcdconn.TLSFlag(f, &etcdTLS, env.Getenv)
	f.StringVar(&keys, "auth-key", get("AUTH_KEY"), "cluster key(s), comma-separated for rotation (default $AUTH_KEY)")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", get("CLUSTER_DOMAIN"), "domain for default app routes <app>.<domain> (default $CLUSTER_DOMAIN)")
	f.StringVar(&cfg.CACertFile, "ca-cert", get("CA_CERT_FILE"), "PEM file served at /ca-cert (default $CA_CERT_FILE)")
	f.StringVar(&cfg.LogAggregatorURL, "logaggregator", get("LOGAGGREGATOR_URL"), "log aggregator base URL for app logs (default $LOGAGGREGATOR_URL)")
	f.StringVar(&cfg.BlobURL, "blobstore", get("BLOBSTORE_URL"), "blobstore base URL, for backups, layer export and import, and deleting deleted releases' layers (default $BLOBSTORE_URL)")
	f.StringVar(&discURL, "discoverd", get("DISCOVERD"), "discoverd URL to register as service controller in (default $DISCOVERD; a job's host registers it instead)")
	f.StringVar(&token, "token", get("FLYNN_CLUSTER_TOKEN"), "cluster token for discoverd and host agents (default $FLYNN_CLUSTER_TOKEN); enables one-off jobs")
	f.StringVar(&advertise, "advertise", "", "host:port to register in discoverd (default the listen address, with $EXTERNAL_IP or 127.0.0.1 for an unspecified host)")
	f.StringVar(&logLevel, "log-level", component.OrDefault(get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	return cmd
}
