package api

// RouterAPIService is the discoverd service of routers' API servers (their
// /metrics, /drained and /events), which host agents ask whether a
// stopping job has drained.
const RouterAPIService = "router-api"

// Router API event names, sent on the router's GET /events stream.
const (
	RouterEventRouteSet       = "route-set"
	RouterEventRouteRemove    = "route-remove"
	RouterEventBackendUp      = "backend-up"
	RouterEventBackendDown    = "backend-down"
	RouterEventBackendDrained = "backend-drained"
)

// RouterEvent is one event of a router's GET /events stream.
type RouterEvent struct {
	Event   string `json:"event"`
	RouteID string `json:"route_id,omitempty"`
	Service string `json:"service,omitempty"`
	Addr    string `json:"addr,omitempty"`
}

// DrainStatus answers a router's GET /drained?addr=host:port: Drained is
// true once no service the router follows lists addr and no request or
// connection to addr is in flight.
type DrainStatus struct {
	Addr     string `json:"addr"`
	Drained  bool   `json:"drained"`
	InFlight int64  `json:"in_flight"`
}
