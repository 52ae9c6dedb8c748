// Package router is Flynn's edge proxy (strowger): it serves HTTP, HTTPS
// (SNI certificates, HTTP/2) and TCP routes that it follows live from etcd,
// and balances each route over the instances of a discoverd service that it
// follows live too. It owns the route table, TLS selection, the pooled
// upstream HTTP/1.1 proxy, sticky sessions, backend draining, the limits
// that keep one client from holding the router (header, body and write
// idle deadlines, body size, connections per client address), the lines
// it writes into apps' logs about requests it answered itself (applog.go),
// and the router API (/metrics, /drained, /events).
package router

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"bufio"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Config configures a Router.
type Config struct {
	// HTTPAddr and HTTPSAddr are the listen addresses (":80", ":443"); an
	// empty HTTPSAddr disables HTTPS, an empty HTTPAddr disables HTTP.
	HTTPAddr  string
	HTTPSAddr string
	// APIAddr serves /metrics, /drained, /events and pprof; empty disables.
	APIAddr string
	// TCPIP is the address TCP route listeners bind to ("" for all).
	TCPIP string
	// TCPPortMin and TCPPortMax bound the ports of TCP routes (3000-3500).
	TCPPortMin, TCPPortMax int

	// Etcd is where routes live (under api.KeyRoutes). When nil, Routes is
	// a fixed route set (benchmarks).
	Etcd   *etcdkv.Client
	Routes []api.Route
	// Discoverer follows the backends of each route's service.
	Discoverer Discoverer

	// DefaultCert is the cluster wildcard certificate, used when no route
	// certificate matches the TLS server name.
	DefaultCert *tls.Certificate
	// CookieKey seals sticky-session cookies; 32 bytes, the same on every
	// router of the cluster. A random key is used when it is empty.
	CookieKey []byte
	// Token protects the API listener (HTTP Basic password or Bearer);
	// /metrics stays open. Empty means no auth.
	Token string

	// ReadHeaderTimeout bounds how long a client may take to send request
	// headers (default 1 min); IdleTimeout closes idle client keep-alive
	// connections (default 5 min); MaxHeaderBytes bounds request headers
	// (default 1 MiB); ShutdownTimeout bounds the wait for in-flight
	// requests at shutdown (default 10 s).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	ShutdownTimeout   time.Duration
	// BodyIdleTimeout is the longest the router waits for the next bytes
	// of a request body (default 1 min): a body that keeps coming may
	// take any time, one that stalls is cut off (408). WriteIdleTimeout is
	// the longest a write to an HTTP client may block (default 2 min): a
	// client that stops reading is disconnected. MaxBodyBytes bounds a
	// request body (default DefaultMaxBodyBytes, -1 no limit). Routes may
	// override the body limits (api.Route.MaxBodyBytes, BodyTimeout).
	BodyIdleTimeout  time.Duration
	WriteIdleTimeout time.Duration
	MaxBodyBytes     int64
	// MaxConnsPerClient bounds the connections one client address holds
	// open at once over every listener, HTTP, HTTPS and TCP routes
	// (default DefaultMaxConnsPerClient, -1 no limit); more are closed at
	// once.
	MaxConnsPerClient int

	// AppLog, when set, gets a line in the app's log for each request to
	// an app's route that the router answered with an error of its own or
	// that the client cut short, as Heroku's router writes them (at=error
	// code=H14 desc="No web processes running" method=GET path="/" ...),
	// at most appLogLimit a second. JobID names the router's job in them.
	AppLog AppLogger
	JobID  string
}

// Defaults of the router's limits.
const (
	DefaultMaxBodyBytes      = 1 << 30
	DefaultMaxConnsPerClient = 512
)

// Router is a running edge proxy. Create it with New, then call Run.
type Router struct {
	cfg     Config
	log     *slog.Logger
	cookies *cookieKey
	metrics *metrics
	clients *clientLimiter
	events  *eventHub
	drain   *drainTracker
	table   atomic.Pointer[table]
	conns   *connSet
	applog  *appLog // nil without Config.AppLog

	httpLn, httpsLn, apiLn net.Listener
	// tlsNetHTTP hands every HTTPS connection to net/http after the
	// handshake, HTTP/1.1 ones too: tests use it to cover the net/http
	// path with raw HTTP/1.1.
	tlsNetHTTP atomic.Bool

	// Owned by the route-sync goroutine (and Run's shutdown after it).
	mu       sync.Mutex
	routes   map[string]api.Route
	services map[string]*service
	rmetrics map[string]*routeMetrics
	certs    map[string]certCacheEntry
	tcpLns   map[int]*tcpListener
	svcCtx   context.Context
	wg       sync.WaitGroup
}

type certCacheEntry struct {
	pem  string
	cert *tls.Certificate
}

// New validates cfg and binds the listeners, so their addresses are known
// before Run.
func New(cfg Config, log *slog.Logger) (*Router, error) {
	if cfg.Discoverer == nil {
		return nil, errors.New("router: a Discoverer is required")
	}
	if cfg.TCPPortMin == 0 && cfg.TCPPortMax == 0 {
		cfg.TCPPortMin, cfg.TCPPortMax = 3000, 3500
	}
	if cfg.TCPPortMin > cfg.TCPPortMax || cfg.TCPPortMin < 1 || cfg.TCPPortMax > 65535 {
		return nil, fmt.Errorf("router: invalid tcp port range %d-%d", cfg.TCPPortMin, cfg.TCPPortMax)
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = time.Minute
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 1 << 20
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.BodyIdleTimeout == 0 {
		cfg.BodyIdleTimeout = time.Minute
	}
	if cfg.WriteIdleTimeout == 0 {
		cfg.WriteIdleTimeout = 2 * time.Minute
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxConnsPerClient == 0 {
		cfg.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if cfg.BodyIdleTimeout < 0 || cfg.WriteIdleTimeout < 0 || cfg.MaxBodyBytes < -1 || cfg.MaxConnsPerClient < -1 {
		return nil, errors.New("router: a negative limit (use -1 for no body size or connection limit)")
	}
	var key cookieKey
	switch len(cfg.CookieKey) {
	case 0:
		rand.Read(key[:])
		log.Warn("no cookie key configured: sticky sessions will not survive a restart or span routers")
	case 32:
		copy(key[:], cfg.CookieKey)
	default:
		return nil, fmt.Errorf("router: cookie key must be 32 bytes, not %d", len(cfg.CookieKey))
	}
	events := newEventHub()
	r := &Router{
		cfg:      cfg,
		log:      log,
		cookies:  &key,
		metrics:  newMetrics(),
		clients:  &clientLimiter{max: cfg.MaxConnsPerClient, per: map[string]int{}},
		events:   events,
		drain:    newDrainTracker(events),
		conns:    newConnSet(),
		routes:   map[string]api.Route{},
		services: map[string]*service{},
		rmetrics: map[string]*routeMetrics{},
		certs:    map[string]certCacheEntry{},
		tcpLns:   map[int]*tcpListener{},
	}
	if cfg.AppLog != nil {
		r.applog = &appLog{to: cfg.AppLog, jobID: cfg.JobID}
	}
	r.table.Store(newTable())
	var err error
	listen := func(addr string) net.Listener {
		if addr == "" || err != nil {
			return nil
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("router: listen on %s: %w", addr, err)
		}
		return ln
	}
	r.httpLn = listen(cfg.HTTPAddr)
	r.httpsLn = listen(cfg.HTTPSAddr)
	r.apiLn = listen(cfg.APIAddr)
	if err != nil {
		r.closeListeners()
		return nil, err
	}
	// Clients' connections: capped per address, and cut off when they
	// stop reading.
	for _, ln := range []*net.Listener{&r.httpLn, &r.httpsLn} {
		if *ln != nil {
			*ln = r.clients.wrap(*ln, cfg.WriteIdleTimeout, r.metrics)
		}
	}
	return r, nil
}

func (r *Router) closeListeners() {
	for _, ln := range []net.Listener{r.httpLn, r.httpsLn, r.apiLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Addrs are the bound listen addresses ("" when disabled).
type Addrs struct{ HTTP, HTTPS, API string }

// Addrs returns the bound listen addresses.
func (r *Router) Addrs() Addrs {
	s := func(ln net.Listener) string {
		if ln == nil {
			return ""
		}
		return ln.Addr().String()
	}
	return Addrs{HTTP: s(r.httpLn), HTTPS: s(r.httpsLn), API: s(r.apiLn)}
}

// Run serves until ctx ends, then stops accepting, lets in-flight requests
// finish (up to ShutdownTimeout), closes piped connections and returns.
func (r *Router) Run(ctx context.Context) error {
	svcCtx, cancelSvcs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSvcs()
	r.mu.Lock()
	r.svcCtx = svcCtx
	r.mu.Unlock()

	var servers []*http.Server
	errc := make(chan error, 4)
	serve := func(srv *http.Server, ln net.Listener) {
		servers = append(servers, srv)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	// The fast servers' hang-up sweepers run until the fast servers'
	// connections have ended.
	sweepStop := make(chan struct{})
	sweep := func(s *fastServer) {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			s.sweepHangups(sweepStop)
		}()
	}
	var fast *fastServer
	if r.httpLn != nil {
		fe := &frontend{r: r, proto: "http", port: portOf(r.httpLn)}
		fast = newFastServer(r, fe, r.httpLn)
		// net/http serves what the fast path hands over.
		serve(r.newServer(fe), fast.handoff)
		sweep(fast)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := fast.serve(r.httpLn); err != nil {
				errc <- err
			}
		}()
	}
	var fastTLS *fastServer
	if r.httpsLn != nil {
		fe := &frontend{r: r, proto: "https", port: portOf(r.httpsLn)}
		fastTLS = newFastServer(r, fe, r.httpsLn)
		fastTLS.tlsConfig = &tls.Config{
			MinVersion:     tls.VersionTLS12,
			NextProtos:     []string{"h2", "http/1.1"},
			GetCertificate: r.getCertificate,
		}
		// net/http serves what the fast path hands over, with its TLS
		// handshake done; h2 connections are served by h2.go.
		serve(r.newServer(fe), fastTLS.handoff)
		sweep(fastTLS)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := fastTLS.serve(r.httpsLn); err != nil {
				errc <- err
			}
		}()
	}
	if r.apiLn != nil {
		srv := httpapi.NewServer(r.apiHandler(), r.log, httpapi.Limits{})
		srv.BaseContext = func(net.Listener) context.Context { return ctx } // end event streams at shutdown
		serve(srv, httpapi.LimitWrites(r.apiLn, httpapi.DefaultWriteIdleTimeout))
	}

	syncDone := make(chan error, 1)
	go func() { syncDone <- r.syncRoutes(ctx) }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		r.log.Error("listener failed", "err", runErr)
	case runErr = <-syncDone:
		syncDone <- runErr
	}
	r.log.Info("router shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
	var swg sync.WaitGroup
	deadline, _ := sctx.Deadline()
	if fast != nil {
		r.httpLn.Close()
		swg.Add(1)
		go func() { defer swg.Done(); fast.shutdown(deadline) }()
	}
	if fastTLS != nil {
		r.httpsLn.Close()
		swg.Add(1)
		go func() { defer swg.Done(); fastTLS.shutdown(deadline) }()
	}
	for _, srv := range servers {
		swg.Add(1)
		go func() { defer swg.Done(); srv.Shutdown(sctx) }()
	}
	swg.Wait()
	close(sweepStop)
	cancel()
	for _, srv := range servers {
		srv.Close()
	}
	r.closeListeners()
	if err := <-syncDone; err != nil && runErr == nil {
		runErr = err
	}
	r.mu.Lock()
	for port, l := range r.tcpLns {
		l.ln.Close()
		delete(r.tcpLns, port)
	}
	r.mu.Unlock()
	r.conns.closeAll()
	cancelSvcs()
	r.wg.Wait()
	return runErr
}

func (r *Router) newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: r.cfg.ReadHeaderTimeout,
		IdleTimeout:       r.cfg.IdleTimeout,
		MaxHeaderBytes:    r.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelDebug),
	}
}

func portOf(ln net.Listener) string {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}

func (r *Router) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := r.table.Load().certificate(hello.ServerName); c != nil {
		return c, nil
	}
	if r.cfg.DefaultCert != nil {
		return r.cfg.DefaultCert, nil
	}
	return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
}

// syncRoutes follows the routes in etcd until ctx ends: a full read, then
// a watch from the next revision; on a watch failure it reads again.
func (r *Router) syncRoutes(ctx context.Context) error {
	if r.cfg.Etcd == nil {
		routes := map[string]api.Route{}
		for _, rt := range r.cfg.Routes {
			routes[rt.ID] = rt
		}
		r.apply(routes)
		<-ctx.Done()
		return nil
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		resp, err := r.cfg.Etcd.Get(ctx, api.KeyRoutes, etcdkv.WithPrefix())
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Warn("read routes from etcd failed", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		routes := map[string]api.Route{}
		for _, kv := range resp.Kvs {
			if rt, ok := r.decodeRoute(kv.Key, kv.Value); ok {
				routes[rt.ID] = rt
			}
		}
		r.apply(routes)
		wctx, cancel := context.WithCancel(etcdkv.WithRequireLeader(ctx))
		wch := r.cfg.Etcd.Watch(wctx, api.KeyRoutes, etcdkv.WithPrefix(), etcdkv.WithRev(resp.Header.Revision+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				r.log.Warn("route watch failed, reading routes again", "err", err)
				break
			}
			for _, ev := range wr.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), api.KeyRoutes)
				if ev.Type == etcdkv.EventTypeDelete {
					delete(routes, id)
					continue
				}
				if rt, ok := r.decodeRoute(ev.Kv.Key, ev.Kv.Value); ok {
					routes[rt.ID] = rt
				} else {
					delete(routes, id)
				}
			}
			r.apply(routes)
		}
		cancel()
	}
	return nil
}

func (r *Router) decodeRoute(key, value []byte) (api.Route, bool) {
	var rt api.Route
	if err := json.Unmarshal(value, &rt); err != nil {
		r.log.Warn("ignoring malformed route", "key", string(key), "err", err)
		return rt, false
	}
	if id := strings.TrimPrefix(string(key), api.KeyRoutes); rt.ID == "" {
		rt.ID = id
	} else if rt.ID != id {
		r.log.Warn("route id differs from its key, using the key", "key", string(key), "id", rt.ID)
		rt.ID = id
	}
	if err := validateRoute(&rt, r.cfg.TCPPortMin, r.cfg.TCPPortMax); err != nil {
		r.log.Warn("ignoring invalid route", "key", string(key), "err", err)
		return rt, false
	}
	return rt, true
}

// apply builds a new route table from routes, starts following new
// services, opens and closes TCP listeners, and stops following services
// no route uses any more.
func (r *Router) apply(routes map[string]api.Route) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svcCtx == nil || r.svcCtx.Err() != nil {
		return
	}
	ids := make([]string, 0, len(routes))
	for id := range routes {
		ids = append(ids, id)
	}
	// Older routes win conflicts; ties by id.
	sort.Slice(ids, func(i, j int) bool {
		a, b := routes[ids[i]], routes[ids[j]]
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.ID < b.ID
	})
	t := newTable()
	used := map[string]bool{}
	seen := map[string]string{}
	for _, id := range ids {
		rt := routes[id]
		key := rt.Type + " " + rt.Domain + normalizePath(rt.Path)
		if rt.Type == api.RouteTCP {
			key = fmt.Sprintf("tcp %d", rt.Port)
		}
		if other, dup := seen[key]; dup {
			r.log.Warn("route conflicts with an older route, ignoring it", "route", id, "older", other)
			continue
		}
		seen[key] = id
		svc := r.services[rt.Service]
		if svc == nil {
			svc = r.startService(rt.Service)
		}
		used[rt.Service] = true
		rm := r.rmetrics[id]
		if rm == nil {
			rm = r.metrics.forRoute(id)
			r.rmetrics[id] = rm
		}
		e := &routeEntry{route: rt, path: normalizePath(rt.Path), svc: svc, metrics: rm,
			maxBody: r.cfg.MaxBodyBytes, bodyIdle: r.cfg.BodyIdleTimeout}
		if rt.MaxBodyBytes != 0 {
			e.maxBody = rt.MaxBodyBytes
		}
		if rt.BodyTimeout > 0 {
			e.bodyIdle = time.Duration(rt.BodyTimeout)
		}
		if rt.Type == api.RouteTCP {
			t.tcp[int(rt.Port)] = e
			continue
		}
		t.addHTTP(e)
		if c := rt.Certificate; c != nil && c.Cert != "" {
			cached, ok := r.certs[id]
			if !ok || cached.pem != c.Cert+c.Key {
				cert, err := parseCert(c)
				if err != nil {
					r.log.Warn("route certificate is invalid, using the default", "route", id, "err", err)
				}
				cached = certCacheEntry{pem: c.Cert + c.Key, cert: cert}
				r.certs[id] = cached
			}
			if cached.cert != nil {
				if _, taken := t.certs[rt.Domain]; !taken {
					t.certs[rt.Domain] = cached.cert
				}
			}
		}
	}
	r.table.Store(t)

	for id, old := range r.routes {
		if _, ok := routes[id]; !ok {
			r.metrics.deleteRoute(id)
			delete(r.rmetrics, id)
			delete(r.certs, id)
			r.events.publish(api.RouterEvent{Event: api.RouterEventRouteRemove, RouteID: id, Service: old.Service})
		}
	}
	for id, rt := range routes {
		if old, ok := r.routes[id]; !ok || !sameRoute(old, rt) {
			r.events.publish(api.RouterEvent{Event: api.RouterEventRouteSet, RouteID: id, Service: rt.Service})
		}
	}
	r.routes = make(map[string]api.Route, len(routes))
	for id, rt := range routes {
		r.routes[id] = rt
	}

	for port, l := range r.tcpLns {
		if t.tcp[port] == nil {
			l.ln.Close()
			delete(r.tcpLns, port)
		}
	}
	for port := range t.tcp {
		if r.tcpLns[port] == nil {
			if l, err := r.listenTCP(port); err != nil {
				r.log.Error("tcp route listener failed", "port", port, "err", err)
			} else {
				r.tcpLns[port] = l
			}
		}
	}
	for name, svc := range r.services {
		if !used[name] {
			svc.cancel()
			delete(r.services, name)
		}
	}
}

func sameRoute(a, b api.Route) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func (r *Router) startService(name string) *service {
	ctx, cancel := context.WithCancel(r.svcCtx)
	s := &service{name: name, cancel: cancel, done: make(chan struct{})}
	s.snap.Store(&backendSet{})
	r.services[name] = s
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		s.follow(ctx, r.cfg.Discoverer, r.drain, r.log)
	}()
	return s
}

// connSet tracks hijacked and TCP connections so shutdown can close them.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newConnSet() *connSet { return &connSet{conns: map[net.Conn]struct{}{}} }

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

// writeNewRequestID writes a random 32-hex-digit request id.
// It keeps a copy in id, for the router's lines about the request.
func writeNewRequestID(bw *bufio.Writer, id *[32]byte) {
	var b [16]byte
	u1, u2 := mrand.Uint64(), mrand.Uint64()
	for i := range 8 {
		b[i] = byte(u1 >> (8 * i))
		b[8+i] = byte(u2 >> (8 * i))
	}
	hex.Encode(id[:], b[:])
	bw.Write(id[:])
}
