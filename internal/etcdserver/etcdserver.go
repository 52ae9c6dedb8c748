// Package etcdserver owns the embedded etcd member that every flynn-host
// runs (or joins): its configuration, start-up, readiness and shutdown.
// Everything Flynn's control plane stores lives in this etcd under /flynn/.
package etcdserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/flynnrebuilt/flynn/internal/pki"
)

// Config says how to run one etcd member.
type Config struct {
	// Name is the member name, unique in the cluster (the host id).
	Name string
	// DataDir holds the member's data.
	DataDir string
	// ClientURL and PeerURL are where the member listens and what it
	// advertises, e.g. http://10.0.0.1:2379 and http://10.0.0.1:2380.
	ClientURL string
	PeerURL   string
	// InitialCluster is "name=peerURL,..."; empty means a new one-member
	// cluster of this member alone.
	InitialCluster string
	// Existing is true when joining a running cluster (after MemberAdd).
	Existing bool
	// Token keeps separate clusters from joining each other by accident.
	Token string
	// Fast uses short heartbeat and election timeouts (for tests).
	Fast bool
	// TLSDir, when set, is a PKI dir (internal/pki): clients and peers
	// then speak mutual TLS with its host certificate, and must present a
	// certificate of its CA. The URLs are https then.
	TLSDir string
	// Logger receives etcd's own logs; zap.NewNop when nil.
	Logger *zap.Logger
}

// Server is a running embedded etcd member.
type Server struct {
	etcd   *embed.Etcd
	client *clientv3.Client
	cfg    Config

	closeOnce sync.Once
	closeErr  error
}

// Start starts the member and waits until it is ready to serve (or ctx is
// done, or the member fails).
func Start(ctx context.Context, cfg Config) (*Server, error) {
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	curl, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("client url: %w", err)
	}
	purl, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("peer url: %w", err)
	}
	var tlsConfig *tls.Config
	if cfg.TLSDir != "" {
		info := transport.TLSInfo{
			CertFile:       filepath.Join(cfg.TLSDir, pki.HostCert),
			KeyFile:        filepath.Join(cfg.TLSDir, pki.HostKey),
			TrustedCAFile:  filepath.Join(cfg.TLSDir, pki.CACert),
			ClientCertAuth: true,
		}
		ec.ClientTLSInfo, ec.PeerTLSInfo = info, info
		if tlsConfig, err = pki.TLSConfig(cfg.TLSDir, pki.HostCert, pki.HostKey); err != nil {
			return nil, err
		}
	}
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	if cfg.Token != "" {
		ec.InitialClusterToken = cfg.Token
	}
	if cfg.Existing {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	if cfg.Fast {
		ec.TickMs = 10
		ec.ElectionMs = 100
		ec.UnsafeNoFsync = true
	}
	ec.AutoCompactionMode = "revision"
	ec.AutoCompactionRetention = "10000"
	lg := cfg.Logger
	if lg == nil {
		lg = zap.NewNop()
		if os.Getenv("FLYNN_ETCD_DEBUG") != "" {
			lg, _ = zap.NewDevelopment()
		}
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	ec.LogLevel = "error"

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("wait for etcd: %w", ctx.Err())
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{cfg.ClientURL},
		DialTimeout: 5 * time.Second,
		Logger:      lg,
		TLS:         tlsConfig,
	})
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return &Server{etcd: e, client: cli, cfg: cfg}, nil
}

// Client is a client connected to this member.
func (s *Server) Client() *clientv3.Client { return s.client }

// Endpoint is the member's client URL.
func (s *Server) Endpoint() string { return s.cfg.ClientURL }

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member and its client. It is safe to call more than
// once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		errc := s.client.Close()
		s.etcd.Close()
		if errc != nil && !errors.Is(errc, context.Canceled) {
			s.closeErr = errc
		}
	})
	return s.closeErr
}

// ID is the member's id in the cluster.
func (s *Server) ID() uint64 { return uint64(s.etcd.Server.MemberID()) }

// HasData reports whether dataDir holds a member's data, so that Start
// restarts that member (its cluster settings then come from the data).
func HasData(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "member", "wal"))
	return err == nil
}
