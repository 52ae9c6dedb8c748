package api

import "time"

// Route types.
const (
	RouteHTTP = "http"
	RouteTCP  = "tcp"
)

// Certificate is a TLS certificate and key in PEM.
type Certificate struct {
	ID        string    `json:"id,omitempty"`
	Cert      string    `json:"cert"`
	Key       string    `json:"key,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Route sends traffic for a domain (http) or a port (tcp) to the instances
// of a discoverd service. Field names follow Flynn's router types.
type Route struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	// ParentRef is "controller/apps/<app-id>" for app routes.
	ParentRef string `json:"parent_ref,omitempty"`
	// Service is the discoverd service whose instances get the traffic
	// (by default "<app>-web").
	Service string `json:"service"`
	// Port is the listening port of a tcp route (3000-3500 by default), or
	// a non-default port for an http route.
	Port int32 `json:"port,omitempty"`
	// Leader sends traffic only to the service's discoverd leader.
	Leader bool `json:"leader"`
	// Domain is the http route's host name; "*.example.com" is a wildcard.
	Domain string `json:"domain,omitempty"`
	// Certificate is the http route's TLS certificate, picked by SNI.
	Certificate *Certificate `json:"certificate,omitempty"`
	// Sticky keeps a client on one backend with a signed cookie.
	Sticky bool `json:"sticky"`
	// Path is the http route's path prefix ("/" when empty).
	Path string `json:"path,omitempty"`
	// DrainBackends makes the router wait for a departing backend's
	// in-flight requests before reporting it drained.
	DrainBackends     bool `json:"drain_backends"`
	DisableKeepAlives bool `json:"disable_keep_alives"`
	// MaxBodyBytes bounds a request body on an http route (0: the
	// router's default, -1: no limit); BodyTimeout is the longest the
	// router waits for the next bytes of one (0: the router's default).
	MaxBodyBytes int64     `json:"max_body_bytes,omitempty"`
	BodyTimeout  Duration  `json:"body_timeout,omitempty"`
	CreatedAt    time.Time `json:"created_at,omitzero"`
	UpdatedAt    time.Time `json:"updated_at,omitzero"`
}
