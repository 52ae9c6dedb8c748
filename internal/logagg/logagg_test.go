package logagg_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logagg"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// deadline bounds every wait in these tests; it is generous on purpose.
const deadline = 20 * time.Second

func serve(t testing.TB, cfg logagg.Config) (*logaggclient.Client, string) {
	t.Helper()
	srv := httptest.NewServer(logagg.NewServer(cfg, logging.Discard()).Handler())
	t.Cleanup(srv.Close)
	key := ""
	if len(cfg.Keys) > 0 {
		key = cfg.Keys[0]
	}
	return logaggclient.New(srv.URL, key, srv.Client()), srv.URL
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// msg is a line as it is read back: the logaggregator fills in the source.
func msg(app string, i int, job, typ, stream string) api.LogMessage {
	return api.LogMessage{AppID: app, JobID: job, ProcessType: typ, Stream: stream, Source: api.LogSourceApp,
		Timestamp: t0.Add(time.Duration(i) * time.Millisecond), Msg: fmt.Sprintf("line %d", i)}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// readAll reads a non-following SSE stream to its end (its eof event).
func readAll(t *testing.T, c *logaggclient.Client, app string, opts logaggclient.ReadOptions) []api.LogMessage {
	t.Helper()
	return readWith(t, c.Read, app, opts)
}

// readAllPlain reads a non-following newline-delimited JSON reply to its
// end.
func readAllPlain(t *testing.T, c *logaggclient.Client, app string, opts logaggclient.ReadOptions) []api.LogMessage {
	t.Helper()
	return readWith(t, c.ReadPlain, app, opts)
}

func readWith(t *testing.T, open func(context.Context, string, logaggclient.ReadOptions) (*logaggclient.Reader, error), app string, opts logaggclient.ReadOptions) []api.LogMessage {
	t.Helper()
	r, err := open(ctxT(t), app, opts)
	if err != nil {
		t.Fatalf("read %s: %v", app, err)
	}
	defer r.Close()
	var out []api.LogMessage
	for {
		m, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", app, err)
		}
		out = append(out, m)
	}
}

func send(t *testing.T, c *logaggclient.Client, msgs ...api.LogMessage) {
	t.Helper()
	n, err := c.Send(ctxT(t), msgs)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(msgs) {
		t.Fatalf("accepted %d of %d", n, len(msgs))
	}
}

func TestRingWraps(t *testing.T) {
	c, _ := serve(t, logagg.Config{BufferLines: 5})
	var all []api.LogMessage
	for i := range 12 {
		all = append(all, msg("app1", i, "j1", "web", api.LogStdout))
	}
	// In two requests, so wrapping happens both within and across adds.
	send(t, c, all[:7]...)
	send(t, c, all[7:]...)
	if diff := cmp.Diff(all[7:], readAll(t, c, "app1", logaggclient.ReadOptions{})); diff != "" {
		t.Fatalf("after wrap (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(all[10:], readAll(t, c, "app1", logaggclient.ReadOptions{Lines: 2})); diff != "" {
		t.Fatalf("last 2 (-want +got):\n%s", diff)
	}
	// lines above the buffer size is clipped to it.
	if got := readAll(t, c, "app1", logaggclient.ReadOptions{Lines: 100}); len(got) != 5 {
		t.Fatalf("lines=100 returned %d lines, want 5", len(got))
	}
}

func TestDefaultBufferSize(t *testing.T) {
	c, _ := serve(t, logagg.Config{})
	var batch []api.LogMessage
	for i := range logagg.DefaultBufferLines + 50 {
		batch = append(batch, msg("big", i, "", "", api.LogStdout))
	}
	send(t, c, batch...)
	got := readAll(t, c, "big", logaggclient.ReadOptions{})
	if len(got) != logagg.DefaultBufferLines || got[0].Msg != "line 50" {
		t.Fatalf("got %d lines starting %q, want %d starting \"line 50\"", len(got), got[0].Msg, logagg.DefaultBufferLines)
	}
}

func TestFilters(t *testing.T) {
	c, _ := serve(t, logagg.Config{})
	in := []api.LogMessage{
		msg("app", 0, "j1", "web", api.LogStdout),
		msg("app", 1, "j2", "worker", api.LogStderr),
		msg("app", 2, "j1", "web", api.LogStderr),
		msg("app", 3, "j3", "web", api.LogInit),
		msg("other", 4, "j9", "web", api.LogStdout),
		msg("app", 5, "j2", "worker", api.LogStdout),
	}
	send(t, c, in...)
	pick := func(idx ...int) []api.LogMessage {
		var out []api.LogMessage
		for _, i := range idx {
			out = append(out, in[i])
		}
		return out
	}
	tests := []struct {
		name string
		opts logaggclient.ReadOptions
		want []api.LogMessage
	}{
		{"all", logaggclient.ReadOptions{}, pick(0, 1, 2, 3, 5)},
		{"none", logaggclient.ReadOptions{Lines: -1}, nil},
		{"last 2", logaggclient.ReadOptions{Lines: 2}, pick(3, 5)},
		{"job", logaggclient.ReadOptions{JobID: "j1"}, pick(0, 2)},
		{"process type", logaggclient.ReadOptions{ProcessType: "worker"}, pick(1, 5)},
		{"stderr", logaggclient.ReadOptions{StreamTypes: []string{"stderr"}}, pick(1, 2)},
		{"stdout and init", logaggclient.ReadOptions{StreamTypes: []string{"stdout", "init"}}, pick(0, 3, 5)},
		{"web stdout", logaggclient.ReadOptions{ProcessType: "web", StreamTypes: []string{"stdout"}}, pick(0)},
		{"last web line", logaggclient.ReadOptions{ProcessType: "web", Lines: 1}, pick(3)},
		{"no match", logaggclient.ReadOptions{JobID: "nope"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, readAll(t, c, "app", tt.opts)); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
			// The plain reply (newline-delimited JSON) carries the same lines.
			if diff := cmp.Diff(tt.want, readAllPlain(t, c, "app", tt.opts)); diff != "" {
				t.Fatalf("plain (-want +got):\n%s", diff)
			}
		})
	}
	// An app that never logged has an empty log.
	if got := readAll(t, c, "silent", logaggclient.ReadOptions{}); len(got) != 0 {
		t.Fatalf("silent app: %+v", got)
	}
}

func TestFollow(t *testing.T) {
	c, _ := serve(t, logagg.Config{BufferLines: 100})
	ctx := ctxT(t)
	send(t, c, msg("app", 0, "j1", "web", api.LogStdout), msg("app", 1, "j1", "web", api.LogStdout))

	// Follow with the last line of history, an app-wide follower of stderr
	// only, and a follower of an app that has not logged yet.
	hist, err := c.Read(ctx, "app", logaggclient.ReadOptions{Follow: true, Lines: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	errs, err := c.Read(ctx, "app", logaggclient.ReadOptions{Follow: true, Lines: -1, StreamTypes: []string{"stderr"}})
	if err != nil {
		t.Fatal(err)
	}
	defer errs.Close()
	fresh, err := c.Read(ctx, "newapp", logaggclient.ReadOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	plain, err := c.ReadPlain(ctx, "app", logaggclient.ReadOptions{Follow: true, Lines: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	next := func(r *logaggclient.Reader) api.LogMessage {
		t.Helper()
		m, err := r.Next()
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		return m
	}
	if got := next(hist); got.Msg != "line 1" {
		t.Fatalf("history line = %q", got.Msg)
	}
	for round := range 3 {
		// Each line arrives live, one round at a time.
		out := msg("app", 10+2*round, "j1", "web", api.LogStdout)
		errLine := msg("app", 11+2*round, "j1", "web", api.LogStderr)
		nw := msg("newapp", round, "j5", "web", api.LogStdout)
		send(t, c, out, errLine, nw)
		if diff := cmp.Diff(out, next(hist)); diff != "" {
			t.Fatalf("round %d stdout (-want +got):\n%s", round, diff)
		}
		if diff := cmp.Diff(errLine, next(hist)); diff != "" {
			t.Fatalf("round %d stderr (-want +got):\n%s", round, diff)
		}
		if diff := cmp.Diff(errLine, next(errs)); diff != "" {
			t.Fatalf("round %d stderr follower (-want +got):\n%s", round, diff)
		}
		if diff := cmp.Diff(nw, next(fresh)); diff != "" {
			t.Fatalf("round %d new app (-want +got):\n%s", round, diff)
		}
	}
	// The plain follower got the same six lines, in order.
	for i := 10; i < 16; i++ {
		stream := api.LogStdout
		if i%2 == 1 {
			stream = api.LogStderr
		}
		if diff := cmp.Diff(msg("app", i, "j1", "web", stream), next(plain)); diff != "" {
			t.Fatalf("plain follow line %d (-want +got):\n%s", i, diff)
		}
	}
}

// TestFollowEndsOnShutdown: followers do not hold a server's shutdown.
func TestFollowEndsOnShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- httpapi.Serve(ctx, ln, logagg.NewServer(logagg.Config{}, logging.Discard()).Handler(), logging.Discard())
	}()
	c := logaggclient.New("http://"+ln.Addr().String(), "", nil)
	r, err := c.Read(ctxT(t), "app", logaggclient.ReadOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(deadline):
		t.Fatal("server did not shut down with a follower connected")
	}
	if _, err := r.Next(); err == nil {
		t.Fatal("follower got a line after shutdown")
	}
}

func TestManyApps(t *testing.T) {
	c, _ := serve(t, logagg.Config{BufferLines: 1000})
	const apps, lines = 40, 300
	var wg sync.WaitGroup
	errc := make(chan error, apps)
	for a := range apps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			app := fmt.Sprintf("app-%d", a)
			// Each app ships in batches of varying size and has a
			// follower running while it does.
			fr, err := c.Read(ctxT(t), app, logaggclient.ReadOptions{Follow: true})
			if err != nil {
				errc <- err
				return
			}
			defer fr.Close()
			for i := 0; i < lines; {
				n := min(1+a%7, lines-i)
				var batch []api.LogMessage
				for j := range n {
					batch = append(batch, msg(app, i+j, "j", "web", api.LogStdout))
				}
				if _, err := c.Send(ctxT(t), batch); err != nil {
					errc <- err
					return
				}
				i += n
			}
			for i := range lines {
				m, err := fr.Next()
				if err != nil {
					errc <- fmt.Errorf("%s follower: %w", app, err)
					return
				}
				if m.AppID != app || m.Msg != fmt.Sprintf("line %d", i) {
					errc <- fmt.Errorf("%s follower line %d = %+v", app, i, m)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for a := range apps {
		app := fmt.Sprintf("app-%d", a)
		got := readAll(t, c, app, logaggclient.ReadOptions{})
		if len(got) != lines {
			t.Fatalf("%s: %d lines, want %d", app, len(got), lines)
		}
		for i, m := range got {
			if m.AppID != app || m.Msg != fmt.Sprintf("line %d", i) {
				t.Fatalf("%s line %d = %+v", app, i, m)
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	c, u := serve(t, logagg.Config{BufferLines: 100})
	good := `{"app_id":"a","job_id":"j","process_type":"web","stream":"stdout","timestamp":"2026-01-02T03:04:05Z","msg":"ok"}`
	post := []struct {
		name   string
		body   string
		status int
		field  string
	}{
		{"not json", "nope\n", 400, ""},
		{"missing app", `{"stream":"stdout","msg":"x"}`, 400, "app_id"},
		{"bad app", `{"app_id":"../x","stream":"stdout","msg":"x"}`, 400, "app_id"},
		{"bad stream", `{"app_id":"a","stream":"stdin","msg":"x"}`, 400, "stream"},
		{"missing stream", `{"app_id":"a","msg":"x"}`, 400, "stream"},
		{"wrong type", `{"app_id":"a","stream":"stdout","msg":5}`, 400, ""},
		{"bad timestamp", `{"app_id":"a","stream":"stdout","timestamp":"yesterday","msg":"x"}`, 400, ""},
		{"msg too long", `{"app_id":"a","stream":"stdout","msg":"` + strings.Repeat("x", api.LogMaxMsgBytes+1) + `"}`, 400, "msg"},
		{"line too long", `{"app_id":"a","stream":"stdout","msg":"` + strings.Repeat("x", logagg.MaxLineBytes) + `"}`, 413, ""},
		{"long job id", `{"app_id":"a","job_id":"` + strings.Repeat("j", 201) + `","stream":"stdout","msg":"x"}`, 400, "job_id"},
		{"good then bad", good + "\n" + good + "\n{\n", 400, ""},
	}
	for _, tt := range post {
		t.Run("post "+tt.name, func(t *testing.T) {
			res, err := http.Post(u+"/log", "application/x-ndjson", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != tt.status || !strings.Contains(string(b), `"field":"`+tt.field+`"`) && tt.field != "" {
				t.Fatalf("status %d body %s; want %d field %q", res.StatusCode, b, tt.status, tt.field)
			}
		})
	}
	// The two good lines before the bad one were kept; nothing else was.
	if got := readAll(t, c, "a", logaggclient.ReadOptions{}); len(got) != 2 {
		t.Fatalf("app a has %d lines, want the 2 good ones", len(got))
	}
	get := []struct {
		name, query string
	}{
		{"negative lines", "/log/a?lines=-1"},
		{"lines not a number", "/log/a?lines=ten"},
		{"bad follow", "/log/a?follow=maybe"},
		{"bad stream type", "/log/a?stream_types=stdout,stdin"},
		{"bad app", "/log/a%20b"},
		{"long job id", "/log/a?job_id=" + strings.Repeat("j", 201)},
	}
	for _, tt := range get {
		t.Run("get "+tt.name, func(t *testing.T) {
			res, err := http.Get(u + tt.query)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 400 {
				t.Fatalf("status %d, want 400", res.StatusCode)
			}
		})
	}
	// The client maps a refusal to a validation error.
	if _, err := c.Send(ctxT(t), []api.LogMessage{{AppID: "a", Stream: "bogus"}}); !errors.Is(err, api.ErrValidation) {
		t.Fatalf("send invalid: err = %v", err)
	}
	// A missing timestamp is filled in.
	send(t, c, api.LogMessage{AppID: "ts", Stream: api.LogStdout, Msg: "x"})
	if got := readAll(t, c, "ts", logaggclient.ReadOptions{}); len(got) != 1 || got[0].Timestamp.IsZero() {
		t.Fatalf("got %+v", got)
	}
}

func TestAuth(t *testing.T) {
	c, u := serve(t, logagg.Config{Keys: []string{"secret"}})
	send(t, c, msg("a", 0, "", "", api.LogStdout))
	anon := logaggclient.New(u, "", nil)
	if _, err := anon.Send(ctxT(t), []api.LogMessage{msg("a", 1, "", "", api.LogStdout)}); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("anonymous send: %v", err)
	}
	if _, err := anon.Read(ctxT(t), "a", logaggclient.ReadOptions{}); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("anonymous read: %v", err)
	}
	// A peer's copy of every log needs the key too.
	res, err := http.Get(u + "/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous snapshot: status %d, want 401", res.StatusCode)
	}
	peer := logagg.NewServer(logagg.Config{Keys: []string{"secret"}}, logging.Discard())
	if err := peer.Fill(ctxT(t), staticPeers{strings.TrimPrefix(u, "http://")}, "secret", deadline); err != nil {
		t.Fatal(err)
	}
	if got := peer.Store().Tail("a", logagg.Filter{}, -1); len(got) != 1 {
		t.Fatalf("peer filled with the key holds %+v, want the one line", got)
	}
	res, err = http.Get(u + "/.well-known/status")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("status check: %d", res.StatusCode)
	}
}

// runShipper starts a shipper sending to dests (named "0", "1", ...) and
// stops it when the test ends.
func runShipper(t testing.TB, cfg logaggclient.ShipperConfig, dests ...*logaggclient.Client) *logaggclient.Shipper {
	t.Helper()
	s := logaggclient.NewShipper(cfg, logging.Discard())
	m := map[string]*logaggclient.Client{}
	for i, c := range dests {
		m[fmt.Sprint(i)] = c
	}
	s.SetDestinations(m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func TestShipper(t *testing.T) {
	c, _ := serve(t, logagg.Config{})
	s := runShipper(t, logaggclient.ShipperConfig{BatchSize: 7}, c)
	var want []api.LogMessage
	for i := range 100 {
		m := msg("shipped", i, "j", "web", api.LogStdout)
		want = append(want, m)
		s.Log(m)
	}
	s.Log(api.LogMessage{AppID: "bad app!", Stream: api.LogStdout}) // refused locally
	long := api.LogMessage{AppID: "shipped", Stream: api.LogStderr, Timestamp: t0, Msg: strings.Repeat("é", api.LogMaxMsgBytes)}
	s.Log(long)
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, c, "shipped", logaggclient.ReadOptions{})
	if len(got) != 101 {
		t.Fatalf("got %d lines, want 101", len(got))
	}
	if diff := cmp.Diff(want, got[:100]); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if m := got[100].Msg; len(m) > api.LogMaxMsgBytes || len(m) < api.LogMaxMsgBytes-1 || !strings.HasSuffix(m, "é") {
		t.Fatalf("long line not truncated at a rune boundary: %d bytes", len(m))
	}
	if dropped, refused := s.Stats(); dropped != 0 || refused != 1 {
		t.Fatalf("dropped %d refused %d, want 0 and 1", dropped, refused)
	}
}

// TestShipperReconnects: lines logged while the aggregator is down (first
// not listening at all, then failing) arrive once it is back.
func TestShipperReconnects(t *testing.T) {
	// A port nothing listens on yet, so the first attempts are refused.
	addr := fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))

	var failing atomic.Bool
	failing.Store(true)
	srv := logagg.NewServer(logagg.Config{}, logging.Discard())
	h := srv.Handler()
	var attempts atomic.Int32
	flaky := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			attempts.Add(1)
			if failing.Load() {
				httpapi.WriteError(w, r, api.ErrUnavailable)
				return
			}
		}
		h.ServeHTTP(w, r)
	})

	var refused atomic.Int32
	count := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		res, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			refused.Add(1)
		}
		return res, err
	})
	c := logaggclient.New("http://"+addr, "", &http.Client{Transport: count})
	s := runShipper(t, logaggclient.ShipperConfig{MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, c)

	for i := range 10 {
		s.Log(msg("re", i, "j", "web", api.LogStdout))
	}
	// Let it fail to connect a few times, then listen but fail requests.
	waitFor(t, "2 refused connections", func() (bool, string) {
		n := refused.Load()
		return n >= 2, fmt.Sprintf("%d refused", n)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: flaky}
	go hs.Serve(ln)
	defer hs.Close()
	waitFor(t, "2 failed requests", func() (bool, string) {
		n := attempts.Load()
		return n >= 2, fmt.Sprintf("%d requests", n)
	})
	failing.Store(false)
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, c, "re", logaggclient.ReadOptions{})
	if len(got) != 10 {
		t.Fatalf("got %d lines after reconnect, want 10", len(got))
	}
}

// TestShipperDropsOldest: while the aggregator is stuck, Log keeps
// returning and the queue keeps the newest lines.
func TestShipperDropsOldest(t *testing.T) {
	srv := logagg.NewServer(logagg.Config{}, logging.Discard())
	h := srv.Handler()
	release := make(chan struct{})
	var stuck atomic.Bool
	stuck.Store(true)
	entered := make(chan struct{}, 100)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Lines are stuck; the shipper's first question (an empty
		// POST: which line do you want?) is answered.
		if r.Method == http.MethodPost && r.ContentLength > 0 && stuck.Load() {
			entered <- struct{}{}
			<-release
		}
		h.ServeHTTP(w, r)
	}))
	defer ts.Close()
	c := logaggclient.New(ts.URL, "", nil)
	s := runShipper(t, logaggclient.ShipperConfig{BatchSize: 5, QueueSize: 20}, c)

	s.Log(msg("bp", 0, "j", "web", api.LogStdout))
	<-entered // the first batch (line 0) is in flight and stuck
	for i := 1; i <= 1000; i++ {
		s.Log(msg("bp", i, "j", "web", api.LogStdout)) // must not block
	}
	if dropped, _ := s.Stats(); dropped != 1000-20 {
		t.Fatalf("dropped %d, want %d", dropped, 1000-20)
	}
	stuck.Store(false)
	close(release)
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, c, "bp", logaggclient.ReadOptions{})
	var msgs []string
	for _, m := range got {
		msgs = append(msgs, m.Msg)
	}
	want := []string{"line 0"}
	for i := 981; i <= 1000; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if diff := cmp.Diff(want, msgs); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
}

// TestShipperRefusedBatch: lines an aggregator refuses are given up for
// it, and the lines after them reach it.
func TestShipperRefusedBatch(t *testing.T) {
	h := logagg.NewServer(logagg.Config{}, logging.Discard()).Handler()
	var refusing atomic.Bool
	refusing.Store(true)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.ContentLength > 0 && refusing.Load() {
			httpapi.WriteError(w, r, api.Validation("", "refused by the test"))
			return
		}
		h.ServeHTTP(w, r)
	}))
	defer ts.Close()
	c := logaggclient.New(ts.URL, "", nil)
	s := runShipper(t, logaggclient.ShipperConfig{BatchSize: 3}, c)
	for i := range 5 {
		s.Log(msg("rf", i, "j", "web", api.LogStdout))
	}
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	refusing.Store(false)
	var want []api.LogMessage
	for i := 5; i < 10; i++ {
		m := msg("rf", i, "j", "web", api.LogStdout)
		want = append(want, m)
		s.Log(m)
	}
	if err := s.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, readAll(t, c, "rf", logaggclient.ReadOptions{})); diff != "" {
		t.Fatalf("stored (-want +got):\n%s", diff)
	}
	if dropped, refused := s.Stats(); dropped != 0 || refused != 5 {
		t.Fatalf("dropped %d refused %d, want 0 and 5", dropped, refused)
	}
}

// waitFor polls cond until it holds, failing after the deadline with what
// it waited for and what it saw last.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waited %v for %s; saw last: %s", deadline, what, saw)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkIngest measures lines/s stored through POST /log in batches of
// 1000 lines, spread over 10 apps, from 2 concurrent senders.
func BenchmarkIngest(b *testing.B) {
	c, _ := serve(b, logagg.Config{})
	const batchSize = 1000
	batches := make([][]api.LogMessage, 10)
	for a := range batches {
		for i := range batchSize {
			m := msg(fmt.Sprintf("app-%d", a), i, "0123456789abcdef", "web", api.LogStdout)
			m.Msg = fmt.Sprintf("GET /items/%d 200 1.2ms user_agent=\"curl/8.0\" request_id=%08x", i, i)
			batches[a] = append(batches[a], m)
		}
	}
	var n atomic.Int64
	b.SetParallelism(1) // GOMAXPROCS senders
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.Send(context.Background(), batches[i%len(batches)]); err != nil {
				b.Error(err)
				return
			}
			n.Add(batchSize)
			i++
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "lines/s")
}

// BenchmarkShipper measures lines/s end to end through a Shipper.
func BenchmarkShipper(b *testing.B) {
	c, _ := serve(b, logagg.Config{})
	s := runShipper(b, logaggclient.ShipperConfig{QueueSize: 100000, QueueBytes: 1 << 30}, c)
	ctx := context.Background()
	m := msg("app", 0, "0123456789abcdef", "web", api.LogStdout)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		s.Log(m)
		if i%50000 == 49999 {
			s.Flush(ctx)
		}
	}
	s.Flush(ctx)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lines/s")
	if dropped, _ := s.Stats(); dropped > 0 {
		b.ReportMetric(float64(dropped), "dropped")
	}
}

// BenchmarkReadAll measures reading a full 10,000-line buffer as SSE (the
// `flynn log` case), in lines/s.
func BenchmarkReadAll(b *testing.B) {
	c, _ := serve(b, logagg.Config{})
	var batch []api.LogMessage
	for i := range logagg.DefaultBufferLines {
		batch = append(batch, msg("app", i, "0123456789abcdef", "web", api.LogStdout))
	}
	if _, err := c.Send(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		r, err := c.Read(context.Background(), "app", logaggclient.ReadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			if _, err := r.Next(); err != nil {
				break
			}
			n++
		}
		r.Close()
		if n != logagg.DefaultBufferLines {
			b.Fatalf("read %d lines", n)
		}
	}
	b.ReportMetric(float64(b.N*logagg.DefaultBufferLines)/time.Since(start).Seconds(), "lines/s")
}

// flynnMessage is the log message of Flynn's logaggregator client
// (logaggregator/client.Message), which Flynn's CLI decodes from every
// line of a plain log reply.
type flynnMessage struct {
	HostID      string    `json:"host_id,omitempty"`
	JobID       string    `json:"job_id,omitempty"`
	Msg         string    `json:"msg,omitempty"`
	ProcessType string    `json:"process_type,omitempty"`
	Source      string    `json:"source,omitempty"`
	Stream      string    `json:"stream,omitempty"`
	Timestamp   time.Time `json:"timestamp,omitempty"`
}

// TestFlynnShapes reads the log as Flynn's clients do: a plain GET (no
// Accept header) is newline-delimited JSON messages, and an SSE stream
// sends {"event":"message","data":...} per line and {"event":"eof"} at
// its end. A shipper's line without a source reads back as source "app",
// with the host id taken from the job id.
func TestFlynnShapes(t *testing.T) {
	c, url := serve(t, logagg.Config{})
	job := "host-1-5b1a6c2e-1b2c-4d5e-8f90-123456789abc"
	sent := api.LogMessage{AppID: "app", JobID: job, ProcessType: "web", Stream: api.LogStdout, Timestamp: t0, Msg: "hello"}
	send(t, c, sent, msg("app", 1, "j2", "web", api.LogStderr))

	res, err := http.Get(url + "/log/app?stream_types=stdout%2Cstderr")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var got []flynnMessage
	dec := json.NewDecoder(res.Body)
	for {
		var m flynnMessage
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode as Flynn's client does: %v", err)
		}
		got = append(got, m)
	}
	want := []flynnMessage{
		{HostID: "host-1", JobID: job, Msg: "hello", ProcessType: "web", Source: "app", Stream: "stdout", Timestamp: t0},
		{JobID: "j2", Msg: "line 1", ProcessType: "web", Source: "app", Stream: "stderr", Timestamp: t0.Add(time.Millisecond)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("plain reply (-want +got):\n%s", diff)
	}

	req, _ := http.NewRequest(http.MethodGet, url+"/log/app?lines=1", nil)
	req.Header.Set("Accept", "text/event-stream")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	wantSSE := `event: message
data: {"event":"message","data":{"app_id":"app","job_id":"j2","process_type":"web","source":"app","stream":"stderr","timestamp":"2026-01-02T03:04:05.001Z","msg":"line 1"}}

event: eof
data: {"event":"eof"}

`
	if diff := cmp.Diff(wantSSE, string(body)); diff != "" {
		t.Fatalf("SSE reply (-want +got):\n%s", diff)
	}
}
