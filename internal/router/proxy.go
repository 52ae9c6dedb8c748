package router

import (
	"bufio"
	"context"
	"errors"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// maxAttempts bounds how many backends one request tries when dials fail.
const maxAttempts = 4

// frontend serves one HTTP or HTTPS listener.
type frontend struct {
	r     *Router
	proto string // "http" or "https"
	port  string
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// aLongTimeAgo is a deadline that makes blocked IO return at once.
var aLongTimeAgo = time.Unix(1, 0)

func (f *frontend) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	r := f.r
	e := r.table.Load().lookup(req.Host, req.URL.Path)
	if e == nil {
		r.metrics.noRoute.Inc()
		writeErrorPage(w, req, http.StatusNotFound, api.CodeNotFound, "no route matches "+req.Host+req.URL.Path)
		return
	}
	if hasBody(req) {
		if e.maxBody >= 0 && req.ContentLength > e.maxBody {
			// The body is not read: no waiting for it after the reply.
			http.NewResponseController(w).SetReadDeadline(aLongTimeAgo)
			w.Header().Set("Connection", "close")
			writeErrorPage(w, req, http.StatusRequestEntityTooLarge, api.CodeTooLarge,
				"the request body is larger than the "+strconv.FormatInt(e.maxBody, 10)+" bytes this route takes")
			e.metrics.observe(http.StatusRequestEntityTooLarge, time.Since(start))
			return
		}
		body := req.Body
		if e.maxBody >= 0 {
			body = http.MaxBytesReader(w, body, e.maxBody)
		}
		req.Body = &idleBody{r: body, c: body, idle: e.bodyIdle, conn: http.NewResponseController(w)}
	}
	var nr netReq
	status, abort := f.proxy(w, req, e, start, &nr)
	d := time.Since(start)
	e.metrics.observe(status, d)
	if (nr.herr != nil || status == statusClientClosed) && r.applog != nil {
		herr := nr.herr
		if status == statusClientClosed {
			herr = errClientGone
		}
		id := req.Header.Get("X-Request-Id")
		if !validRequestID(id) && nr.hasID {
			id = string(nr.newID[:])
		}
		r.applog.log(e, errorLine{err: herr, method: req.Method, path: req.URL.RequestURI(), host: req.Host,
			requestID: id, fwd: remoteIP(req.RemoteAddr), proto: f.proto, service: d, status: status})
	}
	if r.log.Enabled(req.Context(), slog.LevelDebug) {
		r.log.Debug("request", "route", e.route.ID, "method", req.Method, "host", req.Host, "path", req.URL.Path,
			"status", status, "duration", d, "remote", req.RemoteAddr)
	}
	if abort {
		// The backend failed mid-response: cut the client connection so it
		// cannot mistake a truncated body for a complete one.
		panic(http.ErrAbortHandler)
	}
}

func (f *frontend) proxy(w http.ResponseWriter, req *http.Request, e *routeEntry, start time.Time, nr *netReq) (status int, abort bool) {
	upgrade := isUpgrade(req)
	at := startAttempts(e)
	set := at.set
	sticky := ""
	if at.sticky {
		sticky = f.r.cookies.stickyAddr(req)
		at.prefer(sticky)
	}
	for b := at.next(); b != nil; b = at.next() {
		b.acquire()
		var pc *upConn
		var err error
		if upgrade || e.route.DisableKeepAlives {
			pc, err = b.dial(req.Context())
		} else {
			pc, err = b.getConn(req.Context(), hasBody(req))
		}
		if err != nil {
			b.release()
			f.r.log.Debug("backend dial failed", "route", e.route.ID, "addr", b.addr, "err", err)
			if req.Context().Err() != nil {
				return statusClientClosed, false
			}
			markDown(set, b, err)
			continue
		}
		if e.route.Sticky && b.addr != sticky {
			http.SetCookie(w, &http.Cookie{Name: stickyCookie, Value: f.r.cookies.seal(b.addr), Path: "/", HttpOnly: true})
		}
		if upgrade {
			status = f.upgrade(w, req, e, b, pc, start, nr)
		} else {
			status, abort = f.roundTrip(w, req, e, b, pc, start, nr)
		}
		b.release()
		if status == retryHostDown {
			markHostDown(set, b)
		}
		if status == retryElsewhere || status == retryHostDown {
			continue
		}
		return status, abort
	}
	nr.page(w, req, http.StatusServiceUnavailable, api.CodeUnavailable,
		"no backend is available for "+req.Host+": the app may be scaled to zero or starting")
	return http.StatusServiceUnavailable, false
}

// roundTrip sends req over pc and copies the response to w. It retries
// once on a fresh connection only when a pooled connection turns out to
// have been closed by the backend before it read anything, and the request
// has no body.
func (f *frontend) roundTrip(w http.ResponseWriter, req *http.Request, e *routeEntry, b *backend, pc *upConn, start time.Time, nr *netReq) (int, bool) {
	stop := context.AfterFunc(req.Context(), func() { pc.conn.SetDeadline(aLongTimeAgo) })
	pc.bound(req.ContentLength == 0)
	probe := time.AfterFunc(probeAfter, pc.startProbe)
	defer func() { probe.Stop() }()
	resp, err := f.send(req, e, pc, start, false, nr)
	if err != nil && req.ContentLength == 0 && isUnreachable(err) && req.Context().Err() == nil {
		stop()
		pc.conn.Close()
		if !pc.probed.Load() || idempotent(req.Method) {
			return retryHostDown, false
		}
		b.markDown()
		nr.page(w, req, http.StatusBadGateway, api.CodeUnavailable, msgHostVanished)
		return http.StatusBadGateway, false
	}
	if err != nil && pc.reused && req.ContentLength == 0 && isStale(err) && req.Context().Err() == nil {
		stop()
		pc.conn.Close()
		pc, err = b.dial(req.Context())
		if err != nil {
			b.markDown()
			return retryElsewhere, false
		}
		stop = context.AfterFunc(req.Context(), func() { pc.conn.SetDeadline(aLongTimeAgo) })
		pc.bound(true)
		probe.Stop()
		probe = time.AfterFunc(probeAfter, pc.startProbe)
		resp, err = f.send(req, e, pc, start, false, nr)
	}
	if err != nil {
		stop()
		pc.conn.Close()
		if status := bodyStatus(err); status != 0 {
			// The client's body stalled or grew past the limit: the
			// backend got a part of it and is cut off; so is the client.
			w.Header().Set("Connection", "close")
			msg := msgBodyStalled
			code := api.CodeValidation
			if status == http.StatusRequestEntityTooLarge {
				msg, code = "the request body is larger than the "+strconv.FormatInt(e.maxBody, 10)+" bytes this route takes", api.CodeTooLarge
			}
			nr.page(w, req, status, code, msg)
			return status, false
		}
		if req.Context().Err() != nil {
			return statusClientClosed, false
		}
		f.r.log.Debug("backend request failed", "route", e.route.ID, "addr", b.addr, "err", err)
		msg := msgBackendFailed
		if strings.Contains(err.Error(), "malformed ") {
			// net/http's and textproto's parse errors of the head.
			msg = msgMalformed
		}
		nr.page(w, req, http.StatusBadGateway, api.CodeUnavailable, msg)
		return http.StatusBadGateway, false
	}
	copyResponseHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	complete, upstreamErr := copyBody(w, resp, pc)
	probe.Stop()
	reusable := stop() && complete && !resp.Close && !e.route.DisableKeepAlives
	if reusable {
		b.putConn(pc)
	} else {
		pc.conn.Close()
	}
	if resp.Close && hasBody(req) {
		lingerBody(w, req)
	}
	return resp.StatusCode, upstreamErr
}

// lingerBody reads and drops what is left of req's body (nothing, when
// the backend took it all) after its response is sent: a backend that
// answered early (send) left the client sending, and net/http's own
// close of a connection with much unread would reset it, which can reach
// the client before it has read the response (fast.go's lingerClose).
// HTTP/2 needs none of this: net/http resets the stream.
func lingerBody(w http.ResponseWriter, req *http.Request) {
	if req.ProtoMajor != 1 {
		return
	}
	rc := http.NewResponseController(w)
	if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(lingerMax)) != nil {
		return
	}
	io.CopyN(io.Discard, req.Body, lingerBytes)
}

// copyBody streams the response body to the client. Responses without a
// length are flushed whenever the backend has nothing more buffered, so
// event streams are not held back.
func copyBody(w http.ResponseWriter, resp *http.Response, pc *upConn) (complete, upstreamErr bool) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	flusher, _ := w.(http.Flusher)
	stream := resp.ContentLength < 0 && flusher != nil
	if stream && pc.br.Buffered() == 0 {
		// The head now: a client of an event stream waits for it before
		// the first event, which may be long in coming.
		flusher.Flush()
	}
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false, false
			}
			if stream && pc.br.Buffered() == 0 {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			return true, false
		}
		if err != nil {
			return false, true
		}
	}
}

func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// retryElsewhere is the status roundTrip returns when it wrote nothing to
// the client and the request should go to another backend: a pooled
// connection failed before the backend answered, and its backend cannot
// be reached again (its host is gone).
const retryElsewhere = -1

// retryHostDown is retryElsewhere because the backend's host did not
// answer at all (isUnreachable): the other backends on that host are
// passed over too (markHostDown).
const retryHostDown = -2

// isUnreachable reports whether a request without a body, sent on a
// bounded connection (upConn.bound), timed out unacknowledged: the
// backend's host is gone.
func isUnreachable(err error) bool { return errors.Is(err, syscall.ETIMEDOUT) }

// send writes the request to the backend and reads the response head,
// skipping informational responses other than 101.
func (f *frontend) send(req *http.Request, e *routeEntry, pc *upConn, start time.Time, upgrade bool, nr *netReq) (*http.Response, error) {
	bw := pc.bw
	f.writeRequestHead(bw, req, e, start, upgrade, nr)
	err := writeBody(bw, req)
	if err == nil {
		// Send, and wait for the response in the same go (waitWriter).
		pc.ww.waitNext = pc.canWait(start)
		err = bw.Flush()
		pc.ww.waitNext = false
	}
	if err != nil {
		// A backend that answered before it took the whole body, and
		// closed (fast.go's earlyHead): its answer is relayed, and
		// the connection is not pooled.
		if !hasBody(req) || !backendClosedOnWrite(err) {
			return nil, err
		}
		resp, rerr := readResponse(pc, req)
		if rerr != nil {
			return nil, err
		}
		resp.Close = true
		return resp, nil
	}
	return readResponse(pc, req)
}

// readResponse reads the response to req from pc, past any 1xx but 101.
func readResponse(pc *upConn, req *http.Request) (*http.Response, error) {
	// A bare EOF before any byte of a reply marks a connection the backend
	// had closed (ReadResponse would report it as unexpected).
	if _, err := pc.br.Peek(1); err != nil {
		return nil, err
	}
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, nil
	}
}

func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
}

func writeBody(bw *bufio.Writer, req *http.Request) error {
	if !hasBody(req) {
		return nil
	}
	if req.ContentLength > 0 {
		n, err := io.CopyN(bw, req.Body, req.ContentLength)
		if err != nil && n < req.ContentLength {
			return err
		}
		return nil
	}
	cw := httputil.NewChunkedWriter(bw)
	if _, err := io.Copy(cw, req.Body); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// writeRequestHead writes the request line and headers for the backend:
// the client's end-to-end headers plus the forwarding headers, without
// hop-by-hop headers.
func (f *frontend) writeRequestHead(bw *bufio.Writer, req *http.Request, e *routeEntry, start time.Time, upgrade bool, nr *netReq) {
	uri := req.RequestURI
	if uri == "" || req.ProtoMajor == 2 && !strings.HasPrefix(uri, "/") {
		uri = req.URL.RequestURI()
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	var connTokens []string
	if v, ok := req.Header["Connection"]; ok {
		connTokens = connectionTokens(v)
	}
	for k, vv := range req.Header {
		if skipRequestHeader(k) || (connTokens != nil && listed(connTokens, k)) {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("X-Forwarded-For: ")
	if prior := req.Header["X-Forwarded-For"]; len(prior) > 0 {
		for _, p := range prior {
			bw.WriteString(p)
			bw.WriteString(", ")
		}
	}
	bw.WriteString(remoteIP(req.RemoteAddr))
	bw.WriteString("\r\nX-Forwarded-Proto: ")
	bw.WriteString(f.proto)
	bw.WriteString("\r\nX-Forwarded-Port: ")
	bw.WriteString(f.port)
	bw.WriteString("\r\nX-Request-Start: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), start.UnixMilli(), 10))
	bw.WriteString("\r\nX-Request-Id: ")
	if id := req.Header["X-Request-Id"]; len(id) > 0 && validRequestID(id[0]) {
		bw.WriteString(id[0])
	} else {
		writeNewRequestID(bw, &nr.newID)
		nr.hasID = true
	}
	bw.WriteString("\r\n")
	if upgrade {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(req.Header.Get("Upgrade"))
		bw.WriteString("\r\n")
	} else if e.route.DisableKeepAlives {
		bw.WriteString("Connection: close\r\n")
	}
	if hasBody(req) {
		if req.ContentLength > 0 {
			bw.WriteString("Content-Length: ")
			bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.ContentLength, 10))
			bw.WriteString("\r\n")
		} else {
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		}
	} else if req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch {
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// skipRequestHeader reports headers the router drops or sets itself.
func skipRequestHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Request-Start", "X-Request-Id":
		return true
	}
	return false
}

func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

func connectionTokens(vv []string) []string {
	var out []string
	for _, v := range vv {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, http.CanonicalHeaderKey(t))
			}
		}
	}
	if out == nil {
		out = []string{}
	}
	return out
}

func listed(tokens []string, k string) bool {
	for _, t := range tokens {
		if t == k {
			return true
		}
	}
	return false
}

// copyResponseHeader copies the backend's end-to-end headers. The header
// slices are shared, not copied: the response is not used afterwards.
func copyResponseHeader(dst, src http.Header) {
	var connTokens []string
	if v, ok := src["Connection"]; ok {
		connTokens = connectionTokens(v)
	}
	for k, vv := range src {
		if isHopHeader(k) || (connTokens != nil && listed(connTokens, k)) {
			continue
		}
		dst[k] = vv
	}
	if _, ok := dst["Content-Type"]; !ok {
		dst["Content-Type"] = nil // no content sniffing by net/http
	}
}

// isUpgrade reports an HTTP/1.1 request asking to switch protocols
// (WebSocket and others).
func isUpgrade(req *http.Request) bool {
	if req.ProtoMajor != 1 {
		return false
	}
	v, ok := req.Header["Connection"]
	if !ok || len(req.Header["Upgrade"]) == 0 {
		return false
	}
	for _, s := range v {
		for _, t := range strings.Split(s, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// validRequestID accepts a client's X-Request-Id of 20-200 characters from
// a safe set.
func validRequestID(id string) bool {
	if len(id) < 20 || len(id) > 200 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '+' || c == '/' || c == '=' || c == ':') {
			return false
		}
	}
	return true
}

// upgrade proxies a protocol switch: after the backend answers 101, the
// two connections are piped until either side closes.
func (f *frontend) upgrade(w http.ResponseWriter, req *http.Request, e *routeEntry, b *backend, pc *upConn, start time.Time, nr *netReq) int {
	resp, err := f.send(req, e, pc, start, true, nr)
	if err != nil {
		pc.conn.Close()
		nr.page(w, req, http.StatusBadGateway, api.CodeUnavailable, msgBackendFailed)
		return http.StatusBadGateway
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		copyResponseHeader(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		copyBody(w, resp, pc)
		pc.conn.Close()
		return resp.StatusCode
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		pc.conn.Close()
		nr.page(w, req, http.StatusBadGateway, api.CodeUnavailable, msgUpgradeNeeds11)
		return http.StatusBadGateway
	}
	cconn, cbuf, err := hj.Hijack()
	if err != nil {
		pc.conn.Close()
		return http.StatusBadGateway
	}
	if !f.r.conns.add(cconn) {
		cconn.Close()
		pc.conn.Close()
		return http.StatusServiceUnavailable
	}
	defer f.r.conns.remove(cconn)
	cconn.SetDeadline(time.Time{})
	cbuf.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(cbuf)
	cbuf.WriteString("\r\n")
	if err := cbuf.Flush(); err != nil {
		cconn.Close()
		pc.conn.Close()
		return http.StatusSwitchingProtocols
	}
	pipe(cconn, cbuf.Reader, pc.conn, pc.br)
	return http.StatusSwitchingProtocols
}

type closeWriter interface{ CloseWrite() error }

// pipe copies a→b and b→a until both directions end, half-closing as each
// finishes, then closes both connections. ar and br read from a and b
// (possibly through buffers holding bytes already read).
func pipe(a net.Conn, ar io.Reader, b net.Conn, br io.Reader) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(b, ar)
		if cw, ok := b.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			b.Close()
		}
	}()
	io.Copy(a, br)
	if cw, ok := a.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		a.Close()
	}
	<-done
	a.Close()
	b.Close()
}

// writeErrorPage answers with the router's own error: HTML for browsers,
// JSON otherwise.
// remoteIP is the IP address of a host:port, or all of it.
func remoteIP(addr string) string {
	if ip, _, err := net.SplitHostPort(addr); err == nil {
		return ip
	}
	return addr
}

// netReq is what the net/http path keeps about a request for the app's
// log: the error the router answered with itself, and the request id it
// made when the client sent none.
type netReq struct {
	herr  *routerError
	newID [32]byte
	hasID bool
}

// page writes the router's error page and notes it for the app's log.
func (nr *netReq) page(w http.ResponseWriter, req *http.Request, status int, code api.ErrorCode, msg string) {
	nr.herr = routerErrorFor(status, msg)
	writeErrorPage(w, req, status, code, msg)
}

func writeErrorPage(w http.ResponseWriter, req *http.Request, status int, code api.ErrorCode, msg string) {
	if strings.Contains(req.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		io.WriteString(w, "<!DOCTYPE html>\n<html><head><title>"+strconv.Itoa(status)+" "+http.StatusText(status)+
			"</title></head><body><h1>"+http.StatusText(status)+"</h1><p>"+html.EscapeString(msg)+"</p></body></html>\n")
		return
	}
	httpapi.WriteJSON(w, status, &api.Error{Code: code, Message: msg})
}
