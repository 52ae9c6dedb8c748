package router

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// TestGracefulShutdown: when the router stops, a request in flight on
// plain HTTP, HTTPS or h2 finishes, and Run returns.
func TestGracefulShutdown(t *testing.T) {
	for _, mode := range []string{"http", "https", "h2"} {
		t.Run(mode, func(t *testing.T) {
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
			h := &harness{t: t, r: r, addrs: r.Addrs(), https: mode == "https"}
			get := func(url string) (reply, error) { return h.get(url, nil) }
			if mode == "h2" {
				hc := h2NewClient(t, h)
				get = func(url string) (reply, error) {
					req, _ := http.NewRequest("GET", strings.Replace(url, "http://", "https://", 1), nil)
					res, body, err := hc.do(req)
					if err != nil {
						return reply{}, err
					}
					return reply{status: res.StatusCode, body: string(body)}, nil
				}
			}
			h.expectBackend("http://slow.test/", "slow")
			res := make(chan reply, 1)
			go func() {
				rep, err := get("http://slow.test/slow")
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

// TestRealDiscoverd routes through a real discoverd (registry on etcd,
// HTTP API, Go client): a registered backend gets traffic, a deregistered
// one stops getting it.
func TestRealDiscoverd(t *testing.T) {
	etcd := etcdtest.Client(t)
	store := discoverd.NewStore(etcd, 5*time.Second)
	dsrv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth("tok"), logging.Discard()))
	t.Cleanup(dsrv.Close) // after the router stops watching
	dc := discoverdclient.New(dsrv.URL, "tok")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The route names a service nobody created yet (a new app's): the
	// router creates it and sees its first instance.
	h := startRouter(t, func(c *Config) { c.Discoverer = &Discoverd{Client: dc} })
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from backend")
	}))
	defer backend.Close()
	h.putRoute(api.Route{ID: "r1", Domain: "app.test", Service: "app-web"})
	reg, err := dc.Register(ctx, "app-web", strings.TrimPrefix(backend.URL, "http://"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "backend reachable", func() error {
		r, err := h.get("http://app.test/", map[string]string{"Host": "app.test"})
		if err != nil {
			return err
		}
		if r.status != 200 || r.body != "from backend" {
			return fmt.Errorf("got %d %q", r.status, r.body)
		}
		return nil
	})
	if err := reg.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "503 after deregistration", func() error {
		r, err := h.get("http://app.test/", map[string]string{"Host": "app.test"})
		if err != nil {
			return err
		}
		if r.status != 503 {
			return fmt.Errorf("got %d %q", r.status, r.body)
		}
		return nil
	})
}
