// Command routerbench runs the router with a fixed route to fixed backends,
// without etcd or discoverd, for bench/router/bench.sh.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/router"
)

func main() {
	listen := flag.String("addr", "127.0.0.1:62080", "HTTP listen address")
	tlsListen := flag.String("tls-addr", "", "HTTPS listen address (HTTP/1.1 and h2); needs -cert and -key")
	certFile := flag.String("cert", "", "PEM certificate for HTTPS")
	keyFile := flag.String("key", "", "PEM key for HTTPS")
	apiAddr := flag.String("api-addr", "127.0.0.1:18089", "router API address (metrics, pprof)")
	domain := flag.String("domain", "bench.test", "route domain")
	backends := flag.String("backends", "127.0.0.1:18081,127.0.0.1:18082", "backend addresses, comma-separated")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log, _ := logging.New(os.Stderr, logging.Config{Level: "warn"})
	disc := router.NewMemDiscoverer()
	for _, b := range strings.Split(*backends, ",") {
		disc.Register("bench-web", b)
	}
	cfg := router.Config{
		HTTPAddr:   *listen,
		HTTPSAddr:  *tlsListen,
		APIAddr:    *apiAddr,
		Routes:     []api.Route{{ID: "bench", Type: api.RouteHTTP, Domain: *domain, Service: "bench-web"}},
		Discoverer: disc,
		CookieKey:  make([]byte, 32),
	}
	if *tlsListen != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cfg.DefaultCert = &cert
	}
	r, err := router.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
