package logagg_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logagg"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

const (
	discToken = "disc-token"
	logKey    = "log-key"
)

// grid is a real discoverd (on a real etcd) in which log aggregators run
// by logagg.Run register as the host agent registers them: once they
// accept connections.
type grid struct {
	t    *testing.T
	disc *discoverdclient.Client
	// net is the shipper's transport: it can hold requests to an
	// aggregator and lose replies.
	net *testNet
}

func newGrid(t *testing.T) *grid {
	store := discoverd.NewStore(etcdtest.Client(t), 2*time.Second)
	srv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(discToken), logging.Discard()))
	t.Cleanup(srv.Close)
	return &grid{t: t, disc: discoverdclient.New(srv.URL, discToken), net: newTestNet()}
}

// aggregator is one log aggregator instance at a fixed address.
type aggregator struct {
	g      *grid
	name   string
	addr   string
	cancel context.CancelFunc
	done   chan error
	reg    *discoverdclient.Registration
}

// add makes an aggregator on a port of its own; start runs it.
func (g *grid) add(name string) *aggregator {
	return &aggregator{g: g, name: name, addr: fmt.Sprintf("127.0.0.1:%d", testslot.Port(g.t))}
}

// client reads the aggregator directly.
func (a *aggregator) client() *logaggclient.Client {
	return logaggclient.New("http://"+a.addr, logKey, nil)
}

// start runs the aggregator (which first fills itself from a live peer),
// waits until it answers and registers it, unless it still is.
func (a *aggregator) start() {
	t := a.g.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	cfg := logagg.Config{
		Listen: a.addr, Keys: []string{logKey},
		Peers: logagg.ServicePeers(a.g.disc, logagg.DefaultService, a.addr),
	}
	go func() { a.done <- logagg.Run(ctx, cfg, logging.Discard().With("aggregator", a.name)) }()
	t.Cleanup(a.kill)
	end := time.Now().Add(deadline)
	for {
		res, err := http.Get("http://" + a.addr + "/.well-known/status")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("status %d", res.StatusCode)
		}
		select {
		case err := <-a.done:
			t.Fatalf("aggregator %s exited while starting: %v", a.name, err)
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("waited %v for aggregator %s to answer; saw last: %v", deadline, a.name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a.reg != nil {
		return
	}
	reg, err := a.g.disc.Register(ctxT(t), logagg.DefaultService, a.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.reg = reg
	t.Cleanup(func() { reg.Deregister(context.Background()) })
}

// stop deregisters the aggregator and stops it, as the host agent stops a
// job: its buffers are gone.
func (a *aggregator) stop() {
	a.g.t.Helper()
	if err := a.reg.Deregister(ctxT(a.g.t)); err != nil {
		a.g.t.Fatal(err)
	}
	a.reg = nil
	a.kill()
}

// kill stops the aggregator and leaves its registration as it is (a
// crash that discoverd has not noticed yet).
func (a *aggregator) kill() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.g.t.Errorf("aggregator %s: %v", a.name, err)
	}
	a.cancel = nil
}

// shipper runs a host's shipper that follows the aggregators registered in
// discoverd through g.net, until the test ends or stop is called.
func (g *grid) shipper(cfg logaggclient.ShipperConfig) (s *logaggclient.Shipper, stop func()) {
	s = logaggclient.NewShipper(cfg, logging.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.Run(ctx) }()
	go func() {
		defer wg.Done()
		s.Follow(ctx, g.disc, logagg.DefaultService, 20*time.Millisecond, func(addr string) *logaggclient.Client {
			return logaggclient.New("http://"+addr, logKey, &http.Client{Transport: g.net})
		})
	}()
	stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	g.t.Cleanup(stop)
	return s, stop
}

// waitDestinations waits until s sends to exactly aggs.
func waitDestinations(t *testing.T, s *logaggclient.Shipper, aggs ...*aggregator) {
	t.Helper()
	var want []string
	for _, a := range aggs {
		want = append(want, a.addr)
	}
	slices.Sort(want)
	waitFor(t, fmt.Sprintf("the shipper to send to %v", want), func() (bool, string) {
		got := s.Destinations()
		return slices.Equal(got, want), fmt.Sprint(got)
	})
}

func flush(t *testing.T, s *logaggclient.Shipper) {
	t.Helper()
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// testNet is the shipper's transport. It holds requests to an address
// until it is let go, and can lose every other reply to a batch of lines
// after the aggregator stored them, so the shipper sends them again.
type testNet struct {
	lossy atomic.Bool
	lost  atomic.Int32

	mu    sync.Mutex
	held  map[string]chan struct{}
	count int
}

func newTestNet() *testNet { return &testNet{held: map[string]chan struct{}{}} }

func (n *testNet) hold(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.held[addr] = make(chan struct{})
}

func (n *testNet) release(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.held[addr]; c != nil {
		close(c)
		delete(n.held, addr)
	}
}

func (n *testNet) RoundTrip(r *http.Request) (*http.Response, error) {
	n.mu.Lock()
	wait := n.held[r.URL.Host]
	n.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	res, err := http.DefaultTransport.RoundTrip(r)
	if err != nil || !n.lossy.Load() || r.ContentLength == 0 {
		return res, err
	}
	n.mu.Lock()
	n.count++
	lose := n.count%2 == 1
	n.mu.Unlock()
	if !lose {
		return res, nil
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	n.lost.Add(1)
	return nil, errors.New("reply lost on the way")
}

// logLines logs lines from..to-1 of app, alternating between two jobs,
// and returns them as they read back.
func logLines(s *logaggclient.Shipper, app string, from, to int) []api.LogMessage {
	var out []api.LogMessage
	for i := from; i < to; i++ {
		m := msg(app, i, fmt.Sprintf("job%d", i%2), "web", api.LogStdout)
		s.Log(m)
		out = append(out, m)
	}
	return out
}

// checkLog fails unless each aggregator lists exactly want for app.
func checkLog(t *testing.T, app string, want []api.LogMessage, aggs ...*aggregator) {
	t.Helper()
	for _, a := range aggs {
		if diff := cmp.Diff(want, readAll(t, a.client(), app, logaggclient.ReadOptions{})); diff != "" {
			t.Fatalf("log of %s through aggregator %s (-want +got):\n%s", app, a.name, diff)
		}
	}
}

// TestReplicasListAndFollow: lines a host ships are listed and followed
// through every instance, once each and in order, although every other
// reply is lost and the shipper sends those lines again.
func TestReplicasListAndFollow(t *testing.T) {
	g := newGrid(t)
	a, b, c := g.add("A"), g.add("B"), g.add("C")
	a.start()
	b.start()
	c.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{BatchSize: 7, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	waitDestinations(t, s, a, b, c)

	ctx := ctxT(t)
	followB, err := b.client().Read(ctx, "app", logaggclient.ReadOptions{Follow: true, Lines: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer followB.Close()
	followC, err := c.client().ReadPlain(ctx, "app", logaggclient.ReadOptions{Follow: true, Lines: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer followC.Close()

	g.net.lossy.Store(true)
	want := logLines(s, "app", 0, 200)
	flush(t, s)
	g.net.lossy.Store(false)
	if g.net.lost.Load() == 0 {
		t.Fatal("no reply was lost: the test sent nothing twice")
	}
	checkLog(t, "app", want, a, b, c)

	// The followers got each line once, in order: after the lines, the
	// next one they get is a new line, not a line sent again.
	last := logLines(s, "app", 200, 201)
	flush(t, s)
	for name, r := range map[string]*logaggclient.Reader{"B (SSE)": followB, "C (plain)": followC} {
		var got []api.LogMessage
		for range len(want) + 1 {
			m, err := r.Next()
			if err != nil {
				t.Fatalf("follower through %s after %d lines: %v", name, len(got), err)
			}
			got = append(got, m)
		}
		if diff := cmp.Diff(append(want, last...), got); diff != "" {
			t.Fatalf("follower through %s (-want +got):\n%s", name, diff)
		}
	}
}

// TestReplicaUnreachable: lines a host could ship only to A, while it
// could not reach B, reach B's follower once it can: in order, once each.
func TestReplicaUnreachable(t *testing.T) {
	g := newGrid(t)
	a, b := g.add("A"), g.add("B")
	a.start()
	b.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{BatchSize: 4})
	waitDestinations(t, s, a, b)
	follow, err := b.client().Read(ctxT(t), "app", logaggclient.ReadOptions{Follow: true, Lines: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer follow.Close()

	g.net.hold(b.addr)
	want := logLines(s, "app", 0, 30)
	waitFor(t, "A to hold the 30 lines", func() (bool, string) {
		n := len(readAll(t, a.client(), "app", logaggclient.ReadOptions{}))
		return n == len(want), fmt.Sprintf("%d lines", n)
	})
	checkLog(t, "app", nil, b)
	g.net.release(b.addr)
	want = append(want, logLines(s, "app", 30, 31)...)
	flush(t, s)
	var got []api.LogMessage
	for range want {
		m, err := follow.Next()
		if err != nil {
			t.Fatalf("follower through B after %d lines: %v", len(got), err)
		}
		got = append(got, m)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("follower through B (-want +got):\n%s", diff)
	}
	checkLog(t, "app", want, a, b)
}

// TestReplicaRestartFills: an instance restarted empty copies the history
// from a live peer before it serves, with the shippers' marks: the
// shipper then sends it only the lines it lacks.
func TestReplicaRestartFills(t *testing.T) {
	g := newGrid(t)
	a, b := g.add("A"), g.add("B")
	a.start()
	b.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{})
	waitDestinations(t, s, a, b)
	want := logLines(s, "app", 0, 50)
	want2 := logLines(s, "other", 0, 5)
	flush(t, s)
	checkLog(t, "app", want, a, b)

	b.stop()
	waitDestinations(t, s, a)
	want = append(want, logLines(s, "app", 50, 60)...)
	flush(t, s)

	// Nothing reaches B from the shipper while it fills and is read.
	g.net.hold(b.addr)
	b.start()
	checkLog(t, "app", want, b)
	checkLog(t, "other", want2, b)

	// Let the shipper reach it: it asks B which line it wants and sends
	// only the new ones (a B without A's marks would get all again).
	g.net.release(b.addr)
	waitDestinations(t, s, a, b)
	want = append(want, logLines(s, "app", 60, 70)...)
	flush(t, s)
	checkLog(t, "app", want, a, b)
	checkLog(t, "other", want2, a, b)
}

// TestReplicaAwayFillsFromPeer: lines shipped while an instance was
// stopped are in it once it is back: it copies them from a peer.
func TestReplicaAwayFillsFromPeer(t *testing.T) {
	g := newGrid(t)
	a, b := g.add("A"), g.add("B")
	a.start()
	b.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{})
	waitDestinations(t, s, a, b)
	want := logLines(s, "app", 0, 20)
	flush(t, s)

	a.stop()
	waitDestinations(t, s, b)
	want = append(want, logLines(s, "app", 20, 40)...)
	flush(t, s)

	g.net.hold(a.addr)
	a.start()
	checkLog(t, "app", want, a)
	g.net.release(a.addr)
	waitDestinations(t, s, a, b)
	want = append(want, logLines(s, "app", 40, 45)...)
	flush(t, s)
	checkLog(t, "app", want, a, b)
}

// TestReplicaAwayCaughtUpByShipper: with no peer to copy from (every
// instance was down), an instance gets what it lacks from the shipper,
// which holds the lines it sent: in order, once each.
func TestReplicaAwayCaughtUpByShipper(t *testing.T) {
	g := newGrid(t)
	a, b := g.add("A"), g.add("B")
	a.start()
	b.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{BatchSize: 6})
	waitDestinations(t, s, a, b)
	want := logLines(s, "app", 0, 20)
	flush(t, s)

	a.stop()
	waitDestinations(t, s, b)
	want = append(want, logLines(s, "app", 20, 40)...)
	flush(t, s)
	b.stop()

	a.start() // no peer: empty
	waitDestinations(t, s, a)
	flush(t, s)
	checkLog(t, "app", want, a)
	b.start() // fills from A
	checkLog(t, "app", want, b)
}

// TestReplicaCrashedAndBack: an instance that crashed and came back at the
// same address empty, before discoverd noticed, refuses the shipper's next
// lines until it was sent the ones it lost, so it holds them all, in
// order.
func TestReplicaCrashedAndBack(t *testing.T) {
	g := newGrid(t)
	a := g.add("A")
	a.start()
	s, _ := g.shipper(logaggclient.ShipperConfig{BatchSize: 4, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	waitDestinations(t, s, a)
	want := logLines(s, "app", 0, 10)
	flush(t, s)

	a.kill() // still registered
	want = append(want, logLines(s, "app", 10, 20)...)
	a.start() // no peer: empty
	waitDestinations(t, s, a)
	flush(t, s)
	checkLog(t, "app", want, a)
}

// TestShippedLines: how one instance takes a shipper's numbered lines,
// request by request, through the HTTP API.
func TestShippedLines(t *testing.T) {
	_, u := serve(t, logagg.Config{})
	line := func(seq int) string {
		return fmt.Sprintf(`{"app_id":"a","stream":"stdout","timestamp":"2026-01-02T03:04:05Z","msg":"%d","seq":%d}`, seq, seq)
	}
	steps := []struct {
		name    string
		shipper string
		oldest  int
		seqs    []int
		// want is the reply, or the error code.
		want api.LogIngestResult
		code api.ErrorCode
	}{
		{"question", "s1", 1, nil, api.LogIngestResult{Accepted: 0, Next: 1}, ""},
		{"first lines", "s1", 1, []int{1, 2, 3}, api.LogIngestResult{Accepted: 3, Next: 4}, ""},
		{"sent again", "s1", 1, []int{2, 3, 4}, api.LogIngestResult{Accepted: 3, Next: 5}, ""},
		{"gap the shipper can fill", "s1", 1, []int{7, 8}, api.LogIngestResult{Accepted: 0, Next: 5}, ""},
		{"after a gap, nothing", "s1", 1, []int{5, 7}, api.LogIngestResult{Accepted: 1, Next: 6}, ""},
		{"gap the shipper cannot fill", "s1", 9, []int{9, 10}, api.LogIngestResult{Accepted: 2, Next: 11}, ""},
		{"gap partly fillable", "s1", 12, []int{13}, api.LogIngestResult{Accepted: 0, Next: 11}, ""},
		{"another shipper", "s2", 1, []int{1}, api.LogIngestResult{Accepted: 1, Next: 2}, ""},
		{"no shipper: stored as sent", "", 0, []int{1, 1}, api.LogIngestResult{Accepted: 2}, ""},
		{"bad shipper id", "s 1", 1, []int{1}, api.LogIngestResult{}, api.CodeValidation},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var body strings.Builder
			for _, n := range st.seqs {
				body.WriteString(line(n) + "\n")
			}
			req, _ := http.NewRequest(http.MethodPost, u+"/log", strings.NewReader(body.String()))
			if st.shipper != "" {
				req.Header.Set(api.LogShipperHeader, st.shipper)
				req.Header.Set(api.LogOldestHeader, fmt.Sprint(st.oldest))
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if st.code != "" {
				var e api.Error
				decodeJSON(t, res, &e)
				if e.Code != st.code {
					t.Fatalf("status %d code %q, want %q", res.StatusCode, e.Code, st.code)
				}
				return
			}
			var got api.LogIngestResult
			decodeJSON(t, res, &got)
			if diff := cmp.Diff(st.want, got); diff != "" {
				t.Fatalf("reply (-want +got):\n%s", diff)
			}
		})
	}
	var msgs []string
	for _, m := range readAll(t, logaggclient.New(u, "", nil), "a", logaggclient.ReadOptions{}) {
		msgs = append(msgs, m.Msg)
	}
	// s1's 1-5 and 9-10, s2's 1, and the two unnumbered lines.
	if diff := cmp.Diff(strings.Fields("1 2 3 4 5 9 10 1 1 1"), msgs); diff != "" {
		t.Fatalf("stored (-want +got):\n%s", diff)
	}
}

// TestFillSkipsBrokenPeer: a peer whose snapshot breaks off is not used;
// the next one is.
func TestFillSkipsBrokenPeer(t *testing.T) {
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"shippers":{"s1":3},"lines":3}`)
		fmt.Fprintln(w, `{"app_id":"a","stream":"stdout","timestamp":"2026-01-02T03:04:05Z","msg":"partial"}`)
	}))
	defer broken.Close()
	good := logagg.NewServer(logagg.Config{}, logging.Discard())
	goodSrv := httptest.NewServer(good.Handler())
	defer goodSrv.Close()
	send(t, logaggclient.New(goodSrv.URL, "", nil), msg("a", 1, "j", "web", api.LogStdout))

	s := logagg.NewServer(logagg.Config{}, logging.Discard())
	peers := staticPeers{strings.TrimPrefix(broken.URL, "http://"), strings.TrimPrefix(goodSrv.URL, "http://")}
	if err := s.Fill(ctxT(t), peers, "", deadline); err != nil {
		t.Fatal(err)
	}
	got := s.Store().Tail("a", logagg.Filter{}, -1)
	if diff := cmp.Diff([]api.LogMessage{msg("a", 1, "j", "web", api.LogStdout)}, got); diff != "" {
		t.Fatalf("filled (-want +got):\n%s", diff)
	}
}

type staticPeers []string

func (p staticPeers) Addrs(context.Context) ([]string, error) { return p, nil }

func decodeJSON(t *testing.T, res *http.Response, v any) {
	t.Helper()
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		t.Fatalf("decode reply (status %d): %v", res.StatusCode, err)
	}
}
