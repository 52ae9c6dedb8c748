package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func TestHTTPRouting(t *testing.T) {
	h := startRouter(t, nil)
	for _, name := range []string{"exact", "api", "wild", "deepwild", "other"} {
		b := newBackend(t, name, nil)
		h.disc.Register(name+"-web", b.addr())
	}
	h.putRoute(api.Route{ID: "r1", Domain: "app.example.com", Service: "exact-web"})
	h.putRoute(api.Route{ID: "r2", Domain: "app.example.com", Path: "/api/", Service: "api-web"})
	h.putRoute(api.Route{ID: "r3", Domain: "*.example.com", Service: "wild-web"})
	h.putRoute(api.Route{ID: "r4", Domain: "*.deep.example.com", Service: "deepwild-web"})
	h.putRoute(api.Route{ID: "r5", Domain: "empty.example.com", Service: "nobody-web"})
	h.putRoute(api.Route{ID: "r6", Domain: "OTHER.example.org.", Service: "other-web"})
	h.expectBackend("http://other.example.org/", "other") // the last route put

	tests := []struct {
		url     string
		status  int
		backend string
	}{
		{"http://app.example.com/", 200, "exact"},
		{"http://APP.example.com:8080/x", 200, "exact"},
		{"http://app.example.com/api", 200, "api"},
		{"http://app.example.com/api/v1/things", 200, "api"},
		{"http://app.example.com/apix", 200, "exact"},
		{"http://foo.example.com/", 200, "wild"},
		{"http://a.b.example.com/", 200, "wild"},
		{"http://x.deep.example.com/", 200, "deepwild"},
		{"http://other.example.org/", 200, "other"},
		{"http://example.com/", 404, ""},
		{"http://nope.test/", 404, ""},
		{"http://empty.example.com/", 503, ""},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			r, err := h.get(tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tt.status || r.backend != tt.backend {
				t.Fatalf("got %d from %q (%s), want %d from %q", r.status, r.backend, r.body, tt.status, tt.backend)
			}
			if tt.status >= 400 {
				var e api.Error
				if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Code == "" {
					t.Fatalf("error body %q is not a JSON error: %v", r.body, err)
				}
			}
		})
	}
	r, err := h.get("http://empty.example.com/", map[string]string{"Accept": "text/html"})
	if err != nil {
		t.Fatal(err)
	}
	if r.status != 503 || !strings.Contains(r.body, "<html>") {
		t.Fatalf("html 503: %d %q", r.status, r.body)
	}

	// The metrics count requests per route.
	res, err := http.Get("http://" + h.addrs.API + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(b), `router_requests_total{code="2xx",route="r1"}`) ||
		!strings.Contains(string(b), `router_request_duration_seconds_count{route="r2"}`) {
		t.Fatalf("metrics lack per-route series:\n%s", b)
	}
}

func TestTLSAndHTTP2(t *testing.T) {
	def := keyPair(t, "*.cluster.test")
	h := startRouter(t, func(c *Config) { c.DefaultCert = def })
	b := newBackend(t, "tls", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Header.Get("X-Forwarded-Proto"), r.Proto)
	})
	h.disc.Register("tls-web", b.addr())
	c1, k1 := selfSigned(t, "one.test")
	c2, k2 := selfSigned(t, "*.two.test")
	h.putRoute(api.Route{ID: "one", Domain: "one.test", Service: "tls-web", Certificate: &api.Certificate{Cert: c1, Key: k1}})
	h.putRoute(api.Route{ID: "two", Domain: "*.two.test", Service: "tls-web", Certificate: &api.Certificate{Cert: c2, Key: k2}})
	h.putRoute(api.Route{ID: "app", Domain: "app.cluster.test", Service: "tls-web"})
	h.expectBackend("http://app.cluster.test/", "tls") // the last route put

	tests := []struct{ sni, wantName string }{
		{"one.test", "one.test"},
		{"a.two.test", "*.two.test"},
		{"app.cluster.test", "*.cluster.test"},
		{"unknown.test", "*.cluster.test"},
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{ServerName: tt.sni, InsecureSkipVerify: true},
				ForceAttemptHTTP2: true,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp", h.addrs.HTTPS)
				},
			}
			defer tr.CloseIdleConnections()
			res, err := (&http.Client{Transport: tr}).Get("https://" + tt.sni + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			got := res.TLS.PeerCertificates[0].DNSNames[0]
			if got != tt.wantName {
				t.Errorf("certificate for %q = %q, want %q", tt.sni, got, tt.wantName)
			}
			if res.ProtoMajor != 2 {
				t.Errorf("protocol %s, want HTTP/2", res.Proto)
			}
			if tt.sni != "unknown.test" && (res.StatusCode != 200 || string(body) != "https HTTP/1.1") {
				t.Errorf("reply %d %q, want 200 %q", res.StatusCode, body, "https HTTP/1.1")
			}
		})
	}
}

func TestWebSocket(t *testing.T) {
	h := startRouter(t, nil)
	up := websocket.Upgrader{}
	b := newBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, http.Header{"X-Backend": {"ws"}})
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	h.routeTo("ws", b.addr())

	// Plain HTTP and HTTPS, where the fast path hands the upgrade to
	// net/http.
	for _, url := range []string{"ws://ws.test/socket", "wss://ws.test/socket"} {
		t.Run(url[:strings.Index(url, ":")], func(t *testing.T) {
			d := websocket.Dialer{
				NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", h.addrs.HTTP) },
				NetDialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&tls.Dialer{Config: &tls.Config{ServerName: "ws.test", InsecureSkipVerify: true}}).DialContext(ctx, "tcp", h.addrs.HTTPS)
				},
			}
			c, res, err := d.Dial(url, nil)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if res.Header.Get("X-Backend") != "ws" {
				t.Errorf("101 reply lacks the backend's headers: %v", res.Header)
			}
			for i := range 3 {
				msg := fmt.Sprintf("hello %d", i)
				if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.ReadMessage()
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != "echo: "+msg {
					t.Fatalf("got %q", got)
				}
			}
		})
	}
}

func echoServer(t *testing.T) string {
	return tcpServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// tcpServer serves each loopback TCP connection with handle, which the
// connection's close follows, until the test ends; it returns the address.
func tcpServer(t *testing.T, handle func(c net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPRoute(t *testing.T) {
	port := testslot.Port(t)
	h := startRouter(t, func(c *Config) { c.TCPPortMin, c.TCPPortMax = port, port })
	h.disc.Register("echo", echoServer(t))
	// A port outside the range is refused.
	h.putRoute(api.Route{ID: "bad", Type: api.RouteTCP, Port: int32(port + 1), Service: "echo"})
	h.putRoute(api.Route{ID: "tcp", Type: api.RouteTCP, Port: int32(port), Service: "echo"})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitFor(t, "tcp echo through the router", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "ping\n" {
			return fmt.Errorf("echo %q", line)
		}
		return nil
	})
	var routes []api.Route
	if err := h.api.Do(context.Background(), "GET", "/routes", nil, &routes); err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].ID != "tcp" {
		t.Fatalf("routes in use = %+v, want only tcp", routes)
	}
	// Removing the route closes the port.
	h.deleteRoute("tcp")
	waitFor(t, "tcp port closed", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return errors.New("still listening")
	})
}

func TestLiveChangesAndDrain(t *testing.T) {
	h := startRouter(t, nil)
	var routeApplied, backendApplied time.Time
	release := make(chan struct{})
	slowStarted := make(chan struct{}, 1)
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowStarted <- struct{}{}
			<-release
		}
		io.WriteString(w, "slow done")
	})
	fast := newBackend(t, "fast", nil)

	// A route added while the router runs takes effect.
	r, err := h.get("http://live.test/", nil)
	if err != nil || r.status != 404 {
		t.Fatalf("before the route: %v %d", err, r.status)
	}
	putAt := time.Now()
	h.putRoute(api.Route{ID: "live", Domain: "live.test", Service: "live-web", DrainBackends: true})
	defer func() { t.Logf("route took effect after %v", routeApplied.Sub(putAt)) }()
	waitFor(t, "route applied", func() error {
		routeApplied = time.Now()
		r, err := h.get("http://live.test/", nil)
		if err != nil || r.status != 503 {
			return fmt.Errorf("%v %d", err, r.status)
		}
		return nil
	})
	// A backend registered while the router runs gets traffic.
	regAt := time.Now()
	h.disc.Register("live-web", slow.addr())
	h.expectBackend("http://live.test/", "slow")
	backendApplied = time.Now()
	t.Logf("backend took effect after %v", backendApplied.Sub(regAt))

	events, err := h.api.Stream(context.Background(), "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	// A slow request is in flight when its backend leaves.
	type result struct {
		r   reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := h.get("http://live.test/slow", nil)
		done <- result{r, err}
	}()
	<-slowStarted
	h.disc.Register("live-web", fast.addr())
	h.disc.Unregister("live-web", slow.addr())
	h.expectBackend("http://live.test/", "fast")
	var st api.DrainStatus
	if err := h.api.Do(context.Background(), "GET", "/drained?addr="+slow.addr(), nil, &st); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(api.DrainStatus{Addr: slow.addr(), Drained: false, InFlight: 1}, st); diff != "" {
		t.Fatalf("drain status while in flight (-want +got):\n%s", diff)
	}
	close(release)
	res := <-done
	if res.err != nil || res.r.status != 200 || res.r.body != "slow done" {
		t.Fatalf("in-flight request: %v %d %q", res.err, res.r.status, res.r.body)
	}
	if err := h.api.Do(context.Background(), "GET", "/drained?wait=20s&addr="+slow.addr(), nil, &st); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(api.DrainStatus{Addr: slow.addr(), Drained: true}, st); diff != "" {
		t.Fatalf("drain status after (-want +got):\n%s", diff)
	}
	for {
		ev, err := events.Next()
		if err != nil {
			t.Fatalf("event stream ended before backend-drained: %v", err)
		}
		var re api.RouterEvent
		json.Unmarshal(ev.Data, &re)
		if re.Event == api.RouterEventBackendDrained {
			if diff := cmp.Diff(api.RouterEvent{Event: api.RouterEventBackendDrained, Service: "live-web", Addr: slow.addr()}, re); diff != "" {
				t.Fatalf("drained event (-want +got):\n%s", diff)
			}
			break
		}
	}
	// Bad input to the drain API is a validation error.
	if err := h.api.Do(context.Background(), "GET", "/drained", nil, &st); !errors.Is(err, api.ErrValidation) {
		t.Fatalf("missing addr: %v", err)
	}
	// The API requires the token.
	bad := *h.api
	bad.Key = "wrong"
	if err := bad.Do(context.Background(), "GET", "/drained?addr=1.2.3.4:5", nil, &st); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	// Deleting the route takes effect.
	h.deleteRoute("live")
	waitFor(t, "route removed", func() error {
		r, err := h.get("http://live.test/", nil)
		if err != nil || r.status != 404 {
			return fmt.Errorf("%v %d", err, r.status)
		}
		return nil
	})
}

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestDeadBackendSkipped(t *testing.T) {
	h := startRouter(t, nil)
	good := newBackend(t, "good", nil)
	h.disc.Register("mixed-web", deadAddr(t))
	h.disc.Register("mixed-web", deadAddr(t))
	h.disc.Register("mixed-web", good.addr())
	h.putRoute(api.Route{ID: "mixed", Domain: "mixed.test", Service: "mixed-web"})
	h.expectBackend("http://mixed.test/", "good")
	h.modes(t, func(t *testing.T, scheme string) {
		for i := range 30 {
			r, err := h.get("http://mixed.test/", nil)
			if err != nil || r.status != 200 || r.backend != "good" {
				t.Fatalf("request %d: %v %d %q", i, err, r.status, r.backend)
			}
		}
	})
}

func TestFailureMidResponseNotRetried(t *testing.T) {
	h := startRouter(t, nil)
	tests := []struct {
		name    string
		reply   string // raw bytes the backend writes before closing
		wantErr bool   // the client sees a broken reply rather than a status
		status  int
	}{
		{"no reply", "", false, 502},
		{"partial head", "HTTP/1.1 200 OK\r\nContent-Le", false, 502},
		{"partial body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", true, 0},
		{"partial chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", true, 0},
	}
	h.modes(t, func(t *testing.T, scheme string) {
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) { testMidResponse(t, h, scheme, i, tt.reply, tt.wantErr, tt.status) })
		}
	})
}

func testMidResponse(t *testing.T, h *harness, scheme string, i int, reply string, wantErr bool, status int) {
	bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		buf.WriteString(reply)
		buf.Flush()
		c.Close()
	})
	svc := fmt.Sprintf("bad%d-%s", i, scheme)
	h.disc.Register(svc, bad.addr())
	h.putRoute(api.Route{ID: svc, Domain: svc + ".test", Service: svc})
	waitFor(t, "route", func() error {
		if bad.hits.Load() > 0 {
			return nil
		}
		h.get("http://"+svc+".test/", nil)
		return errors.New("no hit yet")
	})
	before := bad.hits.Load()
	r, err := h.get("http://"+svc+".test/", nil)
	if wantErr {
		if err == nil {
			t.Fatalf("client got a complete reply %d %q from a broken backend", r.status, r.body)
		}
	} else if err != nil || r.status != status {
		t.Fatalf("got %v %d, want %d", err, r.status, status)
	}
	if n := bad.hits.Load() - before; n != 1 {
		t.Fatalf("backend got %d requests, want 1 (no retry)", n)
	}
}

func TestStickySessions(t *testing.T) {
	h := startRouter(t, nil)
	b1 := newBackend(t, "one", nil)
	b2 := newBackend(t, "two", nil)
	h.disc.Register("sticky-web", b1.addr())
	h.disc.Register("sticky-web", b2.addr())
	h.putRoute(api.Route{ID: "sticky", Domain: "sticky.test", Service: "sticky-web", Sticky: true})
	h.modes(t, func(t *testing.T, scheme string) { testSticky(t, h) })
}

func testSticky(t *testing.T, h *harness) {
	waitFor(t, "both backends up", func() error {
		seen := map[string]bool{}
		for range 40 {
			r, err := h.get("http://sticky.test/", nil)
			if err != nil {
				return err
			}
			seen[r.backend] = true
		}
		if !seen["one"] || !seen["two"] {
			return fmt.Errorf("saw %v", seen)
		}
		return nil
	})
	for _, first := range []string{"one", "two"} {
		var cookie string
		waitFor(t, "a cookie for "+first, func() error {
			r, err := h.get("http://sticky.test/", nil)
			if err != nil {
				return err
			}
			if r.backend != first {
				return fmt.Errorf("got %s", r.backend)
			}
			cookie = r.header.Get("Set-Cookie")
			return nil
		})
		if !strings.HasPrefix(cookie, stickyCookie+"=") {
			t.Fatalf("Set-Cookie = %q", cookie)
		}
		cookie = strings.SplitN(cookie, ";", 2)[0]
		for i := range 30 {
			r, err := h.get("http://sticky.test/", map[string]string{"Cookie": cookie})
			if err != nil {
				t.Fatal(err)
			}
			if r.backend != first || r.header.Get("Set-Cookie") != "" {
				t.Fatalf("request %d with the %s cookie went to %s (Set-Cookie %q)", i, first, r.backend, r.header.Get("Set-Cookie"))
			}
		}
	}
	// A forged cookie is ignored, not an error.
	r, err := h.get("http://sticky.test/", map[string]string{"Cookie": stickyCookie + "=" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
	if err != nil || r.status != 200 || r.header.Get("Set-Cookie") == "" {
		t.Fatalf("forged cookie: %v %d %q", err, r.status, r.header.Get("Set-Cookie"))
	}
}

func TestLeaderRoute(t *testing.T) {
	h := startRouter(t, nil)
	b1 := newBackend(t, "first", nil)
	b2 := newBackend(t, "second", nil)
	h.disc.Register("db", b1.addr())
	h.disc.Register("db", b2.addr())
	h.putRoute(api.Route{ID: "leader", Domain: "leader.test", Service: "db", Leader: true})
	h.expectBackend("http://leader.test/", "first")
	for range 20 {
		if r, err := h.get("http://leader.test/", nil); err != nil || r.backend != "first" {
			t.Fatalf("leader route went to %q (%v)", r.backend, err)
		}
	}
	h.disc.Unregister("db", b1.addr())
	h.expectBackend("http://leader.test/", "second")
}

func TestForwardedHeaders(t *testing.T) {
	h := startRouter(t, nil)
	b := newBackend(t, "hdr", nil)
	h.routeTo("hdr", b.addr())
	h.modes(t, func(t *testing.T, scheme string) { testForwardedHeaders(t, h, b, scheme) })
}

func testForwardedHeaders(t *testing.T, h *harness, b *testBackend, scheme string) {
	addr := h.addrs.HTTP
	if scheme == "https" {
		addr = h.addrs.HTTPS
	}
	_, port, _ := net.SplitHostPort(addr)
	validID := "abcdefghij-0123456789"
	tests := []struct {
		name   string
		send   map[string]string
		wantFF string
		wantID string // "" means a new id
	}{
		{"plain", nil, "127.0.0.1", ""},
		{"prior forwarded", map[string]string{"X-Forwarded-For": "10.1.2.3", "X-Request-Id": validID}, "10.1.2.3, 127.0.0.1", validID},
		{"invalid id", map[string]string{"X-Request-Id": "short"}, "127.0.0.1", ""},
		{"hop by hop", map[string]string{"Connection": "X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5", "Proxy-Authorization": "x"}, "127.0.0.1", ""},
		{"keep-alive only", map[string]string{"Connection": "keep-alive", "Keep-Alive": "timeout=5", "Te": "trailers"}, "127.0.0.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			send := map[string]string{"X-Forwarded-Proto": "evil", "X-Keep": "yes"}
			for k, v := range tt.send {
				send[k] = v
			}
			r, err := h.get("http://hdr.test/path?q=1", send)
			if err != nil || r.status != 200 {
				t.Fatalf("%v %d", err, r.status)
			}
			got := b.last.Load()
			want := map[string]string{
				"X-Forwarded-For":     tt.wantFF,
				"X-Forwarded-Proto":   scheme,
				"X-Forwarded-Port":    port,
				"Te":                  "",
				"X-Keep":              "yes",
				"X-Secret":            "",
				"Keep-Alive":          "",
				"Proxy-Authorization": "",
			}
			for k, v := range want {
				if g := strings.Join(got.Header.Values(k), ","); g != v {
					t.Errorf("%s = %q, want %q", k, g, v)
				}
			}
			id := got.Header.Get("X-Request-Id")
			if tt.wantID != "" && id != tt.wantID || tt.wantID == "" && (!validRequestID(id) || id == validID) {
				t.Errorf("X-Request-Id = %q, want %q", id, tt.wantID)
			}
			ms, err := strconv.ParseInt(got.Header.Get("X-Request-Start"), 10, 64)
			if err != nil || time.Since(time.UnixMilli(ms)) > time.Minute || time.Since(time.UnixMilli(ms)) < 0 {
				t.Errorf("X-Request-Start = %q", got.Header.Get("X-Request-Start"))
			}
			if got.Host != "hdr.test" || got.RequestURI != "/path?q=1" {
				t.Errorf("host %q uri %q", got.Host, got.RequestURI)
			}
		})
	}
}

func TestRequestBodies(t *testing.T) {
	h := startRouter(t, nil)
	b := newBackend(t, "body", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %s", r.Method, len(body), r.TransferEncoding)
	})
	h.routeTo("body", b.addr())
	big := strings.Repeat("x", 1<<20)
	tests := []struct {
		name string
		body io.Reader
		want string
	}{
		{"fixed", strings.NewReader(big), "POST 1048576 []"},
		{"chunked", io.MultiReader(strings.NewReader(big)), "POST 1048576 [chunked]"},
		{"empty", nil, "POST 0 []"},
	}
	h.modes(t, func(t *testing.T, scheme string) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if s, ok := tt.body.(*strings.Reader); ok {
					s.Seek(0, io.SeekStart)
				}
				if tt.name == "chunked" {
					tt.body = io.MultiReader(strings.NewReader(big))
				}
				req, _ := http.NewRequest("POST", scheme+"://body.test/", tt.body)
				res, err := h.client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if string(got) != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			})
		}
	})
}

func TestBadClients(t *testing.T) {
	h := startRouter(t, func(c *Config) {
		c.ReadHeaderTimeout = 500 * time.Millisecond
		c.MaxHeaderBytes = 8 << 10
	})
	b := newBackend(t, "ok", nil)
	h.routeTo("ok", b.addr())

	// Slow-loris clients hold connections open with partial headers.
	var slow []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", h.addrs.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: ok.test\r\nX-Slow: ")
		slow = append(slow, c)
	}

	raw := func(req string) string {
		c, err := net.Dial("tcp", h.addrs.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	tests := []struct{ name, req, want string }{
		{"garbage", "\x16\x03\x01garbage\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"bad request line", "GET\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"oversized headers", "GET / HTTP/1.1\r\nHost: ok.test\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
		{"valid", "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n", "HTTP/1.1 200 OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := raw(tt.req); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	// The slow clients are cut off by the header timeout, while others
	// are served meanwhile.
	var wg sync.WaitGroup
	for _, c := range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("slow client: %v, want the router to close the connection", err)
			}
		}()
	}
	if r, err := h.get("http://ok.test/", nil); err != nil || r.status != 200 {
		t.Fatalf("normal client while slow ones wait: %v %d", err, r.status)
	}
	wg.Wait()
}

// TestEventStreamHead: the head of a response without a length (an event
// stream) reaches the client before the first event, over both paths: a
// client waits for the head before it reads events, and the first event
// may be long in coming.
func TestEventStreamHead(t *testing.T) {
	h := startRouter(t, nil)
	release := make(chan struct{})
	b := newBackend(t, "sse", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: first\n\n")
	})
	h.routeTo("sse", b.addr())
	h.modes(t, func(t *testing.T, scheme string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", scheme+"://sse.test/events", nil)
		res, err := h.client().Do(req)
		if err != nil {
			t.Fatalf("no response head before the first event: %v", err)
		}
		defer res.Body.Close()
		release <- struct{}{}
		line, err := bufio.NewReader(res.Body).ReadString('\n')
		if err != nil || line != "data: first\n" {
			t.Errorf("first event line %q, %v", line, err)
		}
	})
}

// TestVanishedBackendHost: when a host with backends vanishes (its
// packets dropped, as when its power or network is lost: no reset, no
// reply), a request without a body written on a pooled connection to one
// of them is sent to another backend in about backendUserTimeout, and
// every request after it goes elsewhere without waiting: that backend and
// the others on its host are passed over for a while, over both paths.
// The vanishing host's backends listen on 127.0.0.2 and 127.0.0.3, as two
// containers of one host have addresses of their own, and are registered
// with its host ID (api.InstanceMetaHostID); the one that stays listens on
// 127.0.0.1.
func TestVanishedBackendHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: drops a backend's packets with iptables")
	}
	h := startRouter(t, nil)
	gone := []*testBackend{newBackendOn(t, "127.0.0.2", "gone1", nil), newBackendOn(t, "127.0.0.3", "gone2", nil)}
	stays := newBackend(t, "stays", nil)
	for _, b := range gone {
		h.disc.RegisterMeta("vanish-web", b.addr(), map[string]string{api.InstanceMetaHostID: "host2"})
	}
	h.disc.RegisterMeta("vanish-web", stays.addr(), map[string]string{api.InstanceMetaHostID: "host1"})
	h.putRoute(api.Route{ID: "vanish", Domain: "vanish.test", Service: "vanish-web"})
	for _, name := range []string{"stays", "gone1", "gone2"} {
		h.expectBackend("http://vanish.test/", name)
	}
	h.modes(t, func(t *testing.T, scheme string) {
		// Pooled connections to every backend (once the last subtest's
		// pause of the dropped ones is over; on a loaded machine that
		// takes longer, so the wait is generous).
		hits := []int64{gone[0].hits.Load(), gone[1].hits.Load()}
		end := time.Now().Add(30 * time.Second)
		for (gone[0].hits.Load() < hits[0]+2 || gone[1].hits.Load() < hits[1]+2) && time.Now().Before(end) {
			h.get("http://vanish.test/", nil)
			time.Sleep(20 * time.Millisecond)
		}
		if gone[0].hits.Load() < hits[0]+2 || gone[1].hits.Load() < hits[1]+2 {
			t.Fatal("requests do not reach the backends to drop")
		}
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			rule := []string{"INPUT", "-i", "lo", "-p", "tcp", "-d", ip, "-j", "DROP"}
			if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
				t.Skipf("iptables: %v %s", err, out)
			}
			defer exec.Command("iptables", append([]string{"-D"}, rule...)...).Run()
		}
		waited := 0
		for i := range 8 {
			start := time.Now()
			r, err := h.get("http://vanish.test/", nil)
			if err != nil || r.status != 200 || r.backend != "stays" {
				t.Fatalf("request %d after the backends' host vanished: %v, status %d from %q after %s", i, err, r.status, r.backend, time.Since(start))
			}
			took := time.Since(start)
			t.Logf("request %d: answered by %s after %s", i, r.backend, took.Round(time.Millisecond))
			if took > time.Second {
				waited++
			}
			if took > backendUserTimeout+time.Second {
				t.Errorf("request %d waited for more than one timeout: %s", i, took)
			}
		}
		// The first request to meet the vanished host waits for the user
		// timeout; the next ones pass over both of its backends.
		if waited > 1 {
			t.Errorf("%d requests waited for the vanished host; want at most 1", waited)
		}
	})
}

// TestBackendHostVanishesMidRequest: a backend's host vanishes (its
// packets dropped) after the backend got a request and before it
// answered. Keepalive probes, which the router turns on for a request
// that waits, find that out in seconds: a GET goes to another backend, a
// POST (not idempotent: the backend may have acted on it) is answered
// 502. Without them both waited until the client gave up. The handler
// itself takes a minute: a backend whose host answers probes is not cut
// off for being slow.
func TestBackendHostVanishesMidRequest(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: drops a backend's packets with iptables")
	}
	h := startRouter(t, nil)
	got := make(chan string, 16)
	release := make(chan struct{})
	slow := newBackendOn(t, "127.0.0.5", "slow", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			got <- r.Method
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
		io.WriteString(w, "slow")
	})
	t.Cleanup(func() { close(release) }) // before the backend's Close, which waits for its handlers
	stays := newBackend(t, "stays", nil)
	h.disc.RegisterMeta("midreq-web", slow.addr(), map[string]string{api.InstanceMetaHostID: "host2"})
	h.disc.RegisterMeta("midreq-web", stays.addr(), map[string]string{api.InstanceMetaHostID: "host1"})
	h.putRoute(api.Route{ID: "midreq", Domain: "midreq.test", Service: "midreq-web"})
	h.expectBackend("http://midreq.test/", "slow")
	h.expectBackend("http://midreq.test/", "stays")

	// vanishMidRequest sends method /block until slow gets one, then drops
	// slow's packets, and returns that request's reply.
	vanishMidRequest := func(t *testing.T, scheme, method string) (reply, time.Duration) {
		t.Helper()
		deadline := time.Now().Add(3 * downPause)
		for time.Now().Before(deadline) {
			type result struct {
				r   reply
				err error
			}
			done := make(chan result, 1)
			go func() {
				req, _ := http.NewRequest(method, scheme+"://midreq.test/block", nil)
				res, err := h.client().Do(req)
				if err != nil {
					done <- result{err: err}
					return
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				done <- result{r: reply{status: res.StatusCode, backend: res.Header.Get("X-Backend"), body: string(b)}}
			}()
			select {
			case res := <-done:
				if res.err != nil {
					t.Fatalf("%s /block: %v", method, res.err)
				}
				time.Sleep(50 * time.Millisecond) // answered by stays: again
				continue
			case m := <-got:
				if m != method {
					t.Fatalf("slow got %s, want %s", m, method)
				}
			}
			rule := []string{"INPUT", "-i", "lo", "-p", "tcp", "-d", "127.0.0.5", "-j", "DROP"}
			if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
				t.Skipf("iptables: %v %s", err, out)
			}
			start := time.Now()
			res := <-done
			exec.Command("iptables", append([]string{"-D"}, rule...)...).Run()
			if res.err != nil {
				t.Fatalf("%s /block after slow's host vanished: %v after %s", method, res.err, time.Since(start))
			}
			return res.r, time.Since(start)
		}
		t.Fatalf("no %s /block reached slow", method)
		return reply{}, 0
	}
	h.modes(t, func(t *testing.T, scheme string) {
		r, took := vanishMidRequest(t, scheme, "GET")
		t.Logf("GET: %d from %q after %s", r.status, r.backend, took.Round(time.Millisecond))
		if r.status != 200 || r.backend != "stays" {
			t.Errorf("GET whose backend's host vanished: %d from %q %q, want it sent to stays", r.status, r.backend, r.body)
		}
		if scheme == "https" && !h.r.tlsNetHTTP.Load() {
			return // the POST over the fast path is the plain HTTP mode's
		}
		r, took = vanishMidRequest(t, scheme, "POST")
		t.Logf("POST: %d from %q after %s", r.status, r.backend, took.Round(time.Millisecond))
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, "stopped answering after it got the request") {
			t.Errorf("POST whose backend's host vanished: %d from %q %q, want 502", r.status, r.backend, r.body)
		}
	})
}
