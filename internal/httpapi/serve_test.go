package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// serveLimited runs ServeLimited on a loopback listener until the test
// ends and returns its address.
func serveLimited(t *testing.T, lim Limits, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ServeLimited(ctx, ln, Wrap(logging.Discard(), h), logging.Discard(), lim) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// closedByServer reads c until the server closes it (or safety passes,
// which fails the test) and returns what it read.
func closedByServer(t *testing.T, c net.Conn, what string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%s: the server kept the connection open: %v (read %q)", what, err, b)
	}
	return string(b)
}

// TestSlowClientsCutOff: a client that never finishes its headers, one
// whose body stops coming and one that stops reading the reply are each
// disconnected, while a normal client is served meanwhile.
func TestSlowClientsCutOff(t *testing.T) {
	wrote := make(chan error, 1)
	mux := http.NewServeMux()
	mux.Handle("POST /things", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		var in thing
		if err := DecodeJSON(r, &in); err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, in)
	}))
	mux.Handle("GET /flood", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		buf := make([]byte, 64<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				wrote <- err
				return nil
			}
		}
	}))
	addr := serveLimited(t, Limits{ReadHeaderTimeout: 300 * time.Millisecond, BodyIdleTimeout: 300 * time.Millisecond, WriteIdleTimeout: 300 * time.Millisecond}, mux)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	headers := dial()
	io.WriteString(headers, "POST /things HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	body := dial()
	io.WriteString(body, "POST /things HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
	reader := dial()
	io.WriteString(reader, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")

	c := &httpclient.Client{URL: "http://" + addr}
	var out thing
	if err := c.Do(context.Background(), "POST", "/things", thing{Name: "a"}, &out); err != nil || out.Name != "a" {
		t.Fatalf("normal client while slow ones wait: %v %+v", err, out)
	}
	if got := closedByServer(t, headers, "partial headers"); got != "" {
		t.Errorf("partial headers got %q, want the connection closed", got)
	}
	if got := closedByServer(t, body, "stalled body"); !strings.HasPrefix(got, "HTTP/1.1 408 ") {
		t.Errorf("stalled body got %q, want a 408 and the connection closed", got)
	}
	select {
	case err := <-wrote:
		if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
			t.Errorf("writing to a client that does not read: %v, want a timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a write to a client that does not read still blocks after 30s")
	}
}

// TestLimitsBoundIdlenessNotTime: a body that keeps coming, and an event
// stream after a request body, both last longer than the idle limits.
func TestLimitsBoundIdlenessNotTime(t *testing.T) {
	const idle = 400 * time.Millisecond
	mux := http.NewServeMux()
	mux.Handle("POST /upload", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d", n)
		return nil
	}))
	mux.Handle("POST /watch", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		var in thing
		if err := DecodeJSON(r, &in); err != nil {
			return err
		}
		s, err := NewSSE(w)
		if err != nil {
			return err
		}
		for i := range in.Count {
			time.Sleep(idle / 4)
			if err := s.Send("", "", i); err != nil {
				return nil
			}
		}
		return nil
	}))
	mux.Handle("POST /attach", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return err
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		// A session that is quiet for longer than the write limit,
		// relayed as attach relays a job's output.
		pr, pw := io.Pipe()
		go func() {
			for range 3 {
				time.Sleep(2 * idle)
				pw.Write([]byte("output\n"))
			}
			pw.Close()
		}()
		io.Copy(conn, pr)
		return nil
	}))
	addr := serveLimited(t, Limits{BodyIdleTimeout: idle, WriteIdleTimeout: idle}, mux)

	pr, pw := io.Pipe()
	go func() {
		for range 12 { // three idle periods in all
			time.Sleep(idle / 4)
			pw.Write([]byte("chunk"))
		}
		pw.Close()
	}()
	res, err := http.Post("http://"+addr+"/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "60" {
		t.Errorf("slow steady upload: %d %q, want 200 60", res.StatusCode, b)
	}

	res, err = http.Post("http://"+addr+"/watch", "application/json", strings.NewReader(`{"name":"w","count":12}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	events := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			events++
		}
	}
	if events != 12 {
		t.Errorf("event stream after a request body: %d events, want 12 (err %v)", events, sc.Err())
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /attach HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\nContent-Length: 0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, _ = io.ReadAll(c)
	if got := strings.Count(string(b), "output\n"); got != 3 {
		t.Errorf("a hijacked session quiet for longer than the write limit: %q, want 3 outputs", b)
	}
}

// TestMaxBody: bodies over the server's limit get 413 whether their length
// is announced or not; a handler raises the limit with SetMaxBody.
func TestMaxBody(t *testing.T) {
	mux := http.NewServeMux()
	read := func(w http.ResponseWriter, r *http.Request) error {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d", n)
		return nil
	}
	mux.Handle("POST /small", HandlerFunc(read))
	mux.Handle("POST /big", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if !SetMaxBody(r, -1) {
			return errors.New("SetMaxBody refused")
		}
		return read(w, r)
	}))
	addr := serveLimited(t, Limits{MaxBodyBytes: 1000}, mux)
	tests := []struct {
		name    string
		path    string
		body    func() io.Reader
		status  int
		wantErr api.ErrorCode
	}{
		{"within", "/small", func() io.Reader { return strings.NewReader(strings.Repeat("x", 1000)) }, 200, ""},
		{"announced", "/small", func() io.Reader { return strings.NewReader(strings.Repeat("x", 1001)) }, 413, api.CodeTooLarge},
		{"chunked", "/small", func() io.Reader { return io.MultiReader(strings.NewReader(strings.Repeat("x", 5000))) }, 413, api.CodeTooLarge},
		{"raised", "/big", func() io.Reader { return strings.NewReader(strings.Repeat("x", 5000)) }, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := http.Post("http://"+addr+tt.path, "application/octet-stream", tt.body())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.status || (tt.wantErr != "" && !strings.Contains(string(b), string(tt.wantErr))) {
				t.Fatalf("got %d %s, want %d %s", res.StatusCode, b, tt.status, tt.wantErr)
			}
		})
	}
}
