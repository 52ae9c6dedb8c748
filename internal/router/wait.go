package router

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// A request/response exchange costs Go's netpoll a failed read per wait:
// a read first tries the socket (EAGAIN when the peer has not answered
// yet), then parks until the poller reports it readable, then reads
// again. nginx knows from the poller that nothing is there and skips that
// read. waitWriter does the same for the two waits of the fast path (the
// backend's response after the request, the client's next request after
// the response): it writes the message from inside the connection's raw
// read callback, after the poller's readiness was reset, so the wait that
// follows cannot miss the reply's arrival, and the reply is then read by
// one successful read.
//
// Measured with wrk through the fast path, this takes about two of six
// syscalls off every request.

// waitWriter is the destination of a connection's bufio.Writer. A Write
// while waitNext is set writes without blocking and then, when all of it
// went out, waits until the connection is readable (or its read deadline
// passes); whatever could not be written at once is written by the
// connection's ordinary Write, with its deadlines. waitNext is cleared by
// the Write.
//
// Under TLS the writer is below the tls.Conn, which may cut one flush into
// several records and writes: there hold collects them (release then
// writes them in one go and waits).
type waitWriter struct {
	conn     net.Conn
	raw      syscall.RawConn // nil: ordinary writes only
	waitNext bool
	hold     bool
	held     *[]byte // from heldPool while holding

	// The state of one writeAndWait, kept here so the callback, a method
	// value made once, allocates nothing per call.
	p       []byte
	written int
	err     error
	wrote   bool
	step    func(fd uintptr) bool
}

// newWaitWriter returns a waitWriter for conn, which must be a TCP
// connection (or a clientConn around one) for the wait to be used.
func newWaitWriter(conn net.Conn) *waitWriter {
	w := &waitWriter{conn: conn}
	var sc syscall.Conn
	switch c := conn.(type) {
	case *clientConn:
		sc, _ = c.Conn.(*net.TCPConn)
	case *net.TCPConn:
		sc = c
	}
	if sc != nil {
		if rc, err := sc.SyscallConn(); err == nil {
			w.raw = rc
			w.step = w.writeStep
		}
	}
	return w
}

// maxHeld bounds what hold collects; past it the writes go out as they come.
const maxHeld = 32 << 10

var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

func (w *waitWriter) Write(p []byte) (int, error) {
	if w.hold && w.raw != nil {
		if w.held == nil {
			w.held = heldPool.Get().(*[]byte)
		}
		if len(*w.held)+len(p) <= maxHeld {
			*w.held = append(*w.held, p...)
			return len(p), nil
		}
		if err := w.release(false); err != nil {
			return 0, err
		}
	}
	if !w.waitNext || w.raw == nil {
		return w.conn.Write(p)
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
		m, err := w.conn.Write(p[n:])
		return n + m, err
	}
	return n, nil
}

// release ends hold: it writes what was held and, with wait, then waits
// as a Write with waitNext does.
func (w *waitWriter) release(wait bool) error {
	w.hold = false
	if w.held == nil {
		return nil
	}
	w.waitNext = wait
	_, err := w.Write(*w.held)
	w.waitNext = false
	*w.held = (*w.held)[:0]
	heldPool.Put(w.held)
	w.held = nil
	return err
}

// waitConn is a client connection whose writes go through a waitWriter:
// the connection under a tls.Conn.
type waitConn struct {
	net.Conn
	w *waitWriter
}

func (c *waitConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// writeStep is the raw read callback: the first call writes w.p and asks
// to wait for readability when all of it was written; the next call (the
// connection is readable) ends the wait.
func (w *waitWriter) writeStep(fd uintptr) bool {
	if w.wrote {
		return true
	}
	w.wrote = true
	for w.written < len(w.p) {
		n, err := syscall.Write(int(fd), w.p[w.written:])
		if n > 0 {
			w.written += n
		}
		switch err {
		case nil:
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

// forget records that the deadline was changed elsewhere.
func (d *readDeadline) forget() { d.at = time.Time{} }
