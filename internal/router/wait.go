package router

import (
	"io"
	"net"
	"syscall"
	"time"
)

// A request sent to a backend costs Go's netpoll a failed read: a read
// first tries the socket (EAGAIN: the backend has not answered yet), then
// parks until the poller reports it readable, then reads again. nginx
// knows from its poller that nothing is there and skips that read.
// waitWriter does the same for the backend's response: it writes the
// request from inside the connection's raw read callback, after the
// poller's readiness was reset, and waits there until the socket is
// readable, so the response is then read by one successful read.
//
// The reset also forgets what arrived before the write, so the wait is
// only for a connection on which nothing can have arrived since its last
// response was read: a pooled backend connection used moments ago
// (upConn.canWait). A client's connection never waits this way: its next
// request may be pipelined, there before the response went out.

// waitWriter is the destination of a backend connection's bufio.Writer. A
// Write while waitNext is set writes without blocking and then, when all
// of it went out, waits until the connection is readable (or its read
// deadline passes); whatever could not be written at once is written by
// the connection's ordinary Write. waitNext is cleared by the Write.
type waitWriter struct {
	conn     net.Conn
	rio      *rawIO          // conn's raw writes; nil: conn's Write
	raw      syscall.RawConn // nil: ordinary writes only
	waitNext bool

	// The state of one wait, kept here so the callback, a method value
	// made once, allocates nothing per call.
	p       []byte
	written int
	err     error
	wrote   bool
	step    func(fd uintptr) bool
}

func newWaitWriter(conn net.Conn, rio *rawIO) *waitWriter {
	w := &waitWriter{conn: conn, rio: rio}
	if tc, ok := conn.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			w.raw = rc
			w.step = w.writeStep
		}
	}
	return w
}

func (w *waitWriter) Write(p []byte) (int, error) {
	if !w.waitNext || w.raw == nil {
		return w.write(p)
	}
	w.waitNext = false
	w.p, w.written, w.err, w.wrote = p, 0, nil, false
	// An error of the wait itself (the read deadline, a close) is left to
	// the read that follows.
	w.raw.Read(w.step)
	n, err := w.written, w.err
	w.p, w.err = nil, nil
	if err != nil {
		return n, err
	}
	if n < len(p) {
		m, err := w.write(p[n:])
		return n + m, err
	}
	return n, nil
}

// write is an ordinary write of p, whole.
func (w *waitWriter) write(p []byte) (int, error) {
	if w.rio != nil {
		return w.rio.Write(p)
	}
	return w.conn.Write(p)
}

// writeStep is the raw read callback: the first call writes w.p and asks
// to wait for readability when all of it was written; the next call (the
// connection is readable) ends the wait.
func (w *waitWriter) writeStep(fd uintptr) bool {
	if w.wrote {
		return true
	}
	w.wrote = true
	for w.written < len(w.p) {
		n, err := rawWrite(fd, w.p[w.written:])
		w.written += n
		switch err {
		case 0:
			if n == 0 {
				w.err = io.ErrShortWrite
				return true
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true // the rest goes by the ordinary Write
		default:
			w.err = &net.OpError{Op: "write", Net: "tcp", Source: w.conn.LocalAddr(), Addr: w.conn.RemoteAddr(), Err: err}
			return true
		}
	}
	return false
}

// waitIdleMax bounds how long a pooled backend connection may have sat
// unused for its request to be sent with the wait. What a backend sends
// to an idle connection (a close, a lingering half-close) is seen by the
// poller then and forgotten by the wait's reset: a backend that
// half-closed and then dropped the request without a reset would hold it
// forever. No server closes keep-alive connections this soon.
const waitIdleMax = 100 * time.Millisecond

// canWait reports whether the request starting at start may be sent on c
// with the wait (waitWriter), and records the use.
func (c *upConn) canWait(start time.Time) bool {
	ok := c.reused && c.br.Buffered() == 0 && !c.lastUsed.IsZero() && start.Sub(c.lastUsed) < waitIdleMax
	c.lastUsed = start
	return ok
}

// readDeadline sets a connection's read deadline lazily: a deadline that
// would move by less than 1/64 of its timeout is left as it is, as nginx
// leaves its timers (a deadline change is a timer update in the runtime,
// the costliest part of a request's bookkeeping). A connection so times
// out up to 1/64 of its timeout early, never late.
type readDeadline struct {
	conn net.Conn
	at   time.Time // the deadline in force; zero when not known
}

// extend makes the deadline about now+timeout; a zero now is read from
// the clock.
func (d *readDeadline) extend(now time.Time, timeout time.Duration) {
	if now.IsZero() {
		now = time.Now()
	}
	at := now.Add(timeout)
	if !d.at.IsZero() && !d.at.After(at) && at.Sub(d.at) <= timeout>>6 {
		return
	}
	d.set(at)
}

// set sets the deadline exactly.
func (d *readDeadline) set(at time.Time) {
	d.conn.SetReadDeadline(at)
	d.at = at
}
