package router

import (
	"net"
	"strconv"
	"time"
)

// tcpListener serves one TCP route port.
type tcpListener struct {
	ln net.Listener
}

// listenTCP opens a route's port. Each connection looks up the route
// anew, so a changed service takes effect for new connections at once.
func (r *Router) listenTCP(port int) (*tcpListener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(r.cfg.TCPIP, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	// A TCP connection may idle as long as its protocol likes; only the
	// per-client cap applies.
	ln = r.clients.wrap(ln, 0, r.metrics)
	l := &tcpListener{ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				return // closed
			}
			if !r.conns.add(c) {
				c.Close()
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer r.conns.remove(c)
				r.serveTCP(port, c)
			}()
		}
	}()
	return l, nil
}

func (r *Router) serveTCP(port int, c net.Conn) {
	start := time.Now()
	e := r.table.Load().tcp[port]
	if e == nil {
		c.Close()
		return
	}
	at := startAttempts(e)
	for b := at.next(); b != nil; b = at.next() {
		b.acquire()
		bc, err := dialer.Dial("tcp", b.addr)
		if err != nil {
			b.release()
			b.markDown()
			r.log.Debug("tcp backend dial failed", "route", e.route.ID, "addr", b.addr, "err", err)
			continue
		}
		if !r.conns.add(bc) {
			bc.Close()
			c.Close()
			b.release()
			return
		}
		pipe(c, c, bc, bc)
		r.conns.remove(bc)
		b.release()
		e.metrics.observe(200, time.Since(start))
		return
	}
	c.Close()
	e.metrics.observe(503, time.Since(start))
}
