package slugrunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// StaticConfig configures the static file server.
type StaticConfig struct {
	Dir  string // directory to serve
	Addr string // listen address, e.g. ":8080"
}

// ServeStatic serves the files under cfg.Dir until ctx ends. Content
// types come from file extensions (then content sniffing); a directory
// serves its index.html.
func ServeStatic(ctx context.Context, cfg StaticConfig, log *slog.Logger) error {
	fi, err := os.Stat(cfg.Dir)
	if err != nil {
		return fmt.Errorf("static: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("static: %s is not a directory", cfg.Dir)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("static: %w", err)
	}
	log.Info("serving static files", "dir", cfg.Dir, "addr", ln.Addr().String())
	srv := &http.Server{
		Handler:           http.FileServer(http.Dir(cfg.Dir)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("static: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-errc
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("static: %w", err)
	}
	return nil
}
