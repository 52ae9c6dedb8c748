package router

import (
	"context"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// maxDrainWait bounds GET /drained?wait=.
const maxDrainWait = 5 * time.Minute

// apiHandler serves the router API:
//
//	GET /metrics                     Prometheus metrics (no auth)
//	GET /drained?addr=H:P[&wait=10s] api.DrainStatus, waiting up to wait for the drain
//	GET /events                      SSE of api.RouterEvent
//	GET /routes                      the routes in use
//	GET /debug/pprof/...             profiles
func (r *Router) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.metrics)
	mux.Handle("GET /drained", httpapi.HandlerFunc(r.serveDrained))
	mux.Handle("GET /events", httpapi.HandlerFunc(r.serveEvents))
	mux.Handle("GET /routes", httpapi.HandlerFunc(r.serveRoutes))
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	var h http.Handler = mux
	if r.cfg.Token != "" {
		open := func(req *http.Request) bool { return req.URL.Path == "/metrics" }
		h = httpapi.NewKeyAuth(r.cfg.Token).Require(open, mux)
	}
	return httpapi.Wrap(r.log.With("component", "router-api"), h)
}

func (r *Router) serveDrained(w http.ResponseWriter, req *http.Request) error {
	addr := req.URL.Query().Get("addr")
	if addr == "" {
		return api.Validation("addr", "addr is required, as host:port")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return api.Validation("addr", "addr %q is not host:port", addr)
	}
	var wait time.Duration
	if s := req.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > maxDrainWait {
			return api.Validation("wait", "wait must be a duration between 0s and %s, like 10s", maxDrainWait)
		}
		wait = d
	}
	ctx, cancel := context.WithTimeout(req.Context(), wait)
	defer cancel()
	return httpapi.WriteJSON(w, http.StatusOK, r.drain.wait(ctx, addr))
}

func (r *Router) serveEvents(w http.ResponseWriter, req *http.Request) error {
	ch, unsubscribe := r.events.subscribe()
	defer unsubscribe()
	s, err := httpapi.NewSSE(w)
	if err != nil {
		return err
	}
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-req.Context().Done():
			return nil
		case <-tick.C:
			if s.Comment("keep-alive") != nil {
				return nil
			}
		case ev := <-ch:
			if s.Send(ev.Event, "", ev) != nil {
				return nil
			}
		}
	}
}

func (r *Router) serveRoutes(w http.ResponseWriter, req *http.Request) error {
	r.mu.Lock()
	out := make([]api.Route, 0, len(r.routes))
	for _, rt := range r.routes {
		if rt.Certificate != nil {
			c := *rt.Certificate
			c.Key = ""
			rt.Certificate = &c
		}
		out = append(out, rt)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return httpapi.WriteJSON(w, http.StatusOK, out)
}
