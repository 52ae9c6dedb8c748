package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// keepAlive is how often idle SSE streams get a comment.
const keepAlive = 25 * time.Second

// eventQuery is the parsed query of GET /events.
type eventQuery struct {
	filter   ctrlstore.EventFilter
	sinceID  int64
	beforeID int64
	count    int
	past     bool
}

func parseEventQuery(r *http.Request) (*eventQuery, error) {
	q := r.URL.Query()
	eq := &eventQuery{
		filter: ctrlstore.EventFilter{
			AppID: q.Get("app_id"), ObjectTypes: splitList(q.Get("object_types")), ObjectID: q.Get("object_id"),
		},
		past: q.Get("past") == "true",
	}
	var err error
	intParam := func(name string, v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, api.Validation(name, "%s must be a non-negative integer", name)
		}
		return n, nil
	}
	since := q.Get("since_id")
	if since == "" {
		since = r.Header.Get("Last-Event-ID")
	}
	if eq.sinceID, err = intParam("since_id", since); err != nil {
		return nil, err
	}
	if eq.beforeID, err = intParam("before_id", q.Get("before_id")); err != nil {
		return nil, err
	}
	n, err := intParam("count", q.Get("count"))
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, api.Validation("count", "count is too large")
	}
	eq.count = int(n)
	return eq, nil
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	eq, err := parseEventQuery(r)
	if err != nil {
		return err
	}
	if eq.filter.AppID != "" {
		// A deleted app's events stay readable by its id.
		app, err := s.store.GetApp(r.Context(), eq.filter.AppID)
		if err == nil {
			eq.filter.AppID = app.ID
		} else if !errors.Is(err, api.ErrNotFound) {
			return err
		}
	}
	if !httpapi.WantsSSE(r) {
		evs, _, err := s.store.ListEvents(r.Context(), eq.filter, eq.sinceID, eq.beforeID, eq.count)
		if err != nil {
			return err
		}
		return ok(w, evs)
	}
	if !eq.past && eq.sinceID == 0 {
		// Fix the starting point before the client sees the stream open,
		// so it misses nothing committed after that.
		if eq.sinceID, err = s.store.HeadEventID(r.Context()); err != nil {
			return err
		}
	}
	if eq.sinceID > 0 {
		w.Header().Set(api.EventSinceHeader, strconv.FormatInt(eq.sinceID, 10))
	}
	sse, err := httpapi.NewSSE(w)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	send := make(chan *api.Event)
	errc := make(chan error, 1)
	defer func() { cancel(); <-errc }()
	go func() {
		errc <- s.store.FollowEvents(ctx, eq.filter, eq.sinceID, func(e *api.Event) error {
			select {
			case send <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case e := <-send:
			if err := sse.Send("", strconv.FormatInt(e.ID, 10), e); err != nil {
				return nil
			}
		case <-tick.C:
			if err := sse.Comment("keep-alive"); err != nil {
				return nil
			}
		case err := <-errc:
			errc <- err // for the deferred wait
			if ctx.Err() == nil {
				s.log.Warn("event stream ended", "err", err)
			}
			return nil
		}
	}
}

func (s *Server) getEvent(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return api.NotFound("event %q not found", r.PathValue("id"))
	}
	e, err := s.store.GetEvent(r.Context(), id)
	if err != nil {
		return err
	}
	return ok(w, e)
}

// formations serves GET /formations: ?active=true lists the expanded
// active formations; with Accept: text/event-stream it streams expanded
// formations updated since ?since (RFC 3339), then an empty formation
// marking "up to date", then every change.
func (s *Server) formations(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if !httpapi.WantsSSE(r) {
		if q.Get("active") == "true" {
			fs, err := s.store.ListActiveFormations(r.Context())
			if err != nil {
				return err
			}
			return ok(w, fs)
		}
		fs, err := s.store.ListFormations(r.Context(), "")
		if err != nil {
			return err
		}
		return ok(w, fs)
	}
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return api.Validation("since", "since must be an RFC 3339 time")
		}
		since = t
	}
	sse, err := httpapi.NewSSE(w)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	send := make(chan *api.ExpandedFormation)
	errc := make(chan error, 1)
	defer func() { cancel(); <-errc }()
	go func() {
		errc <- s.store.FollowFormations(ctx, since, func(ef *api.ExpandedFormation) error {
			select {
			case send <- ef:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case ef := <-send:
			if err := sse.Send("", "", ef); err != nil {
				return nil
			}
		case <-tick.C:
			if err := sse.Comment("keep-alive"); err != nil {
				return nil
			}
		case err := <-errc:
			errc <- err // for the deferred wait
			if ctx.Err() == nil {
				s.log.Warn("formation stream ended", "err", err)
			}
			return nil
		}
	}
}

// appLog proxies GET /apps/{app}/log to the log aggregator's
// GET /log/{app-id}, streaming the reply.
func (s *Server) appLog(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	if s.cfg.LogAggregatorURL == "" {
		return &api.Error{Code: api.CodeUnavailable, Message: "no log aggregator is configured for this controller"}
	}
	q := url.Values{}
	for _, k := range []string{"follow", "lines", "job_id", "process_type", "stream_types"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	if v := q.Get("lines"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return api.Validation("lines", "lines must be a non-negative integer")
		}
	}
	u := strings.TrimSuffix(s.cfg.LogAggregatorURL, "/") + "/log/" + url.PathEscape(app.ID)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("log request: %w", err)
	}
	if a := r.Header.Get("Accept"); a != "" {
		req.Header.Set("Accept", a)
	}
	if s.cfg.LogAggregatorKey != "" {
		req.SetBasicAuth("", s.cfg.LogAggregatorKey)
	}
	res, err := s.cfg.HTTP.Do(req)
	if err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("log aggregator unreachable: %v", err)}
	}
	defer res.Body.Close()
	for _, h := range []string{"Content-Type", "Cache-Control"} {
		if v := res.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{})
	w.WriteHeader(res.StatusCode)
	buf := make([]byte, 32<<10)
	for {
		n, err := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			rc.Flush()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && r.Context().Err() == nil {
				s.log.Debug("log stream ended", "err", err)
			}
			return nil
		}
	}
}
