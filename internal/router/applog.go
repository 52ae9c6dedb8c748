package router

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// AppLogger takes the lines the router writes into an app's log
// (Config.AppLog); *logaggclient.Shipper is one. Log must not block.
type AppLogger interface {
	Log(api.LogMessage)
}

// routerError is a request the router ended itself, not the app's
// answer, as Heroku's router names it in the app's log (at=error
// code=H13 desc="Connection closed without response" ...).
type routerError struct {
	at, code, desc string
}

var (
	errNoWeb         = &routerError{"error", "H14", "No web processes running"}
	errNoResponse    = &routerError{"error", "H13", "Connection closed without response"}
	errBadResponse   = &routerError{"error", "H17", "Poorly formatted HTTP response"}
	errClientGone    = &routerError{"warning", "H27", "Client Request Interrupted"}
	errClientStalled = &routerError{"warning", "H28", "Client Connection Idle"}
)

// The router's own answers that are about the backend.
const (
	msgBackendFailed  = "the backend failed to answer"
	msgHostVanished   = "the backend's host stopped answering after it got the request"
	msgMalformed      = "the backend sent a malformed response"
	msgSwitched       = "the backend switched protocols without being asked"
	msgBodyStalled    = "the request body stalled: send it without long pauses"
	msgUpgradeNeeds11 = "protocol upgrades need HTTP/1.1"
)

// routerErrorFor is what an error the router answered a routed request
// with (status and message) is in the app's log; nil for answers that are
// the client's own doing and say so (404, 413).
func routerErrorFor(status int, msg string) *routerError {
	switch {
	case status == http.StatusServiceUnavailable:
		return errNoWeb
	case status == http.StatusRequestTimeout:
		return errClientStalled
	case msg == msgMalformed || msg == msgSwitched:
		return errBadResponse
	case status == http.StatusBadGateway:
		return errNoResponse
	}
	return nil
}

// appLogLimit bounds the lines one router writes into app logs a second:
// an app with no web process under a flood of requests must not flood its
// log, nor cost the router a line each.
const appLogLimit = 100

// appLog writes routerError lines into apps' logs (Config.AppLog).
type appLog struct {
	to    AppLogger
	jobID string
	// second and count limit the lines to appLogLimit a second.
	second atomic.Int64
	count  atomic.Int64
}

// errorLine is what one request that ended in a routerError was.
type errorLine struct {
	err                                *routerError
	method, path, host, requestID, fwd string
	proto                              string
	service                            time.Duration
	status                             int
}

// log writes l into the log of the app whose route e is, if e is an app's
// route and the second's lines are not used up.
func (a *appLog) log(e *routeEntry, l errorLine) {
	if a == nil || l.err == nil {
		return
	}
	app, ok := strings.CutPrefix(e.route.ParentRef, "controller/apps/")
	if !ok || !api.ValidLogAppID(app) {
		return
	}
	now := time.Now()
	if sec := now.Unix(); a.second.Load() != sec {
		a.second.Store(sec)
		a.count.Store(0)
	}
	if a.count.Add(1) > appLogLimit {
		return
	}
	a.to.Log(api.LogMessage{
		AppID: app, JobID: a.jobID, ProcessType: "router", Source: "router", Stream: api.LogStdout,
		Timestamp: now, Msg: l.format(),
	})
}

// format is l as Heroku's router writes it.
func (l errorLine) format() string {
	var b strings.Builder
	b.Grow(256)
	b.WriteString("at=")
	b.WriteString(l.err.at)
	b.WriteString(" code=")
	b.WriteString(l.err.code)
	b.WriteString(` desc="`)
	b.WriteString(l.err.desc)
	b.WriteString(`" method=`)
	b.WriteString(logToken(l.method, 16))
	b.WriteString(` path="`)
	b.WriteString(strings.ReplaceAll(logToken(l.path, 1024), `"`, "%22"))
	b.WriteString(`" host=`)
	b.WriteString(logToken(l.host, 256))
	if l.requestID != "" && validRequestID(l.requestID) {
		b.WriteString(" request_id=")
		b.WriteString(l.requestID)
	}
	b.WriteString(` fwd="`)
	b.WriteString(l.fwd)
	b.WriteString(`" service=`)
	b.WriteString(strconv.FormatInt(l.service.Milliseconds(), 10))
	b.WriteString("ms status=")
	b.WriteString(strconv.Itoa(l.status))
	b.WriteString(" protocol=")
	b.WriteString(l.proto)
	return b.String()
}

// logToken is s cut to max bytes, with bytes that are not printable ASCII
// or are spaces as '?': the client chose them, and the line is split on
// spaces.
func logToken(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] <= ' ' || b[j] >= 0x7f {
					b[j] = '?'
				}
			}
			return string(b)
		}
	}
	return s
}
