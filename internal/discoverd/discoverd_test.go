package discoverd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

const token = "secret-token"

type env struct {
	store *discoverd.Store
	url   string
	c     *discoverdclient.Client
}

func start(t testing.TB, ttl time.Duration) *env {
	t.Helper()
	store := discoverd.NewStore(etcdtest.Client(t), ttl)
	srv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(token), logging.Discard()))
	t.Cleanup(srv.Close)
	return &env{store: store, url: srv.URL, c: discoverdclient.New(srv.URL, token)}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// next returns the next event of w, failing after a generous deadline.
func next(t testing.TB, w *discoverdclient.Watcher) *api.ServiceEvent {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watcher closed: %v", w.Err())
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return nil
}

type evSummary struct {
	Kind string
	Addr string
}

func summary(ev *api.ServiceEvent) evSummary {
	s := evSummary{Kind: ev.Kind}
	if ev.Instance != nil {
		s.Addr = ev.Instance.Addr
	}
	return s
}

func nextN(t testing.TB, w *discoverdclient.Watcher, n int) []evSummary {
	t.Helper()
	var out []evSummary
	for range n {
		out = append(out, summary(next(t, w)))
	}
	return out
}

// wantEvents checks the next events of w. Tests cause a later, ordered
// event after any event that must not happen, so extra events show up here.
func wantEvents(t *testing.T, w *discoverdclient.Watcher, want []evSummary) {
	t.Helper()
	got := nextN(t, w, len(want))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
}

func TestRegisterWatchLeader(t *testing.T) {
	e := start(t, 2*time.Second)
	ctx := ctxT(t)
	if err := e.c.AddService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r1, err := e.c.Register(ctx, "web", "10.0.0.1:80", map[string]string{"v": "1"})
	if err != nil {
		t.Fatal(err)
	}
	var watchers []*discoverdclient.Watcher
	for range 3 {
		w, err := e.c.Watch(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
		watchers = append(watchers, w)
		wantEvents(t, w, []evSummary{{"up", "10.0.0.1:80"}, {"leader", "10.0.0.1:80"}, {"current", ""}})
	}
	r2, err := e.c.Register(ctx, "web", "10.0.0.2:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range watchers {
		wantEvents(t, w, []evSummary{{"up", "10.0.0.2:80"}})
	}
	insts, err := e.c.Instances(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, i := range insts {
		addrs = append(addrs, i.Addr)
	}
	if diff := cmp.Diff([]string{"10.0.0.1:80", "10.0.0.2:80"}, addrs); diff != "" {
		t.Fatalf("instances (-want +got):\n%s", diff)
	}
	if l, err := e.c.Leader(ctx, "web"); err != nil || l.Addr != "10.0.0.1:80" {
		t.Fatalf("leader = %+v, %v", l, err)
	}
	// A meta change is an update; the leader stays.
	if err := r1.SetMeta(ctx, map[string]string{"v": "2"}); err != nil {
		t.Fatal(err)
	}
	for _, w := range watchers {
		ev := next(t, w)
		if ev.Kind != "update" || ev.Instance.Meta["v"] != "2" {
			t.Fatalf("event = %+v, want update with v=2", ev)
		}
	}
	// The leader leaves: one down and one leader event, on every watcher.
	if err := r1.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	r3, err := e.c.Register(ctx, "web", "10.0.0.3:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range watchers {
		wantEvents(t, w, []evSummary{{"down", "10.0.0.1:80"}, {"leader", "10.0.0.2:80"}, {"up", "10.0.0.3:80"}})
		if l := w.Leader(); l == nil || l.Addr != "10.0.0.2:80" {
			t.Fatalf("cached leader = %+v", l)
		}
		if n := len(w.Instances()); n != 2 {
			t.Fatalf("cached instances = %d, want 2", n)
		}
	}
	// A non-leader leaving does not change the leader.
	if err := r3.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range watchers {
		wantEvents(t, w, []evSummary{{"down", "10.0.0.3:80"}, {"down", "10.0.0.2:80"}})
	}
}

func TestHeartbeatKeepsAndExpiryRemoves(t *testing.T) {
	e := start(t, 2*time.Second)
	ctx := ctxT(t)
	// An instance kept alive by the client's heartbeat outlives its TTL.
	reg, err := e.c.Register(ctx, "db", "10.0.1.1:5432", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Deregister(ctx)
	// An instance registered once, with no heartbeat (its owner "died").
	hc := &httpclient.Client{URL: e.url, Key: token}
	addr := "10.0.1.2:5432"
	id := discoverdclient.InstanceID("tcp", addr)
	if err := hc.Do(ctx, "PUT", "/services/db/instances/"+id, api.Instance{Addr: addr, Proto: "tcp"}, nil); err != nil {
		t.Fatal(err)
	}
	w, err := e.c.Watch(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wantEvents(t, w, []evSummary{{"up", "10.0.1.1:5432"}, {"up", addr}, {"leader", "10.0.1.1:5432"}, {"current", ""}})
	start := time.Now()
	wantEvents(t, w, []evSummary{{"down", addr}})
	t.Logf("dead instance expired %v after the watch started (TTL 2s)", time.Since(start))
	// Three TTLs later the heartbeated instance is still there.
	time.Sleep(6 * time.Second)
	insts, err := e.c.Instances(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) != 1 || insts[0].Addr != "10.0.1.1:5432" {
		t.Fatalf("instances = %+v, want the heartbeated one", insts)
	}
	if err := reg.Err(); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
}

func TestMetaCAS(t *testing.T) {
	e := start(t, 2*time.Second)
	ctx := ctxT(t)
	if err := e.c.AddService(ctx, "pg"); err != nil {
		t.Fatal(err)
	}
	w, err := e.c.Watch(ctx, "pg")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wantEvents(t, w, []evSummary{{"current", ""}})
	if _, err := e.c.Meta(ctx, "pg"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("meta before set: %v, want not found", err)
	}
	m := &api.ServiceMeta{Data: json.RawMessage(`{"primary":"a"}`)}
	if err := e.c.SetMeta(ctx, "pg", m); err != nil {
		t.Fatal(err)
	}
	stale := *m
	m.Data = json.RawMessage(`{"primary":"b"}`)
	if err := e.c.SetMeta(ctx, "pg", m); err != nil {
		t.Fatal(err)
	}
	stale.Data = json.RawMessage(`{"primary":"c"}`)
	if err := e.c.SetMeta(ctx, "pg", &stale); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("stale CAS: %v, want conflict", err)
	}
	create := &api.ServiceMeta{Data: json.RawMessage(`1`)}
	if err := e.c.SetMeta(ctx, "pg", create); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("create over existing: %v, want conflict", err)
	}
	got, err := e.c.Meta(ctx, "pg")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Fatalf("meta (-want +got):\n%s", diff)
	}
	for _, want := range []string{`{"primary":"a"}`, `{"primary":"b"}`} {
		ev := next(t, w)
		if ev.Kind != "service_meta" || string(ev.ServiceMeta.Data) != want {
			t.Fatalf("event %+v, want service_meta %s", ev, want)
		}
	}
	if w.Meta().Index != m.Index {
		t.Fatalf("cached meta index %d, want %d", w.Meta().Index, m.Index)
	}
	// GET meta as SSE streams only meta events.
	er, err := (&httpclient.Client{URL: e.url, Key: token}).Stream(ctx, "/services/pg/meta")
	if err != nil {
		t.Fatal(err)
	}
	defer er.Close()
	var kinds []string
	nextKinds := func(n int) {
		for range n {
			ev, err := er.Next()
			if err != nil {
				t.Fatalf("meta stream after %v: %v", kinds, err)
			}
			kinds = append(kinds, ev.Event)
		}
	}
	// The snapshot first: the stream's headers arrive before the server
	// reads it, so changes made before "current" may be in it.
	nextKinds(2)
	if _, err := e.c.Register(ctx, "pg", "10.0.3.1:5432", nil); err != nil {
		t.Fatal(err)
	}
	m.Data = json.RawMessage(`{"primary":"d"}`)
	if err := e.c.SetMeta(ctx, "pg", m); err != nil {
		t.Fatal(err)
	}
	nextKinds(1) // the instance is filtered out, the meta is not
	if diff := cmp.Diff([]string{"service_meta", "current", "service_meta"}, kinds); diff != "" {
		t.Fatalf("meta stream (-want +got):\n%s", diff)
	}
}

func TestBadInput(t *testing.T) {
	e := start(t, 2*time.Second)
	ctx := ctxT(t)
	if err := e.c.AddService(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	good := "10.0.0.1:80"
	gid := discoverdclient.InstanceID("tcp", good)
	tests := []struct {
		name      string
		key       string
		method    string
		path      string
		body      any
		want      error
		wantField string
	}{
		{"wrong token", "nope", "GET", "/services/x/instances", nil, api.ErrUnauthorized, ""},
		{"no token", "", "PUT", "/services/y", nil, api.ErrUnauthorized, ""},
		{"unknown service instances", token, "GET", "/services/nope/instances", nil, api.ErrNotFound, ""},
		{"unknown service leader", token, "GET", "/services/nope/leader", nil, api.ErrNotFound, ""},
		{"unknown service register", token, "PUT", "/services/nope/instances/" + gid, api.Instance{Addr: good}, api.ErrNotFound, ""},
		{"unknown service delete", token, "DELETE", "/services/nope", nil, api.ErrNotFound, ""},
		{"unknown service meta", token, "PUT", "/services/nope/meta", api.ServiceMeta{Data: json.RawMessage(`1`)}, api.ErrNotFound, ""},
		{"unknown instance", token, "DELETE", "/services/x/instances/" + gid, nil, api.ErrNotFound, ""},
		{"no leader", token, "GET", "/services/x/leader", nil, api.ErrNotFound, ""},
		{"bad service name", token, "PUT", "/services/Bad.Name", nil, api.ErrValidation, "service"},
		{"service exists", token, "PUT", "/services/x", nil, api.ErrObjectExists, ""},
		{"bad leader type", token, "PUT", "/services/z", api.ServiceConfig{LeaderType: "manual"}, api.ErrValidation, "leader_type"},
		{"malformed json", token, "PUT", "/services/x/instances/" + gid, strings.NewReader(`{"addr":`), api.ErrValidation, ""},
		{"wrong field type", token, "PUT", "/services/x/instances/" + gid, strings.NewReader(`{"addr":5}`), api.ErrValidation, "addr"},
		{"addr without port", token, "PUT", "/services/x/instances/" + gid, api.Instance{Addr: "10.0.0.1"}, api.ErrValidation, "addr"},
		{"addr not ip", token, "PUT", "/services/x/instances/" + gid, api.Instance{Addr: "example.com:80"}, api.ErrValidation, "addr"},
		{"addr bad port", token, "PUT", "/services/x/instances/" + gid, api.Instance{Addr: "10.0.0.1:99999"}, api.ErrValidation, "addr"},
		{"bad proto", token, "PUT", "/services/x/instances/" + gid, api.Instance{Addr: good, Proto: "sctp"}, api.ErrValidation, "proto"},
		{"id mismatch", token, "PUT", "/services/x/instances/abc", api.Instance{Addr: good}, api.ErrValidation, "id"},
		{"meta not json", token, "PUT", "/services/x/meta", strings.NewReader(`{"data":}`), api.ErrValidation, ""},
		{"meta missing data", token, "PUT", "/services/x/meta", strings.NewReader(`{"index":0}`), api.ErrValidation, "data"},
		{"meta unknown field", token, "PUT", "/services/x/meta", strings.NewReader(`{"data":1,"x":2}`), api.ErrValidation, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc := &httpclient.Client{URL: e.url, Key: tt.key}
			err := hc.Do(ctx, tt.method, tt.path, tt.body, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			ae, _ := api.AsError(err)
			if ae.Status < 400 || ae.Status > 499 || ae.Field != tt.wantField {
				t.Fatalf("status %d field %q, want 4xx and field %q", ae.Status, ae.Field, tt.wantField)
			}
		})
	}
	// /ping needs no token.
	if err := (&httpclient.Client{URL: e.url}).Do(ctx, "GET", "/ping", nil, nil); err != nil {
		t.Fatalf("ping: %v", err)
	}
	// Watching an unknown service fails up front.
	if _, err := e.c.Watch(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("watch unknown: %v, want not found", err)
	}
}

func TestServiceRemovedEndsWatch(t *testing.T) {
	e := start(t, 2*time.Second)
	ctx := ctxT(t)
	reg, err := e.c.Register(ctx, "gone", "10.0.2.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := e.c.Watch(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wantEvents(t, w, []evSummary{{"up", "10.0.2.1:1"}, {"leader", "10.0.2.1:1"}, {"current", ""}})
	reg.Deregister(ctx)
	wantEvents(t, w, []evSummary{{"down", "10.0.2.1:1"}})
	if err := e.c.RemoveService(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for ev := range w.Events() {
		t.Fatalf("unexpected event %+v", ev)
	}
	if !errors.Is(w.Err(), api.ErrNotFound) {
		t.Fatalf("watcher err = %v, want not found", w.Err())
	}
	names, err := e.c.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, "gone") {
		t.Fatalf("services %v still has gone", names)
	}
}

func TestDNS(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (apt-get install dnsutils)")
	}
	e := start(t, 5*time.Second)
	ctx := ctxT(t)
	// One port for UDP and TCP: from the test slot, which no outgoing
	// connection takes (a kernel-chosen UDP port can be in use for TCP).
	port := testslot.Port(t)
	pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- discoverd.NewDNS(e.store, nil, logging.Discard()).Serve(dctx, pc, ln) }()
	defer func() { cancel(); <-done }()

	for _, addr := range []string{"10.9.0.1:80", "10.9.0.2:80", "10.9.0.2:81", "[fd00::1]:80"} {
		reg, err := e.c.Register(ctx, "x", addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Deregister(ctx)
	}
	dig := func(args ...string) []string {
		t.Helper()
		args = append([]string{"@127.0.0.1", "-p", fmt.Sprint(port), "+short", "+time=5", "+tries=2"}, args...)
		out, err := exec.CommandContext(ctx, "dig", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		lines := strings.Fields(strings.TrimSpace(string(out)))
		slices.Sort(lines)
		return lines
	}
	digStatus := func(name string) string {
		out, err := exec.CommandContext(ctx, "dig", "@127.0.0.1", "-p", fmt.Sprint(port), "+time=5", name).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", name, err, out)
		}
		for _, f := range strings.Split(string(out), ",") {
			if s, ok := strings.CutPrefix(strings.TrimSpace(f), "status: "); ok {
				return s
			}
			if i := strings.Index(f, "status: "); i >= 0 {
				return strings.TrimSpace(f[i+len("status: "):])
			}
		}
		t.Fatalf("no status in dig output:\n%s", out)
		return ""
	}
	id1 := discoverdclient.InstanceID("tcp", "10.9.0.1:80")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"A", []string{"x.discoverd"}, []string{"10.9.0.1", "10.9.0.2"}},
		{"AAAA", []string{"x.discoverd", "AAAA"}, []string{"fd00::1"}},
		{"leader", []string{"leader.x.discoverd"}, []string{"10.9.0.1"}},
		{"instance", []string{id1 + "._i.x.discoverd"}, []string{"10.9.0.1"}},
		{"case", []string{"X.Discoverd"}, []string{"10.9.0.1", "10.9.0.2"}},
		{"tcp", []string{"+tcp", "leader.x.discoverd"}, []string{"10.9.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if diff := cmp.Diff(want, dig(tt.args...)); diff != "" {
				t.Fatalf("dig %v (-want +got):\n%s", tt.args, diff)
			}
		})
	}
	srv := dig("_x._tcp.discoverd", "SRV")
	if len(srv) != 16 { // 4 records × (prio weight port target)
		t.Fatalf("SRV answer %v, want 4 records", srv)
	}
	if !slices.Contains(srv, "81") || !slices.Contains(srv, id1+"._i.x.discoverd.") {
		t.Fatalf("SRV answer %v lacks port 81 or instance target", srv)
	}
	if s := digStatus("nope.discoverd"); s != "NXDOMAIN" {
		t.Fatalf("unknown service status %s, want NXDOMAIN", s)
	}
	if s := digStatus("a.b.c.d.discoverd"); s != "NXDOMAIN" {
		t.Fatalf("bad name status %s, want NXDOMAIN", s)
	}
	// Names outside the zone go to the recursors; with none, SERVFAIL.
	if s := digStatus("example.com"); s != "SERVFAIL" {
		t.Fatalf("outside zone without recursors: %s, want SERVFAIL", s)
	}
}

func TestDNSRecursion(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed")
	}
	ctx := ctxT(t)
	e := start(t, 5*time.Second)
	// A stand-in upstream resolver that knows one name.
	upc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := &dns.Server{PacketConn: upc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if req.Question[0].Name == "example.com." {
			rr, _ := dns.NewRR("example.com. 60 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go upstream.ActivateAndServe()
	defer upstream.Shutdown()

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	d := discoverd.NewDNS(e.store, []string{"127.0.0.1:1", upc.LocalAddr().String()}, logging.Discard())
	go func() { done <- d.Serve(dctx, pc, nil) }()
	defer func() { cancel(); <-done }()

	out, err := exec.CommandContext(ctx, "dig", "@127.0.0.1", "-p", fmt.Sprint(port), "+short", "+time=10", "example.com").CombinedOutput()
	if err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "192.0.2.7" {
		t.Fatalf("recursed answer %q, want 192.0.2.7", got)
	}
}
