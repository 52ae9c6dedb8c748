package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/flynnrebuilt/flynn/api"
)

// The fast path serves HTTP/1.1 keep-alive traffic, plain or over TLS
// (HTTPS connections that did not negotiate h2), without net/http:
// it parses a request head in place in the connection's read buffer,
// forwards it byte for byte (minus hop-by-hop headers, plus the forwarding
// headers) over a pooled backend connection, and relays the response head
// and body the same way, re-framing nothing. Per request it allocates
// nothing and starts no goroutine.
//
// Anything it does not handle itself (HTTP/1.0, chunked or 100-continue
// request bodies, upgrades, absolute-form or percent-encoded targets,
// Connection options, malformed or oversized heads) is handed over, with
// the bytes already buffered, to the net/http server of the same listener,
// which proxies it with the general path in proxy.go.

var errHeadTooBig = errors.New("head too big")

// Client connection buffers. A request head must fit in the read buffer to
// take the fast path; bigger heads go to net/http.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// fastServer accepts plain-HTTP connections, or with tlsConfig HTTPS ones:
// those that negotiate h2 go to the router's HTTP/2 server (h2.go), the
// HTTP/1.1 ones take the fast path over TLS.
type fastServer struct {
	r         *Router
	fe        *frontend
	handoff   *connQueue
	tlsConfig *tls.Config

	mu      sync.Mutex
	conns   map[*fastConn]struct{}
	closing atomic.Bool
	wg      sync.WaitGroup
}

type fastConn struct {
	conn net.Conn
	idle atomic.Bool
	// The hang-up watch (hangup.go): waiting is when the request being
	// served began waiting on its backend connection up (a monoBase
	// offset), 0 when it is not; hungUp is set once the client is seen
	// gone.
	waiting atomic.Int64
	up      atomic.Pointer[upConn]
	hungUp  atomic.Bool
}

func newFastServer(r *Router, fe *frontend, ln net.Listener) *fastServer {
	return &fastServer{r: r, fe: fe, handoff: newConnQueue(ln.Addr()), conns: map[*fastConn]struct{}{}}
}

// serve accepts connections until ln is closed.
func (s *fastServer) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		fc := &fastConn{conn: c}
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[fc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			handedOff := s.serveConn(fc)
			s.mu.Lock()
			delete(s.conns, fc)
			s.mu.Unlock()
			if !handedOff {
				c.Close()
			}
		}()
	}
}

// shutdown wakes idle connections so they close, and waits for the busy
// ones to finish their current request, until the deadline.
func (s *fastServer) shutdown(deadline time.Time) {
	s.closing.Store(true)
	s.handoff.Close()
	s.mu.Lock()
	for fc := range s.conns {
		if fc.idle.Load() {
			fc.conn.SetReadDeadline(aLongTimeAgo)
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(time.Until(deadline)):
	}
	s.mu.Lock()
	for fc := range s.conns {
		fc.conn.Close()
	}
	s.mu.Unlock()
	<-done
}

// fastReq is a parsed request head; its byte slices point into the read
// buffer and are valid until the body is read.
type fastReq struct {
	head       []byte
	method     []byte
	target     []byte
	path       []byte
	host       []byte
	xff        [4][]byte
	nxff       int
	requestID  []byte
	cookies    [4][]byte
	ncookies   int
	clientIP   string
	conn       net.Conn  // the client's, for body read deadlines
	fc         *fastConn // the client's, for the hang-up watch
	bodyR      idleBody  // the body reader, kept here: no allocation
	isHEAD     bool
	wantsHTML  bool
	contentLen int64
	close      bool
	// bodyCut: the backend answered before it took the whole body, and
	// closed (earlyResponse).
	bodyCut bool
	// lines are the header lines to forward, as [start,end) offsets in head.
	lines  [64][2]int32
	nlines int
	// herr is the error the router answered with itself, for the app's
	// log; newID the request id it made, when the client sent none.
	herr  *routerError
	newID [32]byte
	hasID bool
}

// serveConn serves requests on one connection. It reports whether the
// connection was handed to net/http.
func (s *fastServer) serveConn(fc *fastConn) (handedOff bool) {
	c := fc.conn
	cfg := &s.r.cfg
	var tc *tls.Conn
	if s.tlsConfig != nil {
		tc = tls.Server(c, s.tlsConfig)
		// Idle for shutdown, which then cuts the handshake short.
		fc.idle.Store(true)
		c.SetDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
		err := tc.Handshake()
		fc.idle.Store(false)
		if err != nil {
			return false
		}
		c.SetDeadline(time.Time{})
		if s.r.tlsNetHTTP.Load() {
			return s.handoff.push(tc)
		}
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			s.serveH2(fc, tc) // closes tc
			return true
		}
		defer func() {
			if !handedOff {
				releaseSlot(fc.conn)
				tc.Close() // close_notify
			}
		}()
		c = tc
	}
	br := readerPool.Get().(*bufio.Reader)
	bw := writerPool.Get().(*bufio.Writer)
	br.Reset(c)
	bw.Reset(c)
	defer func() {
		// A handed-off connection keeps reading through br until it is
		// drained, so only a finished connection returns it.
		if !handedOff {
			br.Reset(nil)
			readerPool.Put(br)
		}
		bw.Reset(nil)
		writerPool.Put(bw)
	}()
	var req fastReq
	ip := c.RemoteAddr().String()
	if h, _, err := net.SplitHostPort(ip); err == nil {
		ip = h
	}
	rd := readDeadline{conn: c}
	var last time.Time // when the last request ended, if known
	for {
		if s.closing.Load() {
			bw.Flush()
			return false
		}
		if br.Buffered() == 0 {
			// The client's next request is read the ordinary way (a read
			// first, then the wait): it may be pipelined, already arrived
			// while this one was served, which a waitWriter's wait would
			// not see. After a response the other connections that are
			// ready go first, as nginx serves a poller's whole batch of
			// events before it polls again: under load this client's next
			// request is then often there, and the read finds it instead
			// of failing (EAGAIN) and waiting (bench.sh: 2.1-2.4 reads per
			// request instead of 2.6-3.0).
			if bw.Buffered() > 0 {
				bw.Flush()
				runtime.Gosched()
			}
			fc.idle.Store(true)
			rd.extend(last, cfg.IdleTimeout)
			if s.closing.Load() {
				return false
			}
			_, err := br.Peek(1)
			fc.idle.Store(false)
			if err != nil {
				return false
			}
		}
		// A head that came whole with its first bytes needs no header
		// deadline; one that trickles in gets ReadHeaderTimeout.
		head, err := peekHead(br, 0)
		if err == errHeadIncomplete {
			rd.set(time.Now().Add(cfg.ReadHeaderTimeout))
			head, err = peekHead(br, cfg.MaxHeaderBytes)
		}
		if err != nil {
			if errors.Is(err, errHeadTooBig) {
				return s.handOff(c, br, bw)
			}
			return false
		}
		req = fastReq{head: head, clientIP: ip, conn: c, fc: fc}
		if !parseRequestHead(&req) {
			return s.handOff(c, br, bw)
		}
		br.Discard(len(head))
		if req.contentLen > 0 {
			// The body is read with its own deadlines (idleBody).
			rd.set(time.Time{})
		}
		start := time.Now()
		keep, end := s.serveRequest(&req, br, bw, start)
		last = end
		if !keep || req.close {
			if bw.Flush() == nil && req.bodyCut {
				lingerClose(c, br)
			}
			return false
		}
	}
}

func (s *fastServer) handOff(c net.Conn, br *bufio.Reader, bw *bufio.Writer) bool {
	if bw.Flush() != nil {
		return false
	}
	c.SetReadDeadline(time.Time{})
	s.r.metrics.handoffs.Inc()
	return s.handoff.push(&replayConn{Conn: c, br: br})
}

// errHeadIncomplete is peekHead's answer, with no limit, for a head not
// wholly buffered.
var errHeadIncomplete = errors.New("head incomplete")

// peekHead returns the bytes up to and including the blank line that ends
// a message head, without consuming them. With limit 0 it reads nothing
// and reports errHeadIncomplete for a head that is not buffered whole.
func peekHead(br *bufio.Reader, limit int) ([]byte, error) {
	scanned := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		from := max(scanned-3, 0)
		if i := bytes.Index(buf[from:], crlfcrlf); i >= 0 {
			return buf[:from+i+4], nil
		}
		scanned = len(buf)
		if limit == 0 {
			return nil, errHeadIncomplete
		}
		if scanned >= br.Size() || scanned >= limit {
			return nil, errHeadTooBig
		}
		if _, err := br.Peek(scanned + 1); err != nil {
			return nil, err
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// parseRequestHead parses req.head. It returns false for anything the fast
// path leaves to net/http.
func parseRequestHead(req *fastReq) bool {
	h := req.head
	eol := bytes.IndexByte(h, '\n')
	if eol < 1 || h[eol-1] != '\r' {
		return false
	}
	line := h[:eol-1]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 1 || sp1 > 20 {
		return false
	}
	req.method = line[:sp1]
	for _, ch := range req.method {
		if ch < 'A' || ch > 'Z' {
			return false
		}
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 1 || string(rest[sp2+1:]) != "HTTP/1.1" {
		return false
	}
	req.target = rest[:sp2]
	if req.target[0] != '/' {
		return false
	}
	req.path = req.target
	for i, ch := range req.target {
		if ch <= ' ' || ch >= 0x7f || ch == '%' || ch == '#' {
			return false
		}
		if ch == '?' {
			req.path = req.target[:i]
			break
		}
	}
	req.isHEAD = string(req.method) == "HEAD"
	req.contentLen = 0
	haveHost, haveLen := false, false
	pos := eol + 1
	for {
		nl := bytes.IndexByte(h[pos:], '\n')
		if nl < 1 || h[pos+nl-1] != '\r' {
			return false
		}
		end := pos + nl - 1 // excludes CRLF
		if end == pos {
			break // blank line
		}
		line := h[pos:end]
		colon := bytes.IndexByte(line, ':')
		if colon < 1 {
			return false
		}
		name := line[:colon]
		for _, ch := range name {
			if !isTokenChar(ch) {
				return false
			}
		}
		value := bytes.Trim(line[colon+1:], " \t")
		for _, ch := range value {
			if ch < ' ' && ch != '\t' || ch == 0x7f {
				return false
			}
		}
		forward := true
		switch len(name) {
		case 4:
			if equalFold(name, "host") {
				if haveHost || len(value) == 0 {
					return false
				}
				haveHost = true
				req.host = value
				forward = false
			}
		case 6:
			if equalFold(name, "cookie") {
				if req.ncookies < len(req.cookies) {
					req.cookies[req.ncookies] = value
					req.ncookies++
				}
			} else if equalFold(name, "accept") {
				req.wantsHTML = bytes.Contains(value, []byte("text/html"))
			} else if equalFold(name, "expect") {
				return false
			}
		case 7:
			if equalFold(name, "upgrade") {
				return false
			}
		case 10:
			if equalFold(name, "connection") {
				if !parseConnection(value, req) {
					return false
				}
				forward = false
			} else if equalFold(name, "keep-alive") {
				forward = false
			}
		case 2:
			if equalFold(name, "te") {
				forward = false
			}
		case 7 + 7:
			if equalFold(name, "content-length") {
				n, ok := parseContentLength(value)
				if haveLen || !ok {
					return false
				}
				haveLen = true
				req.contentLen = n
				forward = false
			}
		case 17:
			if equalFold(name, "transfer-encoding") {
				return false
			} else if equalFold(name, "x-forwarded-proto") {
				forward = false
			}
		case 15:
			if equalFold(name, "x-forwarded-for") {
				if req.nxff >= len(req.xff) {
					return false
				}
				req.xff[req.nxff] = value
				req.nxff++
				forward = false
			} else if equalFold(name, "x-request-start") {
				forward = false
			}
		case 16:
			if equalFold(name, "x-forwarded-port") || equalFold(name, "proxy-connection") {
				forward = false
			}
		case 12:
			if equalFold(name, "x-request-id") {
				req.requestID = value
				forward = false
			}
		case 19:
			if equalFold(name, "proxy-authorization") {
				forward = false
			}
		case 18:
			if equalFold(name, "proxy-authenticate") {
				forward = false
			}
		}
		if equalFold(name, "trailer") {
			forward = false
		}
		if forward {
			if req.nlines >= len(req.lines) {
				return false
			}
			req.lines[req.nlines] = [2]int32{int32(pos), int32(end)}
			req.nlines++
		}
		pos = end + 2
	}
	return haveHost
}

// parseConnection accepts only the close and keep-alive options; any other
// option names a header to drop, which the general path handles.
func parseConnection(v []byte, req *fastReq) bool {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.Trim(tok, " \t")
		switch {
		case len(tok) == 0 || equalFold(tok, "keep-alive"):
		case equalFold(tok, "close"):
			req.close = true
		default:
			return false
		}
	}
	return true
}

func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, ch := range v {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		n = n*10 + int64(ch-'0')
	}
	return n, true
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c < 0x7f && strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// equalFold compares ASCII b with lower-case s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// view returns b as a string without copying; it must not outlive b.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// serveRequest proxies one parsed request and reports whether the client
// connection can carry another.
// serveRequest also returns when the request ended (the zero time when it
// was not proxied), which saves serveConn reading the clock again.
func (s *fastServer) serveRequest(req *fastReq, br *bufio.Reader, bw *bufio.Writer, start time.Time) (keep bool, end time.Time) {
	r := s.r
	e := r.table.Load().lookup(view(req.host), view(req.path))
	if e == nil {
		r.metrics.noRoute.Inc()
		return writeFastError(bw, req, http.StatusNotFound, api.CodeNotFound, "no route matches "+string(req.host)+string(req.path)) && discardBody(br, req, r.cfg.BodyIdleTimeout), time.Time{}
	}
	if e.maxBody >= 0 && req.contentLen > e.maxBody {
		req.close = true // the body is not read
		writeFastError(bw, req, http.StatusRequestEntityTooLarge, api.CodeTooLarge,
			"the request body is larger than the "+strconv.FormatInt(e.maxBody, 10)+" bytes this route takes")
		e.metrics.observe(http.StatusRequestEntityTooLarge, time.Since(start))
		return false, time.Time{}
	}
	status, keep := s.proxy(req, e, br, bw, start)
	d := time.Since(start) // the monotonic clock only
	e.metrics.observe(status, d)
	if (req.herr != nil || status == statusClientClosed) && r.applog != nil {
		s.logError(req, e, status, d)
	}
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.log.Debug("request", "route", e.route.ID, "method", string(req.method), "host", string(req.host),
			"path", string(req.path), "status", status, "duration", d)
	}
	return keep, start.Add(d)
}

// logError writes the request the router ended itself into the app's log.
func (s *fastServer) logError(req *fastReq, e *routeEntry, status int, d time.Duration) {
	herr := req.herr
	if status == statusClientClosed {
		herr = errClientGone
	}
	id := string(req.requestID)
	if !validRequestID(id) && req.hasID {
		id = string(req.newID[:])
	}
	s.r.applog.log(e, errorLine{err: herr, method: string(req.method), path: string(req.target), host: string(req.host),
		requestID: id, fwd: req.clientIP, proto: s.fe.proto, service: d, status: status})
}

func discardBody(br *bufio.Reader, req *fastReq, idle time.Duration) bool {
	if req.contentLen == 0 {
		return true
	}
	if req.contentLen > 1<<20 {
		return false
	}
	_, err := io.CopyN(io.Discard, req.body(br, idle), req.contentLen)
	return err == nil
}

// body is the request's body, read from br with a read deadline of idle
// for each read.
func (req *fastReq) body(br *bufio.Reader, idle time.Duration) io.Reader {
	req.bodyR = idleBody{r: br, idle: idle, conn: req.conn}
	return &req.bodyR
}

func (s *fastServer) proxy(req *fastReq, e *routeEntry, br *bufio.Reader, bw *bufio.Writer, start time.Time) (status int, keep bool) {
	at := startAttempts(e)
	set := at.set
	var sticky string
	if at.sticky {
		for i := 0; i < req.ncookies && sticky == ""; i++ {
			sticky = s.r.cookies.addrFromCookies(view(req.cookies[i]))
		}
		at.prefer(sticky)
	}
	for b := at.next(); b != nil; b = at.next() {
		b.acquire()
		var pc *upConn
		var err error
		if e.route.DisableKeepAlives {
			pc, err = b.dial(context.Background())
		} else {
			pc, err = b.getConn(context.Background(), req.contentLen > 0)
		}
		if err != nil {
			b.release()
			markDown(set, b, err)
			s.r.log.Debug("backend dial failed", "route", e.route.ID, "addr", b.addr, "err", err)
			continue
		}
		setCookie := e.route.Sticky && b.addr != sticky
		status, keep = s.roundTrip(req, e, b, pc, br, bw, start, setCookie)
		b.release()
		if status == retryHostDown {
			markHostDown(set, b)
		}
		if status == retryElsewhere || status == retryHostDown {
			continue
		}
		return status, keep
	}
	msg := "no backend is available for " + string(req.host) + ": the app may be scaled to zero or starting"
	return http.StatusServiceUnavailable, writeFastError(bw, req, http.StatusServiceUnavailable, api.CodeUnavailable, msg) && discardBody(br, req, e.bodyIdle)
}

// roundTrip forwards the request over pc and relays the response. It
// retries once on a fresh connection only when a pooled connection was
// closed by the backend before it answered anything, and the request has
// no body.
func (s *fastServer) roundTrip(req *fastReq, e *routeEntry, b *backend, pc *upConn, br *bufio.Reader, bw *bufio.Writer, start time.Time, setCookie bool) (int, bool) {
	// sendFast starts the hang-up watch once the request is read whole.
	defer req.fc.unwatch()
	pc.bound(req.contentLen == 0)
	head, err := s.sendFast(req, e, pc, br, start)
	if err != nil && req.fc.hungUp.Load() {
		err = errClientHungUp // no retry for a client that is gone
	}
	if err != nil && req.contentLen == 0 && isUnreachable(err) {
		pc.conn.Close()
		if !pc.probed.Load() || idempotent(view(req.method)) {
			return retryHostDown, true
		}
		// The backend got the request, and its host vanished before it
		// answered (probe): a request that is not idempotent is not
		// sent again.
		b.markDown()
		return http.StatusBadGateway, writeFastError(bw, req, http.StatusBadGateway, api.CodeUnavailable, msgHostVanished)
	}
	if err != nil && pc.reused && req.contentLen == 0 && isStale(err) {
		pc.conn.Close()
		pc, err = b.dial(context.Background())
		if err != nil {
			b.markDown()
			return retryElsewhere, true
		}
		pc.bound(true)
		head, err = s.sendFast(req, e, pc, br, start)
	}
	if err != nil {
		pc.conn.Close()
		if err == errClientHungUp || req.fc.hungUp.Load() {
			return statusClientClosed, false
		}
		s.r.log.Debug("backend request failed", "route", e.route.ID, "addr", b.addr, "err", err)
		if errors.Is(err, errClientBody) {
			if bodyStatus(err) == http.StatusRequestTimeout {
				req.close = true
				writeFastError(bw, req, http.StatusRequestTimeout, api.CodeValidation, msgBodyStalled)
				return http.StatusRequestTimeout, false
			}
			return statusClientClosed, false
		}
		return http.StatusBadGateway, writeFastError(bw, req, http.StatusBadGateway, api.CodeUnavailable, msgBackendFailed)
	}
	var resp fastResp
	for {
		resp = fastResp{}
		if !parseResponseHead(head, &resp) {
			pc.conn.Close()
			return http.StatusBadGateway, writeFastError(bw, req, http.StatusBadGateway, api.CodeUnavailable, msgMalformed)
		}
		if resp.status >= 200 || resp.status == http.StatusSwitchingProtocols {
			break
		}
		// Informational: relay and read on.
		bw.Write(head)
		pc.br.Discard(len(head))
		if head, err = peekHead(pc.br, pc.br.Size()); err != nil {
			pc.conn.Close()
			req.herr = errNoResponse // after an informational answer was relayed
			return http.StatusBadGateway, false
		}
	}
	if resp.status == http.StatusSwitchingProtocols {
		pc.conn.Close()
		return http.StatusBadGateway, writeFastError(bw, req, http.StatusBadGateway, api.CodeUnavailable, msgSwitched)
	}
	noBody := req.isHEAD || resp.status == 204 || resp.status == 304
	closeDelimited := !noBody && !resp.chunked && resp.contentLen < 0
	// Response head: HTTP/1.1, the backend's end-to-end headers, framing.
	bw.WriteString("HTTP/1.1")
	bw.Write(resp.statusRest)
	bw.WriteString("\r\n")
	for i := 0; i < resp.nlines; i++ {
		l := resp.lines[i]
		bw.Write(head[l[0]:l[1]])
		bw.WriteString("\r\n")
	}
	if setCookie {
		bw.WriteString("Set-Cookie: " + stickyCookie + "=")
		bw.WriteString(s.r.cookies.seal(b.addr))
		bw.WriteString("; Path=/; HttpOnly\r\n")
	}
	if resp.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	} else if resp.contentLen >= 0 {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), resp.contentLen, 10))
		bw.WriteString("\r\n")
	}
	keep := !closeDelimited && !req.close
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	pc.br.Discard(len(head))

	var cerr error
	upstreamOK := true
	switch {
	case noBody:
	case resp.chunked:
		upstreamOK, cerr = relayChunked(bw, pc.br)
	case resp.contentLen >= 0:
		upstreamOK, cerr = relayN(bw, pc.br, resp.contentLen)
	default:
		upstreamOK, cerr = relayUntilEOF(bw, pc.br)
		upstreamOK = false // the backend connection is finished
	}
	// The response is flushed when serveConn waits for the next request,
	// or with the next response when that one is pipelined.
	// A client that hung up mid-response may have had pc's wait aborted.
	hungUp := req.fc.unwatch()
	if upstreamOK && !resp.close && !e.route.DisableKeepAlives && !hungUp && !req.bodyCut {
		b.putConn(pc)
	} else {
		pc.conn.Close()
	}
	if cerr != nil || hungUp || (!upstreamOK && !closeDelimited) {
		// A backend that failed mid-response: cut the client off so the
		// truncation shows.
		return resp.status, false
	}
	return resp.status, keep
}

var errClientBody = errors.New("client request body")

// sendFast writes the request to the backend and peeks the response head.
func (s *fastServer) sendFast(req *fastReq, e *routeEntry, pc *upConn, br *bufio.Reader, start time.Time) ([]byte, error) {
	w := pc.bw
	h := req.head
	w.Write(req.method)
	w.WriteByte(' ')
	w.Write(req.target)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.Write(req.host)
	w.WriteString("\r\n")
	for i := 0; i < req.nlines; i++ {
		l := req.lines[i]
		w.Write(h[l[0]:l[1]])
		w.WriteString("\r\n")
	}
	w.WriteString("X-Forwarded-For: ")
	for i := 0; i < req.nxff; i++ {
		w.Write(req.xff[i])
		w.WriteString(", ")
	}
	w.WriteString(req.clientIP)
	w.WriteString("\r\nX-Forwarded-Proto: ")
	w.WriteString(s.fe.proto)
	w.WriteString("\r\nX-Forwarded-Port: ")
	w.WriteString(s.fe.port)
	w.WriteString("\r\nX-Request-Start: ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), start.UnixMilli(), 10))
	w.WriteString("\r\nX-Request-Id: ")
	if len(req.requestID) > 0 && validRequestID(view(req.requestID)) {
		w.Write(req.requestID)
	} else {
		writeNewRequestID(w, &req.newID)
		req.hasID = true
	}
	w.WriteString("\r\n")
	if e.route.DisableKeepAlives {
		w.WriteString("Connection: close\r\n")
	}
	if req.contentLen > 0 || methodWantsLength(req.method) {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), req.contentLen, 10))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	if req.contentLen > 0 {
		// The head slices die here: reading the body reuses the buffer.
		n, err := io.CopyN(w, req.body(br, e.bodyIdle), req.contentLen)
		if n < req.contentLen {
			if head, ok := earlyResponse(req, pc, err); ok {
				return head, nil
			}
			return nil, errors.Join(errClientBody, err)
		}
	}
	// The request is read whole: from here on, only a watch sees the
	// client hang up.
	req.fc.watch(pc, start)
	// Send, and wait for the response in the same go (waitWriter).
	pc.ww.waitNext = pc.canWait(start)
	err := w.Flush()
	pc.ww.waitNext = false
	if err != nil {
		if head, ok := earlyResponse(req, pc, err); ok {
			return head, nil
		}
		return nil, err
	}
	return peekHead(pc.br, pc.br.Size())
}

// earlyResponse is the response head a backend sent before it closed the
// connection while the request's body was being written to it (err, the
// write's error): servers answer a body they will not read (too big, a
// request refused) and close, as nginx relays. The client's connection
// is then closed after the response (req.close), since the rest of the
// body is unread, with a lingering close (lingerClose), and the backend's
// is not pooled (req.bodyCut).
func earlyResponse(req *fastReq, pc *upConn, err error) ([]byte, bool) {
	if req.contentLen == 0 {
		return nil, false
	}
	head, ok := earlyHead(pc, err)
	if ok {
		req.bodyCut, req.close = true, true
	}
	return head, ok
}

// earlyHead is the response head the backend of pc sent before it closed
// the connection, when err, the write of a request's body to it, is that
// close (backendClosedOnWrite); the fast, h2 and net/http paths relay it.
func earlyHead(pc *upConn, err error) ([]byte, bool) {
	if !backendClosedOnWrite(err) {
		return nil, false
	}
	// The connection is closed: the read returns what arrived, or fails,
	// at once.
	head, err := peekHead(pc.br, pc.br.Size())
	return head, err == nil
}

// backendClosedOnWrite reports whether err is a write to a backend's
// connection that the backend closed (EPIPE, ECONNRESET), not a failure
// to read the client's body.
func backendClosedOnWrite(err error) bool {
	var cbe *clientBodyError
	var oe *net.OpError
	return err != nil && !errors.As(err, &cbe) && errors.As(err, &oe) && oe.Op == "write" &&
		(errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET))
}

// lingerMax and lingerBytes bound the rest of a request body read and
// dropped after a response that did not wait for it (lingerClose).
const (
	lingerMax   = 2 * time.Second
	lingerBytes = 64 << 20
)

// lingerClose ends c, whose client may still be sending a body that was
// answered before it was read: closing with data unread would reset the
// connection, and the reset can reach the client before it has read the
// response. So c's sending side is closed first, and what the client
// still sends is read and dropped until it closes too, for up to
// lingerMax and lingerBytes. The caller then closes c.
func lingerClose(c net.Conn, br *bufio.Reader) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(lingerMax))
	io.CopyN(io.Discard, br, lingerBytes)
}

func methodWantsLength(m []byte) bool {
	s := view(m)
	return s == "POST" || s == "PUT" || s == "PATCH"
}

// fastResp is a parsed response head; offsets point into the head.
type fastResp struct {
	status     int
	statusRest []byte // " 200 OK"
	contentLen int64
	chunked    bool
	close      bool
	lines      [256][2]int32
	nlines     int
}

// parseResponseHead parses a backend response head, keeping the
// end-to-end header lines.
func parseResponseHead(h []byte, resp *fastResp) bool {
	eol := bytes.IndexByte(h, '\n')
	if eol < 12 || h[eol-1] != '\r' {
		return false
	}
	line := h[:eol-1]
	if !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return false
	}
	http10 := line[7] == '0'
	resp.statusRest = line[8:]
	code := line[9:]
	if len(code) < 3 || (len(code) > 3 && code[3] != ' ') {
		return false
	}
	for _, ch := range code[:3] {
		if ch < '0' || ch > '9' {
			return false
		}
		resp.status = resp.status*10 + int(ch-'0')
	}
	resp.contentLen = -1
	resp.close = http10
	haveLen := false
	pos := eol + 1
	for {
		nl := bytes.IndexByte(h[pos:], '\n')
		if nl < 1 || h[pos+nl-1] != '\r' {
			return false
		}
		end := pos + nl - 1
		if end == pos {
			break
		}
		line := h[pos:end]
		colon := bytes.IndexByte(line, ':')
		if colon < 1 || line[0] == ' ' || line[0] == '\t' {
			return false
		}
		name := line[:colon]
		value := bytes.Trim(line[colon+1:], " \t")
		forward := true
		switch {
		case equalFold(name, "content-length"):
			n, ok := parseContentLength(value)
			if !ok || haveLen && n != resp.contentLen {
				return false
			}
			haveLen = true
			resp.contentLen = n
			forward = false
		case equalFold(name, "transfer-encoding"):
			if !equalFold(value, "chunked") {
				return false
			}
			resp.chunked = true
			forward = false
		case equalFold(name, "connection"):
			if bytes.Contains(bytes.ToLower(value), []byte("close")) {
				resp.close = true
			} else if http10 && bytes.Contains(bytes.ToLower(value), []byte("keep-alive")) {
				resp.close = false
			}
			if bytes.IndexByte(value, ',') >= 0 || !(equalFold(value, "close") || equalFold(value, "keep-alive")) {
				// Named options: not worth the fast path's trouble, and
				// rare from app servers; drop the whole response's keep-alive.
				resp.close = true
			}
			forward = false
		case equalFold(name, "keep-alive"), equalFold(name, "proxy-connection"), equalFold(name, "upgrade"),
			equalFold(name, "trailer"), equalFold(name, "te"), equalFold(name, "proxy-authenticate"):
			forward = false
		}
		if forward {
			if resp.nlines >= len(resp.lines) {
				return false
			}
			resp.lines[resp.nlines] = [2]int32{int32(pos), int32(end)}
			resp.nlines++
		}
		pos = end + 2
	}
	if resp.chunked {
		resp.contentLen = -1
	}
	return true
}

// relayN copies n body bytes from the backend to the client, flushing
// the client whenever the backend has nothing buffered, so slow bodies
// stream. upstreamOK is false if the backend failed; cerr is a client
// write error.
func relayN(bw *bufio.Writer, src *bufio.Reader, n int64) (upstreamOK bool, cerr error) {
	for n > 0 {
		if src.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return false, err
			}
			if _, err := src.Peek(1); err != nil {
				return false, nil
			}
		}
		chunk, _ := src.Peek(int(min(int64(src.Buffered()), n)))
		if _, err := bw.Write(chunk); err != nil {
			return false, err
		}
		src.Discard(len(chunk))
		n -= int64(len(chunk))
	}
	return true, nil
}

// relayChunked copies a chunked body as is, following its framing to find
// its end.
func relayChunked(bw *bufio.Writer, src *bufio.Reader) (upstreamOK bool, cerr error) {
	for {
		if src.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return false, err
			}
		}
		line, err := src.ReadSlice('\n')
		if err != nil || len(line) < 3 || line[len(line)-2] != '\r' {
			return false, nil
		}
		if _, err := bw.Write(line); err != nil {
			return false, err
		}
		size, ok := parseChunkSize(line[:len(line)-2])
		if !ok {
			return false, nil
		}
		if size == 0 {
			// Trailers, then the final blank line.
			for {
				tl, err := src.ReadSlice('\n')
				if err != nil {
					return false, nil
				}
				if _, err := bw.Write(tl); err != nil {
					return false, err
				}
				if len(tl) == 2 && tl[0] == '\r' {
					return true, nil
				}
			}
		}
		if ok, err := relayN(bw, src, size+2); !ok || err != nil {
			return false, err
		}
	}
}

func parseChunkSize(b []byte) (int64, bool) {
	if i := bytes.IndexByte(b, ';'); i >= 0 {
		b = b[:i]
	}
	b = bytes.TrimRight(b, " \t")
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}

// relayUntilEOF copies a close-delimited body.
func relayUntilEOF(bw *bufio.Writer, src *bufio.Reader) (upstreamOK bool, cerr error) {
	for {
		if src.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return false, err
			}
		}
		if _, err := src.Peek(1); err != nil {
			return errors.Is(err, io.EOF), nil
		}
		chunk, _ := src.Peek(src.Buffered())
		if _, err := bw.Write(chunk); err != nil {
			return false, err
		}
		src.Discard(len(chunk))
	}
}

// writeFastError writes the router's own error reply (JSON, or HTML for
// browsers). It reports whether the connection can go on.
func writeFastError(bw *bufio.Writer, req *fastReq, status int, code api.ErrorCode, msg string) bool {
	req.herr = routerErrorFor(status, msg)
	var body []byte
	ctype := "application/json"
	if req.wantsHTML {
		ctype = "text/html; charset=utf-8"
		body = []byte("<!DOCTYPE html>\n<html><head><title>" + strconv.Itoa(status) + " " + http.StatusText(status) +
			"</title></head><body><h1>" + http.StatusText(status) + "</h1><p>" + html.EscapeString(msg) + "</p></body></html>\n")
	} else {
		body, _ = json.Marshal(&api.Error{Code: code, Message: msg})
		body = append(body, '\n')
	}
	bw.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\nContent-Type: " + ctype +
		"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n")
	if req.close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(body)
	return bw.Flush() == nil
}

// replayConn is a connection handed to net/http: reads first drain what
// the fast path had buffered.
type replayConn struct {
	net.Conn
	br *bufio.Reader
}

// CloseWrite ends a TLS connection's writing side (close_notify), as on a
// TLS connection net/http accepted itself; other connections close.
func (c *replayConn) CloseWrite() error {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

// connQueue is a net.Listener fed with handed-off connections.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}
