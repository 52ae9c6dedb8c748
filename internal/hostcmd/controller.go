package hostcmd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/internal/controller"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// newControllerCmd is the controller's entrypoint, `flynn-host
// component-controller` (meant to sit under `flynn-host component`).
// Flags default from the environment a controller job gets: PORT,
// ETCD_ENDPOINTS, AUTH_KEY (comma-separated for rotation),
// CLUSTER_DOMAIN, CA_CERT_FILE and LOGAGGREGATOR_URL.
func newControllerCmd(env Env) *cobra.Command {
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
	)
	cmd := &cobra.Command{
		Use:   "component-controller",
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
			cli, err := clientv3.New(clientv3.Config{
				Endpoints:   strings.Split(endpoints, ","),
				DialTimeout: 10 * time.Second,
			})
			if err != nil {
				return fmt.Errorf("etcd client: %w", err)
			}
			defer cli.Close()
			cfg.Etcd = cli
			ctx := cmd.Context()
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
	f.StringVar(&keys, "auth-key", get("AUTH_KEY"), "cluster key(s), comma-separated for rotation (default $AUTH_KEY)")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", get("CLUSTER_DOMAIN"), "domain for default app routes <app>.<domain> (default $CLUSTER_DOMAIN)")
	f.StringVar(&cfg.CACertFile, "ca-cert", get("CA_CERT_FILE"), "PEM file served at /ca-cert (default $CA_CERT_FILE)")
	f.StringVar(&cfg.LogAggregatorURL, "logaggregator", get("LOGAGGREGATOR_URL"), "log aggregator base URL for app logs (default $LOGAGGREGATOR_URL)")
	f.StringVar(&logLevel, "log-level", orDefaultCtl(get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	return cmd
}

func orDefaultCtl(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
