package controller

import (
	"net/http"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

func decodeRoute(r *http.Request) (*api.Route, error) {
	rt := &api.Route{}
	if err := httpapi.DecodeJSON(r, rt); err != nil {
		return nil, err
	}
	return rt, validateRoute(rt)
}

func (s *Server) createRoute(w http.ResponseWriter, r *http.Request) error {
	rt, err := decodeRoute(r)
	if err != nil {
		return err
	}
	app, err := s.app(r)
	if err != nil {
		return err
	}
	rt.ID = ctrlstore.NewID()
	rt.ParentRef = ctrlstore.ParentRef(app.ID)
	if rt.Service == "" {
		rt.Service = app.Name + "-web"
	}
	rt.CreatedAt = now()
	rt.UpdatedAt = rt.CreatedAt
	if err := s.store.CreateRoute(r.Context(), rt); err != nil {
		return err
	}
	return ok(w, rt)
}

func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	rts, err := s.store.ListRoutes(r.Context(), app.ID)
	if err != nil {
		return err
	}
	return ok(w, rts)
}

// appRoute loads the route {type}/{id} of {app}.
func (s *Server) appRoute(r *http.Request) (*api.App, *api.Route, error) {
	app, err := s.app(r)
	if err != nil {
		return nil, nil, err
	}
	rt, err := s.store.GetRoute(r.Context(), app.ID, r.PathValue("id"))
	if err != nil {
		return nil, nil, err
	}
	if rt.Type != r.PathValue("type") {
		return nil, nil, api.NotFound("%s route %q not found", r.PathValue("type"), r.PathValue("id"))
	}
	return app, rt, nil
}

func (s *Server) getRoute(w http.ResponseWriter, r *http.Request) error {
	_, rt, err := s.appRoute(r)
	if err != nil {
		return err
	}
	return ok(w, rt)
}

func (s *Server) updateRoute(w http.ResponseWriter, r *http.Request) error {
	rt, err := decodeRoute(r)
	if err != nil {
		return err
	}
	app, old, err := s.appRoute(r)
	if err != nil {
		return err
	}
	if rt.Type != old.Type {
		return api.Validation("type", "a route's type cannot change")
	}
	if rt.Type == api.RouteTCP && rt.Port == 0 {
		rt.Port = old.Port
	}
	if rt.Service == "" {
		rt.Service = old.Service
	}
	rt.ID = old.ID
	out, err := s.store.UpdateRoute(r.Context(), app.ID, rt)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (s *Server) deleteRoute(w http.ResponseWriter, r *http.Request) error {
	app, rt, err := s.appRoute(r)
	if err != nil {
		return err
	}
	if _, err := s.store.DeleteRoute(r.Context(), app.ID, rt.ID); err != nil {
		return err
	}
	return ok(w, rt)
}
