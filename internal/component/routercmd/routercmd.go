// Package routercmd is the entrypoint of the router: its command, flags and
// wiring, run by flynn-control (cmd/flynn-control, what the system job runs) and by
// `flynn-host component`.
package routercmd

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/etcdconn"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/router"
)

// New is `flynn-host component router`.
func New(env component.Env) *cobra.Command {
	get := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return env.Getenv(k)
	}
	var (
		httpAddr, httpsAddr, apiAddr, tcpIP, tcpRange string
		etcdEndpoints, discoverdURL, token, etcdTLS   string
		certFile, keyFile, cookieKey, logLevel        string
		limits                                        router.Config
		appLog                                        bool
	)
	cmd := &cobra.Command{
		Use:   "router",
		Short: "Run the HTTP/HTTPS/TCP router",
		Long: `router serves the cluster's HTTP, HTTPS and TCP routes. It follows routes in
etcd and the backends of each route's service in discoverd, and serves
/metrics, /drained and /events on --api-addr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logging.New(cmd.ErrOrStderr(), logging.Config{Level: logLevel})
			if err != nil {
				return err
			}
			cfg := router.Config{HTTPAddr: httpAddr, HTTPSAddr: httpsAddr, APIAddr: apiAddr, TCPIP: tcpIP, Token: token,
				ReadHeaderTimeout: limits.ReadHeaderTimeout, BodyIdleTimeout: limits.BodyIdleTimeout,
				MaxBodyBytes: limits.MaxBodyBytes, MaxConnsPerClient: limits.MaxConnsPerClient}
			if cfg.ReadHeaderTimeout < 0 || cfg.BodyIdleTimeout < 0 || cfg.MaxBodyBytes < -1 || cfg.MaxConnsPerClient < -1 {
				return fmt.Errorf("--read-header-timeout, --body-timeout, --max-body-bytes and --max-conns-per-client take positive values (-1: no limit, for the last two)")
			}
			if cfg.TCPPortMin, cfg.TCPPortMax, err = parsePortRange(tcpRange); err != nil {
				return err
			}
			if discoverdURL == "" {
				return fmt.Errorf("--discoverd is required: the URL of discoverd's HTTP API")
			}
			dc := discoverdclient.New(discoverdURL, token)
			cfg.Discoverer = &router.Discoverd{Client: dc}
			if appLog {
				// The router's errors go into the apps' logs through
				// every log aggregator, as a job's output does.
				// At most 100 lines a second: ten seconds' worth
				// wait for an aggregator that is away.
				shipper := logaggclient.NewShipper(logaggclient.ShipperConfig{QueueSize: 1000, QueueBytes: 1 << 20}, log.With("part", "applog"))
				hc := &http.Client{Timeout: time.Minute}
				go shipper.Follow(cmd.Context(), dc, "logaggregator", 2*time.Second, func(addr string) *logaggclient.Client {
					return logaggclient.New("http://"+addr, token, hc)
				})
				go shipper.Run(cmd.Context())
				cfg.AppLog, cfg.JobID = shipper, get("FLYNN_JOB_ID")
			}
			if (certFile == "") != (keyFile == "") {
				return fmt.Errorf("--tls-cert and --tls-key go together")
			}
			if certFile != "" {
				cert, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("load the cluster certificate: %w", err)
				}
				cfg.DefaultCert = &cert
			}
			if cookieKey != "" {
				if cfg.CookieKey, err = decodeKey(cookieKey); err != nil {
					return err
				}
			}
			if etcdEndpoints == "" {
				return fmt.Errorf("--etcd is required: comma-separated etcd client URLs")
			}
			etcd, err := etcdconn.Client(etcdEndpoints, etcdTLS)
			if err != nil {
				return err
			}
			defer etcd.Close()
			cfg.Etcd = etcd
			r, err := router.New(cfg, log.With("component", "router"))
			if err != nil {
				return err
			}
			a := r.Addrs()
			log.Info("router listening", "http", a.HTTP, "https", a.HTTPS, "api", a.API)
			// Host agents find routers through this service to wait for
			// a stopping job's requests to drain.
			ctx := cmd.Context()
			if get("FLYNN_JOB_ID") != "" {
				// A job's host registers its API port (and drains it).
				return r.Run(ctx)
			}
			if reg, err := dc.Register(ctx, api.RouterAPIService, component.AdvertiseAddr("", a.API, get("EXTERNAL_IP")), nil); err != nil {
				log.Warn("register router API in discoverd; drains will not be awaited", "err", err)
			} else {
				defer func() {
					dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
					defer cancel()
					reg.Deregister(dctx)
				}()
			}
			return r.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&httpAddr, "http-addr", ":80", "HTTP listen address (empty disables)")
	f.StringVar(&httpsAddr, "https-addr", ":443", "HTTPS listen address (empty disables)")
	f.StringVar(&apiAddr, "api-addr", "127.0.0.1:5000", "router API address: /metrics, /drained, /events")
	f.StringVar(&tcpIP, "tcp-ip", "", "address TCP route listeners bind to (empty: all)")
	f.StringVar(&tcpRange, "tcp-range", "3000-3500", "ports TCP routes may use")
	f.StringVar(&etcdEndpoints, "etcd", component.OrDefault(get("ETCD_ENDPOINTS"), "http://127.0.0.1:2379"), "etcd client URLs, comma-separated (default $ETCD_ENDPOINTS)")
	etcdconn.TLSFlag(f, &etcdTLS, get)
	f.StringVar(&discoverdURL, "discoverd", component.OrDefault(get("DISCOVERD"), "http://127.0.0.1:1111"), "discoverd HTTP API URL (default $DISCOVERD)")
	f.StringVar(&token, "token", get("FLYNN_CLUSTER_TOKEN"), "cluster key: protects the router API and authenticates to discoverd (default $FLYNN_CLUSTER_TOKEN; prefer the environment: a flag is on the command line, which every process on the host can read)")
	f.StringVar(&certFile, "tls-cert", "", "cluster wildcard certificate (PEM), used when no route certificate matches")
	f.StringVar(&keyFile, "tls-key", "", "key of --tls-cert (PEM)")
	f.StringVar(&cookieKey, "cookie-key", get("ROUTER_COOKIE_KEY"), "32-byte sticky-session key, hex or base64, the same on every router (default $ROUTER_COOKIE_KEY; prefer the environment)")
	f.StringVar(&logLevel, "log-level", "info", "debug logs every request")
	f.BoolVar(&appLog, "app-log", true, `write a line into an app's log for each request the router ended with an error of its own, as Heroku's router does (at=error code=H14 desc="No web processes running" ...), at most 100 a second`)
	f.DurationVar(&limits.ReadHeaderTimeout, "read-header-timeout", time.Minute, "longest a client may take to send a request's headers")
	f.DurationVar(&limits.BodyIdleTimeout, "body-timeout", time.Minute, "longest wait for the next bytes of a request body (routes may set their own)")
	f.Int64Var(&limits.MaxBodyBytes, "max-body-bytes", router.DefaultMaxBodyBytes, "largest request body, -1 for none (routes may set their own)")
	f.IntVar(&limits.MaxConnsPerClient, "max-conns-per-client", router.DefaultMaxConnsPerClient, "connections one client address may hold open, -1 for no limit")
	return cmd
}

func parsePortRange(s string) (int, int, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
		return 0, 0, fmt.Errorf("--tcp-range %q: want LOW-HIGH, like 3000-3500", s)
	}
	return a, b, nil
}

func decodeKey(s string) ([]byte, error) {
	if b, err := hex.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == 32 {
			return b, nil
		}
	}
	return nil, fmt.Errorf("--cookie-key must be 32 bytes in hex or base64")
}
