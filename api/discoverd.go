package api

import "encoding/json"

// Instance is one registered instance of a discoverd service.
type Instance struct {
	// ID identifies the instance within its service (Flynn: md5 of proto-addr).
	ID string `json:"id"`
	// Addr is host:port.
	Addr string `json:"addr"`
	// Proto is "tcp" or "udp".
	Proto string            `json:"proto"`
	Meta  map[string]string `json:"meta,omitempty"`
	// Index orders registrations: the oldest live instance (lowest index) is
	// the service leader. It is the etcd create revision.
	Index uint64 `json:"index"`
}

// InstanceMetaHostID is the instance meta key naming the host whose job
// registered the instance (set by the host agent).
const InstanceMetaHostID = "FLYNN_HOST_ID"

// Discoverd event kinds.
const (
	EventKindUp          = "up"
	EventKindUpdate      = "update"
	EventKindDown        = "down"
	EventKindLeader      = "leader"
	EventKindCurrent     = "current"
	EventKindServiceMeta = "service_meta"
)

// ServiceEvent is one event of a discoverd service stream.
type ServiceEvent struct {
	Service     string       `json:"service"`
	Kind        string       `json:"kind"`
	Instance    *Instance    `json:"instance,omitempty"`
	ServiceMeta *ServiceMeta `json:"service_meta,omitempty"`
}

// ServiceMeta is a service's compare-and-set metadata.
type ServiceMeta struct {
	Data     json.RawMessage `json:"data"`
	Index    uint64          `json:"index"`
	LeaderID string          `json:"leader_id,omitempty"`
}
