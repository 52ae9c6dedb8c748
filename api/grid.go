package api

import "time"

// KeyCluster holds the cluster record (ClusterRecord), written once by the
// first host of a cluster.
const KeyCluster = "/flynn/cluster"

// Discoverd service leader types.
const (
	// LeaderTypeOldest makes the oldest live instance the leader (default).
	LeaderTypeOldest = "oldest"
)

// ServiceConfig is a discoverd service's configuration: the body of
// PUT /services/{service} and the reply of GET /services/{service}.
type ServiceConfig struct {
	// LeaderType is "oldest" (the default when empty).
	LeaderType string `json:"leader_type,omitempty"`
}

// ClusterRecord is the value stored at KeyCluster.
type ClusterRecord struct {
	ID string `json:"id"`
	// MaxEtcdMembers is how many hosts run an etcd member (3 or 5); later
	// hosts are etcd clients only.
	MaxEtcdMembers int       `json:"max_etcd_members"`
	CreatedAt      time.Time `json:"created_at,omitzero"`
}

// ClusterInfo is GET /grid/cluster on a host's discoverd port: what a
// joining host needs to reach the cluster.
type ClusterInfo struct {
	ID             string   `json:"id"`
	MaxEtcdMembers int      `json:"max_etcd_members"`
	EtcdEndpoints  []string `json:"etcd_endpoints"`
}

// EtcdMember is one member of the cluster's etcd.
type EtcdMember struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
	IsLearner  bool     `json:"is_learner,omitempty"`
	IsLeader   bool     `json:"is_leader,omitempty"`
	Healthy    bool     `json:"healthy"`
	Error      string   `json:"error,omitempty"`
}

// ServiceSummary is one discoverd service in a GridStatus.
type ServiceSummary struct {
	Name      string      `json:"name"`
	Instances []*Instance `json:"instances"`
	Leader    string      `json:"leader,omitempty"`
}

// GridStatus is GET /grid/status: the cluster's hosts, etcd members and
// discoverd services, as one host sees them.
type GridStatus struct {
	ClusterID string            `json:"cluster_id"`
	HostID    string            `json:"host_id"`
	Hosts     []*Host           `json:"hosts"`
	Members   []*EtcdMember     `json:"members"`
	Services  []*ServiceSummary `json:"services"`
}

// Host states in a HostListing.
const (
	HostStateUp   = "up"
	HostStateDown = "down"
)

// HostListing is one host in GET /grid/hosts: every host that ever joined
// the cluster, up or down.
type HostListing struct {
	Host  *Host  `json:"host"`
	State string `json:"state"`
	// EtcdRole is "leader", "member", "learner" or "client".
	EtcdRole string `json:"etcd_role"`
	// Jobs is how many jobs run on it (-1 when it could not be asked).
	Jobs int `json:"jobs"`
}
