package router

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// clientLimiter counts the open connections of each client address over
// all of the router's listeners.
type clientLimiter struct {
	max int // -1: no limit
	mu  sync.Mutex
	per map[string]int
}

func (l *clientLimiter) acquire(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max >= 0 && l.per[ip] >= l.max {
		return false
	}
	l.per[ip]++
	return true
}

func (l *clientLimiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.per[ip]--; l.per[ip] <= 0 {
		delete(l.per, ip)
	}
}

// wrap returns ln whose connections count against their client's limit
// (one over it is closed at once) and, with writeIdle, fail a write that
// cannot go on for that long.
func (l *clientLimiter) wrap(ln net.Listener, writeIdle time.Duration, m *metrics) net.Listener {
	return &limitListener{Listener: ln, lim: l, writeIdle: writeIdle, metrics: m}
}

type limitListener struct {
	net.Listener
	lim       *clientLimiter
	writeIdle time.Duration
	metrics   *metrics
}

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		if !ln.lim.acquire(ip) {
			ln.metrics.refused.Inc()
			c.Close()
			continue
		}
		return &clientConn{Conn: c, raw: newRawIO(c), ip: ip, lim: ln.lim, writeIdle: ln.writeIdle}, nil
	}
}

// clientConn is a client's connection: it gives its slot back when
// closed, and bounds each write by writeIdle when set.
type clientConn struct {
	net.Conn
	raw       *rawIO // reads and writes Conn; nil: Conn's own
	ip        string
	lim       *clientLimiter
	writeIdle time.Duration
	once      sync.Once
	// wdl is the write deadline in force, as a monoBase offset; 0 when
	// not known.
	wdl atomic.Int64
}

// monoBase is the origin of clientConn's write deadlines, read from the
// monotonic clock alone (time.Since), which is half of what time.Now reads.
var monoBase = time.Now()

// Write bounds p's write by writeIdle. The deadline is moved lazily, like
// readDeadline: only when it would move by more than writeIdle/64.
func (c *clientConn) Write(p []byte) (int, error) {
	if c.writeIdle > 0 {
		at := int64(time.Since(monoBase) + c.writeIdle)
		if cur := c.wdl.Load(); cur == 0 || cur > at || at-cur > int64(c.writeIdle>>6) {
			c.Conn.SetWriteDeadline(monoBase.Add(time.Duration(at)))
			c.wdl.Store(at)
		}
	}
	if c.raw != nil {
		return c.raw.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *clientConn) Read(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(0)
	return c.Conn.SetWriteDeadline(t)
}

func (c *clientConn) SetDeadline(t time.Time) error {
	c.wdl.Store(0)
	return c.Conn.SetDeadline(t)
}

// Close gives the slot back, then closes: a client that sees its
// connection closed finds its slot free for the next one.
func (c *clientConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// release gives the connection's slot back, once; Close calls it.
func (c *clientConn) release() {
	c.once.Do(func() { c.lim.release(c.ip) })
}

// releaseSlot gives back the slot of c, a client's connection, ahead of a
// close that the client sees before c's own (a TLS close_notify).
func releaseSlot(c net.Conn) {
	if cc, ok := c.(*clientConn); ok {
		cc.release()
	}
}

func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom and WriteTo keep splice for TCP routes (which have no write
// deadline).
func (c *clientConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok && c.writeIdle == 0 {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *clientConn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

// clientBodyError is a failure to read a client's request body: it
// stalled (a timeout) or went past the route's limit.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "client request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// bodyStatus is the status to answer a client whose body failed with err,
// or 0 when err is not the client's body.
func bodyStatus(err error) int {
	var ce *clientBodyError
	if !errors.As(err, &ce) {
		return 0
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout
	}
	return 0
}

// idleBody is a request body read with a fresh read deadline on the
// client's connection (conn) each time, cleared at its end.
type idleBody struct {
	r    io.Reader
	c    io.Closer
	idle time.Duration
	conn interface{ SetReadDeadline(time.Time) error }
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.conn.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.conn.SetReadDeadline(time.Time{})
	} else if err != nil {
		err = &clientBodyError{err}
	}
	return n, err
}

func (b *idleBody) Close() error {
	if b.c != nil {
		return b.c.Close()
	}
	return nil
}
