package router

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// framingBackend answers with every kind of response framing.
func framingBackend(t *testing.T) *testBackend {
	big := strings.Repeat("0123456789", 100_000)
	return newBackend(t, "frame", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			io.WriteString(w, big)
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/head":
			w.Header().Set("Content-Length", "5")
			if r.Method != "HEAD" {
				io.WriteString(w, "hello")
			}
		case "/eof":
			// An HTTP/1.0-style reply delimited by the connection closing.
			c, buf, _ := http.NewResponseController(w).Hijack()
			buf.WriteString("HTTP/1.0 200 OK\r\nX-Backend: frame\r\n\r\nuntil the end")
			buf.Flush()
			c.Close()
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
		case "/multi":
			w.Header().Add("X-Multi", "a")
			w.Header().Add("X-Multi", "b")
			w.Header().Add("Set-Cookie", "a=1")
			w.Header().Add("Set-Cookie", "b=2")
			io.WriteString(w, "multi")
		default:
			io.WriteString(w, "ok")
		}
	})
}

func TestResponseFraming(t *testing.T) {
	h := startRouter(t, nil)
	b := framingBackend(t)
	h.routeTo("frame", b.addr())
	big := strings.Repeat("0123456789", 100_000)
	tests := []struct {
		method, path string
		status       int
		body         string
		header       map[string]string
	}{
		{"GET", "/chunked", 200, "part0;part1;part2;", nil},
		{"GET", "/big", 200, big, map[string]string{"Content-Length": "1000000"}},
		{"GET", "/nocontent", 204, "", nil},
		{"GET", "/notmodified", 304, "", nil},
		{"HEAD", "/head", 200, "", map[string]string{"Content-Length": "5"}},
		{"GET", "/head", 200, "hello", nil},
		{"GET", "/eof", 200, "until the end", nil},
		{"GET", "/multi", 200, "multi", map[string]string{"X-Multi": "a,b", "Set-Cookie": "a=1,b=2"}},
	}
	h.modes(t, func(t *testing.T, scheme string) {
		for _, tt := range tests {
			t.Run(tt.method+tt.path, func(t *testing.T) {
				req, _ := http.NewRequest(tt.method, scheme+"://frame.test"+tt.path, nil)
				res, err := h.client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if res.StatusCode != tt.status || string(body) != tt.body {
					t.Fatalf("got %d %.60q, want %d %.60q", res.StatusCode, body, tt.status, tt.body)
				}
				for k, v := range tt.header {
					if got := strings.Join(res.Header.Values(k), ","); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
			})
		}
	})
}

// TestRawHTTP1 sends hand-written requests to the plain HTTP listener:
// pipelining, HTTP/1.0, 100-continue and Connection: close, which the fast
// path serves or hands to net/http.
func TestRawHTTP1(t *testing.T) {
	h := startRouter(t, nil)
	b := newBackend(t, "raw", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/slow" {
			time.Sleep(200 * time.Millisecond)
		}
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, body)
	})
	h.routeTo("raw", b.addr())

	tests := []struct {
		name   string
		send   []string // written one after another, 50 ms apart
		bodies []string // the response bodies expected, in order
		closed bool     // the router closes the connection afterwards
		slow   bool     // served by net/http rather than the fast path
	}{
		{"pipelined", []string{"GET /a HTTP/1.1\r\nHost: raw.test\r\n\r\nGET /b HTTP/1.1\r\nHost: raw.test\r\n\r\n"},
			[]string{`GET /a ""`, `GET /b ""`}, false, false},
		// The second request arrives while the first is at the backend.
		{"pipelined while served", []string{"GET /slow HTTP/1.1\r\nHost: raw.test\r\n\r\n", "GET /b HTTP/1.1\r\nHost: raw.test\r\n\r\n"},
			[]string{`GET /slow ""`, `GET /b ""`}, false, false},
		{"keep-alive", []string{"GET /a HTTP/1.1\r\nHost: raw.test\r\n\r\n", "POST /b HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 3\r\n\r\nxyz"},
			[]string{`GET /a ""`, `POST /b "xyz"`}, false, false},
		{"close", []string{"GET /c HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n"}, []string{`GET /c ""`}, true, false},
		{"http/1.0", []string{"GET /old HTTP/1.0\r\nHost: raw.test\r\n\r\n"}, []string{`GET /old ""`}, true, true},
		{"100-continue", []string{"POST /e HTTP/1.1\r\nHost: raw.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", "hi"},
			[]string{`POST /e "hi"`}, false, true},
		{"chunked body", []string{"POST /ch HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"},
			[]string{`POST /ch "ab"`}, false, true},
		{"big head", []string{"GET /big HTTP/1.1\r\nHost: raw.test\r\nCookie: " + strings.Repeat("c", 6000) + "\r\n\r\n"},
			[]string{`GET /big ""`}, false, true},
		{"split head", []string{"GET /s HTTP/1.1\r\nHo", "st: raw.test\r\n", "\r\n"}, []string{`GET /s ""`}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", h.addrs.HTTP)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			handoffs := float64(h.r.metrics.handoffs.value())
			c.SetDeadline(time.Now().Add(10 * time.Second))
			go func() {
				for i, s := range tt.send {
					if i > 0 {
						time.Sleep(50 * time.Millisecond)
					}
					io.WriteString(c, s)
				}
			}()
			br := bufio.NewReader(c)
			for _, want := range tt.bodies {
				res, err := http.ReadResponse(br, nil)
				for err == nil && res.StatusCode == http.StatusContinue {
					res, err = http.ReadResponse(br, nil)
				}
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(res.Body)
				if string(body) != want {
					t.Fatalf("body %q, want %q", body, want)
				}
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err = br.ReadByte()
			gotClosed := err == io.EOF
			if gotClosed != tt.closed {
				t.Fatalf("connection closed = %v (%v), want %v", gotClosed, err, tt.closed)
			}
			if got := float64(h.r.metrics.handoffs.value()) - handoffs; got != map[bool]float64{false: 0, true: 1}[tt.slow] {
				t.Fatalf("%v handoffs to net/http, want slow=%v", got, tt.slow)
			}
		})
	}
}

// TestLingeringBackendClose: a backend that half-closes an idle keep-alive
// connection and then reads and drops what comes, without a reset (a
// lingering close), must not hold the next request sent on it: the router
// sees the close it was sent while the connection sat in its pool.
func TestLingeringBackendClose(t *testing.T) {
	h := startRouter(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 64)
	t.Cleanup(func() {
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
			go func() {
				br := bufio.NewReader(c)
				for {
					c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
					head, err := peekHead(br, 64<<10)
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						c.SetReadDeadline(time.Time{})
						c.(*net.TCPConn).CloseWrite()
						io.Copy(io.Discard, br)
						return
					}
					if err != nil {
						return
					}
					br.Discard(len(head))
					io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Backend: linger\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	h.routeTo("linger", ln.Addr().String())
	h.modes(t, func(t *testing.T, scheme string) {
		time.Sleep(400 * time.Millisecond) // the pooled connections half-close
		done := make(chan error, 1)
		go func() {
			r, err := h.get("http://linger.test/", nil)
			if err == nil && (r.status != 200 || r.body != "ok") {
				err = fmt.Errorf("got %d %q", r.status, r.body)
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a request on a connection the backend half-closed is still unanswered after 10s")
		}
	})
}

// TestStalePooledConnection: a backend that closes idle keep-alive
// connections must not cause errors for the next requests, with or
// without a body.
func TestStalePooledConnection(t *testing.T) {
	h := startRouter(t, nil)
	closed := make(chan struct{}, 100)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", "idle")
		fmt.Fprintf(w, "%s %q", r.Method, body)
	}))
	srv.Config.IdleTimeout = 50 * time.Millisecond
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	h.routeTo("idle", srv.Listener.Addr().String())
	h.modes(t, func(t *testing.T, scheme string) {
		for _, method := range []string{"GET", "POST", "GET", "POST"} {
			// Wait until the backend has closed the router's idle connection.
			select {
			case <-closed:
			case <-time.After(15 * time.Second):
				t.Fatal("the backend did not close its idle connection")
			}
			for len(closed) > 0 {
				<-closed
			}
			var body io.Reader
			want := method + ` ""`
			if method == "POST" {
				body = strings.NewReader("data")
				want = `POST "data"`
			}
			req, _ := http.NewRequest(method, scheme+"://idle.test/", body)
			res, err := h.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(got) != want {
				t.Fatalf("%s after the backend closed the pooled connection: %d %q", method, res.StatusCode, got)
			}
		}
	})
}

// TestEarlyResponse: a backend that answers before it has read the whole
// request body (a body too big, a request refused) and closes has its
// answer relayed, as nginx relays it, not a 502; on the fast path, over
// TLS, on the net/http path, over h2, and with Expect: 100-continue. The body is
// bigger than the sockets' buffers, so the router's write of it fails.
func TestEarlyResponse(t *testing.T) {
	h := startRouter(t, nil)
	addr := tcpServer(t, func(c net.Conn) { // closed with the body unread: a reset
		if _, err := peekHead(bufio.NewReader(c), 64<<10); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nX-Backend: early\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntoo big")
	})
	h.routeTo("early", addr)
	const size = 64 << 20
	h.modes(t, func(t *testing.T, scheme string) {
		for _, expect := range []bool{false, true} {
			req, err := http.NewRequest("POST", scheme+"://early.test/upload", io.LimitReader(zeros{}, size))
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = size
			if expect {
				req.Header.Set("Expect", "100-continue")
			}
			res, err := h.client().Do(req)
			if err != nil {
				t.Fatalf("expect %v: %v", expect, err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 413 || string(b) != "too big" || res.Header.Get("X-Backend") != "early" {
				t.Fatalf("expect %v: %d %q (X-Backend %q), want the backend's 413", expect, res.StatusCode, b, res.Header.Get("X-Backend"))
			}
		}
	})
	// And over h2: the stream is answered, then reset with NO_ERROR.
	hc := h2NewClient(t, h)
	for _, expect := range []bool{false, true} {
		req, err := http.NewRequest("POST", "https://early.test/upload", io.LimitReader(zeros{}, size))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		if expect {
			req.Header.Set("Expect", "100-continue")
		}
		res, b, err := hc.do(req)
		if err != nil {
			t.Fatalf("h2, expect %v: %v", expect, err)
		}
		if res.StatusCode != 413 || string(b) != "too big" || res.Header.Get("X-Backend") != "early" {
			t.Fatalf("h2, expect %v: %d %q (X-Backend %q), want the backend's 413", expect, res.StatusCode, b, res.Header.Get("X-Backend"))
		}
	}
	// The router still serves.
	h.routeTo("after", newBackend(t, "after", nil).addr())
	h.expectBackend("http://after.test/", "after")
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
