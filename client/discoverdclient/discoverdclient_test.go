package discoverdclient_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

const token = "t"

func server(t *testing.T, store *discoverd.Store) *httptest.Server {
	srv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(token), logging.Discard()))
	t.Cleanup(srv.Close)
	return srv
}

func next(t *testing.T, w *discoverdclient.Watcher) string {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watcher closed: %v", w.Err())
		}
		if ev.Instance != nil {
			return ev.Kind + " " + ev.Instance.Addr
		}
		return ev.Kind
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return ""
}

// TestFailover: a client given two servers keeps registering, listing and
// watching when the first one goes away, and the watcher reports exactly
// the changes it missed while reconnecting.
func TestFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := discoverd.NewStore(etcdtest.Client(t), 2*time.Second)
	s1, s2 := server(t, store), server(t, store)
	c := discoverdclient.NewMulti([]string{s1.URL, s2.URL}, token)
	only2 := discoverdclient.New(s2.URL, token)

	regA, err := only2.Register(ctx, "s", "10.0.0.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, want := range []string{"up 10.0.0.1:1", "leader 10.0.0.1:1", "current"} {
		if got := next(t, w); got != want {
			t.Fatalf("event %q, want %q", got, want)
		}
	}

	s1.CloseClientConnections()
	s1.Close()
	regB, err := c.Register(ctx, "s", "10.0.0.2:1", nil) // fails over to s2
	if err != nil {
		t.Fatal(err)
	}
	defer regB.Deregister(ctx)
	if err := regA.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	// Whether these happened before or after the watcher reconnected,
	// it reports each once (the order differs).
	got := []string{next(t, w), next(t, w), next(t, w)}
	slices.Sort(got)
	if diff := cmp.Diff([]string{"down 10.0.0.1:1", "leader 10.0.0.2:1", "up 10.0.0.2:1"}, got); diff != "" {
		t.Fatalf("events after failover (-want +got):\n%s", diff)
	}
	regC, err := c.Register(ctx, "s", "10.0.0.3:1", map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	defer regC.Deregister(ctx)
	if got := next(t, w); got != "up 10.0.0.3:1" {
		t.Fatalf("event %q, want up of the new instance only", got)
	}
	insts, err := c.Instances(ctx, "s")
	if err != nil || len(insts) != 2 {
		t.Fatalf("instances %v, %v", insts, err)
	}
	if got := w.Instances(); len(got) != 2 || got[0].Addr != "10.0.0.2:1" || got[1].Meta["k"] != "v" {
		t.Fatalf("cached instances %+v", got)
	}
	if l := w.Leader(); l == nil || l.Addr != "10.0.0.2:1" {
		t.Fatalf("cached leader %+v", l)
	}
	// The heartbeat keeps B alive through s2 although it registered with
	// s1 first in the list.
	time.Sleep(5 * time.Second)
	if l, err := c.Leader(ctx, "s"); err != nil || l.Addr != "10.0.0.2:1" {
		t.Fatalf("leader after 2.5 TTLs: %+v %v", l, err)
	}
	if err := regB.Err(); err != nil {
		t.Fatalf("heartbeat error: %v", err)
	}
}

func TestNoServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := discoverdclient.New("", token).Ping(ctx); err == nil {
		t.Fatal("ping without a server: no error")
	}
	store := discoverd.NewStore(etcdtest.Client(t), 2*time.Second)
	s := server(t, store)
	if _, err := discoverdclient.New(s.URL, "bad").Register(ctx, "s", "10.0.0.1:1", nil); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := discoverdclient.New(s.URL, token).Register(ctx, "s", "not-an-addr", nil); !errors.Is(err, api.ErrValidation) {
		t.Fatalf("bad addr: %v", err)
	}
}
