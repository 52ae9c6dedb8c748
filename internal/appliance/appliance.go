// Package appliance holds what the database appliances (postgres, mysql,
// redis) share: serving their provider API beside a running server until
// either ends, and random ids and passwords.
package appliance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Server is a database server that runs and an appliance serving its
// provider API.
type Server struct {
	// Name names the appliance in errors and logs ("postgres").
	Name string
	// APIListen is the provider API's address ("": no API); APIKey the
	// key it wants for everything but /ping.
	APIListen, APIKey string
	Handler           http.Handler
	// Exited reports the server process's end; Stop stops it and waits.
	Exited <-chan error
	Stop   func() error
	// Port is logged; Ready, when set, is called once the API listens.
	Port  int
	Ready func()
	Log   *slog.Logger
}

// Serve serves the provider API beside the running server until ctx ends
// (the server is stopped), the server exits or the API fails (the other
// is stopped too).
func (s *Server) Serve(ctx context.Context) error {
	var ln net.Listener
	apiErr := make(chan error, 1)
	if s.APIListen != "" {
		var err error
		if ln, err = net.Listen("tcp", s.APIListen); err != nil {
			s.Stop()
			return fmt.Errorf("%s: api: %w", s.Name, err)
		}
		auth := httpapi.NewKeyAuth(s.APIKey)
		h := auth.Require(func(r *http.Request) bool { return r.URL.Path == "/ping" }, s.Handler)
		go func() { apiErr <- httpapi.Serve(ctx, ln, httpapi.Wrap(s.Log, h), s.Log) }()
	}
	s.Log.Info(s.Name+" ready", "port", s.Port, "api", s.APIListen)
	if s.Ready != nil {
		s.Ready()
	}
	select {
	case <-ctx.Done():
		err := s.Stop()
		if ln != nil {
			<-apiErr
		}
		return err
	case err := <-s.Exited:
		if ln != nil {
			ln.Close()
			<-apiErr
		}
		return fmt.Errorf("%s: the server exited: %v", s.Name, err)
	case err := <-apiErr:
		s.Stop()
		return fmt.Errorf("%s: api: %w", s.Name, err)
	}
}

// LastLines is the last n lines of a command's output, joined by "; ":
// what an error about the command quotes of it.
func LastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// SyncDir makes a change to dir's entries (a file made, renamed or
// removed in it) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RandomHex is n random bytes in hex: database ids and passwords.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// DatabaseID is the form of the ids the appliances give databases.
var DatabaseID = regexp.MustCompile(`^db_[0-9a-f]{16}$`)

// Provider is a database appliance as its provider API serves it.
type Provider struct {
	// Provision makes a database and returns its {id, env}.
	Provision func(ctx context.Context) (any, error)
	// Deprovision drops the database id (already checked against
	// DatabaseID).
	Deprovision func(ctx context.Context, id string) error
	// Ping checks the server (nil: the API answering is enough).
	Ping func(ctx context.Context) error
}

// Handler serves the provider API in Flynn's protocol: POST /databases,
// DELETE /databases?id=ID (a malformed id is a 400), GET /ping.
func (p Provider) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /databases", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		db, err := p.Provision(r.Context())
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, db)
	}))
	mux.Handle("DELETE /databases", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		id := r.URL.Query().Get("id")
		if !DatabaseID.MatchString(id) {
			return api.Validation("id", "id %q is not a database of this provider (db_ and 16 hex digits)", id)
		}
		if err := p.Deprovision(r.Context(), id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}))
	mux.Handle("GET /ping", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if p.Ping != nil {
			if err := p.Ping(r.Context()); err != nil {
				return err
			}
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}))
	return mux
}
