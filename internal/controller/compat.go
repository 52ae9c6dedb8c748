package controller

import (
	"net/http"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/version"
)

// This file holds what the controller does so that Flynn's own clients
// (the original flynn CLI, built unmodified, and anything on its
// controller/client package) work against it.

// NotFoundContentType is the Content-Type of the JSON error body of a 404
// reply. Flynn's controller answered 404 with an empty body, and Flynn's
// client maps a 404 to its ErrNotFound (which its CLI tests for, e.g. "no
// release yet") only when the reply is not application/json; the body
// still carries {"code":"not_found","message":...} for everyone else.
const NotFoundContentType = "application/vnd.flynn.error+json"

// notFoundType relabels the JSON body of 404 replies (NotFoundContentType).
func notFoundType(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&notFoundWriter{ResponseWriter: w}, r)
	})
}

type notFoundWriter struct{ http.ResponseWriter }

func (w *notFoundWriter) WriteHeader(code int) {
	if code == http.StatusNotFound && strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		w.Header().Set("Content-Type", NotFoundContentType)
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *notFoundWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status serves GET /.well-known/status as Flynn's servers do:
// {"data":{"status":"healthy","version":...}}. Flynn's CLI reads the
// version to choose how `flynn scale` works; any version that is not a
// vYYYYMMDD.N release date counts as a development build, which scales
// with scale requests.
func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	st := api.Status{Status: api.StatusHealthy, Version: version.Version}
	if _, err := s.store.HeadEventID(r.Context()); err != nil {
		st.Status = api.StatusUnhealthy
		return httpapi.WriteJSON(w, http.StatusServiceUnavailable, api.StatusReply{Data: st})
	}
	return ok(w, api.StatusReply{Data: st})
}

// volumes serves Flynn's volume listings. Jobs here have no persistent
// volumes, so the lists are empty and no volume is found.
func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	if r.PathValue("app") != "" {
		if _, err := s.app(r); err != nil {
			return err
		}
	}
	return ok(w, []struct{}{})
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.app(r); err != nil {
		return err
	}
	return api.NotFound("volume %q not found: jobs on this cluster have no persistent volumes", r.PathValue("id"))
}
