package router

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// TestGracefulShutdown: when the router stops, a request in flight on
// either path finishes, and Run returns.
func TestGracefulShutdown(t *testing.T) {
	for _, https := range []bool{false, true} {
		t.Run(fmt.Sprint("https=", https), func(t *testing.T) {
			release := make(chan struct{})
			started := make(chan struct{}, 1)
			b := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					started <- struct{}{}
					<-release
				}
				io.WriteString(w, "done")
			})
			disc := NewMemDiscoverer()
			disc.Register("slow-web", b.addr())
			r, err := New(Config{
				HTTPAddr:    "127.0.0.1:0",
				HTTPSAddr:   "127.0.0.1:0",
				DefaultCert: keyPair(t, "*.test"),
				Routes:      []api.Route{{ID: "slow", Type: api.RouteHTTP, Domain: "slow.test", Service: "slow-web"}},
				Discoverer:  disc,
				CookieKey:   make([]byte, 32),
			}, logging.Discard())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			runErr := make(chan error, 1)
			go func() { runErr <- r.Run(ctx) }()
			h := &harness{t: t, r: r, addrs: r.Addrs(), https: https}
			h.expectBackend("http://slow.test/", "slow")
			res := make(chan reply, 1)
			go func() {
				rep, err := h.get("http://slow.test/slow", nil)
				if err != nil {
					rep.body = err.Error()
				}
				res <- rep
			}()
			<-started
			cancel()
			time.Sleep(50 * time.Millisecond) // let shutdown begin; the request must still finish
			close(release)
			if got := <-res; got.status != 200 || got.body != "done" {
				t.Fatalf("in-flight request: %d %q", got.status, got.body)
			}
			select {
			case err := <-runErr:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
		})
	}
}

// TestHTTPDiscoverer follows a discoverd-style SSE stream.
func TestHTTPDiscoverer(t *testing.T) {
	events := []api.ServiceEvent{
		{Service: "web", Kind: api.EventKindUp, Instance: &api.Instance{ID: "a", Addr: "10.0.0.1:80", Index: 1}},
		{Service: "web", Kind: api.EventKindCurrent},
		{Service: "web", Kind: api.EventKindDown, Instance: &api.Instance{ID: "a", Addr: "10.0.0.1:80", Index: 1}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/services/web" || r.Header.Get("Accept") != "text/event-stream" {
			http.Error(w, "wrong request", 400)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range events {
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev.Kind, b)
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	d := &HTTPDiscoverer{Client: &httpclient.Client{URL: srv.URL}}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := d.Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	var got []api.ServiceEvent
	for range events {
		got = append(got, <-ch)
	}
	if diff := cmp.Diff(events, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	cancel()
	for range ch {
	}
}
