package httpapi

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

type ctxKey int

const loggedErrKey ctxKey = 0

// errBox carries an internal error from WriteError to the access log.
type errBox struct{ err error }

func setLoggedError(r *http.Request, err error) {
	if r == nil {
		return
	}
	if b, ok := r.Context().Value(loggedErrKey).(*errBox); ok {
		b.err = err
	}
}

// statusWriter records the status and size of a reply. It passes through
// Flush and Hijack so SSE and upgrades keep working.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("httpapi: response writer cannot hijack")
	}
	if s.status == 0 {
		s.status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// AccessLog logs one line per request: method, path, status, bytes,
// duration, and the internal error behind a 500 if there was one.
func AccessLog(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		box := &errBox{}
		r = r.WithContext(context.WithValue(r.Context(), loggedErrKey, box))
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		attrs := []any{
			"method", r.Method, "path", r.URL.Path, "status", sw.status,
			"bytes", sw.bytes, "duration", time.Since(start), "remote", r.RemoteAddr,
		}
		if box.err != nil {
			log.Error("request", append(attrs, "err", box.err)...)
			return
		}
		log.Debug("request", attrs...)
	})
}

// Wrap applies the standard middleware (panic recovery and access log) to h.
func Wrap(log *slog.Logger, h http.Handler) http.Handler {
	return AccessLog(log, Recover(log, h))
}

// KeyAuth checks HTTP Basic credentials against a set of keys. The user
// name is ignored and the password must equal one of the keys; comparison
// is constant-time. Several keys allow rotation.
type KeyAuth struct {
	hashes [][sha256.Size]byte
}

// NewKeyAuth returns a KeyAuth accepting any of keys. Empty keys are ignored.
func NewKeyAuth(keys ...string) *KeyAuth {
	a := &KeyAuth{}
	for _, k := range keys {
		if k != "" {
			a.hashes = append(a.hashes, sha256.Sum256([]byte(k)))
		}
	}
	return a
}

// Valid reports whether key is one of the accepted keys.
func (a *KeyAuth) Valid(key string) bool {
	h := sha256.Sum256([]byte(key))
	ok := 0
	for _, want := range a.hashes {
		ok |= subtle.ConstantTimeCompare(h[:], want[:])
	}
	return ok == 1
}

// Check reports whether the request carries an accepted key, either as the
// Basic-auth password or as a Bearer token.
func (a *KeyAuth) Check(r *http.Request) bool {
	if _, pass, ok := r.BasicAuth(); ok {
		return a.Valid(pass)
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && h[:7] == "Bearer " {
		return a.Valid(h[7:])
	}
	return false
}

// Require wraps next so that requests without an accepted key get a 401
// JSON error. Requests for which open returns true pass without a key.
func (a *KeyAuth) Require(open func(*http.Request) bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (open != nil && open(r)) || a.Check(r) {
			next.ServeHTTP(w, r)
			return
		}
		WriteError(w, r, api.Unauthorized("missing or invalid key: pass the cluster key as the HTTP Basic password"))
	})
}
