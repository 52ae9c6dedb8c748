package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// ShutdownTimeout is how long Serve waits for in-flight requests to finish
// after its context is cancelled.
const ShutdownTimeout = 10 * time.Second

// Defaults of Limits.
const (
	DefaultReadHeaderTimeout = 30 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultBodyIdleTimeout   = time.Minute
	DefaultWriteIdleTimeout  = 2 * time.Minute
	DefaultMaxHeaderBytes    = 1 << 20
	// DefaultMaxBodyBytes is the largest request body a server reads
	// unless the handler raises it with SetMaxBody.
	DefaultMaxBodyBytes = 16 << 20
)

// Limits bound what one client can hold of a server. Every limit bounds
// idleness, not total time, so a request or response that keeps moving
// (an upload, an event stream, an attach session) may take as long as it
// needs, while one that stalls is cut off. Zero fields take the defaults.
type Limits struct {
	// ReadHeaderTimeout bounds the time to read a request's headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that carries no request
	// for this long.
	IdleTimeout time.Duration
	// BodyIdleTimeout is the longest a server waits for the next bytes
	// of a request body; the request then fails with 408 and the
	// connection is closed.
	BodyIdleTimeout time.Duration
	// WriteIdleTimeout is the longest a write to a client may block: a
	// client that stops reading is disconnected.
	WriteIdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request's body (-1: no limit). A handler
	// that takes bigger bodies (uploads) raises it with SetMaxBody.
	MaxBodyBytes int64
}

func (l Limits) withDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&l.IdleTimeout, DefaultIdleTimeout)
	def(&l.BodyIdleTimeout, DefaultBodyIdleTimeout)
	def(&l.WriteIdleTimeout, DefaultWriteIdleTimeout)
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = DefaultMaxBodyBytes
	}
	return l
}

// NewServer returns an http.Server with lim's header and keep-alive
// timeouts whose handler applies lim's body limits (see LimitBodies).
// Serve its connections from a listener wrapped by LimitWrites.
func NewServer(h http.Handler, log *slog.Logger, lim Limits) *http.Server {
	lim = lim.withDefaults()
	return &http.Server{
		Handler:           LimitBodies(lim, h),
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Serve serves h on ln with the default Limits until ctx is cancelled,
// then shuts the server down gracefully, waiting up to ShutdownTimeout for
// in-flight requests. It returns nil on a shutdown caused by ctx.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return ServeLimited(ctx, ln, h, log, Limits{})
}

// ServeLimited is Serve with the given limits.
func ServeLimited(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, lim Limits) error {
	lim = lim.withDefaults()
	srv := NewServer(h, log, lim)
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(LimitWrites(ln, lim.WriteIdleTimeout)) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// LimitWrites wraps ln so that a write to one of its connections fails
// when it cannot go on for idle: a peer that stops reading is cut off, a
// slow one is not. Hijacked connections keep the limit.
func LimitWrites(ln net.Listener, idle time.Duration) net.Listener {
	if idle <= 0 {
		return ln
	}
	return &writeIdleListener{Listener: ln, idle: idle}
}

type writeIdleListener struct {
	net.Listener
	idle time.Duration
}

func (l *writeIdleListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return NewWriteIdleConn(c, l.idle), nil
}

// NewWriteIdleConn returns c with every write bounded by idle (see
// LimitWrites).
func NewWriteIdleConn(c net.Conn, idle time.Duration) net.Conn {
	return &writeIdleConn{Conn: c, idle: idle}
}

type writeIdleConn struct {
	net.Conn
	idle time.Duration
}

func (c *writeIdleConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

// (No ReadFrom: the underlying one would wait for its reader under a
// write deadline set before it, and a session relayed with io.Copy that
// is quiet for a while would fail its next write.)

// CloseWrite half-closes the connection when the underlying one can.
func (c *writeIdleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// LimitBodies wraps h so that request bodies are bounded by lim: each
// read of the body waits at most BodyIdleTimeout for data, and a body over
// MaxBodyBytes fails with 413 (see SetMaxBody). A body the handler left
// unread gets the same idle bound while the server drains it.
func LimitBodies(lim Limits, h http.Handler) http.Handler {
	lim = lim.withDefaults()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		b := &limitedBody{w: w, rc: r.Body, ctl: http.NewResponseController(w), idle: lim.BodyIdleTimeout,
			max: lim.MaxBodyBytes, length: r.ContentLength}
		r.Body = b
		hw := &hijackWatch{ResponseWriter: w}
		h.ServeHTTP(hw, r)
		if !hw.hijacked.Load() {
			b.finish()
		}
	})
}

// hijackWatch notes a hijack: the connection is then the handler's, and
// LimitBodies leaves its deadlines alone.
type hijackWatch struct {
	http.ResponseWriter
	hijacked atomic.Bool
}

func (h *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("httpapi: response writer cannot hijack")
	}
	h.hijacked.Store(true)
	return hj.Hijack()
}

func (h *hijackWatch) Flush() {
	if f, ok := h.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (h *hijackWatch) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// SetMaxBody sets the largest body the handler of r will read (-1: no
// limit), replacing the server's MaxBodyBytes. Call it before reading the
// body; it reports false when the body is not one of LimitBodies' or has
// been read from.
func SetMaxBody(r *http.Request, n int64) bool {
	b, ok := r.Body.(*limitedBody)
	if !ok {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return false
	}
	b.max = n
	return true
}

// limitedBody is a request body with an idle deadline on each read and a
// size limit.
type limitedBody struct {
	w      http.ResponseWriter
	rc     io.ReadCloser
	ctl    *http.ResponseController
	idle   time.Duration
	length int64 // Content-Length, -1 unknown

	mu      sync.Mutex
	max     int64
	started bool
	limited io.Reader // rc under the size limit, once started
	done    bool      // the body was read to its end or failed
}

func (b *limitedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if !b.started {
		b.started = true
		b.limited = idleReader{b}
		if b.max >= 0 {
			if b.length > b.max {
				b.done = true
				b.mu.Unlock()
				b.ctl.SetReadDeadline(aLongTimeAgo) // not drained: closed after the reply
				return 0, &http.MaxBytesError{Limit: b.max}
			}
			b.limited = http.MaxBytesReader(b.w, io.NopCloser(b.limited), b.max)
		}
	}
	if b.done {
		b.mu.Unlock()
		return 0, io.EOF
	}
	b.mu.Unlock()
	n, err := b.limited.Read(p)
	if err != nil {
		b.mu.Lock()
		b.done = true
		b.mu.Unlock()
		if err == io.EOF {
			// Done with the body: no deadline on the connection's
			// further reads (net/http's own, while the handler
			// streams a reply).
			b.ctl.SetReadDeadline(time.Time{})
			return n, err
		}
		// A failed body is not drained: the connection closes after
		// the reply.
		b.ctl.SetReadDeadline(aLongTimeAgo)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, &api.Error{Code: api.CodeValidation, Status: http.StatusRequestTimeout,
				Message: fmt.Sprintf("no request body bytes came for %s: send the body without long pauses", b.idle)}
		}
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// finish bounds the server's draining of a body the handler left unread.
func (b *limitedBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done && b.length != 0 {
		b.ctl.SetReadDeadline(time.Now().Add(b.idle))
	}
}

// aLongTimeAgo is a deadline that makes reads fail at once.
var aLongTimeAgo = time.Unix(1, 0)

// idleReader reads the body with a fresh read deadline each time.
type idleReader struct{ b *limitedBody }

func (r idleReader) Read(p []byte) (int, error) {
	r.b.ctl.SetReadDeadline(time.Now().Add(r.b.idle))
	return r.b.rc.Read(p)
}
