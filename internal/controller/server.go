// Package controller is Flynn's controller: the HTTP API for apps,
// artifacts (and their layers, for export and import), releases,
// formations, scale requests, jobs (including one-off and attached jobs),
// deployments, routes, providers and resources, SSH keys, events (JSON and
// SSE), app logs and status. It validates every request, checks the
// cluster key, and keeps all state in etcd through
// internal/controller/ctrlstore, so any number of replicas can serve the
// same state. Its wire shapes are Flynn's, so Flynn's own clients work
// unmodified (compat.go holds what that takes beyond the shared types).
package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// JobRunner starts and stops jobs on host agents, for one-off jobs (which
// bypass the scheduler) and job kills. The lead wires the real host
// client; tests use a fake.
type JobRunner interface {
	// Place picks the host for a one-off job, by the scheduler's rules.
	Place(ctx context.Context, req scheduler.Request) (*api.Host, error)
	// AddJob starts job on host. A job the host cannot start because of
	// what it asks for (e.g. a command its image lacks) is an *api.Error
	// with a 4xx code.
	AddJob(ctx context.Context, host *api.Host, job *api.HostJob) error
	// StopJob stops a job on host.
	StopJob(ctx context.Context, host *api.Host, jobID string) error
	// SignalJob sends signal number sig to a job on host.
	SignalJob(ctx context.Context, host *api.Host, jobID string, sig int) error
	// Attach connects to the stdio of a job before it is added, so that no
	// output is lost, and returns the raw attach stream (the bytes after
	// the host agent's protocol upgrade). The controller relays it to the
	// client of POST /apps/{app}/jobs with "Upgrade: flynn-attach/0".
	Attach(ctx context.Context, host *api.Host, req AttachRequest) (io.ReadWriteCloser, error)
}

// VolumeRunner is implemented by a JobRunner that reaches the hosts'
// persistent volumes.
type VolumeRunner interface {
	// ListVolumes returns the volumes of every host that answers.
	ListVolumes(ctx context.Context) ([]*api.Volume, error)
	// DeleteVolume deletes a volume on its host; one a job uses is
	// api.ErrConflict.
	DeleteVolume(ctx context.Context, hostID, id string) error
}

// AttachRequest says which job to attach to and how.
type AttachRequest struct {
	JobID  string
	TTY    bool
	Stdin  bool
	Height int
	Width  int
}

// Config configures a controller.
type Config struct {
	// Listen is the address to serve on, e.g. ":1200" (Run only).
	Listen string
	// Etcd is the client of the cluster's etcd.
	Etcd *etcdkv.Client
	// AuthKeys are the accepted cluster keys (several allow rotation).
	AuthKeys []string
	// SystemKeys are accepted too, and are the only keys that may set,
	// change or remove flynn-system-* meta (which makes an app a system
	// app): the bootstrap holds one. None: no caller may.
	SystemKeys []string
	// ClusterDomain gives new apps the default route <app>.<domain>; no
	// default route when empty.
	ClusterDomain string
	// CACertFile is served at GET /ca-cert (404 when empty).
	CACertFile string
	// LogAggregatorURL is where GET /apps/{app}/log is proxied to
	// (503 when empty), e.g. http://logaggregator.discoverd.
	LogAggregatorURL string
	// TenantMounts are host paths any app may mount read-only, besides
	// the platform's own (the package's TenantMounts): e.g. where a
	// gitreceive not set up by the bootstrap says the flynn-host binary
	// is.
	TenantMounts []string
	// LogAggregatorKey is the key the log aggregator wants (the cluster
	// token), sent with the requests proxied to it.
	LogAggregatorKey string
	// Runner runs one-off jobs; one-off jobs and kills answer 503 without one.
	Runner JobRunner
	// Blobs is the blobstore that holds slug layers, for layer export
	// and import and for deleting the layers of deleted releases (those
	// answer 503, and layers stay, without one).
	Blobs Blobs
	// BlobURL is the blobstore's base URL, as the apps' artifacts name
	// it: GET /backup reads every blob there (503 when empty).
	BlobURL string
	// HTTP is the client for providers and the log aggregator
	// (http.DefaultClient when nil).
	HTTP *http.Client
	// OnListen, when set, is called by Run with the bound address before
	// serving (e.g. to register the controller in discoverd). An error
	// stops Run.
	OnListen func(ctx context.Context, addr string) error
}

// Server is a controller: an http.Handler on an etcd store.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *ctrlstore.Store
	h     http.Handler
}

// New returns a controller.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.Etcd == nil {
		return nil, errors.New("controller: no etcd client")
	}
	if len(cfg.AuthKeys) == 0 {
		return nil, errors.New("controller: no auth key; set AUTH_KEY")
	}
	if cfg.HTTP == nil {
		cfg.HTTP = http.DefaultClient
	}
	s := &Server{cfg: cfg, log: log.With("component", "controller"), store: ctrlstore.New(cfg.Etcd)}
	auth := systemAuth{users: httpapi.NewKeyAuth(cfg.AuthKeys...)}
	if len(cfg.SystemKeys) > 0 {
		auth.system = httpapi.NewKeyAuth(cfg.SystemKeys...)
	}
	open := func(r *http.Request) bool {
		return r.Method == http.MethodGet && (r.URL.Path == "/ping" || r.URL.Path == "/ca-cert" || r.URL.Path == api.StatusPath)
	}
	s.h = httpapi.Wrap(s.log, notFoundType(auth.require(open, s.routes())))
	return s, nil
}

// ServeHTTP serves the controller API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.ServeHTTP(w, r) }

// Run listens on cfg.Listen, calls cfg.OnListen, and serves until ctx
// ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	s, err := New(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("controller: listen: %w", err)
	}
	if cfg.OnListen != nil {
		if err := cfg.OnListen(ctx, ln.Addr().String()); err != nil {
			ln.Close()
			return fmt.Errorf("controller: on listen: %w", err)
		}
	}
	s.log.Info("serving", "addr", ln.Addr().String())
	return httpapi.Serve(ctx, ln, s, s.log)
}

type hf = httpapi.HandlerFunc

func (s *Server) routes() http.Handler {
	m := http.NewServeMux()
	m.Handle("GET /ping", hf(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	}))
	m.Handle("GET /ca-cert", hf(s.caCert))
	m.Handle("GET "+api.StatusPath, hf(s.status))
	m.Handle("GET /backup", hf(s.backup))

	m.Handle("POST /apps", hf(s.createApp))
	m.Handle("GET /apps", list(s.store.ListApps))
	m.Handle("GET /apps/{app}", hf(s.getApp))
	m.Handle("POST /apps/{app}", hf(s.updateApp))
	m.Handle("POST /apps/{app}/meta", hf(s.updateApp))
	m.Handle("DELETE /apps/{app}", hf(s.deleteApp))
	m.Handle("GET /apps/{app}/log", hf(s.appLog))
	m.Handle("PUT /apps/{app}/release", hf(s.setAppRelease))
	m.Handle("GET /apps/{app}/release", hf(s.getAppRelease))
	m.Handle("GET /apps/{app}/releases", hf(s.listAppReleases))
	m.Handle("DELETE /apps/{app}/releases/{release}", hf(s.deleteRelease))
	m.Handle("PUT /apps/{app}/formations/{release}", hf(s.putFormation))
	m.Handle("GET /apps/{app}/formations/{release}", hf(s.getFormation))
	m.Handle("DELETE /apps/{app}/formations/{release}", hf(s.deleteFormation))
	m.Handle("GET /apps/{app}/formations", hf(s.listFormations))
	m.Handle("GET /formations", hf(s.formations))
	m.Handle("PUT /apps/{app}/scale/{release}", hf(s.scale))
	m.Handle("GET /apps/{app}/scale", hf(s.listScaleRequests))
	m.Handle("GET /scale-requests", hf(s.listPendingScaleRequests))
	m.Handle("POST /apps/{app}/jobs", hf(s.runJob))
	m.Handle("GET /apps/{app}/jobs", hf(s.listJobs))
	m.Handle("GET /apps/{app}/jobs/{job}", hf(s.getJob))
	m.Handle("PUT /apps/{app}/jobs/{job}", hf(s.putJob))
	m.Handle("DELETE /apps/{app}/jobs/{job}", hf(s.killJob))
	m.Handle("GET /active-jobs", hf(s.activeJobs))
	m.Handle("POST /apps/{app}/deploy", hf(s.deploy))
	m.Handle("GET /apps/{app}/deployments", hf(s.listAppDeployments))
	m.Handle("GET /deployments", hf(s.listDeployments))
	m.Handle("GET /deployments/{id}", byPath("id", s.store.GetDeployment))
	m.Handle("PUT /deployments/{id}", hf(s.updateDeployment))
	m.Handle("POST /deployments/{id}/events", hf(s.addDeploymentEvent))
	m.Handle("POST /releases", hf(s.createRelease))
	m.Handle("GET /releases", list(func(ctx context.Context) ([]*api.Release, error) { return s.store.ListReleases(ctx, "") }))
	m.Handle("GET /releases/{id}", byPath("id", s.store.GetRelease))
	m.Handle("POST /artifacts", hf(s.createArtifact))
	m.Handle("GET /artifacts", list(s.store.ListArtifacts))
	m.Handle("GET /artifacts/{id}", byPath("id", s.store.GetArtifact))
	m.Handle("GET /artifacts/{id}/layers/{layer}", hf(s.getLayer))
	m.Handle("PUT /layers/{id}", hf(s.putLayer))

	m.Handle("GET /routes", list(func(ctx context.Context) ([]*api.Route, error) { return s.store.ListRoutes(ctx, "") }))
	m.Handle("GET /apps/{app}/routes", hf(s.listRoutes))
	m.Handle("POST /apps/{app}/routes", hf(s.createRoute))
	m.Handle("GET /apps/{app}/routes/{type}/{id}", hf(s.getRoute))
	m.Handle("PUT /apps/{app}/routes/{type}/{id}", hf(s.updateRoute))
	m.Handle("DELETE /apps/{app}/routes/{type}/{id}", hf(s.deleteRoute))

	m.Handle("POST /providers", hf(s.createProvider))
	m.Handle("GET /providers", list(s.store.ListProviders))
	m.Handle("GET /providers/{provider}", byPath("provider", s.store.GetProvider))
	m.Handle("POST /providers/{provider}/resources", hf(s.provisionResource))
	m.Handle("GET /providers/{provider}/resources", hf(s.listProviderResources))
	m.Handle("GET /providers/{provider}/resources/{id}", hf(s.getResource))
	m.Handle("PUT /providers/{provider}/resources/{id}", hf(s.putResource))
	m.Handle("DELETE /providers/{provider}/resources/{id}", hf(s.deprovisionResource))
	m.Handle("PUT /providers/{provider}/resources/{id}/apps/{app}", hf(s.attachResource))
	m.Handle("DELETE /providers/{provider}/resources/{id}/apps/{app}", hf(s.detachResource))
	m.Handle("GET /resources", list(func(ctx context.Context) ([]*api.Resource, error) { return s.store.ListResources(ctx, "", "") }))
	m.Handle("GET /apps/{app}/resources", hf(s.listAppResources))

	m.Handle("GET /events", hf(s.events))
	m.Handle("GET /events/{id}", hf(s.getEvent))

	m.Handle("GET /volumes", hf(s.listVolumes))
	m.Handle("GET /volumes/{id}", hf(s.getVolume))
	m.Handle("DELETE /volumes/{id}", hf(s.deleteVolume))
	m.Handle("GET /apps/{app}/volumes", hf(s.listVolumes))
	m.Handle("GET /apps/{app}/volumes/{id}", hf(s.getVolume))
	m.Handle("PUT /apps/{app}/volumes/{id}/decommission", hf(s.getVolume))

	m.Handle("GET /keys", list(s.store.ListKeys))
	m.Handle("POST /keys", hf(s.createKey))
	m.Handle("DELETE /keys/{id}", hf(s.deleteKey))

	m.Handle("/", hf(func(w http.ResponseWriter, r *http.Request) error {
		return api.NotFound("no route for %s %s", r.Method, r.URL.Path)
	}))
	return m
}

func (s *Server) caCert(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.CACertFile == "" {
		return api.NotFound("this controller has no CA certificate configured")
	}
	b, err := os.ReadFile(s.cfg.CACertFile)
	if err != nil {
		return fmt.Errorf("read CA cert: %w", err)
	}
	w.Header().Set("Content-Type", "application/x-x509-ca-cert")
	_, err = w.Write(b)
	return err
}

// app loads the app named by the {app} path value.
func (s *Server) app(r *http.Request) (*api.App, error) {
	return s.store.GetApp(r.Context(), r.PathValue("app"))
}

func ok(w http.ResponseWriter, v any) error { return httpapi.WriteJSON(w, http.StatusOK, v) }

// list serves what fn lists, as JSON.
func list[T any](fn func(context.Context) (T, error)) hf {
	return func(w http.ResponseWriter, r *http.Request) error {
		v, err := fn(r.Context())
		if err != nil {
			return err
		}
		return ok(w, v)
	}
}

// byPath serves, as JSON, what fn finds by the request's path value key
// (e.g. the {id} of GET /releases/{id}).
func byPath[T any](key string, fn func(context.Context, string) (T, error)) hf {
	return func(w http.ResponseWriter, r *http.Request) error {
		v, err := fn(r.Context(), r.PathValue(key))
		if err != nil {
			return err
		}
		return ok(w, v)
	}
}

func now() time.Time { return time.Now().UTC() }

// splitList splits a comma-separated query value, dropping empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
