package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name  string
		check *api.HealthCheck
		addr  string
		err   string
	}{
		{"bad address", &api.HealthCheck{}, "nohost", "address"},
		{"bad type", &api.HealthCheck{Type: "udp"}, "127.0.0.1:1", "type"},
		{"bad path", &api.HealthCheck{Type: "http", Path: "health"}, "127.0.0.1:1", "path"},
		{"negative", &api.HealthCheck{Threshold: -1}, "127.0.0.1:1", "negative"},
		{"ok", &api.HealthCheck{Type: "http", Path: "/health"}, "127.0.0.1:1", ""},
		{"nil check is tcp", nil, "127.0.0.1:1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.check, tt.addr)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("New = %v, want error containing %q", err, tt.err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("all good"))
		case "/host":
			w.Write([]byte(r.Host))
		default:
			http.Error(w, "nope", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()

	tests := []struct {
		name  string
		check api.HealthCheck
		addr  string
		ok    bool
	}{
		{"tcp open", api.HealthCheck{Type: "tcp"}, addr, true},
		{"tcp closed", api.HealthCheck{Type: "tcp"}, closed, false},
		{"http ok", api.HealthCheck{Type: "http", Path: "/ok"}, addr, true},
		{"http 503", api.HealthCheck{Type: "http", Path: "/bad"}, addr, false},
		{"http expected status", api.HealthCheck{Type: "http", Path: "/bad", Status: 503}, addr, true},
		{"http match", api.HealthCheck{Type: "http", Path: "/ok", Match: "good"}, addr, true},
		{"http no match", api.HealthCheck{Type: "http", Path: "/ok", Match: "bad"}, addr, false},
		{"http host header", api.HealthCheck{Type: "http", Path: "/host", Host: "app.example", Match: "app.example"}, addr, true},
		{"http closed", api.HealthCheck{Type: "http"}, closed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(&tt.check, tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Check(context.Background())
			if (err == nil) != tt.ok {
				t.Fatalf("Check = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestMonitorThreshold(t *testing.T) {
	var healthy atomic.Bool
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		if !healthy.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	c, err := New(&api.HealthCheck{Type: "http", Interval: api.Duration(10 * time.Millisecond), Threshold: 3}, strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type change struct {
		healthy bool
		probes  int32
	}
	changes := make(chan change, 10)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Monitor(ctx, func(h bool, err error) { changes <- change{h, probes.Load()} })
	}()
	defer wg.Wait()
	defer cancel()

	// Let it fail a few times, then turn healthy: it takes 3 passes.
	for probes.Load() < 3 {
		time.Sleep(time.Millisecond)
	}
	healthy.Store(true)
	start := probes.Load()
	ch := <-changes
	if !ch.healthy || ch.probes-start < 3 {
		t.Fatalf("first change %+v after %d passing probes, want healthy after >= 3", ch, ch.probes-start)
	}
	healthy.Store(false)
	start = probes.Load()
	ch = <-changes
	if ch.healthy || ch.probes-start < 3 {
		t.Fatalf("second change %+v after %d failing probes, want unhealthy after >= 3", ch, ch.probes-start)
	}
}

func TestWaitHealthy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := New(&api.HealthCheck{Interval: api.Duration(5 * time.Millisecond), Threshold: 2}, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(context.Background()); err != nil {
		t.Fatalf("WaitHealthy on a listening port: %v", err)
	}
	ln.Close()
	c, err = New(&api.HealthCheck{Interval: api.Duration(5 * time.Millisecond), StartTimeout: api.Duration(50 * time.Millisecond)}, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(context.Background()); err == nil || !strings.Contains(err.Error(), "not healthy within") {
		t.Fatalf("WaitHealthy on a closed port = %v, want start timeout", err)
	}
}
