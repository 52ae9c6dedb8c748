package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// BenchmarkProxy measures one keep-alive request through the router to a
// 2-byte backend, over the fast path (plain and TLS), over the net/http
// path (forced by a Connection option) and over h2. The client writes raw requests so
// it costs little.
//
//	go test -run - -bench Proxy -benchmem -cpuprofile cpu.out ./internal/router
func BenchmarkProxy(b *testing.B) {
	// A raw backend, so allocations counted are the router's (and the
	// client's response parsing).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go rawBackend(c)
		}
	}()
	disc := NewMemDiscoverer()
	disc.Register("bench-web", ln.Addr().String())
	r, err := New(Config{
		HTTPAddr:    "127.0.0.1:0",
		HTTPSAddr:   "127.0.0.1:0",
		DefaultCert: keyPair(b, "bench.test"),
		Routes:      []api.Route{{ID: "bench", Type: api.RouteHTTP, Domain: "bench.test", Service: "bench-web"}},
		Discoverer:  disc,
		CookieKey:   make([]byte, 32),
	}, logging.Discard())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	const fast = "GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
	for _, bc := range []struct {
		name, req string
		tls       bool
	}{
		{"fast", fast, false},
		{"fast-tls", fast, true},
		{"nethttp", "GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\nConnection: X-Opt\r\n\r\n", false},
		{"h2", "", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.name == "h2" {
				benchH2(b, r.Addrs().HTTPS)
				return
			}
			var c net.Conn
			var err error
			if bc.tls {
				c, err = tls.Dial("tcp", r.Addrs().HTTPS, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			} else {
				c, err = net.Dial("tcp", r.Addrs().HTTP)
			}
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			req := []byte(bc.req)
			roundTrip := func() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				head, err := peekHead(br, 64<<10)
				if err != nil {
					b.Fatal(err)
				}
				var resp fastResp
				if !parseResponseHead(head, &resp) || resp.status != 200 || resp.contentLen != 2 {
					b.Fatalf("bad reply %q", head)
				}
				br.Discard(len(head) + 2)
			}
			measure(b, roundTrip)
		})
	}
}

// benchH2 measures requests one after another on one h2 connection (a
// request alone on its connection: the connection's reader serves it).
func benchH2(b *testing.B, addr string) {
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, bufio.NewReader(c))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	fields := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "bench.test"}, {Name: ":path", Value: "/"}, {Name: "user-agent", Value: "bench"}, {Name: "accept", Value: "*/*"}}
	id := uint32(1)
	roundTrip := func() {
		// Encoded for each request, as a client does (the encoder's
		// dynamic table is the connection's).
		hbuf.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			b.Fatal(err)
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				b.Fatal(err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.RSTStreamFrame:
				b.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
			case *http2.MetaHeadersFrame:
				if f.StreamID == id && f.PseudoValue("status") != "200" {
					b.Fatalf("status %s", f.PseudoValue("status"))
				}
				if f.StreamID == id && f.StreamEnded() {
					b.Fatal("no body")
				}
			case *http2.DataFrame:
				if f.StreamID == id && f.StreamEnded() {
					if n := len(f.Data()); n > 0 {
						fr.WriteWindowUpdate(0, uint32(n))
					}
					id += 2
					return
				}
			}
		}
	}
	measure(b, roundTrip)
}

// measure runs roundTrip 100 times untimed (the route is set up, the
// backend pool warm), then b.N times timed, reporting allocations.
func measure(b *testing.B, roundTrip func()) {
	for range 100 {
		roundTrip()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip()
	}
}

// rawBackend answers every request head on c with a fixed 2-byte reply.
func rawBackend(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	reply := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	for {
		head, err := peekHead(br, 64<<10)
		if err != nil {
			return
		}
		br.Discard(len(head))
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// BenchmarkParseRequestHead measures the fast path's request parser.
func BenchmarkParseRequestHead(b *testing.B) {
	head := []byte("GET /some/path?x=1 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: Mozilla/5.0\r\n" +
		"Accept: text/html\r\nAccept-Encoding: gzip\r\nCookie: a=b\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
	b.ReportAllocs()
	var req fastReq
	for range b.N {
		req = fastReq{head: head}
		if !parseRequestHead(&req) {
			b.Fatal("parse failed")
		}
	}
}
