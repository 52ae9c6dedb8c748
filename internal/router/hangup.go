package router

import (
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// While the fast path waits for a backend (for its response head, or for
// more of a streamed body) it reads nothing from the client, so it would
// not see a client that hung up: an event stream that has gone quiet, a
// long poll, a slow backend held the client's connection, its slot of the
// per-client cap with it, until the backend next wrote. net/http's server
// reads in the background for this (and the general path aborts the
// backend's request when the request's context ends); nginx watches the
// socket for the peer's close. The fast path, which starts no goroutine
// per request, has the fast server's sweeper look instead: every
// hangupSweep it asks the kernel for the TCP state of each client
// connection that has waited on its backend for that long, and when the
// client has closed (its FIN or a reset arrived) it marks the connection
// and aborts the backend wait, so the request ends and serveConn closes
// the connection, which gives its slot back.
//
// A client that only half-closes, ending its writes but still reading, is
// taken as gone too, as net/http's background read takes it.

// statusClientClosed is the status recorded for a request whose client
// went away before its response was sent (nginx's 499).
const statusClientClosed = 499

// errClientHungUp ends a backend request whose client hung up.
var errClientHungUp = errors.New("the client hung up")

// hangupSweep is how often the sweeper looks, and how long a connection
// waits on its backend before it is looked at.
const hangupSweep = 250 * time.Millisecond

// watch marks the request being served on fc as waiting on pc, with the
// client's request read whole, from start on.
func (fc *fastConn) watch(pc *upConn, start time.Time) {
	fc.up.Store(pc)
	fc.waiting.Store(int64(start.Sub(monoBase)) | 1) // never 0
}

// unwatch ends the wait that watch began. It reports whether the client
// hung up: then the backend connection watched may have been aborted, and
// must not be pooled.
func (fc *fastConn) unwatch() (hungUp bool) {
	fc.waiting.Store(0)
	fc.up.Store(nil)
	return fc.hungUp.Load()
}

// sweepHangups looks for clients that hung up while their request waited
// on a backend, every hangupSweep until stop is closed.
func (s *fastServer) sweepHangups(stop <-chan struct{}) {
	tick := time.NewTicker(hangupSweep)
	defer tick.Stop()
	var waiting []*fastConn
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := int64(time.Since(monoBase))
		waiting = waiting[:0]
		s.mu.Lock()
		for fc := range s.conns {
			if at := fc.waiting.Load(); at != 0 && now-at >= int64(hangupSweep) {
				waiting = append(waiting, fc)
			}
		}
		s.mu.Unlock()
		for _, fc := range waiting {
			if !peerClosed(fc.conn) {
				// The backend is slow, or its host is gone (probe).
				if pc := fc.up.Load(); pc != nil {
					pc.startProbe()
				}
				continue
			}
			// In this order, against unwatch's: a request that
			// unwatches after the load below sees hungUp, and closes
			// the backend connection instead of pooling it.
			fc.hungUp.Store(true)
			if pc := fc.up.Load(); pc != nil {
				pc.conn.SetDeadline(aLongTimeAgo)
			}
		}
		clear(waiting)
	}
}

// peerClosed reports whether the peer of c, a client's TCP connection,
// has closed it: the kernel has its FIN (CLOSE_WAIT) or a reset (CLOSE).
func peerClosed(c net.Conn) bool {
	if cc, ok := c.(*clientConn); ok {
		c = cc.Conn
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		closed = err == nil && info.State != unix.BPF_TCP_ESTABLISHED
	})
	return closed
}
