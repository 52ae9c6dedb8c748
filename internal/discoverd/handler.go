package discoverd

import (
	"log/slog"
	"net/http"
	"strconv"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// TTLHeader is the reply header of an instance registration that tells the
// client the instance TTL in seconds, so it heartbeats often enough.
const TTLHeader = "Discoverd-Ttl"

// Handler serves the discoverd HTTP API on store. Every path but /ping
// requires one of the keys (the cluster token) when auth is not nil. The
// result is already wrapped with the access log and panic recovery.
func Handler(store *Store, auth *httpapi.KeyAuth, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	Routes(mux, store, log)
	var h http.Handler = mux
	if auth != nil {
		h = auth.Require(func(r *http.Request) bool { return r.URL.Path == "/ping" }, mux)
	}
	return httpapi.Wrap(log, h)
}

// Routes adds the discoverd API's routes to mux, without auth.
func Routes(mux *http.ServeMux, store *Store, log *slog.Logger) {
	h := &handler{store: store, log: log}
	mux.Handle("GET /ping", httpapi.HandlerFunc(h.ping))
	mux.Handle("GET /services", httpapi.HandlerFunc(h.listServices))
	mux.Handle("PUT /services/{service}", httpapi.HandlerFunc(h.addService))
	mux.Handle("DELETE /services/{service}", httpapi.HandlerFunc(h.removeService))
	mux.Handle("GET /services/{service}", httpapi.HandlerFunc(h.getService))
	mux.Handle("GET /services/{service}/instances", httpapi.HandlerFunc(h.instances))
	mux.Handle("PUT /services/{service}/instances/{id}", httpapi.HandlerFunc(h.register))
	mux.Handle("DELETE /services/{service}/instances/{id}", httpapi.HandlerFunc(h.deregister))
	mux.Handle("GET /services/{service}/leader", httpapi.HandlerFunc(h.leader))
	mux.Handle("GET /services/{service}/meta", httpapi.HandlerFunc(h.getMeta))
	mux.Handle("PUT /services/{service}/meta", httpapi.HandlerFunc(h.setMeta))
}

type handler struct {
	store *Store
	log   *slog.Logger
}

func (h *handler) ping(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
}

func (h *handler) listServices(w http.ResponseWriter, r *http.Request) error {
	names, err := h.store.Services(r.Context())
	if err != nil {
		return err
	}
	if names == nil {
		names = []string{}
	}
	return httpapi.WriteJSON(w, http.StatusOK, names)
}

func (h *handler) addService(w http.ResponseWriter, r *http.Request) error {
	var cfg api.ServiceConfig
	if r.ContentLength != 0 {
		if err := httpapi.DecodeJSONStrict(r, &cfg); err != nil {
			return err
		}
	}
	if err := h.store.AddService(r.Context(), r.PathValue("service"), cfg); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (h *handler) removeService(w http.ResponseWriter, r *http.Request) error {
	if err := h.store.RemoveService(r.Context(), r.PathValue("service")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (h *handler) getService(w http.ResponseWriter, r *http.Request) error {
	if httpapi.WantsSSE(r) {
		return h.stream(w, r, nil)
	}
	cfg, err := h.store.Service(r.Context(), r.PathValue("service"))
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, cfg)
}

// stream serves a service's events as SSE; when filter is not nil only the
// events it accepts are sent. Errors before the stream starts are replied
// as JSON errors.
func (h *handler) stream(w http.ResponseWriter, r *http.Request, filter func(*api.ServiceEvent) bool) error {
	svc := r.PathValue("service")
	if _, err := h.store.Service(r.Context(), svc); err != nil {
		return err
	}
	sse, err := httpapi.NewSSE(w)
	if err != nil {
		return err
	}
	err = h.store.Watch(r.Context(), svc, func(ev *api.ServiceEvent) error {
		if filter != nil && !filter(ev) {
			return nil
		}
		return sse.Send(ev.Kind, "", ev)
	})
	if err != nil && r.Context().Err() == nil {
		// The stream has started, so the error cannot be replied: end
		// the stream and let the client reconnect.
		h.log.Warn("service stream broken", "service", svc, "err", err)
	}
	return nil
}

func (h *handler) instances(w http.ResponseWriter, r *http.Request) error {
	insts, err := h.store.Instances(r.Context(), r.PathValue("service"))
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, insts)
}

func (h *handler) register(w http.ResponseWriter, r *http.Request) error {
	var inst api.Instance
	if err := httpapi.DecodeJSON(r, &inst); err != nil {
		return err
	}
	got, created, err := h.store.Register(r.Context(), r.PathValue("service"), r.PathValue("id"), &inst)
	if err != nil {
		return err
	}
	w.Header().Set(TTLHeader, strconv.Itoa(int(h.store.TTL().Seconds())))
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return httpapi.WriteJSON(w, status, got)
}

func (h *handler) deregister(w http.ResponseWriter, r *http.Request) error {
	if err := h.store.Deregister(r.Context(), r.PathValue("service"), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (h *handler) leader(w http.ResponseWriter, r *http.Request) error {
	if httpapi.WantsSSE(r) {
		return h.stream(w, r, func(ev *api.ServiceEvent) bool {
			return ev.Kind == api.EventKindLeader || ev.Kind == api.EventKindCurrent
		})
	}
	inst, err := h.store.Leader(r.Context(), r.PathValue("service"))
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, inst)
}

func (h *handler) getMeta(w http.ResponseWriter, r *http.Request) error {
	if httpapi.WantsSSE(r) {
		return h.stream(w, r, func(ev *api.ServiceEvent) bool {
			return ev.Kind == api.EventKindServiceMeta || ev.Kind == api.EventKindCurrent
		})
	}
	m, err := h.store.Meta(r.Context(), r.PathValue("service"))
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, m)
}

func (h *handler) setMeta(w http.ResponseWriter, r *http.Request) error {
	var m api.ServiceMeta
	if err := httpapi.DecodeJSONStrict(r, &m); err != nil {
		return err
	}
	got, err := h.store.SetMeta(r.Context(), r.PathValue("service"), &m)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, got)
}
