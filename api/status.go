package api

import "encoding/json"

// StatusPath is where a server reports its health, as Flynn's servers do.
const StatusPath = "/.well-known/status"

// Health codes of a Status.
const (
	StatusHealthy   = "healthy"
	StatusUnhealthy = "unhealthy"
)

// Status is a server's health and version. GET StatusPath answers
// {"data": Status} (StatusReply); Flynn's CLI reads the version to choose
// how it scales (a version that is not a vYYYYMMDD.N date counts as a
// development build, which has every feature).
type Status struct {
	Status  string          `json:"status"`
	Version string          `json:"version,omitempty"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

// StatusReply is the body of GET StatusPath.
type StatusReply struct {
	Data Status `json:"data"`
}
