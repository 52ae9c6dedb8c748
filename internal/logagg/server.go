package logagg

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Limits on what hosts ship (see also api.LogMaxMsgBytes).
const (
	// MaxLineBytes is the longest accepted JSON line on POST /log: a
	// message of api.LogMaxMsgBytes, JSON-escaped, plus the other fields.
	MaxLineBytes = 7*api.LogMaxMsgBytes + 4096
	// ingestBatch is how many decoded lines are stored at once.
	ingestBatch = 512
)

// KeepAlive is how often a follow stream with no new lines sends an SSE
// comment, so proxies and clients see the connection is alive.
var KeepAlive = 15 * time.Second

// Config configures a log aggregator.
type Config struct {
	// Listen is the TCP address to serve HTTP on, e.g. ":5381".
	Listen string
	// BufferLines is how many lines each app keeps (DefaultBufferLines
	// when 0).
	BufferLines int
	// Keys, when not empty, are the cluster keys every request but the
	// status check needs. Peers are asked with the first.
	Keys []string
	// Peers, when set, finds the other instances: a starting aggregator
	// copies the buffers of the first that answers before it listens.
	Peers Peers
	// FillTimeout bounds copying one peer's buffers (DefaultFillTimeout
	// when 0).
	FillTimeout time.Duration
}

// Server is the log aggregator's HTTP API over a Store.
type Server struct {
	store *Store
	auth  *httpapi.KeyAuth
	log   *slog.Logger
}

// NewServer returns a log aggregator with its own store.
func NewServer(cfg Config, log *slog.Logger) *Server {
	s := &Server{store: NewStore(cfg.BufferLines), log: log}
	if len(cfg.Keys) > 0 {
		s.auth = httpapi.NewKeyAuth(cfg.Keys...)
	}
	return s
}

// Store returns the server's buffers.
func (s *Server) Store() *Store { return s.store }

// Run serves a log aggregator on cfg.Listen until ctx is done. With
// cfg.Peers it first fills its buffers from a live peer, and listens only
// then: it is registered in discoverd once it accepts connections, so
// neither hosts nor readers reach it before it holds the history.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.BufferLines < 0 {
		return fmt.Errorf("logaggregator: buffer size %d is negative", cfg.BufferLines)
	}
	s := NewServer(cfg, log)
	if cfg.Peers != nil {
		key := ""
		if len(cfg.Keys) > 0 {
			key = cfg.Keys[0]
		}
		timeout := cfg.FillTimeout
		if timeout <= 0 {
			timeout = DefaultFillTimeout
		}
		if err := s.Fill(ctx, cfg.Peers, key, timeout); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("logaggregator: %w", err)
	}
	log.Info("logaggregator listening", "addr", ln.Addr().String(), "buffer_lines", s.store.size, "auth", len(cfg.Keys) > 0)
	return httpapi.Serve(ctx, ln, s.Handler(), log)
}

// Handler returns the server's HTTP handler, with the standard middleware.
func (s *Server) Handler() http.Handler {
	var h http.Handler = s.routes()
	if s.auth != nil {
		h = s.auth.Require(func(r *http.Request) bool { return r.URL.Path == "/.well-known/status" }, h)
	}
	return httpapi.Wrap(s.log, h)
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/status", httpapi.HandlerFunc(s.status))
	mux.Handle("POST /log", httpapi.HandlerFunc(s.ingest))
	mux.Handle("GET /log/{app}", httpapi.HandlerFunc(s.read))
	mux.Handle("GET /snapshot", httpapi.HandlerFunc(s.snapshot))
	mux.Handle("/", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return api.NotFound("no route for %s %s: use POST /log or GET /log/{app}", r.Method, r.URL.Path)
	}))
	return mux
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	s.store.mu.RLock()
	apps := len(s.store.apps)
	s.store.mu.RUnlock()
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"status": "healthy", "apps": apps})
}

// ingest reads newline-delimited JSON messages as they arrive and stores
// them in batches. A bad line ends the request with a 400 naming the line;
// the lines before it are kept.
//
// A shipper (api.LogShipperHeader) numbers its lines (api.LogShipped):
// each is stored once, in the shipper's order (Store.AddShipped), and the
// reply tells the shipper which line to send next. When this instance
// lacks lines before the ones sent that the shipper still holds, it stores
// nothing past the gap and asks for them.
func (s *Server) ingest(w http.ResponseWriter, r *http.Request) error {
	// Lines are stored as they are read, each bounded by MaxLineBytes:
	// a batch of any size is fine.
	httpapi.SetMaxBody(r, -1)
	shipper := r.Header.Get(api.LogShipperHeader)
	var oldest uint64
	if shipper != "" {
		if !api.ValidLogShipperID(shipper) {
			return api.Validation("", "%s %q must be 1-%d letters, digits, '-' or '_'", api.LogShipperHeader, shipper, api.LogMaxShipperIDBytes)
		}
		if v := r.Header.Get(api.LogOldestHeader); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return api.Validation("", "%s %q must be a whole number", api.LogOldestHeader, v)
			}
			oldest = n
		}
	}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	batch := make([]api.LogShipped, 0, ingestBatch)
	accepted, line := 0, 0
	var next uint64
	// flush stores the batch; false when it stopped at a gap.
	flush := func() bool {
		n, nx := s.store.AddShipped(shipper, oldest, batch)
		accepted += n
		next = nx
		whole := n == len(batch)
		batch = batch[:0]
		return whole
	}
	reply := func() error {
		res := api.LogIngestResult{Accepted: accepted}
		if shipper != "" {
			res.Next = next
		}
		return httpapi.WriteJSON(w, http.StatusOK, res)
	}
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		var m api.LogShipped
		if err := json.Unmarshal(b, &m); err != nil {
			if !flush() {
				return reply()
			}
			return lineError(line, accepted, api.Validation("", "invalid JSON: %v", err))
		}
		if err := m.Validate(); err != nil {
			if !flush() {
				return reply()
			}
			return lineError(line, accepted, err)
		}
		if m.Timestamp.IsZero() {
			m.Timestamp = time.Now().UTC()
		}
		if m.Source == "" {
			m.Source = api.LogSourceApp
		}
		if m.HostID == "" {
			m.HostID = hostOfJob(m.JobID)
		}
		batch = append(batch, m)
		if len(batch) == ingestBatch && !flush() {
			return reply()
		}
	}
	if !flush() {
		return reply()
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("line %d is longer than %d bytes (%d lines before it were stored)", line+1, MaxLineBytes, accepted)}
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return api.Validation("", "request body ended early (%d lines before it were stored)", accepted)
		}
		return fmt.Errorf("read log lines: %w", err)
	}
	return reply()
}

// snapshot writes every app's buffered lines for a starting peer (see
// Fill): an api.LogSnapshotHead, then the lines, oldest first, one
// api.LogMessage per line.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) error {
	marks, apps := s.store.snapshot()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	total := 0
	for _, a := range apps {
		total += len(a.lines)
	}
	if err := enc.Encode(api.LogSnapshotHead{Shippers: marks, Lines: total}); err != nil {
		return nil // the peer went away
	}
	for _, a := range apps {
		for i := range a.lines {
			if err := enc.Encode(&a.lines[i]); err != nil {
				return nil // the peer went away
			}
		}
	}
	bw.Flush()
	return nil
}

func lineError(line, accepted int, err error) error {
	e, _ := api.AsError(err)
	return &api.Error{Code: e.Code, Field: e.Field,
		Message: fmt.Sprintf("line %d: %s (%d lines before it were stored)", line, e.Message, accepted)}
}

// readParams are the query parameters of GET /log/{app}.
type readParams struct {
	follow bool
	lines  int // < 0: all
	filter Filter
}

func parseRead(r *http.Request, bufferLines int) (readParams, error) {
	q := r.URL.Query()
	p := readParams{lines: -1}
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return p, api.Validation("follow", "follow must be true or false")
		}
		p.follow = b
	}
	if v := q.Get("lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return p, api.Validation("lines", "lines must be a whole number >= 0")
		}
		p.lines = min(n, bufferLines)
	}
	p.filter.JobID = q.Get("job_id")
	p.filter.ProcessType = q.Get("process_type")
	if len(p.filter.JobID) > api.LogMaxIDBytes || len(p.filter.ProcessType) > api.LogMaxIDBytes {
		return p, api.Validation("job_id", "job_id and process_type are at most %d bytes", api.LogMaxIDBytes)
	}
	if v := q.Get("stream_types"); v != "" {
		p.filter.Streams = map[string]bool{}
		for _, st := range strings.Split(v, ",") {
			st = strings.TrimSpace(st)
			if !api.ValidLogStream(st) {
				return p, api.Validation("stream_types", "stream type %q must be stdout, stderr or init", st)
			}
			p.filter.Streams[st] = true
		}
	}
	return p, nil
}

func (s *Server) read(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	if !api.ValidLogAppID(app) {
		return api.Validation("app", "app %q must be 1-100 letters, digits, '.', '_' or '-'", app)
	}
	p, err := parseRead(r, s.store.size)
	if err != nil {
		return err
	}
	out, err := newLogWriter(w, r)
	if err != nil {
		return err
	}
	// A follower of an app that has not logged yet waits for its first
	// lines, so it needs the buffer now.
	rg := s.store.ring(app, p.follow)
	if rg == nil {
		return out.eof()
	}
	msgs, cursor, wait := rg.tail(p.filter, p.lines)
	if err := out.write(msgs); err != nil {
		return nil
	}
	if !p.follow {
		out.eof()
		return nil
	}
	if err := out.flush(); err != nil {
		return nil
	}
	ka := time.NewTicker(KeepAlive)
	defer ka.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-ka.C:
			if err := out.keepAlive(); err != nil {
				return nil
			}
			continue
		case <-wait:
		}
		var lost uint64
		msgs, cursor, wait, lost = rg.since(cursor, p.filter)
		if lost > 0 {
			s.log.Debug("follower fell behind", "app", app, "lost", lost)
		}
		if err := out.write(msgs); err != nil {
			return nil
		}
		if err := out.flush(); err != nil {
			return nil
		}
	}
}

// logWriter writes lines as newline-delimited JSON api.LogMessages (what
// Flynn's log clients decode), or as SSE: event "message" with an
// api.LogChunk {"event":"message","data":LogMessage} per line, and
// {"event":"eof"} at the end of a stream that does not follow. It buffers
// and flushes once per batch of lines rather than once per line.
type logWriter struct {
	w   *bufio.Writer
	rc  *http.ResponseController
	sse bool
}

func newLogWriter(w http.ResponseWriter, r *http.Request) (*logWriter, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	lw := &logWriter{w: bufio.NewWriterSize(w, 32<<10), rc: rc, sse: httpapi.WantsSSE(r)}
	if lw.sse {
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
	} else {
		h.Set("Content-Type", "application/x-ndjson")
		h.Set("X-Content-Type-Options", "nosniff")
	}
	w.WriteHeader(http.StatusOK)
	return lw, nil
}

func (lw *logWriter) write(msgs []api.LogMessage) error {
	for i := range msgs {
		m := &msgs[i]
		if m.Source == "" {
			m.Source = api.LogSourceApp
		}
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		if !lw.sse {
			lw.w.Write(b)
			if err := lw.w.WriteByte('\n'); err != nil {
				return err
			}
			continue
		}
		b, err = json.Marshal(&api.LogChunk{Event: api.LogEventMessage, Data: b})
		if err != nil {
			return err
		}
		lw.w.WriteString("event: message\ndata: ")
		lw.w.Write(b)
		if _, err := lw.w.WriteString("\n\n"); err != nil {
			return err
		}
	}
	return nil
}

// eof ends an SSE stream that does not follow.
func (lw *logWriter) eof() error {
	if lw.sse {
		lw.w.WriteString("event: eof\ndata: {\"event\":\"eof\"}\n\n")
	}
	return lw.flush()
}

func (lw *logWriter) flush() error {
	if err := lw.w.Flush(); err != nil {
		return err
	}
	return lw.rc.Flush()
}

// keepAlive sends an SSE comment, or a blank line between the JSON
// values of a plain stream (JSON decoders skip it), so that proxies and
// clients see an idle follow stream is alive.
func (lw *logWriter) keepAlive() error {
	if lw.sse {
		lw.w.WriteString(": keep-alive\n\n")
	} else {
		lw.w.WriteByte('\n')
	}
	return lw.flush()
}

// hostOfJob is the host id of a job id "<host id>-<uuid>", or "" when the
// id does not end in a UUID.
func hostOfJob(jobID string) string {
	const uuidLen = 36
	n := len(jobID) - uuidLen
	if n < 2 || jobID[n-1] != '-' {
		return ""
	}
	for i, c := range jobID[n:] {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return ""
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return ""
			}
		}
	}
	return jobID[:n-1]
}
