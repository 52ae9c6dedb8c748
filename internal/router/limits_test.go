package router

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// dial opens a raw client connection to the router in the harness's
// current mode (plain HTTP or HTTPS with HTTP/1.1; see modes).
func (h *harness) dial(t *testing.T) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	if h.https {
		c, err = tls.Dial("tcp", h.addrs.HTTPS, &tls.Config{ServerName: "x.test", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	} else {
		c, err = net.Dial("tcp", h.addrs.HTTP)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readUntilClosed reads c until the router closes it and returns what it
// read; a connection still open after 30 s fails the test.
func readUntilClosed(t *testing.T, c net.Conn, what string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("%s: the router kept the connection open: %v (read %q)", what, err, b)
	}
	return string(b)
}

// TestBodyLimits: over both paths, a request body that stalls is cut off
// with 408 and one over the route's size with 413 (before the backend
// sees it when its length is announced), while a body that keeps coming
// may take longer than the idle limit; a route's own limits replace the
// router's.
func TestBodyLimits(t *testing.T) {
	h := startRouter(t, func(c *Config) {
		c.BodyIdleTimeout = 300 * time.Millisecond
		c.MaxBodyBytes = 1000
	})
	var hits atomic.Int64
	b := newBackend(t, "body", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n, err)
	})
	h.disc.Register("body-web", b.addr())
	h.putRoute(api.Route{ID: "body", Domain: "body.test", Service: "body-web"})
	h.putRoute(api.Route{ID: "big", Domain: "big.test", Service: "body-web", MaxBodyBytes: -1, BodyTimeout: api.Duration(time.Minute)})
	h.expectBackend("http://body.test/", "body")
	h.expectBackend("http://big.test/", "body")

	post := func(t *testing.T, scheme, host string, body io.Reader) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", scheme+"://"+host+"/", body)
		res, err := h.client().Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", host, err)
		}
		defer res.Body.Close()
		out, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(out)
	}
	// slow sends n chunks of 10 bytes, each after a pause.
	slow := func(n int, pause time.Duration) io.Reader {
		pr, pw := io.Pipe()
		go func() {
			for range n {
				time.Sleep(pause)
				if _, err := pw.Write([]byte("0123456789")); err != nil {
					return
				}
			}
			pw.Close()
		}()
		return pr
	}
	h.modes(t, func(t *testing.T, scheme string) {
		t.Run("stalled", func(t *testing.T) {
			c := h.dial(t)
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: body.test\r\nContent-Length: 100\r\n\r\n0123456789")
			got := readUntilClosed(t, c, "stalled body")
			if !strings.HasPrefix(got, "HTTP/1.1 408 ") {
				t.Errorf("stalled body: %q, want a 408 and the connection closed", got)
			}
		})
		t.Run("too large", func(t *testing.T) {
			before := hits.Load()
			c := h.dial(t)
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: body.test\r\nContent-Length: 1001\r\n\r\n")
			got := readUntilClosed(t, c, "oversized body")
			if !strings.HasPrefix(got, "HTTP/1.1 413 ") || !strings.Contains(got, string(api.CodeTooLarge)) {
				t.Errorf("oversized body: %q, want a 413 and the connection closed", got)
			}
			if hits.Load() != before {
				t.Errorf("the backend saw a request whose announced body is over the limit")
			}
		})
		t.Run("chunked too large", func(t *testing.T) {
			status, _ := post(t, scheme, "body.test", io.MultiReader(strings.NewReader(strings.Repeat("x", 5000))))
			if status != 413 {
				t.Errorf("oversized chunked body: %d, want 413", status)
			}
		})
		t.Run("steady", func(t *testing.T) {
			// Three idle limits in all, never idle for a third of one.
			status, out := post(t, scheme, "body.test", slow(9, 100*time.Millisecond))
			if status != 200 || out != "90 <nil>" {
				t.Errorf("slow, steady body: %d %q, want 200 and all 60 bytes", status, out)
			}
		})
		t.Run("route limits", func(t *testing.T) {
			status, out := post(t, scheme, "big.test", strings.NewReader(strings.Repeat("x", 5000)))
			if status != 200 || out != "5000 <nil>" {
				t.Errorf("5000 bytes on a route without a size limit: %d %q", status, out)
			}
			status, out = post(t, scheme, "big.test", slow(2, 600*time.Millisecond))
			if status != 200 || out != "20 <nil>" {
				t.Errorf("pauses longer than the router's idle limit on a route with a longer one: %d %q", status, out)
			}
		})
	})
}

// TestWriteIdleCutsOffNonReaders: a client that stops reading a response
// is disconnected, so the backend's write fails instead of blocking.
func TestWriteIdleCutsOffNonReaders(t *testing.T) {
	h := startRouter(t, func(c *Config) { c.WriteIdleTimeout = 300 * time.Millisecond })
	failed := make(chan error, 4)
	b := newBackend(t, "flood", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/flood" {
			return
		}
		buf := make([]byte, 64<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				failed <- err
				return
			}
		}
	})
	h.routeTo("flood", b.addr())
	h.modes(t, func(t *testing.T, scheme string) {
		c := h.dial(t)
		io.WriteString(c, "GET /flood HTTP/1.1\r\nHost: flood.test\r\n\r\n")
		select {
		case <-failed:
		case <-time.After(30 * time.Second):
			t.Fatal("a client that reads nothing still holds the response after 30s")
		}
	})
}

// TestQuietWebSocketOutlivesWriteIdle: the write limit bounds a blocked
// write, not silence: a WebSocket quiet for longer than it still carries
// the next message.
func TestQuietWebSocketOutlivesWriteIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	h := startRouter(t, func(c *Config) { c.WriteIdleTimeout = idle })
	up := websocket.Upgrader{}
	b := newBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for i := range 2 {
			time.Sleep(3 * idle)
			if err := c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint("late ", i))); err != nil {
				return
			}
		}
	})
	h.routeTo("ws", b.addr())
	d := websocket.Dialer{NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", h.addrs.HTTP) }}
	c, _, err := d.Dial("ws://ws.test/socket", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := range 2 {
		if _, got, err := c.ReadMessage(); err != nil || string(got) != fmt.Sprint("late ", i) {
			t.Fatalf("message %d after a silence longer than the write limit: %q, %v", i, got, err)
		}
	}
}

// TestConnCapPerClient: a client address holds at most MaxConnsPerClient
// connections over all the router's listeners (HTTP, HTTPS, TCP routes);
// one more is closed at once, and a slot freed is usable again.
func TestConnCapPerClient(t *testing.T) {
	port := testslot.Port(t)
	h := startRouter(t, func(c *Config) {
		c.MaxConnsPerClient = 3
		c.TCPPortMin, c.TCPPortMax = port, port
	})
	b := newBackend(t, "ok", nil)
	h.disc.Register("ok-web", b.addr())
	h.putRoute(api.Route{ID: "ok", Domain: "ok.test", Service: "ok-web"})
	h.putRoute(api.Route{ID: "tcp", Type: api.RouteTCP, Port: int32(port), Service: "ok-web"})
	tcpAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))

	// get sends a request on c and returns the status line.
	get := func(c net.Conn) string {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(line)
	}
	// served opens a connection to addr that the router serves and
	// keeps it (the router frees the slots of connections closed before
	// only once it sees them close: retry until it has).
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	served := func(what, addr string) {
		t.Helper()
		waitFor(t, what, func() error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			if got := get(c); got != "HTTP/1.1 200 OK" {
				c.Close()
				return fmt.Errorf("got %q", got)
			}
			held = append(held, c)
			return nil
		})
	}
	served("a first connection over HTTP", h.addrs.HTTP)
	served("a second connection over HTTP", h.addrs.HTTP)
	served("a third connection, through the TCP route", tcpAddr)

	if got := readUntilClosed(t, h.dial(t), "a fourth connection"); got != "" {
		t.Errorf("a fourth connection, over HTTP, got %q, want it closed at once", got)
	}
	if c, err := tls.Dial("tcp", h.addrs.HTTPS, &tls.Config{InsecureSkipVerify: true}); err == nil {
		c.Close()
		t.Errorf("a fourth connection, over HTTPS, was served")
	}
	if c, err := net.Dial("tcp", tcpAddr); err == nil {
		if got := get(c); got == "HTTP/1.1 200 OK" {
			t.Errorf("a fourth connection, through the TCP route, was served")
		}
		c.Close()
	}
	if n := refusedConns(t, h); n < 3 {
		t.Errorf("router_connections_refused_total = %d, want at least the 3 refusals", n)
	}

	// The router frees a slot when it sees the client close.
	held[0].Close()
	waitFor(t, "a freed slot to be usable", func() error {
		c, err := net.Dial("tcp", h.addrs.HTTP)
		if err != nil {
			return err
		}
		defer c.Close()
		if got := get(c); got != "HTTP/1.1 200 OK" {
			return fmt.Errorf("got %q", got)
		}
		return nil
	})
}

// refusedConns reads router_connections_refused_total from the metrics.
func refusedConns(t *testing.T, h *harness) int {
	t.Helper()
	res, err := http.Get("http://" + h.addrs.API + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "router_connections_refused_total "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// TestConnCapSlotsReleased: every way a client connection ends gives its
// slot of the per-client cap back, once, soon after it ends: slow clients
// cut off by the router (headers that never end, a body that stalls),
// clients that hang up mid-request (among them while the backend is quiet:
// before it answers, or mid-stream), a backend that fails, connections
// handed to net/http; over plain HTTP, HTTPS (both take the fast path) and
// net/http. Then, as in TestTenantIsolation, after a client hung up on a
// quiet event stream over HTTPS (as the CLI does) and the slow clients,
// one client is served exactly MaxConnsPerClient connections at once.
func TestConnCapSlotsReleased(t *testing.T) {
	const limit = 8
	h := startRouter(t, func(c *Config) {
		c.MaxConnsPerClient = limit
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.BodyIdleTimeout = 300 * time.Millisecond
	})
	b := newBackend(t, "ok", func(w http.ResponseWriter, r *http.Request) {
		// A request's body read whole lets net/http see the router hang
		// up (r.Context).
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/hangup":
			c, _, _ := http.NewResponseController(w).Hijack()
			c.Close()
			return
		case "/slow":
			time.Sleep(500 * time.Millisecond)
		case "/stream", "/silent":
			// An event stream that goes quiet, or a long poll: only a
			// router that watches the client sees it hang up meanwhile.
			if r.URL.Path == "/stream" {
				io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
			}
			select {
			case <-r.Context().Done():
			case <-time.After(time.Minute):
			}
			return
		}
		io.WriteString(w, "ok")
	})
	h.disc.Register("ok-web", b.addr())
	h.putRoute(api.Route{ID: "ok", Domain: "ok.test", Service: "ok-web"})

	// get sends req on a new plain-HTTP connection and returns the status
	// line and the connection, open.
	get := func(t *testing.T, req string) (string, net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", h.addrs.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, req)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), c
	}
	const okReq = "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n"
	waitFor(t, "the route", func() error {
		line, c := get(t, okReq)
		c.Close()
		if line != "HTTP/1.1 200 OK" {
			return fmt.Errorf("got %q", line)
		}
		return nil
	})
	// open is how many slots 127.0.0.1 holds.
	open := func() int {
		h.r.clients.mu.Lock()
		defer h.r.clients.mu.Unlock()
		return h.r.clients.per["127.0.0.1"]
	}
	// released fails t unless 127.0.0.1 holds at most want slots within
	// a few seconds.
	released := func(t *testing.T, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for open() > want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := open(); n > want {
			t.Errorf("127.0.0.1 holds %d slots 5 s after its connection ended, want %d", n, want)
		}
	}
	// routerCloses sends req and reads until the router closes the
	// connection, and checks the reply starts with want.
	routerCloses := func(req, want string) func(t *testing.T) {
		return func(t *testing.T) {
			c := h.dial(t)
			io.WriteString(c, req)
			if got := readUntilClosed(t, c, "the router's reply"); !strings.HasPrefix(got, want) {
				t.Errorf("got %q, want the connection closed after %q", got, want)
			}
		}
	}
	// clientCloses sends req, reads what comes within pause, and hangs up.
	clientCloses := func(req string, pause time.Duration) func(t *testing.T) {
		return func(t *testing.T) {
			c := h.dial(t)
			io.WriteString(c, req)
			c.SetReadDeadline(time.Now().Add(pause))
			io.Copy(io.Discard, c)
			c.Close()
		}
	}
	const streamReq = "GET /stream HTTP/1.1\r\nHost: ok.test\r\nAccept: text/event-stream\r\n\r\n"
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"partial headers", routerCloses("GET / HTTP/1.1\r\nHost: ok.test\r\nX-Slow: ", "")},
		{"stalled body", routerCloses("POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 100\r\n\r\nhalf", "HTTP/1.1 408 ")},
		{"stalled chunked body", routerCloses("POST / HTTP/1.1\r\nHost: ok.test\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhalf", "HTTP/1.1 408 ")},
		{"keep-alive then close", routerCloses(okReq+"GET / HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 ")},
		{"backend hangs up", routerCloses("GET /hangup HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n", "HTTP/1.1 502 ")},
		{"no route", routerCloses("GET / HTTP/1.1\r\nHost: none.test\r\nConnection: close\r\n\r\n", "HTTP/1.1 404 ")},
		{"handed off, HTTP/1.0", routerCloses("GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n", "HTTP/1.0 200 ")},
		{"handed off, bad head", routerCloses("GET / HTTP/1.1\r\nHost: ok.test\r\nBad Header\r\n\r\n", "HTTP/1.1 400 ")},
		{"client hangs up mid-head", clientCloses("GET / HTTP/1.1\r\nHost: ok.test\r\nX-Slow: ", 50*time.Millisecond)},
		{"client hangs up mid-body", clientCloses("POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 100\r\n\r\nhalf", 50*time.Millisecond)},
		{"client hangs up while idle", clientCloses(okReq, 100*time.Millisecond)},
		{"client hangs up on a slow backend", clientCloses("GET /slow HTTP/1.1\r\nHost: ok.test\r\n\r\n", 50*time.Millisecond)},
		{"client hangs up on a quiet stream", clientCloses(streamReq, 100*time.Millisecond)},
		{"client hangs up before a quiet backend answers", clientCloses("GET /silent HTTP/1.1\r\nHost: ok.test\r\n\r\n", 100*time.Millisecond)},
		{"client hangs up before a quiet backend answers a body", clientCloses("POST /silent HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 4\r\n\r\nbody", 100*time.Millisecond)},
		{"client hangs up handed off", clientCloses("GET /silent HTTP/1.0\r\nHost: ok.test\r\nConnection: keep-alive\r\n\r\n", 100*time.Millisecond)},
		{"client hangs up mid-head, handed off", clientCloses("GET / HTTP/1.0\r\nHost: ok.test\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nX-Slow: ", 100*time.Millisecond)},
	}
	h.modes(t, func(t *testing.T, scheme string) {
		for _, tt := range cases {
			t.Run(tt.name, func(t *testing.T) {
				before := open()
				tt.run(t)
				released(t, before)
			})
		}
	})

	t.Run("the cap after a quiet stream and slow clients", func(t *testing.T) {
		released(t, 0)
		h.https = true
		clientCloses(streamReq, 100*time.Millisecond)(t)
		h.https = false
		released(t, 0)
		routerCloses("GET / HTTP/1.1\r\nHost: ok.test\r\nX-Slow: ", "")(t)
		routerCloses("POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 100\r\n\r\nhalf", "HTTP/1.1 408 ")(t)
		// Connections served one after the other and kept open, until
		// one is refused: exactly the cap.
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for len(held) <= limit {
			line, c := get(t, okReq)
			if line == "" {
				c.Close()
				break
			}
			if line != "HTTP/1.1 200 OK" {
				t.Fatalf("connection %d: %q", len(held)+1, line)
			}
			held = append(held, c)
		}
		if len(held) != limit {
			t.Errorf("one client got %d connections served at once, want the cap, %d", len(held), limit)
		}
	})
}
