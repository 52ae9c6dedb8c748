package router

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
)

// maxIdlePerBackend caps the pooled keep-alive connections to one backend.
const maxIdlePerBackend = 512

// backend is one instance of a service. Requests and TCP connections count
// in inflight; once the instance leaves discoverd (gone) it gets no new
// work and is reported drained when inflight reaches zero.
type backend struct {
	addr    string
	service string
	// host is the host the instance runs on (hostOf), fixed when the
	// backend is made: markHostDown passes over every backend of a host
	// that stopped answering.
	host     string
	inflight atomic.Int64
	gone     atomic.Bool
	drained  atomic.Bool
	drain    *drainTracker
	// downUntil (unix ns) is when a backend that could not be reached
	// may be picked again while others are up (markDown).
	downUntil atomic.Int64

	mu   sync.Mutex
	idle []*upConn
}

func (b *backend) acquire() { b.inflight.Add(1) }

func (b *backend) release() {
	if b.inflight.Add(-1) == 0 && b.gone.Load() {
		b.drain.done(b)
	}
}

// downPause is how long a backend that could not be reached is passed
// over while another backend is up: discoverd drops a vanished host's
// instances only after their lease ends, and until then every request
// sent to them would wait for a dial or user timeout first.
const downPause = 3 * time.Second

// markDown records that the backend could not be reached and closes its
// pooled connections, which are likely dead too.
func (b *backend) markDown() {
	b.downUntil.Store(time.Now().Add(downPause).UnixNano())
	b.mu.Lock()
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
}

// markDown marks b down after a failed dial; when the dial timed out (the
// host did not answer, as when it lost power or its network), the other
// backends on its host too.
func markDown(set *backendSet, b *backend, err error) {
	var ne net.Error
	if (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, syscall.EHOSTUNREACH) {
		markHostDown(set, b)
		return
	}
	b.markDown()
}

// markHostDown marks b and every backend of set on b's host down: when a
// host stops answering, each of its backends would otherwise cost the next
// requests a dial or user timeout of their own before being passed over.
func markHostDown(set *backendSet, b *backend) {
	b.markDown()
	if set == nil || b.host == "" {
		return
	}
	for _, c := range set.all {
		if c != b && c.host == b.host {
			c.markDown()
		}
	}
}

// hostOf names the host of an instance: the host agent's ID from its meta
// (each container has an address of its own, so the addresses of one
// host's backends differ), else the address's IP.
func hostOf(in *api.Instance) string {
	if h := in.Meta[api.InstanceMetaHostID]; h != "" {
		return "id:" + h
	}
	if ip, _, err := net.SplitHostPort(in.Addr); err == nil {
		return "ip:" + ip
	}
	return ""
}

// isDown reports whether the backend is passed over (markDown).
func (b *backend) isDown() bool {
	d := b.downUntil.Load()
	return d != 0 && d > time.Now().UnixNano()
}

// markGone takes the backend out of service: idle connections close and,
// once nothing is in flight, it is reported drained.
func (b *backend) markGone() {
	b.gone.Store(true)
	b.drain.events.publish(api.RouterEvent{Event: api.RouterEventBackendDown, Service: b.service, Addr: b.addr})
	b.mu.Lock()
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
	if b.inflight.Load() == 0 {
		b.drain.done(b)
	}
}

// upConn is a keep-alive connection to a backend.
type upConn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	ww     *waitWriter // bw's destination
	reused bool
	// lastUsed is when the last request sent on it started (canWait).
	lastUsed time.Time
	// bounded: the connection's TCP_USER_TIMEOUT is backendUserTimeout
	// (else the kernel's default, unbounded in practice).
	bounded bool
	// probed: quick keepalive probes are on (probe), set from the
	// hang-up sweeper or a request's timer while a request waits.
	probed atomic.Bool
	// probeT is armProbe's timer, made once.
	probeT *time.Timer
}

var dialer = &net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}

// backendUserTimeout bounds how long a request without a body, written to
// a backend, may go unacknowledged (TCP_USER_TIMEOUT): when the backend's
// host vanishes (power, network), a request written on a pooled
// connection to it fails in this time with ETIMEDOUT, instead of waiting
// for a reply that never comes, and is sent to another backend. The
// acknowledgement is the peer's kernel's, so a slow handler is not
// affected; requests with a body, upgraded connections and TCP routes are
// not bounded, since a backend that reads slowly (a zero window) is fine.
const backendUserTimeout = 2 * time.Second

// control runs f on the connection's socket.
func (c *upConn) control(f func(fd int)) {
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { f(int(fd)) })
}

// bound sets or clears the connection's TCP_USER_TIMEOUT.
func (c *upConn) bound(on bool) {
	if c.bounded == on {
		return
	}
	ms := 0
	if on {
		ms = int(backendUserTimeout / time.Millisecond)
	}
	c.control(func(fd int) {
		if unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms) == nil {
			c.bounded = on
		}
	})
}

// A request whose backend has not answered within probeAfter has quick
// keepalive probes turned on for its connection: one after probeIdle
// without a packet from the backend, then every probeInterval, and the
// connection fails (ETIMEDOUT) once backendUserTimeout has passed with
// a probe unanswered (or after probeCount probes when the request has a
// body and so no user timeout). The backend's kernel answers probes
// whatever its app does, so a slow handler is not cut off; a backend
// whose host vanished after it got the request (power, network) is, in
// seconds, instead of holding the request until the client gives up.
const (
	probeAfter    = hangupSweep
	probeIdle     = time.Second
	probeInterval = time.Second
	probeCount    = 2
)

// probe turns quick keepalive probes on, or back to the dialer's.
func (c *upConn) probe(on bool) {
	idle, intvl, cnt := int(probeIdle/time.Second), int(probeInterval/time.Second), probeCount
	if !on {
		idle, intvl, cnt = int(dialer.KeepAlive/time.Second), int(dialer.KeepAlive/time.Second), 9
	}
	c.control(func(fd int) {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, idle)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, intvl)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, cnt)
	})
}

// startProbe turns quick probes on for a request that waits on c, once.
func (c *upConn) startProbe() {
	if c.probed.CompareAndSwap(false, true) {
		c.probe(true)
	}
}

// armProbe starts quick probes for c after probeAfter, unless disarmProbe
// comes first. One timer per connection serves all its requests.
func (c *upConn) armProbe() {
	if c.probeT == nil {
		c.probeT = time.AfterFunc(probeAfter, c.startProbe)
		return
	}
	c.probeT.Reset(probeAfter)
}

func (c *upConn) disarmProbe() {
	if c.probeT != nil {
		c.probeT.Stop()
	}
}

// stopProbe turns c's quick probes back off, if they are on, for its next
// request.
func (c *upConn) stopProbe() {
	if c.probed.CompareAndSwap(true, false) {
		c.probe(false)
	}
}

// idempotent says whether a request of method may be sent again after
// its backend got it and then vanished (RFC 9110, 9.2.2).
func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// getConn returns an idle pooled connection or dials a new one. With
// check, a pooled connection is first probed for a close by the backend
// (an idle timeout), because a request with a body cannot be retried once
// sent; requests without a body skip the probe and retry instead.
func (b *backend) getConn(ctx context.Context, check bool) (*upConn, error) {
	for {
		b.mu.Lock()
		n := len(b.idle)
		if n == 0 {
			b.mu.Unlock()
			return b.dial(ctx)
		}
		c := b.idle[n-1]
		b.idle[n-1] = nil
		b.idle = b.idle[:n-1]
		b.mu.Unlock()
		if check && !alive(c) {
			c.conn.Close()
			continue
		}
		// Probes turned on late, as it was pooled (a sweep or a timer
		// that fired as the last request ended), go off now.
		c.stopProbe()
		c.reused = true
		return c, nil
	}
}

// alive reports whether an idle connection is still open and has nothing
// unread: a non-blocking peek must find no data and no EOF.
func alive(c *upConn) bool {
	if c.br.Buffered() > 0 {
		return false
	}
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && ok
}

func (b *backend) dial(ctx context.Context) (*upConn, error) {
	conn, err := dialer.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, err
	}
	var rd io.Reader = conn
	raw := newRawIO(conn)
	if raw != nil {
		rd = raw
	}
	ww := newWaitWriter(conn, raw)
	return &upConn{conn: conn, br: bufio.NewReaderSize(rd, 16<<10), bw: bufio.NewWriterSize(ww, 8<<10), ww: ww}, nil
}

// putConn returns a connection whose last response was read completely.
func (b *backend) putConn(c *upConn) {
	if b.gone.Load() {
		c.conn.Close()
		return
	}
	c.stopProbe()
	b.mu.Lock()
	if len(b.idle) >= maxIdlePerBackend {
		b.mu.Unlock()
		c.conn.Close()
		return
	}
	b.idle = append(b.idle, c)
	b.mu.Unlock()
}

// backendSet is an immutable snapshot of a service's live backends.
type backendSet struct {
	all    []*backend
	leader *backend
	byAddr map[string]*backend
}

// attempts yields the backends one request tries, in turn: first the one
// its sticky cookie names while that one is live (prefer), then by pick,
// never one twice and at most maxAttempts. It holds no pointer to the
// caller's stack, so it stays there.
type attempts struct {
	set    *backendSet // the route's live backends; nil when none
	sticky bool        // the route's requests go by the sticky cookie
	leader bool        // the route goes to set.leader only
	first  *backend
	tried  [maxAttempts]*backend
	n      int
}

// startAttempts begins the attempts of a request to e.
func startAttempts(e *routeEntry) attempts {
	a := attempts{set: e.svc.backends(), leader: e.route.Leader}
	a.sticky = e.route.Sticky && !e.route.Leader && a.set != nil
	return a
}

// prefer makes the backend at addr, the sticky cookie's, the first tried
// when it is live.
func (a *attempts) prefer(addr string) {
	if addr != "" {
		a.first = a.set.byAddr[addr]
	}
}

// next returns the next backend to try, or nil when there is none left.
func (a *attempts) next() *backend {
	if a.n >= maxAttempts || a.set == nil {
		return nil
	}
	b := a.first
	a.first = nil
	if b == nil {
		cands := a.set.all
		var one [1]*backend
		if a.leader {
			one[0] = a.set.leader
			cands = one[:]
			if one[0] == nil {
				cands = nil
			}
		}
		b = pick(cands, a.tried[:a.n])
	}
	if b != nil {
		a.tried[a.n] = b
		a.n++
	}
	return b
}

// pick chooses among candidates by the power of two random choices on
// in-flight requests, skipping those in tried.
func pick(cands []*backend, tried []*backend) *backend {
	n := len(cands)
	if n == 0 {
		return nil
	}
	if len(tried) == 0 {
		if n == 1 {
			return cands[0]
		}
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		a, b := cands[i], cands[j]
		ad, bd := a.isDown(), b.isDown()
		switch {
		case ad != bd:
			if ad {
				return b
			}
			return a
		case !ad:
			if b.inflight.Load() < a.inflight.Load() {
				return b
			}
			return a
		}
		// Both down (a host of several backends vanished): any that is
		// up, as below.
	}
	// A retry after a failed dial, or two choices that were both down: the
	// least loaded untried backend that is not down (else the least
	// loaded untried one), starting at a random offset so ties spread out.
	var best *backend
	bestDown := false
	off := rand.IntN(n)
	for k := range n {
		c := cands[(off+k)%n]
		if contains(tried, c) {
			continue
		}
		down := c.isDown()
		if best == nil || (bestDown && !down) || (down == bestDown && c.inflight.Load() < best.inflight.Load()) {
			best, bestDown = c, down
		}
	}
	return best
}

func contains(list []*backend, b *backend) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

// service follows one discoverd service and publishes its backends.
type service struct {
	name   string
	snap   atomic.Pointer[backendSet]
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *service) backends() *backendSet { return s.snap.Load() }

// follow watches the service until ctx ends, re-watching after failures.
func (s *service) follow(ctx context.Context, d Discoverer, drain *drainTracker, log *slog.Logger) {
	defer close(s.done)
	live := map[string]*backend{} // by instance ID
	var instances = map[string]*api.Instance{}
	leaderID := ""
	publish := func() {
		set := &backendSet{byAddr: make(map[string]*backend, len(live))}
		ids := make([]string, 0, len(live))
		for id := range live {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return instances[ids[i]].Index < instances[ids[j]].Index })
		for _, id := range ids {
			b := live[id]
			set.all = append(set.all, b)
			set.byAddr[b.addr] = b
		}
		if b := live[leaderID]; b != nil {
			set.leader = b
		} else if len(set.all) > 0 {
			set.leader = set.all[0] // oldest instance
		}
		s.snap.Store(set)
	}
	add := func(in *api.Instance) {
		if in == nil || in.Addr == "" {
			return
		}
		if old := live[in.ID]; old != nil {
			if old.addr == in.Addr {
				instances[in.ID] = in
				return
			}
			delete(live, in.ID)
			old.markGone()
		}
		b := &backend{addr: in.Addr, service: s.name, host: hostOf(in), drain: drain}
		drain.add(b)
		live[in.ID] = b
		instances[in.ID] = in
	}
	remove := func(id string) {
		if b := live[id]; b != nil {
			delete(live, id)
			delete(instances, id)
			b.markGone()
		}
	}
	defer func() {
		for id := range live {
			remove(id)
		}
		s.snap.Store(&backendSet{})
	}()
	backoff := 100 * time.Millisecond
	synced := false
	for ctx.Err() == nil {
		ch, err := d.Watch(ctx, s.name)
		if err != nil {
			log.Warn("watch service failed", "service", s.name, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		// After a reconnect, collect the new snapshot before replacing the
		// old one, so a flapping stream does not empty the backend set.
		var pending map[string]*api.Instance
		if synced {
			pending = map[string]*api.Instance{}
		}
		for ev := range ch {
			switch ev.Kind {
			case api.EventKindUp, api.EventKindUpdate:
				if pending != nil {
					if ev.Instance != nil {
						pending[ev.Instance.ID] = ev.Instance
					}
					continue
				}
				add(ev.Instance)
			case api.EventKindDown:
				if ev.Instance == nil {
					continue
				}
				if pending != nil {
					delete(pending, ev.Instance.ID)
					continue
				}
				remove(ev.Instance.ID)
			case api.EventKindLeader:
				if ev.Instance != nil {
					leaderID = ev.Instance.ID
				}
			case api.EventKindCurrent:
				synced = true
				backoff = 100 * time.Millisecond
				if pending != nil {
					for id := range live {
						if _, ok := pending[id]; !ok {
							remove(id)
						}
					}
					for _, in := range pending {
						add(in)
					}
					pending = nil
				}
			default:
				continue
			}
			publish()
		}
		if ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
		}
	}
}

// drainTracker knows every backend that is live or still draining, and
// tells waiters when an address has drained.
type drainTracker struct {
	events *eventHub
	mu     sync.Mutex
	byAddr map[string]map[*backend]struct{}
	change chan struct{} // closed and replaced on every change
}

func newDrainTracker(events *eventHub) *drainTracker {
	return &drainTracker{events: events, byAddr: map[string]map[*backend]struct{}{}, change: make(chan struct{})}
}

func (d *drainTracker) add(b *backend) {
	d.mu.Lock()
	m := d.byAddr[b.addr]
	if m == nil {
		m = map[*backend]struct{}{}
		d.byAddr[b.addr] = m
	}
	m[b] = struct{}{}
	d.notifyLocked()
	d.mu.Unlock()
	d.events.publish(api.RouterEvent{Event: api.RouterEventBackendUp, Service: b.service, Addr: b.addr})
}

// done records that a gone backend has nothing in flight. It is safe to
// call more than once.
func (d *drainTracker) done(b *backend) {
	if !b.drained.CompareAndSwap(false, true) {
		return
	}
	d.mu.Lock()
	if m := d.byAddr[b.addr]; m != nil {
		delete(m, b)
		if len(m) == 0 {
			delete(d.byAddr, b.addr)
		}
	}
	d.notifyLocked()
	d.mu.Unlock()
	d.events.publish(api.RouterEvent{Event: api.RouterEventBackendDrained, Service: b.service, Addr: b.addr})
}

func (d *drainTracker) notifyLocked() {
	close(d.change)
	d.change = make(chan struct{})
}

// status reports whether addr is drained, and a channel closed on the next
// change.
func (d *drainTracker) status(addr string) (api.DrainStatus, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := api.DrainStatus{Addr: addr, Drained: len(d.byAddr[addr]) == 0}
	for b := range d.byAddr[addr] {
		st.InFlight += b.inflight.Load()
	}
	return st, d.change
}

// wait blocks until addr is drained or ctx ends.
func (d *drainTracker) wait(ctx context.Context, addr string) api.DrainStatus {
	for {
		st, ch := d.status(addr)
		if st.Drained {
			return st
		}
		// In-flight counts change without notification; poll them too.
		select {
		case <-ctx.Done():
			return st
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// eventHub fans router events out to API subscribers. A subscriber that
// falls behind loses events; GET /drained is the reliable way to wait.
type eventHub struct {
	mu   sync.Mutex
	subs map[chan api.RouterEvent]struct{}
}

func newEventHub() *eventHub { return &eventHub{subs: map[chan api.RouterEvent]struct{}{}} }

func (h *eventHub) subscribe() (<-chan api.RouterEvent, func()) {
	ch := make(chan api.RouterEvent, 256)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

func (h *eventHub) publish(ev api.RouterEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
