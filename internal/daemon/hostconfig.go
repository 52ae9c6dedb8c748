package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// HostConfigFile is the host config's file name in the state dir.
const HostConfigFile = "host.json"

// Host roles in the cluster's etcd, as recorded in the host config.
const (
	// RoleInit: the host creates a new cluster on its first start.
	RoleInit = "init"
	// RoleJoin: the host joins the cluster on its first start, as an etcd
	// member while the cluster has fewer than MaxEtcdMembers, else as a
	// client.
	RoleJoin = "join"
	// RoleMember: the host runs an etcd member (its data is in the state dir).
	RoleMember = "member"
	// RoleClient: the host is an etcd client of the cluster's members.
	RoleClient = "client"
)

// DefaultMaxEtcdMembers is how many hosts run an etcd member by default.
const DefaultMaxEtcdMembers = 3

// HostConfig is what a host knows about itself and its cluster, kept as
// JSON in the state dir. `flynn-host init` and `join` write it; the daemon
// reads it and records its role after the first start.
type HostConfig struct {
	HostID    string `json:"host_id"`
	ClusterID string `json:"cluster_id,omitempty"`
	// Token is the cluster token: internal APIs (discoverd, host agent)
	// require it.
	Token          string `json:"token"`
	Role           string `json:"role"`
	MaxEtcdMembers int    `json:"max_etcd_members,omitempty"`
	// EtcdEndpoints are client URLs of the cluster's etcd members, used to
	// join and, for a client host, to reach etcd.
	EtcdEndpoints []string `json:"etcd_endpoints,omitempty"`
}

// RandomID returns n random bytes in hex.
func RandomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ErrNoHostConfig means the state dir has no host config yet.
var ErrNoHostConfig = errors.New("no host config: run `flynn-host init` (new cluster) or `flynn-host join` first")

// LoadHostConfig reads the host config from stateDir.
func LoadHostConfig(stateDir string) (*HostConfig, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, HostConfigFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoHostConfig
	}
	if err != nil {
		return nil, fmt.Errorf("read host config: %w", err)
	}
	hc := &HostConfig{}
	if err := json.Unmarshal(b, hc); err != nil {
		return nil, fmt.Errorf("read host config %s: %w", filepath.Join(stateDir, HostConfigFile), err)
	}
	if hc.HostID == "" || hc.Token == "" {
		return nil, fmt.Errorf("host config %s lacks host_id or token", filepath.Join(stateDir, HostConfigFile))
	}
	switch hc.Role {
	case RoleInit, RoleJoin, RoleMember, RoleClient:
	default:
		return nil, fmt.Errorf("host config: unknown role %q", hc.Role)
	}
	return hc, nil
}

// Save writes the host config to stateDir atomically, readable by root only
// (it holds the cluster token).
func (hc *HostConfig) Save(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("save host config: %w", err)
	}
	b, err := json.MarshalIndent(hc, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(stateDir, HostConfigFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save host config: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(stateDir, HostConfigFile)); err != nil {
		return fmt.Errorf("save host config: %w", err)
	}
	return nil
}
