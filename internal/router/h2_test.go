package router

// Outside-in tests of the HTTPS listener over HTTP/2 (ALPN "h2"): what an
// h2 client gets, and what the HTTP/1.1 backend behind the router sees.
// They do not depend on which h2 server implementation the router uses.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flynnrebuilt/flynn/api"
)

// h2Client is an HTTP client that speaks only HTTP/2 to the router's
// HTTPS listener, whatever the URL's host, and counts its connections.
type h2Client struct {
	t     *testing.T
	c     *http.Client
	tr    *http.Transport
	dials atomic.Int64
}

func h2NewClient(t *testing.T, h *harness) *h2Client {
	t.Helper()
	hc := &h2Client{t: t}
	var p http.Protocols
	p.SetHTTP2(true) // no fallback to HTTP/1.1
	hc.tr = &http.Transport{
		Protocols:             &p,
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}},
		ExpectContinueTimeout: 5 * time.Second,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			hc.dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", h.addrs.HTTPS)
		},
	}
	hc.c = &http.Client{
		Transport:     hc.tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       60 * time.Second,
	}
	t.Cleanup(hc.tr.CloseIdleConnections)
	return hc
}

// do sends req, checks the response came over HTTP/2 and reads its body.
func (hc *h2Client) do(req *http.Request) (*http.Response, []byte, error) {
	hc.t.Helper()
	res, err := hc.c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer res.Body.Close()
	if res.ProtoMajor != 2 {
		hc.t.Errorf("%s %s: protocol %s, want HTTP/2", req.Method, req.URL, res.Proto)
	}
	body, err := io.ReadAll(res.Body)
	return res, body, err
}

// get is do of a GET of url, failing the test on a transport error.
func (hc *h2Client) get(url string) (*http.Response, []byte) {
	hc.t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		hc.t.Fatal(err)
	}
	res, body, err := hc.do(req)
	if err != nil {
		hc.t.Fatalf("GET %s: %v", url, err)
	}
	return res, body
}

// h2WaitStatus waits until a GET of url over h2 answers status.
func h2WaitStatus(t *testing.T, hc *h2Client, url string, status int) {
	t.Helper()
	waitFor(t, "GET "+url+" over h2 answers "+strconv.Itoa(status), func() error {
		req, _ := http.NewRequest("GET", url, nil)
		res, body, err := hc.do(req)
		if err != nil {
			return err
		}
		if res.StatusCode != status {
			return fmt.Errorf("status %d body %q", res.StatusCode, body)
		}
		return nil
	})
}

// h2Seen is what h2EchoBackend saw of a request; it answers with it in JSON.
type h2Seen struct {
	Backend          string
	Method           string
	RequestURI       string
	Host             string
	Proto            string
	Header           http.Header
	Cookies          map[string]string
	ContentLength    int64
	TransferEncoding []string
	BodyLen          int64
	BodySHA          string
	BodyErr          string
}

func h2EchoBackend(t *testing.T, name string) *testBackend {
	return newBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		s := h2Seen{Backend: name, Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Proto: r.Proto,
			Header: r.Header, Cookies: map[string]string{}, ContentLength: r.ContentLength,
			TransferEncoding: r.TransferEncoding}
		for _, c := range r.Cookies() {
			s.Cookies[c.Name] = c.Value
		}
		sum := sha256.New()
		n, err := io.Copy(sum, r.Body)
		s.BodyLen, s.BodySHA = n, hex.EncodeToString(sum.Sum(nil))
		if err != nil {
			s.BodyErr = err.Error()
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&s)
	})
}

// seen decodes an h2EchoBackend answer.
func (hc *h2Client) seen(req *http.Request) h2Seen {
	hc.t.Helper()
	res, body, err := hc.do(req)
	if err != nil {
		hc.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	if res.StatusCode != 200 {
		hc.t.Fatalf("%s %s: status %d %q", req.Method, req.URL, res.StatusCode, body)
	}
	var s h2Seen
	if err := json.Unmarshal(body, &s); err != nil {
		hc.t.Fatalf("%s %s: backend answer %q: %v", req.Method, req.URL, body, err)
	}
	return s
}

func h2Random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func h2SHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// 1. Request targets: the query string and percent-encoding reach the
// backend untouched, and path-prefix routes match encoded paths.
func TestH2RequestURI(t *testing.T) {
	h := startRouter(t, nil)
	root := h2EchoBackend(t, "root")
	apiB := h2EchoBackend(t, "api")
	h.disc.Register("root-web", root.addr())
	h.disc.Register("api-web", apiB.addr())
	h.putRoute(api.Route{ID: "root", Domain: "path.test", Service: "root-web"})
	h.putRoute(api.Route{ID: "api", Domain: "path.test", Path: "/api/", Service: "api-web"})
	h.expectBackend("http://path.test/api/", "api")
	h.expectBackend("http://path.test/", "root")
	hc := h2NewClient(t, h)

	for _, tt := range []struct{ uri, backend string }{
		{"/a%20b/c?x=1&y=%2F", "root"},
		{"/api/x%2Fy", "api"},
		{"/api/x%2Fy?q=%41%42&r", "api"},
		{"/api", "api"},
		{"/apix", "root"},
		{"/%E2%82%AC/%25?%E2%82%AC", "root"},
	} {
		t.Run(tt.uri, func(t *testing.T) {
			req, err := http.NewRequest("GET", "https://path.test"+tt.uri, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := hc.seen(req)
			if s.Backend != tt.backend {
				t.Errorf("answered by %q, want %q", s.Backend, tt.backend)
			}
			if s.RequestURI != tt.uri {
				t.Errorf("backend saw request target %q, want %q", s.RequestURI, tt.uri)
			}
			if s.Method != "GET" || s.Proto != "HTTP/1.1" {
				t.Errorf("backend saw %s %s", s.Method, s.Proto)
			}
		})
	}

	// A path with percent-escapes is routed the same way over HTTP/1.1
	// and HTTP/2 (today both match route prefixes against the decoded
	// path: the fast path hands such requests to net/http), so an app
	// cannot be reached past its route over one protocol only.
	t.Run("same route as HTTP/1.1", func(t *testing.T) {
		var differ []string
		for _, uri := range []string{"/api%2Fx", "/%61pi/x", "/api/%2E%2E/x"} {
			r1, err := h.get("http://path.test"+uri, nil)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "https://path.test"+uri, nil)
			s := hc.seen(req)
			if s.RequestURI != uri {
				t.Errorf("%s: backend saw request target %q", uri, s.RequestURI)
			}
			if s.Backend != r1.backend {
				differ = append(differ, fmt.Sprintf("%s: HTTP/1.1 → %s, h2 → %s", uri, r1.backend, s.Backend))
			}
		}
		if len(differ) > 0 {
			t.Errorf("h2 routes percent-encoded paths unlike HTTP/1.1: %s", strings.Join(differ, "; "))
		}
	})
}

// 2. Request headers: end-to-end ones forwarded, cookie fields joined,
// forwarding headers set.
func TestH2RequestHeaders(t *testing.T) {
	h := startRouter(t, nil)
	b := h2EchoBackend(t, "hdr")
	h.routeTo("hdr", b.addr())
	hc := h2NewClient(t, h)
	_, port, _ := net.SplitHostPort(h.addrs.HTTPS)
	validID := "abcdefghij-0123456789_client"

	t.Run("forwarded", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://hdr.test/x?q=1", nil)
		req.Header.Set("X-Custom", "custom value")
		req.Header["X-Multi"] = []string{"one", "two"}
		// Two cookie header fields: HTTP/2 clients may also split one
		// into a field per cookie (RFC 9113 §8.2.3).
		req.Header["Cookie"] = []string{"a=1", "b=2"}
		req.Header.Set("X-Forwarded-Proto", "evil")
		req.Header.Set("User-Agent", "h2-test/1")
		s := hc.seen(req)
		if g := s.Header.Get("X-Custom"); g != "custom value" {
			t.Errorf("X-Custom = %q", g)
		}
		if g := s.Header.Values("X-Multi"); !slices.Equal(g, []string{"one", "two"}) && !slices.Equal(g, []string{"one, two"}) {
			t.Errorf("X-Multi = %q, want both values in order", g)
		}
		if g := s.Header.Get("User-Agent"); g != "h2-test/1" {
			t.Errorf("User-Agent = %q", g)
		}
		// An HTTP/1.1 request has one Cookie header: the h2 fields joined
		// with "; " (RFC 9113 §8.2.3).
		if g := s.Header.Values("Cookie"); len(g) != 1 || g[0] != "a=1; b=2" {
			t.Errorf("backend saw Cookie headers %q, want one \"a=1; b=2\"", g)
		}
		if s.Cookies["a"] != "1" || s.Cookies["b"] != "2" || len(s.Cookies) != 2 {
			t.Errorf("backend's r.Cookies() = %v, want a=1 and b=2", s.Cookies)
		}
		if g := s.Header.Values("X-Forwarded-Proto"); !slices.Equal(g, []string{"https"}) {
			t.Errorf("X-Forwarded-Proto = %q, want [https]", g)
		}
		if g := s.Header.Get("X-Forwarded-Port"); g != port {
			t.Errorf("X-Forwarded-Port = %q, want %q", g, port)
		}
		if g := s.Header.Get("X-Forwarded-For"); g != "127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", g)
		}
		if id := s.Header.Get("X-Request-Id"); !validRequestID(id) {
			t.Errorf("X-Request-Id = %q, want a new valid id", id)
		}
		if ms, err := strconv.ParseInt(s.Header.Get("X-Request-Start"), 10, 64); err != nil || ms <= 0 {
			t.Errorf("X-Request-Start = %q", s.Header.Get("X-Request-Start"))
		}
		if s.Host != "hdr.test" {
			t.Errorf("Host = %q, want the :authority hdr.test", s.Host)
		}
		if s.RequestURI != "/x?q=1" || s.Proto != "HTTP/1.1" {
			t.Errorf("backend saw %q %s", s.RequestURI, s.Proto)
		}
		for _, k := range []string{"Connection", "Keep-Alive", "Te", "Transfer-Encoding", "Upgrade"} {
			if v, ok := s.Header[k]; ok {
				t.Errorf("backend saw hop-by-hop %s: %q", k, v)
			}
		}
	})

	t.Run("client request id and prior forwarded-for", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://hdr.test/", nil)
		req.Header.Set("X-Request-Id", validID)
		req.Header.Set("X-Forwarded-For", "10.1.2.3")
		s := hc.seen(req)
		if g := s.Header.Values("X-Request-Id"); !slices.Equal(g, []string{validID}) {
			t.Errorf("X-Request-Id = %q, want the client's %q", g, validID)
		}
		if g := s.Header.Get("X-Forwarded-For"); g != "10.1.2.3, 127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q, want \"10.1.2.3, 127.0.0.1\"", g)
		}
	})

	t.Run("invalid request id replaced", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://hdr.test/", nil)
		req.Header.Set("X-Request-Id", "short")
		s := hc.seen(req)
		if g := s.Header.Values("X-Request-Id"); len(g) != 1 || g[0] == "short" || !validRequestID(g[0]) {
			t.Errorf("X-Request-Id = %q, want one new valid id", g)
		}
	})

	if n := hc.dials.Load(); n != 1 {
		t.Errorf("the client made %d connections, want 1", n)
	}

	t.Run("authority with port", func(t *testing.T) {
		// Another host:port: the client opens another connection.
		req, _ := http.NewRequest("GET", "https://HDR.test:8443/", nil)
		s := hc.seen(req)
		if !strings.EqualFold(s.Host, "hdr.test:8443") {
			t.Errorf("Host = %q, want the :authority hdr.test:8443", s.Host)
		}
	})
}

// 3. Request bodies: known length, streamed of unknown length, empty.
func TestH2RequestBodies(t *testing.T) {
	h := startRouter(t, nil)
	b := h2EchoBackend(t, "body")
	h.routeTo("body", b.addr())
	hc := h2NewClient(t, h)

	t.Run("content-length", func(t *testing.T) {
		data := h2Random(t, 1<<20)
		req, _ := http.NewRequest("POST", "https://body.test/upload", bytes.NewReader(data))
		s := hc.seen(req)
		if s.Method != "POST" || s.BodyLen != int64(len(data)) || s.BodySHA != h2SHA(data) || s.BodyErr != "" {
			t.Errorf("backend got %s %d bytes (sha %s, err %q), want POST %d bytes (sha %s)",
				s.Method, s.BodyLen, s.BodySHA, s.BodyErr, len(data), h2SHA(data))
		}
		if s.ContentLength != int64(len(data)) {
			t.Errorf("backend's ContentLength = %d, want %d", s.ContentLength, len(data))
		}
	})

	t.Run("streamed", func(t *testing.T) {
		data := h2Random(t, 3<<20+12345)
		pr, pw := io.Pipe()
		go func() {
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 50_000)
				if _, err := pw.Write(rest[:n]); err != nil {
					return
				}
				rest = rest[n:]
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "https://body.test/stream", pr)
		req.ContentLength = -1
		s := hc.seen(req)
		if s.BodyLen != int64(len(data)) || s.BodySHA != h2SHA(data) || s.BodyErr != "" {
			t.Errorf("backend got %d bytes (sha %s, err %q), want %d bytes (sha %s)",
				s.BodyLen, s.BodySHA, s.BodyErr, len(data), h2SHA(data))
		}
		if s.ContentLength != -1 && s.ContentLength != int64(len(data)) {
			t.Errorf("backend's ContentLength = %d, want -1 or %d", s.ContentLength, len(data))
		}
		if s.ContentLength == -1 && !slices.Equal(s.TransferEncoding, []string{"chunked"}) {
			t.Errorf("backend's TransferEncoding = %q for a body of unknown length", s.TransferEncoding)
		}
	})

	t.Run("empty put", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", "https://body.test/empty", nil)
		s := hc.seen(req)
		if s.Method != "PUT" || s.BodyLen != 0 || s.ContentLength != 0 || len(s.TransferEncoding) != 0 || s.BodyErr != "" {
			t.Errorf("backend got %s, %d bytes, ContentLength %d, TransferEncoding %q, err %q; want PUT with an empty body",
				s.Method, s.BodyLen, s.ContentLength, s.TransferEncoding, s.BodyErr)
		}
	})
	if n := hc.dials.Load(); n != 1 {
		t.Errorf("the client made %d connections, want 1", n)
	}
}

// 4. Large and chunked responses.
func TestH2LargeAndChunkedResponses(t *testing.T) {
	h := startRouter(t, nil)
	big := h2Random(t, 8<<20)
	var chunks [][]byte
	for range 5 {
		chunks = append(chunks, h2Random(t, 40_000))
	}
	all := bytes.Join(chunks, nil)
	b := newBackend(t, "resp", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			w.Write(big)
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			for _, c := range chunks {
				w.Write(c)
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", h2SHA(all))
		default:
			io.WriteString(w, "resp")
		}
	})
	h.routeTo("resp", b.addr())
	hc := h2NewClient(t, h)

	t.Run("8 MiB", func(t *testing.T) {
		before := b.hits.Load()
		res, body := hc.get("https://resp.test/big")
		if res.StatusCode != 200 || len(body) != len(big) || h2SHA(body) != h2SHA(big) {
			t.Errorf("got %d, %d bytes (sha %s), want 200, %d bytes (sha %s)", res.StatusCode, len(body), h2SHA(body), len(big), h2SHA(big))
		}
		if res.ContentLength != int64(len(big)) {
			t.Errorf("ContentLength = %d, want %d", res.ContentLength, len(big))
		}
		if n := b.hits.Load() - before; n != 1 {
			t.Errorf("backend got %d requests, want 1", n)
		}
	})

	t.Run("chunked with trailer", func(t *testing.T) {
		res, body := hc.get("https://resp.test/chunked")
		if res.StatusCode != 200 || !bytes.Equal(body, all) {
			t.Errorf("got %d, %d bytes (sha %s), want 200, %d bytes (sha %s)", res.StatusCode, len(body), h2SHA(body), len(all), h2SHA(all))
		}
		if te := res.Header.Values("Transfer-Encoding"); len(te) != 0 {
			t.Errorf("h2 response has Transfer-Encoding %q", te)
		}
		if res.Header.Get("X-Backend") != "resp" {
			t.Errorf("X-Backend = %q", res.Header.Get("X-Backend"))
		}
		// The backend's trailers end the stream as a HEADERS frame.
		if got := res.Trailer.Get("X-Sum"); got != h2SHA(all) {
			t.Errorf("trailer X-Sum = %q, want %q (trailers %v)", got, h2SHA(all), res.Trailer)
		}
	})
}

// 5. Response heads: repeated headers, statuses, HEAD.
func TestH2ResponseHeaders(t *testing.T) {
	h := startRouter(t, nil)
	var lastMethod atomic.Value
	b := newBackend(t, "head", func(w http.ResponseWriter, r *http.Request) {
		lastMethod.Store(r.Method)
		switch r.URL.Path {
		case "/cookies":
			w.Header().Add("Set-Cookie", "a=1; Path=/")
			w.Header().Add("Set-Cookie", "b=2; HttpOnly")
			w.Header().Add("X-Multi", "x")
			w.Header().Add("X-Multi", "y")
			io.WriteString(w, "cookies")
		case "/created":
			w.Header().Set("Location", "/things/1")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "created")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, "backend says no")
		case "/head":
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "5")
			if r.Method != "HEAD" {
				io.WriteString(w, "hello")
			}
		default:
			io.WriteString(w, "head")
		}
	})
	h.routeTo("head", b.addr())
	hc := h2NewClient(t, h)

	t.Run("set-cookie", func(t *testing.T) {
		res, body := hc.get("https://head.test/cookies")
		if res.StatusCode != 200 || string(body) != "cookies" {
			t.Fatalf("got %d %q", res.StatusCode, body)
		}
		if g := res.Header.Values("Set-Cookie"); !slices.Equal(g, []string{"a=1; Path=/", "b=2; HttpOnly"}) {
			t.Errorf("Set-Cookie = %q, want two separate values", g)
		}
		if len(res.Cookies()) != 2 {
			t.Errorf("cookies = %v", res.Cookies())
		}
		if g := res.Header.Values("X-Multi"); !slices.Equal(g, []string{"x", "y"}) {
			t.Errorf("X-Multi = %q", g)
		}
	})

	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{
		{"/created", 201, "created"},
		{"/nocontent", 204, ""},
		{"/notmodified", 304, ""},
		{"/missing", 404, "backend says no"},
	} {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			before := b.hits.Load()
			res, body := hc.get("https://head.test" + tt.path)
			if res.StatusCode != tt.status || string(body) != tt.body {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, body, tt.status, tt.body)
			}
			if res.Header.Get("X-Backend") != "head" {
				t.Errorf("the reply is not the backend's: X-Backend %q", res.Header.Get("X-Backend"))
			}
			if n := b.hits.Load() - before; n != 1 {
				t.Errorf("backend got %d requests, want 1", n)
			}
			switch tt.status {
			case 201:
				if res.Header.Get("Location") != "/things/1" {
					t.Errorf("Location = %q", res.Header.Get("Location"))
				}
			case 304:
				if res.Header.Get("ETag") != `"v1"` {
					t.Errorf("ETag = %q", res.Header.Get("ETag"))
				}
			}
		})
	}

	t.Run("HEAD", func(t *testing.T) {
		req, _ := http.NewRequest("HEAD", "https://head.test/head", nil)
		res, body, err := hc.do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 200 || len(body) != 0 {
			t.Errorf("got %d with %d body bytes, want 200 and none", res.StatusCode, len(body))
		}
		if res.Header.Get("Content-Length") != "5" && res.ContentLength != 5 {
			t.Errorf("Content-Length %q (ContentLength %d), want 5", res.Header.Get("Content-Length"), res.ContentLength)
		}
		if res.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("Content-Type = %q", res.Header.Get("Content-Type"))
		}
		if m, _ := lastMethod.Load().(string); m != "HEAD" {
			t.Errorf("backend saw %q, want HEAD", m)
		}
		// The connection is still in step after a HEAD.
		res, body = hc.get("https://head.test/head")
		if res.StatusCode != 200 || string(body) != "hello" {
			t.Errorf("GET after HEAD: %d %q", res.StatusCode, body)
		}
	})
	if n := hc.dials.Load(); n != 1 {
		t.Errorf("the client made %d connections, want 1", n)
	}
}

// 6. A streamed response is not held back by the router.
func TestH2StreamingResponse(t *testing.T) {
	h := startRouter(t, nil)
	gotA := make(chan struct{})
	var timedOut atomic.Bool
	b := newBackend(t, "stream", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			io.WriteString(w, "stream")
			return
		}
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		select {
		case <-gotA:
		case <-time.After(15 * time.Second):
			timedOut.Store(true)
		}
		io.WriteString(w, "b")
	})
	h.routeTo("stream", b.addr())
	hc := h2NewClient(t, h)

	req, _ := http.NewRequest("GET", "https://stream.test/stream", nil)
	res, err := hc.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.ProtoMajor != 2 || res.StatusCode != 200 {
		t.Fatalf("got %s %d", res.Proto, res.StatusCode)
	}
	var first [1]byte
	if _, err := io.ReadFull(res.Body, first[:]); err != nil {
		t.Fatal(err)
	}
	close(gotA)
	rest, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(first[:])+string(rest) != "ab" {
		t.Errorf("body %q, want \"ab\"", string(first[:])+string(rest))
	}
	if timedOut.Load() {
		t.Errorf("the client got the first byte only after the backend gave up waiting: the router buffered the stream")
	}
}

// 7. Fifty concurrent requests multiplexed over one connection.
func TestH2ConcurrentStreams(t *testing.T) {
	const n = 50
	h := startRouter(t, nil)
	var inflight, maxInflight atomic.Int64
	allIn := make(chan struct{})
	var allInOnce sync.Once
	var gaveUp atomic.Bool
	var waitStart sync.Once
	b := newBackend(t, "conc", func(w http.ResponseWriter, r *http.Request) {
		i := r.URL.Query().Get("i")
		if i == "" {
			io.WriteString(w, "conc")
			return
		}
		cur := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			m := maxInflight.Load()
			if cur <= m || maxInflight.CompareAndSwap(m, cur) {
				break
			}
		}
		if cur == n {
			allInOnce.Do(func() { close(allIn) })
		}
		// All n requests are in the backend at once unless the router
		// serializes them; wait for that (up to a generous deadline).
		waitStart.Do(func() {
			go func() {
				select {
				case <-allIn:
				case <-time.After(20 * time.Second):
					gaveUp.Store(true)
					allInOnce.Do(func() { close(allIn) })
				}
			}()
		})
		<-allIn
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintf(w, "reply %s", i)
	})
	h.routeTo("conc", b.addr())
	hc := h2NewClient(t, h)
	// One request first so that the connection exists before the burst.
	if res, body := hc.get("https://conc.test/"); res.StatusCode != 200 || string(body) != "conc" {
		t.Fatalf("warm-up: %d %q", res.StatusCode, body)
	}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "https://conc.test/c?i="+strconv.Itoa(i), nil)
			res, err := hc.c.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil {
				errs <- err
				return
			}
			if res.ProtoMajor != 2 || res.StatusCode != 200 || string(body) != "reply "+strconv.Itoa(i) {
				errs <- fmt.Errorf("request %d: %s %d %q", i, res.Proto, res.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if gaveUp.Load() {
		t.Errorf("the backend never had all %d requests at once (at most %d): the router serialized the streams", n, maxInflight.Load())
	}
	if d := hc.dials.Load(); d != 1 {
		t.Errorf("the client made %d connections, want 1", d)
	}
	if got := b.hits.Load(); got < n+1 {
		t.Errorf("backend got %d requests, want at least %d", got, n+1)
	}
}

// 8. A client's cancelled stream cancels the backend's request; the
// connection carries on.
func TestH2ClientCancel(t *testing.T) {
	h := startRouter(t, nil)
	entered := make(chan struct{}, 1)
	backendDone := make(chan struct{})
	b := newBackend(t, "cancel", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/block" {
			io.WriteString(w, "cancel")
			return
		}
		entered <- struct{}{}
		select {
		case <-r.Context().Done():
			close(backendDone)
		case <-time.After(30 * time.Second):
		}
	})
	h.routeTo("cancel", b.addr())
	hc := h2NewClient(t, h)
	if res, body := hc.get("https://cancel.test/"); res.StatusCode != 200 || string(body) != "cancel" {
		t.Fatalf("first request: %d %q", res.StatusCode, body)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://cancel.test/block", nil)
	done := make(chan error, 1)
	go func() {
		res, err := hc.c.Do(req)
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		done <- err
	}()
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the request did not reach the backend")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("cancelled request succeeded")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the cancelled request did not return")
	}
	select {
	case <-backendDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's request context was not cancelled after the client cancelled its stream")
	}

	res, body := hc.get("https://cancel.test/after")
	if res.StatusCode != 200 || string(body) != "cancel" {
		t.Errorf("request after the cancel: %d %q", res.StatusCode, body)
	}
	if d := hc.dials.Load(); d != 1 {
		t.Errorf("the client made %d connections, want 1 (the cancel must not cost the connection)", d)
	}
}

// 9. The router's own errors, and a backend failing mid-body.
func TestH2RouterErrors(t *testing.T) {
	h := startRouter(t, nil)
	var bodyHits atomic.Int64
	ok := h2EchoBackend(t, "ok")
	small := newBackend(t, "small", func(w http.ResponseWriter, r *http.Request) {
		bodyHits.Add(1)
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n, err)
	})
	cut := newBackend(t, "cut", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cut" {
			io.WriteString(w, "cut")
			return
		}
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Backend: cut\r\n\r\nonly ten b")
		buf.Flush()
		c.Close()
	})
	h.disc.Register("ok-web", ok.addr())
	h.disc.Register("small-web", small.addr())
	h.disc.Register("cut-web", cut.addr())
	h.putRoute(api.Route{ID: "ok", Domain: "ok.test", Service: "ok-web"})
	h.putRoute(api.Route{ID: "small", Domain: "small.test", Service: "small-web", MaxBodyBytes: 100})
	h.putRoute(api.Route{ID: "cut", Domain: "cut.test", Service: "cut-web"})
	h.putRoute(api.Route{ID: "empty", Domain: "empty.test", Service: "nobody-web"})
	h.expectBackend("http://ok.test/", "ok")
	h.expectBackend("http://small.test/", "small")
	h.expectBackend("http://cut.test/", "cut")
	hc := h2NewClient(t, h)
	h2WaitStatus(t, hc, "https://empty.test/", 503)

	jsonError := func(t *testing.T, body []byte, code api.ErrorCode) {
		t.Helper()
		var e api.Error
		if err := json.Unmarshal(body, &e); err != nil || e.Code != code {
			t.Errorf("error body %q, want a JSON error with code %q (%v)", body, code, err)
		}
	}

	t.Run("unknown host", func(t *testing.T) {
		res, body := hc.get("https://nowhere.test/x")
		if res.StatusCode != 404 {
			t.Errorf("status %d, want 404", res.StatusCode)
		}
		jsonError(t, body, api.CodeNotFound)
	})

	t.Run("no backends", func(t *testing.T) {
		res, body := hc.get("https://empty.test/")
		if res.StatusCode != 503 {
			t.Errorf("status %d, want 503", res.StatusCode)
		}
		jsonError(t, body, api.CodeUnavailable)
	})

	t.Run("body over the route's limit", func(t *testing.T) {
		before := bodyHits.Load()
		req, _ := http.NewRequest("POST", "https://small.test/", bytes.NewReader(make([]byte, 1000)))
		res, body, err := hc.do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 413 {
			t.Errorf("status %d %q, want 413", res.StatusCode, body)
		}
		jsonError(t, body, api.CodeTooLarge)
		if bodyHits.Load() != before {
			t.Errorf("the backend saw a request whose announced body is over the limit")
		}
	})

	t.Run("streamed body over the route's limit", func(t *testing.T) {
		req, _ := http.NewRequest("POST", "https://small.test/", io.MultiReader(bytes.NewReader(make([]byte, 5000))))
		req.ContentLength = -1
		res, body, err := hc.do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 413 {
			t.Errorf("status %d %q, want 413", res.StatusCode, body)
		}
	})

	t.Run("within the limit", func(t *testing.T) {
		req, _ := http.NewRequest("POST", "https://small.test/", bytes.NewReader(make([]byte, 100)))
		res, body, err := hc.do(req)
		if err != nil || res.StatusCode != 200 || string(body) != "100 <nil>" {
			t.Errorf("100 bytes on a route taking 100: %v %v %q", err, res, body)
		}
	})

	t.Run("requests after a 413", func(t *testing.T) {
		// Whether the router keeps the connection after a 413 is not
		// asserted (it sends "Connection: close" with it, which
		// net/http's h2 server turns into a GOAWAY); the next request
		// must work either way.
		if res, body := hc.get("https://small.test/warm"); res.StatusCode != 200 {
			t.Fatalf("GET: %d %q", res.StatusCode, body)
		}
		d0 := hc.dials.Load()
		req, _ := http.NewRequest("POST", "https://small.test/", bytes.NewReader(make([]byte, 1000)))
		if res, body, err := hc.do(req); err != nil || res.StatusCode != 413 {
			t.Fatalf("oversized POST: %v %v %q", err, res, body)
		}
		for i := range 3 {
			res, body := hc.get("https://small.test/again")
			if res.StatusCode != 200 || string(body) != "0 <nil>" {
				t.Errorf("GET %d after a 413: %d %q", i, res.StatusCode, body)
			}
		}
		t.Logf("connections dialed after the 413: %d", hc.dials.Load()-d0)
	})

	t.Run("backend cut mid-body", func(t *testing.T) {
		dialsBefore := hc.dials.Load()
		before := cut.hits.Load()
		req, _ := http.NewRequest("GET", "https://cut.test/cut", nil)
		res, err := hc.c.Do(req)
		if err != nil {
			// A reset before the head is sent is acceptable too.
			t.Logf("request failed before the response head: %v", err)
		} else {
			if res.ProtoMajor != 2 {
				t.Errorf("protocol %s", res.Proto)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err == nil {
				t.Errorf("client read a clean %d-byte body %q from a backend that sent 10 of 100 bytes", len(body), body)
			}
		}
		if n := cut.hits.Load() - before; n != 1 {
			t.Errorf("backend got %d requests, want 1 (no retry)", n)
		}
		// Only the stream is reset: the connection still serves.
		res2, body := hc.get("https://cut.test/after-cut")
		if res2.StatusCode != 200 || string(body) != "cut" {
			t.Errorf("request after the cut: %d %q", res2.StatusCode, body)
		}
		if d := hc.dials.Load() - dialsBefore; d != 1 {
			t.Errorf("the client dialed %d connections to cut.test, want 1 (a cut stream must not cost the connection)", d)
		}
	})
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// 10. Sticky sessions over h2.
func TestH2Sticky(t *testing.T) {
	h := startRouter(t, nil)
	b1 := newBackend(t, "one", nil)
	b2 := newBackend(t, "two", nil)
	h.disc.Register("sticky-web", b1.addr())
	h.disc.Register("sticky-web", b2.addr())
	h.putRoute(api.Route{ID: "sticky", Domain: "sticky.test", Service: "sticky-web", Sticky: true})
	h.expectBackend("http://sticky.test/", "one")
	hc := h2NewClient(t, h)

	get := func(cookies ...string) (backend, setCookie string) {
		t.Helper()
		req := mustRequest(t, "GET", "https://sticky.test/")
		if len(cookies) > 0 {
			req.Header["Cookie"] = cookies
		}
		res, body, err := hc.do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 200 || res.Header.Get("X-Backend") != string(body) {
			t.Fatalf("got %d %q from %q", res.StatusCode, body, res.Header.Get("X-Backend"))
		}
		return string(body), res.Header.Get("Set-Cookie")
	}
	waitFor(t, "both backends answer over h2", func() error {
		seen := map[string]bool{}
		for range 40 {
			b, _ := get()
			seen[b] = true
		}
		if !seen["one"] || !seen["two"] {
			return fmt.Errorf("saw %v", seen)
		}
		return nil
	})
	for _, first := range []string{"one", "two"} {
		var cookie string
		waitFor(t, "a cookie for "+first, func() error {
			b, sc := get()
			if b != first {
				return fmt.Errorf("got %s", b)
			}
			cookie = sc
			return nil
		})
		if !strings.HasPrefix(cookie, stickyCookie+"=") {
			t.Fatalf("Set-Cookie = %q, want the sticky cookie", cookie)
		}
		cookie = strings.SplitN(cookie, ";", 2)[0]
		for i := range 20 {
			// Alone, and as one of several h2 cookie fields.
			cookies := []string{cookie}
			if i%2 == 1 {
				cookies = []string{"other=1", cookie, "more=2"}
			}
			b, sc := get(cookies...)
			if b != first || sc != "" {
				t.Fatalf("request %d with the %s cookie (%q) went to %s (Set-Cookie %q)", i, first, cookies, b, sc)
			}
		}
	}
}

// 11. Expect: 100-continue.
func TestH2ExpectContinue(t *testing.T) {
	h := startRouter(t, nil)
	var smallHits atomic.Int64
	b := h2EchoBackend(t, "expect")
	small := newBackend(t, "small", func(w http.ResponseWriter, r *http.Request) {
		smallHits.Add(1)
		io.Copy(io.Discard, r.Body)
	})
	h.disc.Register("expect-web", b.addr())
	h.disc.Register("small-web", small.addr())
	h.putRoute(api.Route{ID: "expect", Domain: "expect.test", Service: "expect-web"})
	h.putRoute(api.Route{ID: "small", Domain: "small.test", Service: "small-web", MaxBodyBytes: 10})
	h.expectBackend("http://expect.test/", "expect")
	h.expectBackend("http://small.test/", "small")
	hc := h2NewClient(t, h)

	post := func(url string, body []byte) (*http.Request, *atomic.Bool) {
		var got100 atomic.Bool
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got100Continue: func() { got100.Store(true) },
		}))
		return req, &got100
	}

	t.Run("accepted", func(t *testing.T) {
		data := h2Random(t, 200_000)
		req, got100 := post("https://expect.test/upload", data)
		s := hc.seen(req)
		if s.BodyLen != int64(len(data)) || s.BodySHA != h2SHA(data) || s.BodyErr != "" {
			t.Errorf("backend got %d bytes (sha %s, err %q), want %d (sha %s)", s.BodyLen, s.BodySHA, s.BodyErr, len(data), h2SHA(data))
		}
		if !got100.Load() {
			t.Errorf("the client got no 100 Continue")
		}
		t.Logf("backend saw Expect %q", s.Header.Values("Expect"))
	})

	t.Run("refused", func(t *testing.T) {
		before := smallHits.Load()
		req, got100 := post("https://small.test/", make([]byte, 1000))
		res, body, err := hc.do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 413 {
			t.Errorf("status %d %q, want 413", res.StatusCode, body)
		}
		if got100.Load() {
			t.Errorf("the router asked for a body it refuses (100 Continue before a 413)")
		}
		if smallHits.Load() != before {
			t.Errorf("the backend saw the refused request")
		}
	})
}

// h2RawBackend is an HTTP/1.1 backend written by hand, so that it records
// request lines a real server would refuse; it answers "ok" to whatever
// it gets, as a lax app server could.
type h2RawBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	lines []string // request lines, with " complete" or " incomplete" for the body
}

func newH2RawBackend(t *testing.T) *h2RawBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &h2RawBackend{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				b.serve(c)
			}()
		}
	}()
	return b
}

func (b *h2RawBackend) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		cl := 0
		chunked := false
		for {
			hl, err := br.ReadString('\n')
			if err != nil {
				b.record(line + " incomplete")
				return
			}
			hl = strings.TrimRight(hl, "\r\n")
			if hl == "" {
				break
			}
			k, v, _ := strings.Cut(hl, ":")
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "content-length":
				cl, _ = strconv.Atoi(strings.TrimSpace(v))
			case "transfer-encoding":
				chunked = true
			}
		}
		var err2 error
		if chunked {
			_, err2 = io.Copy(io.Discard, httputil.NewChunkedReader(br))
		} else {
			_, err2 = io.CopyN(io.Discard, br, int64(cl))
		}
		if err2 != nil {
			b.record(line + " incomplete")
			return
		}
		b.record(line + " complete")
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Backend: raw\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

func (b *h2RawBackend) record(s string) {
	b.mu.Lock()
	b.lines = append(b.lines, s)
	b.mu.Unlock()
}

func (b *h2RawBackend) seen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.lines)
}

// h2Raw is a hand-driven HTTP/2 client connection.
type h2Raw struct {
	t    *testing.T
	c    *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

// h2Dial opens an h2 connection and does the SETTINGS exchange.
func h2Dial(t *testing.T, h *harness) *h2Raw {
	t.Helper()
	c, err := tls.Dial("tcp", h.addrs.HTTPS, &tls.Config{ServerName: "raw.test", InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	r := &h2Raw{t: t, c: c}
	r.enc = hpack.NewEncoder(&r.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	r.fr = http2.NewFramer(c, c)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var serverSettings, ack bool
	r.read("the SETTINGS exchange", func(f http2.Frame) bool {
		if sf, ok := f.(*http2.SettingsFrame); ok {
			if sf.IsAck() {
				ack = true
			} else {
				serverSettings = true
			}
		}
		return serverSettings && ack
	})
	return r
}

// read reads frames until match returns true, acknowledging the server's
// SETTINGS, and fails the test after a generous deadline or on a GOAWAY
// or connection end it did not ask for.
func (r *h2Raw) read(what string, match func(http2.Frame) bool) http2.Frame {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("waiting for %s: %v", what, err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			if err := r.fr.WriteSettingsAck(); err != nil {
				r.t.Fatal(err)
			}
		}
		if match(f) {
			return f
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			r.t.Fatalf("waiting for %s: GOAWAY %v %q", what, ga.ErrCode, ga.DebugData())
		}
	}
}

// headers sends a HEADERS frame of the fields, name-value pairs, as given
// (no validation or lower-casing).
func (r *h2Raw) headers(stream uint32, endStream bool, fields ...string) {
	r.t.Helper()
	r.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: r.hbuf.Bytes(),
		EndStream: endStream, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// h2RawResult is how the router answered a stream: a reset, or a
// response.
type h2RawResult struct {
	reset  bool
	code   http2.ErrCode
	status string
	body   string
}

func (x h2RawResult) String() string {
	if x.reset {
		return "RST_STREAM " + x.code.String()
	}
	return fmt.Sprintf("%s %q", x.status, x.body)
}

// result reads the router's answer to stream: a reset, or a response
// head and its body up to END_STREAM (or a reset mid-body).
func (r *h2Raw) result(stream uint32) h2RawResult {
	r.t.Helper()
	var res h2RawResult
	var body bytes.Buffer
	r.read(fmt.Sprintf("the answer to stream %d", stream), func(f http2.Frame) bool {
		if f.Header().StreamID != stream {
			return false
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			res.reset, res.code = true, f.ErrCode
			return true
		case *http2.MetaHeadersFrame:
			if res.status == "" {
				res.status = f.PseudoValue("status")
				if strings.HasPrefix(res.status, "1") {
					res.status = ""
					return false
				}
			}
			return f.StreamEnded()
		case *http2.DataFrame:
			body.Write(f.Data())
			if len(f.Data()) > 0 {
				r.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
				r.fr.WriteWindowUpdate(stream, uint32(len(f.Data())))
			}
			return f.StreamEnded()
		}
		return false
	})
	res.body = body.String()
	return res
}

// get sends a valid GET on stream and expects the backend's "ok".
func (r *h2Raw) get(stream uint32, path string) {
	r.t.Helper()
	r.headers(stream, true, ":method", "GET", ":scheme", "https", ":authority", "raw.test", ":path", path)
	if res := r.result(stream); res.reset || res.status != "200" || res.body != "ok" {
		r.t.Fatalf("valid GET %s on stream %d: %v, want 200 \"ok\"", path, stream, res)
	}
}

// 12. Frame-level robustness.
func TestH2RawFrames(t *testing.T) {
	h := startRouter(t, nil)
	b := newH2RawBackend(t)
	h.routeTo("raw", b.ln.Addr().String())

	valid := func(path string) []string {
		return []string{":method", "GET", ":scheme", "https", ":authority", "raw.test", ":path", path}
	}
	malformed := []struct {
		name   string
		fields []string
	}{
		{"uppercase name", append(valid("/bad-upper"), "X-Upper", "1")},
		{"connection header", append(valid("/bad-connection"), "connection", "keep-alive")},
		{"keep-alive header", append(valid("/bad-keepalive"), "keep-alive", "timeout=5")},
		{"transfer-encoding header", append(valid("/bad-te"), "transfer-encoding", "chunked")},
		{"te other than trailers", append(valid("/bad-te2"), "te", "gzip")},
		{"missing path", []string{":method", "GET", ":scheme", "https", ":authority", "raw.test"}},
		{"empty path", valid("")},
		{"missing method", []string{":scheme", "https", ":authority", "raw.test", ":path", "/bad-nomethod"}},
		{"unknown pseudo-header", append(valid("/bad-pseudo"), ":foo", "bar")},
		{"pseudo-header after a field", []string{":method", "GET", ":scheme", "https", "x-a", "1", ":authority", "raw.test", ":path", "/bad-order"}},
		{"duplicate path", append(valid("/bad-dup"), ":path", "/bad-dup2")},
		{"response pseudo-header", append(valid("/bad-status"), ":status", "200")},
	}
	for _, tt := range malformed {
		t.Run(tt.name, func(t *testing.T) {
			r := h2Dial(t, h)
			before := len(b.seen())
			r.headers(1, true, tt.fields...)
			res := r.result(1)
			t.Logf("answered %v", res)
			if !(res.reset && res.code == http2.ErrCodeProtocol) && res.status != "400" {
				t.Errorf("malformed request answered %v, want RST_STREAM PROTOCOL_ERROR or a 400", res)
			}
			r.get(3, "/after")
			if got := b.seen()[before:]; !slices.Equal(got, []string{"GET /after HTTP/1.1 complete"}) {
				t.Errorf("backend saw %q, want only the valid request", got)
			}
		})
	}

	t.Run("space in path", func(t *testing.T) {
		r := h2Dial(t, h)
		before := len(b.seen())
		r.headers(1, true, valid("/a b")...)
		res := r.result(1)
		r.get(3, "/after-space")
		var broken []string
		for _, l := range b.seen()[before:] {
			l = strings.TrimSuffix(strings.TrimSuffix(l, " complete"), " incomplete")
			if p := strings.Split(l, " "); len(p) != 3 || p[2] != "HTTP/1.1" {
				broken = append(broken, l)
			}
		}
		if len(broken) > 0 {
			t.Errorf(":path \"/a b\" (answered %v) reached the backend as the request line(s) %q", res, broken)
		}
		if !res.reset && res.status != "400" {
			t.Errorf(":path \"/a b\" answered %v, want RST_STREAM or a 400", res)
		}
	})

	t.Run("content-length larger than the data", func(t *testing.T) {
		r := h2Dial(t, h)
		before := len(b.seen())
		r.headers(1, false, ":method", "POST", ":scheme", "https", ":authority", "raw.test", ":path", "/cl-long", "content-length", "10")
		r.fr.WriteData(1, true, []byte("hello"))
		res := r.result(1)
		if !res.reset && !strings.HasPrefix(res.status, "4") && !strings.HasPrefix(res.status, "5") {
			t.Errorf("a body shorter than its content-length answered %v, want a reset or an error", res)
		}
		r.get(3, "/after-cl")
		for _, l := range b.seen()[before:] {
			if strings.Contains(l, "/cl-long") && strings.HasSuffix(l, " complete") {
				t.Errorf("backend got a complete request from a body shorter than its content-length: %q", l)
			}
		}
	})

	t.Run("content-length smaller than the data", func(t *testing.T) {
		r := h2Dial(t, h)
		before := len(b.seen())
		r.headers(1, false, ":method", "POST", ":scheme", "https", ":authority", "raw.test", ":path", "/cl-short", "content-length", "2")
		r.fr.WriteData(1, true, []byte("hello"))
		res := r.result(1)
		if !res.reset && !strings.HasPrefix(res.status, "4") && !strings.HasPrefix(res.status, "5") {
			t.Errorf("a body longer than its content-length answered %v, want a reset or an error", res)
		}
		r.get(3, "/after-cl")
		for _, l := range b.seen()[before:] {
			if strings.Contains(l, "/cl-short") && strings.HasSuffix(l, " complete") {
				t.Errorf("backend got a complete request from a body longer than its content-length: %q", l)
			}
		}
	})

	t.Run("ping", func(t *testing.T) {
		r := h2Dial(t, h)
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		if err := r.fr.WritePing(false, data); err != nil {
			t.Fatal(err)
		}
		r.read("the PING ack", func(f http2.Frame) bool {
			p, ok := f.(*http2.PingFrame)
			if ok && !p.IsAck() {
				t.Errorf("the router pinged back instead of acknowledging")
			}
			if ok && p.IsAck() && p.Data != data {
				t.Errorf("PING ack carries %v, want %v", p.Data, data)
			}
			return ok && p.IsAck()
		})
		r.get(1, "/after-ping")
	})

	t.Run("settings", func(t *testing.T) {
		r := h2Dial(t, h)
		if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 15}); err != nil {
			t.Fatal(err)
		}
		r.read("the SETTINGS ack", func(f http2.Frame) bool {
			s, ok := f.(*http2.SettingsFrame)
			return ok && s.IsAck()
		})
		r.get(1, "/after-settings")
	})

	t.Run("even stream id", func(t *testing.T) {
		r := h2Dial(t, h)
		before := len(b.seen())
		r.headers(2, true, valid("/even")...)
		r.c.SetReadDeadline(time.Now().Add(15 * time.Second))
		var goaway *http2.GoAwayFrame
		for goaway == nil {
			f, err := r.fr.ReadFrame()
			if err != nil {
				t.Fatalf("connection ended (%v) without a GOAWAY", err)
			}
			goaway, _ = f.(*http2.GoAwayFrame)
			if f.Header().StreamID == 2 {
				if _, ok := f.(*http2.RSTStreamFrame); !ok {
					t.Errorf("the router answered on the even stream: %T", f)
				}
			}
		}
		if goaway.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", goaway.ErrCode)
		}
		if got := b.seen()[before:]; len(got) != 0 {
			t.Errorf("backend saw %q", got)
		}
	})
}

// TestH2FlowControl: a client that grants a small window gets the response
// in pieces no bigger than it granted, the whole of it as it grants more,
// and its PINGs answered while the response waits for window (the request
// came alone, so the connection's reader served it and had to hand the
// reading on).
func TestH2FlowControl(t *testing.T) {
	h := startRouter(t, nil)
	body := h2Random(t, 50000)
	b := newBackend(t, "flow", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(body)
			return
		}
		io.WriteString(w, "ok")
	})
	h.disc.Register("flow-web", b.addr())
	h.putRoute(api.Route{ID: "flow", Domain: "raw.test", Service: "flow-web"})
	h.expectBackend("http://raw.test/", "flow")

	r := h2Dial(t, h)
	const window = 100
	if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window}); err != nil {
		t.Fatal(err)
	}
	r.read("the SETTINGS ack", func(f http2.Frame) bool {
		sf, ok := f.(*http2.SettingsFrame)
		return ok && sf.IsAck()
	})
	r.headers(1, true, ":method", "GET", ":scheme", "https", ":authority", "raw.test", ":path", "/big")
	var got bytes.Buffer
	streamWin, connWin := int64(window), int64(65535)
	pinged := false
	for done := false; !done; {
		f := r.read("the response to stream 1", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.DataFrame, *http2.RSTStreamFrame:
				return f.Header().StreamID == 1
			case *http2.MetaHeadersFrame:
				return f.StreamID == 1 && f.StreamEnded()
			case *http2.PingFrame:
				return f.IsAck()
			}
			return false
		})
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			t.Fatalf("stream 1 reset: %v", f.ErrCode)
		case *http2.MetaHeadersFrame:
			t.Fatalf("stream 1 ended by HEADERS after %d bytes", got.Len())
		case *http2.PingFrame:
			if f.Data != [8]byte{'f', 'l', 'o', 'w'} {
				t.Errorf("PING ack with %q", f.Data)
			}
			pinged = false
			// Now grant a little more.
			r.fr.WriteWindowUpdate(1, 1000)
			r.fr.WriteWindowUpdate(0, 1000)
			streamWin += 1000
			connWin += 1000
		case *http2.DataFrame:
			n := int64(len(f.Data()))
			if n > streamWin || n > connWin {
				t.Fatalf("DATA of %d bytes with %d stream and %d connection window left", n, streamWin, connWin)
			}
			streamWin -= n
			connWin -= n
			got.Write(f.Data())
			done = f.StreamEnded()
			if !done && streamWin == 0 && !pinged {
				// The response waits for window: the reader must still
				// answer.
				r.fr.WritePing(false, [8]byte{'f', 'l', 'o', 'w'})
				pinged = true
			}
		}
	}
	if !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("got %d bytes (sha %s), want %d (sha %s)", got.Len(), h2SHA(got.Bytes()), len(body), h2SHA(body))
	}
	// The connection still serves.
	r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
	r.get(3, "/after")
}

// TestH2BodyBuffer: a request body whose reader never quite catches up
// keeps a buffer the size of what is unread, not of all that came.
func TestH2BodyBuffer(t *testing.T) {
	var b h2Body
	b.cond.L = &b.mu
	chunk := make([]byte, 16<<10)
	p := make([]byte, 16<<10)
	b.put(chunk[:8<<10], false) // a backlog the reader never drains
	for i := 0; i < 1000; i++ {
		b.put(chunk, false)
		if n, err := b.read(p, time.Second); n != len(p) || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
	}
	if c := cap(b.buf); c > 256<<10 {
		t.Errorf("the buffer grew to %d bytes for 24 KiB unread at most", c)
	}
	b.put(nil, true)
	n, _ := b.read(p, time.Second)
	if _, err := b.read(p, time.Second); n != 8<<10 || err != io.EOF {
		t.Errorf("the end: read %d, then %v", n, err)
	}
}

// TestH2StalledBody: a request body that stops coming gets a 408 once the
// route's body timeout passes, and the connection goes on serving.
func TestH2StalledBody(t *testing.T) {
	h := startRouter(t, func(c *Config) { c.BodyIdleTimeout = 300 * time.Millisecond })
	got := make(chan int, 4)
	b := newBackend(t, "stall", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got <- int(n)
		io.WriteString(w, "ok")
	})
	h.disc.Register("stall-web", b.addr())
	h.putRoute(api.Route{ID: "stall", Domain: "raw.test", Service: "stall-web"})
	h.expectBackend("http://raw.test/", "stall")
	for len(got) > 0 {
		<-got
	}

	r := h2Dial(t, h)
	r.headers(1, false, ":method", "POST", ":scheme", "https", ":authority", "raw.test", ":path", "/up", "content-length", "10")
	if err := r.fr.WriteData(1, false, []byte("12345")); err != nil {
		t.Fatal(err)
	}
	if res := r.result(1); res.reset || res.status != "408" {
		t.Fatalf("stalled body answered %v, want 408", res)
	}
	r.get(3, "/after")
	// The backend got the start of the body and was cut off, or nothing.
	select {
	case n := <-got:
		if n >= 10 {
			t.Errorf("the backend read %d bytes of a body that stalled at 5", n)
		}
	case <-time.After(5 * time.Second):
	}
}

// TestH2LargeHeaders: a request header block bigger than a frame (the
// client sends CONTINUATION frames) and a big response head (up to the 16
// KiB the router reads of a backend's head) go through whole.
func TestH2LargeHeaders(t *testing.T) {
	h := startRouter(t, nil)
	big := strings.Repeat("v", 12<<10)
	b := newBackend(t, "hdrs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", big)
		w.Header().Set("X-Got", strconv.Itoa(len(r.Header.Get("X-Big-Request"))))
		io.WriteString(w, "ok")
	})
	h.routeTo("hdrs", b.addr())
	hc := h2NewClient(t, h)
	req, _ := http.NewRequest("GET", "https://hdrs.test/", nil)
	req.Header.Set("X-Big-Request", strings.Repeat("r", 30<<10))
	res, body, err := hc.do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || string(body) != "ok" || res.Header.Get("X-Big") != big || res.Header.Get("X-Got") != strconv.Itoa(30<<10) {
		t.Errorf("got %d %q, X-Big of %d bytes, X-Got %q", res.StatusCode, body, len(res.Header.Get("X-Big")), res.Header.Get("X-Got"))
	}
}

// A bug that panics while a request is served ends only its connection,
// whichever goroutine reads it then: the connection's goroutines all end
// and the router goes on serving.
func TestH2PanicEndsConnection(t *testing.T) {
	h := startRouter(t, nil)
	b := newH2RawBackend(t)
	h.routeTo("raw", b.ln.Addr().String())
	hook := func(path string) {
		switch path {
		case "/panic":
			panic("test: a bug serving " + path)
		case "/panic-late":
			// Past h2InlineMax: another goroutine reads the connection
			// by then.
			time.Sleep(20 * h2InlineMax)
			panic("test: a bug serving " + path)
		}
	}
	testHookServeStream.Store(&hook)
	t.Cleanup(func() { testHookServeStream.Store(nil) })
	readers := func() int {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		return bytes.Count(buf, []byte("(*h2Conn).runReader"))
	}
	before := readers()
	for _, path := range []string{"/panic", "/panic-late"} {
		r := h2Dial(t, h)
		r.get(1, "/")
		r.headers(3, true, ":method", "GET", ":scheme", "https", ":authority", "raw.test", ":path", path)
		r.c.SetReadDeadline(time.Now().Add(15 * time.Second))
		for {
			if _, err := r.fr.ReadFrame(); err != nil {
				if isTimeout(err) {
					t.Fatalf("%s: the connection stayed open after the panic", path)
				}
				break
			}
		}
		deadline := time.Now().Add(15 * time.Second)
		for readers() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%s: %d of the connection's readers still run after it ended, want none\n%s", path, readers()-before, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(10 * time.Millisecond)
		}
		after := h2Dial(t, h)
		after.get(1, "/after"+path)
		after.c.Close()
	}
}
