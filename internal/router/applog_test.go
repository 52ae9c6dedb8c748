package router

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// memAppLog keeps the lines the router writes into app logs.
type memAppLog struct {
	mu    sync.Mutex
	lines []api.LogMessage
}

func (m *memAppLog) Log(l api.LogMessage) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lines = append(m.lines, l)
}

// take returns the lines logged since the last take.
func (m *memAppLog) take() []api.LogMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.lines
	m.lines = nil
	return l
}

// await returns the lines logged since the last take once there are n,
// or those there are after 5 s; for n 0, those there are after 200 ms.
// (The router may log a request just after its answer reached the
// client.)
func (m *memAppLog) await(n int) []api.LogMessage {
	wait := 5 * time.Second
	if n == 0 {
		wait = 200 * time.Millisecond
	}
	for end := time.Now().Add(wait); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		m.mu.Lock()
		have := len(m.lines)
		m.mu.Unlock()
		if n > 0 && have >= n {
			break
		}
	}
	time.Sleep(20 * time.Millisecond) // one more would be too many
	return m.take()
}

// TestAppLogRouterErrors: a request to an app's route that the router
// answers with an error of its own puts one line in that app's log, as
// Heroku's router writes it, over HTTP/1.1 (fast and net/http paths) and
// h2; the app's own error answers, and routes that are not an app's, put
// none.
func TestAppLogRouterErrors(t *testing.T) {
	const app = "6f1c1f0e-8a4b-4c1e-9d2a-3b5c7d9e1f20"
	logs := &memAppLog{}
	h := startRouter(t, func(c *Config) { c.AppLog, c.JobID = logs, "host1-router" })
	hangUp := tcpServer(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		c.Close()
	})
	garbage := tcpServer(t, func(c net.Conn) {
		// The whole head is read: a close with bytes unread would
		// reset the connection before the answer is read.
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil || l == "\r\n" {
				break
			}
		}
		c.Write([]byte("NOT HTTP AT ALL\r\n\r\n"))
		c.Close()
	})
	own502 := newBackend(t, "own", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "the app's own", http.StatusBadGateway)
	})
	h.disc.Register("hangup-web", hangUp)
	h.disc.Register("garbage-web", garbage)
	h.disc.Register("own-web", own502.addr())
	ref := "controller/apps/" + app
	h.putRoute(api.Route{ID: "none", Domain: "none.test", Service: "none-web", ParentRef: ref})
	h.putRoute(api.Route{ID: "hangup", Domain: "hangup.test", Service: "hangup-web", ParentRef: ref})
	h.putRoute(api.Route{ID: "garbage", Domain: "garbage.test", Service: "garbage-web", ParentRef: ref})
	h.putRoute(api.Route{ID: "own", Domain: "own.test", Service: "own-web", ParentRef: ref})
	h.putRoute(api.Route{ID: "notapp", Domain: "notapp.test", Service: "none-web"})
	h.expectBackend("http://own.test/", "own")
	waitFor(t, "the routes", func() error {
		for _, host := range []string{"none", "hangup", "garbage", "notapp"} {
			r, err := h.get("http://"+host+".test/", nil)
			if err != nil {
				return err
			}
			if r.status == http.StatusNotFound {
				return fmt.Errorf("%s.test: not routed yet", host)
			}
		}
		return nil
	})
	logs.await(0)

	cases := []struct {
		host   string
		status int
		line   string // "" for none
	}{
		{"none", 503, `at=error code=H14 desc="No web processes running" method=GET path="/a/b\?q=1" host=none.test request_id={ID} fwd="127.0.0.1" service=\d+ms status=503 protocol={PROTO}`},
		{"hangup", 502, `at=error code=H13 desc="Connection closed without response" method=GET path="/a/b\?q=1" host=hangup.test request_id={ID} fwd="127.0.0.1" service=\d+ms status=502 protocol={PROTO}`},
		{"garbage", 502, `at=error code=H17 desc="Poorly formatted HTTP response" method=GET path="/a/b\?q=1" host=garbage.test request_id={ID} fwd="127.0.0.1" service=\d+ms status=502 protocol={PROTO}`},
		{"own", 502, ""},
		{"notapp", 503, ""},
	}
	check := func(t *testing.T, proto string, get func(url, id string) int) {
		for i, c := range cases {
			for _, id := range []string{"client-request-id-0001", ""} {
				if status := get("http://"+c.host+".test/a/b?q=1", id); status != c.status {
					t.Errorf("%s: status %d, want %d", c.host, status, c.status)
				}
				want := 1
				if c.line == "" {
					want = 0
				}
				got := logs.await(want)
				if c.line == "" {
					if len(got) != 0 {
						t.Errorf("%s: logged %+v, want nothing", c.host, got)
					}
					continue
				}
				if len(got) != 1 {
					t.Errorf("%s (case %d): %d lines logged, want 1: %+v", c.host, i, len(got), got)
					continue
				}
				wantID := regexp.QuoteMeta(id)
				if id == "" {
					wantID = "[0-9a-f]{32}"
					if c.host == "none" {
						// Never sent on: no request id was made.
						wantID = ""
					}
				}
				re := strings.Replace(strings.Replace(c.line, "{PROTO}", proto, 1), "{ID}", wantID, 1)
				if wantID == "" {
					re = strings.Replace(re, " request_id=", "", 1)
				}
				m := got[0]
				if !regexp.MustCompile("^" + re + "$").MatchString(m.Msg) {
					t.Errorf("%s: line\n%s\nwant\n%s", c.host, m.Msg, re)
				}
				if m.AppID != app || m.ProcessType != "router" || m.Source != "router" || m.JobID != "host1-router" || m.Stream != api.LogStdout || time.Since(m.Timestamp) > time.Minute {
					t.Errorf("%s: message %+v", c.host, m)
				}
			}
		}
	}
	h.modes(t, func(t *testing.T, scheme string) {
		check(t, scheme, func(url, id string) int {
			hdr := map[string]string{}
			if id != "" {
				hdr["X-Request-Id"] = id
			}
			r, err := h.get(url, hdr)
			if err != nil {
				t.Fatal(err)
			}
			return r.status
		})
	})
	t.Run("h2", func(t *testing.T) {
		hc := h2NewClient(t, h)
		check(t, "h2", func(url, id string) int {
			req := mustRequest(t, "GET", strings.Replace(url, "http://", "https://", 1))
			if id != "" {
				req.Header.Set("X-Request-Id", id)
			}
			res, _, err := hc.do(req)
			if err != nil {
				t.Fatal(err)
			}
			return res.StatusCode
		})
	})

	// What the client chose is quoted or replaced: the line stays one
	// line of space-separated fields.
	got := errorLine{err: errNoWeb, method: "GET", path: "/a \"b\"\n", host: "x\ty.test", fwd: "127.0.0.1", proto: "http", status: 503}.format()
	if want := `at=error code=H14 desc="No web processes running" method=GET path="/a?%22b%22?" host=x?y.test fwd="127.0.0.1" service=0ms status=503 protocol=http`; got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}

	// A flood is cut to appLogLimit lines a second (two seconds, when it
	// straddles one).
	e := h.r.table.Load().lookup("none.test", "/")
	h.r.applog.second.Store(0) // the lines above count for none
	for range 10 * appLogLimit {
		h.r.applog.log(e, errorLine{err: errNoWeb, method: "GET", path: "/", host: "none.test", proto: "http", status: 503})
	}
	if n := len(logs.take()); n > 2*appLogLimit || n < appLogLimit {
		t.Errorf("a flood of %d errors logged %d lines, want %d a second", 10*appLogLimit, n, appLogLimit)
	}
}
