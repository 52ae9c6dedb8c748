package controller

import (
	"context"
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

// listVolumes serves GET /volumes and GET /apps/{app}/volumes: the
// persistent volumes of every host that answers (see
// internal/host/volumes.go), of one app when the path names one.
func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	appID := ""
	if r.PathValue("app") != "" {
		app, err := s.app(r)
		if err != nil {
			return err
		}
		appID = app.ID
	}
	vs, err := s.volumes(r.Context())
	if err != nil {
		return err
	}
	out := []*api.Volume{}
	for _, v := range vs {
		if appID == "" || v.AppID == appID {
			out = append(out, v)
		}
	}
	return ok(w, out)
}

// getVolume serves GET /volumes/{id} and GET /apps/{app}/volumes/{id}.
func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	v, err := s.findVolume(r)
	if err != nil {
		return err
	}
	return ok(w, v)
}

// deleteVolume serves DELETE /volumes/{id}: the volume's host deletes it
// with its data, unless a job uses it (409).
func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) error {
	v, err := s.findVolume(r)
	if err != nil {
		return err
	}
	vr := s.cfg.Runner.(VolumeRunner)
	if err := vr.DeleteVolume(r.Context(), v.HostID, v.ID); err != nil {
		return err
	}
	return ok(w, v)
}

func (s *Server) volumes(ctx context.Context) ([]*api.Volume, error) {
	vr, isVR := s.cfg.Runner.(VolumeRunner)
	if !isVR {
		return nil, &api.Error{Code: api.CodeUnavailable, Message: "this controller has no view of the hosts' volumes"}
	}
	return vr.ListVolumes(ctx)
}

func (s *Server) findVolume(r *http.Request) (*api.Volume, error) {
	appID := ""
	if r.PathValue("app") != "" {
		app, err := s.app(r)
		if err != nil {
			return nil, err
		}
		appID = app.ID
	}
	vs, err := s.volumes(r.Context())
	if err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	for _, v := range vs {
		if v.ID == id && (appID == "" || v.AppID == appID) {
			return v, nil
		}
	}
	return nil, api.NotFound("volume %q not found on any host that is up: see flynn volume list", id)
}
