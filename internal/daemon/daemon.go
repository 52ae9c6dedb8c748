// Package daemon composes layer 0 of a Flynn host, the `flynn-host daemon`
// process: the embedded etcd member (or an etcd client, on hosts beyond
// the cluster's 3 or 5 members), discoverd's HTTP API and DNS, the host's
// leased registration under /flynn/hosts/, and any further services plugged
// in through Config.Services (the host agent is one).
package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdserver"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/pki"
)

// Default ports.
const (
	DefaultEtcdClientPort = 2379
	DefaultEtcdPeerPort   = 2380
	DefaultDiscoverdPort  = 1111
	DefaultDNSPort        = 53
	DefaultHostPort       = 1113
	DefaultStateDir       = "/var/lib/flynn"
)

// Config says how to run a host's daemon.
type Config struct {
	// StateDir holds the host config (host.json) and etcd's data (etcd/).
	StateDir string
	// ListenIP is the host's cluster address: etcd, discoverd and DNS
	// listen on it and it is what other hosts reach.
	ListenIP string
	// Ports; zero means the default. DNSPort -1 disables DNS.
	EtcdClientPort int
	EtcdPeerPort   int
	DiscoverdPort  int
	DNSPort        int
	// HostPort is the host agent's port, advertised in the host's
	// registration and as the discoverd service "flynn-host".
	HostPort int
	// TTL is how long a host or an instance lives without heartbeats
	// (discoverd.DefaultTTL when zero).
	TTL time.Duration
	// EtcdFast uses short etcd ticks (tests).
	EtcdFast bool
	// Tags are the host's placement tags.
	Tags map[string]string
	// Recursors answer DNS names outside .discoverd; nil reads them from
	// /etc/resolv.conf.
	Recursors []string
	// Services are further parts of the daemon (e.g. the host agent). Each
	// runs in its own goroutine once etcd and discoverd are up, until ctx
	// is done; an error from one stops the daemon.
	Services []func(ctx context.Context, d *Deps) error
}

// Deps is what the daemon gives to its Services.
type Deps struct {
	Etcd *clientv3.Client
	// KV reaches the same etcd over its JSON gateway, for the packages the
	// components share with the daemon (the controller's store, the
	// scheduler's election).
	KV        *etcdkv.Client
	HostID    string
	ClusterID string
	// Token is the cluster token internal APIs require.
	Token    string
	ListenIP string
	// DiscoverdURL is this host's discoverd, e.g. http://10.0.0.1:1111, and
	// Discoverd a client of it.
	DiscoverdURL string
	Discoverd    *discoverdclient.Client
	Log          *slog.Logger
}

func (c *Config) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.ListenIP == "" {
		c.ListenIP = DefaultListenIP()
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.EtcdClientPort, DefaultEtcdClientPort)
	def(&c.EtcdPeerPort, DefaultEtcdPeerPort)
	def(&c.DiscoverdPort, DefaultDiscoverdPort)
	def(&c.DNSPort, DefaultDNSPort)
	def(&c.HostPort, DefaultHostPort)
	if c.TTL <= 0 {
		c.TTL = discoverd.DefaultTTL
	}
}

// DefaultListenIP is the address of the interface of the default route, or
// 127.0.0.1 when there is none (a single development node).
func DefaultListenIP() string {
	// Connecting a UDP socket sends nothing; it only picks the route.
	c, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

func hostURL(ip string, port int) string {
	return "http://" + net.JoinHostPort(ip, strconv.Itoa(port))
}

// Run runs the daemon until ctx is done: it starts (or joins) etcd,
// serves discoverd, registers the host, runs cfg.Services, and on the way
// out deregisters and stops everything it started.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg.setDefaults()
	if net.ParseIP(cfg.ListenIP) == nil {
		return fmt.Errorf("listen ip %q is not an IP address", cfg.ListenIP)
	}
	hc, err := LoadHostConfig(cfg.StateDir)
	if err != nil {
		return err
	}
	log = log.With("host", hc.HostID)

	cli, member, closeEtcd, err := startEtcd(ctx, &cfg, hc, log)
	if err != nil {
		return err
	}
	defer closeEtcd()
	var kvTLS *tls.Config
	if eps := cli.Endpoints(); len(eps) > 0 && strings.HasPrefix(eps[0], "https:") {
		if kvTLS, err = pki.TLSConfig(PKIDir(cfg.StateDir), pki.HostCert, pki.HostKey); err != nil {
			return err
		}
	}
	kv, err := etcdkv.New(etcdkv.Config{Endpoints: cli.Endpoints(), TLS: kvTLS})
	if err != nil {
		return err
	}
	defer kv.Close()

	store := discoverd.NewStore(cli, cfg.TTL)
	httpLn, err := net.Listen("tcp", net.JoinHostPort(cfg.ListenIP, strconv.Itoa(cfg.DiscoverdPort)))
	if err != nil {
		return fmt.Errorf("discoverd: %w", err)
	}
	var dnsPC net.PacketConn
	var dnsLn net.Listener
	if cfg.DNSPort > 0 {
		addr := net.JoinHostPort(cfg.ListenIP, strconv.Itoa(cfg.DNSPort))
		if dnsPC, err = net.ListenPacket("udp", addr); err == nil {
			if dnsLn, err = net.Listen("tcp", addr); err != nil {
				dnsPC.Close()
			}
		}
		if err != nil {
			httpLn.Close()
			return fmt.Errorf("discoverd dns: %w", err)
		}
	}

	discoverdURL := hostURL(cfg.ListenIP, cfg.DiscoverdPort)
	deps := &Deps{
		Etcd: cli, KV: kv, HostID: hc.HostID, ClusterID: hc.ClusterID, Token: hc.Token, ListenIP: cfg.ListenIP,
		DiscoverdURL: discoverdURL, Discoverd: discoverdclient.New(discoverdURL, hc.Token), Log: log,
	}

	// Servers outlive the services, so that services can deregister
	// through them on the way out.
	svcCtx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	srvCtx, stopServers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServers()
	servers := newGroup(stopServices)
	mux := http.NewServeMux()
	discoverd.Routes(mux, store, log.With("component", "discoverd"))
	g := &gridAPI{cli: cli, store: store, hc: hc, pkiDir: PKIDir(cfg.StateDir)}
	g.routes(mux)
	handler := httpapi.Wrap(log, requireToken(hc.Token, mux))
	servers.Go(func() error { return httpapi.Serve(srvCtx, httpLn, handler, log) })
	if dnsPC != nil {
		recursors := cfg.Recursors
		if recursors == nil {
			recursors = discoverd.Recursors("/etc/resolv.conf", dnsPC.LocalAddr().String())
		}
		d := discoverd.NewDNS(store, recursors, log.With("component", "dns"))
		servers.Go(func() error { return d.Serve(srvCtx, dnsPC, dnsLn) })
	}

	host := &api.Host{
		ID: hc.HostID, Addr: cfg.ListenIP, URL: hostURL(cfg.ListenIP, cfg.HostPort), Tags: cfg.Tags,
		Memory: totalMemory(), CPUs: runtime.NumCPU(), EtcdMember: member, StartedAt: time.Now().UTC(),
	}
	services := newGroup(stopServices)
	services.Go(func() error { return registerHost(svcCtx, cli, host, cfg.TTL, log) })
	services.Go(func() error {
		return registerService(svcCtx, deps.Discoverd, "flynn-host", net.JoinHostPort(cfg.ListenIP, strconv.Itoa(cfg.HostPort)),
			map[string]string{"id": hc.HostID}, log)
	})
	for _, s := range cfg.Services {
		services.Go(func() error { return s(svcCtx, deps) })
	}
	log.Info("daemon ready", "listen_ip", cfg.ListenIP, "discoverd", discoverdURL, "etcd_member", member, "cluster", hc.ClusterID)

	err = services.Wait()
	stopServers()
	if serr := servers.Wait(); err == nil {
		err = serr
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	log.Info("daemon stopped")
	return err
}

// PKIDir is the host's PKI dir (internal/pki) in stateDir.
func PKIDir(stateDir string) string { return filepath.Join(stateDir, "pki") }

// startEtcd starts, restarts or joins this host's etcd member, or connects
// to the cluster as a client, per the host config; it records the outcome
// in the host config. It returns a client, whether the host is a member,
// and a function that stops what it started.
func startEtcd(ctx context.Context, cfg *Config, hc *HostConfig, log *slog.Logger) (*clientv3.Client, bool, func(), error) {
	ecfg := etcdserver.Config{
		Name:      hc.HostID,
		DataDir:   filepath.Join(cfg.StateDir, "etcd"),
		ClientURL: hostURL(cfg.ListenIP, cfg.EtcdClientPort),
		PeerURL:   hostURL(cfg.ListenIP, cfg.EtcdPeerPort),
		Token:     hc.ClusterID,
		Fast:      cfg.EtcdFast,
	}
	// Mutual TLS with the cluster's CA (a cluster made before it had one
	// keeps plain HTTP).
	pkiDir := PKIDir(cfg.StateDir)
	ips := []net.IP{net.ParseIP(cfg.ListenIP)}
	if ips[0].IsLoopback() && !ips[0].Equal(net.IPv4(127, 0, 0, 1)) {
		// Hosts on 127.0.0.x reach each other from 127.0.0.1, and etcd
		// checks a peer's certificate against its source address.
		ips = append(ips, net.IPv4(127, 0, 0, 1))
	}
	tlsOn, err := pki.EnsureHost(pkiDir, hc.HostID, ips)
	if err != nil {
		return nil, false, nil, fmt.Errorf("host certificate: %w", err)
	}
	var clientTLS *tls.Config
	if tlsOn {
		ecfg.TLSDir = pkiDir
		ecfg.ClientURL = "https" + strings.TrimPrefix(ecfg.ClientURL, "http")
		ecfg.PeerURL = "https" + strings.TrimPrefix(ecfg.PeerURL, "http")
		if clientTLS, err = pki.TLSConfig(pkiDir, pki.HostCert, pki.HostKey); err != nil {
			return nil, false, nil, err
		}
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	role := hc.Role
	if etcdserver.HasData(ecfg.DataDir) {
		role = RoleMember
	}
	var srv *etcdserver.Server
	switch role {
	case RoleInit:
		srv, err = etcdserver.Start(startCtx, ecfg)
		if err == nil {
			err = writeClusterRecord(startCtx, srv.Client(), hc)
		}
	case RoleMember:
		if !etcdserver.HasData(ecfg.DataDir) {
			return nil, false, nil, fmt.Errorf("host is an etcd member but %s has no data: remove the member (etcdctl member remove) and join again", ecfg.DataDir)
		}
		srv, err = etcdserver.Start(startCtx, ecfg)
	case RoleJoin, RoleClient:
		var jcli *clientv3.Client
		jcli, err = clusterClient(hc.EtcdEndpoints, clientTLS)
		if err != nil {
			return nil, false, nil, err
		}
		if role == RoleJoin {
			var join bool
			join, err = shouldJoin(startCtx, jcli, hc)
			if err == nil && join {
				log.Info("joining etcd as a member", "peer_url", ecfg.PeerURL)
				srv, err = etcdserver.Join(startCtx, jcli, ecfg)
			}
		}
		if err != nil || srv != nil {
			jcli.Close()
			break
		}
		log.Info("using etcd as a client", "endpoints", hc.EtcdEndpoints)
		hc.Role = RoleClient
		if err := refreshEndpoints(startCtx, jcli, hc, cfg.StateDir); err != nil {
			jcli.Close()
			return nil, false, nil, err
		}
		return jcli, false, func() { jcli.Close() }, nil
	}
	if err != nil {
		return nil, false, nil, fmt.Errorf("etcd: %w", err)
	}
	hc.Role = RoleMember
	if err := refreshEndpoints(startCtx, srv.Client(), hc, cfg.StateDir); err != nil {
		srv.Close()
		return nil, false, nil, err
	}
	go func() {
		// A fatal etcd error is logged; the daemon's requests then fail
		// and its registrations lapse, which the cluster notices.
		if err, ok := <-srv.Err(); ok && err != nil {
			log.Error("etcd failed", "err", err)
		}
	}()
	return srv.Client(), true, func() { srv.Close() }, nil
}

func clusterClient(endpoints []string, tlsConfig *tls.Config) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("host config lists no etcd endpoints: run `flynn-host join` again")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:        endpoints,
		DialTimeout:      5 * time.Second,
		AutoSyncInterval: 30 * time.Second,
		TLS:              tlsConfig,
		// Its retries' warnings are noise in the daemon's log; the
		// errors reach the callers, which say what failed.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

func writeClusterRecord(ctx context.Context, cli *clientv3.Client, hc *HostConfig) error {
	rec := api.ClusterRecord{ID: hc.ClusterID, MaxEtcdMembers: hc.MaxEtcdMembers, CreatedAt: time.Now().UTC()}
	if rec.MaxEtcdMembers == 0 {
		rec.MaxEtcdMembers = DefaultMaxEtcdMembers
	}
	b, _ := json.Marshal(rec)
	_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(api.KeyCluster), "=", 0)).
		Then(clientv3.OpPut(api.KeyCluster, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("write cluster record: %w", err)
	}
	return nil
}

func readClusterRecord(ctx context.Context, cli *clientv3.Client) (*api.ClusterRecord, error) {
	res, err := cli.Get(ctx, api.KeyCluster)
	if err != nil {
		return nil, fmt.Errorf("read cluster record: %w", err)
	}
	rec := &api.ClusterRecord{MaxEtcdMembers: DefaultMaxEtcdMembers}
	if len(res.Kvs) == 1 {
		if err := json.Unmarshal(res.Kvs[0].Value, rec); err != nil {
			return nil, fmt.Errorf("read cluster record: %w", err)
		}
	}
	return rec, nil
}

// shouldJoin reports whether the cluster wants another etcd member.
func shouldJoin(ctx context.Context, cli *clientv3.Client, hc *HostConfig) (bool, error) {
	rec, err := readClusterRecord(ctx, cli)
	if err != nil {
		return false, err
	}
	if hc.ClusterID != "" && rec.ID != "" && rec.ID != hc.ClusterID {
		return false, fmt.Errorf("etcd endpoints belong to cluster %s, not %s", rec.ID, hc.ClusterID)
	}
	members, err := etcdserver.Members(ctx, cli)
	if err != nil {
		return false, err
	}
	for _, m := range members {
		if m.Name == hc.HostID {
			return true, nil // an interrupted join: finish it
		}
	}
	return len(members) < rec.MaxEtcdMembers, nil
}

// refreshEndpoints records the members' client URLs in the host config.
func refreshEndpoints(ctx context.Context, cli *clientv3.Client, hc *HostConfig, stateDir string) error {
	members, err := etcdserver.Members(ctx, cli)
	if err != nil {
		return err
	}
	var eps []string
	for _, m := range members {
		eps = append(eps, m.ClientURLs...)
	}
	if len(eps) > 0 {
		hc.EtcdEndpoints = eps
	}
	return hc.Save(stateDir)
}

// registerHost keeps the host's registration under a lease until ctx is
// done, then revokes it so the host disappears at once.
func registerHost(ctx context.Context, cli *clientv3.Client, host *api.Host, ttl time.Duration, log *slog.Logger) error {
	key := api.KeyHosts + host.ID
	b, _ := json.Marshal(host)
	secs := max(int(ttl/time.Second), 1)
	recorded := false
	for {
		// The lasting record, for listing hosts that are down.
		if !recorded {
			if _, err := cli.Put(ctx, api.KeyHostRecords+host.ID, string(b)); err == nil {
				recorded = true
			}
		}
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
		if err == nil {
			if _, err = cli.Put(ctx, key, string(b), clientv3.WithLease(sess.Lease())); err == nil {
				select {
				case <-ctx.Done():
					rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
					cli.Revoke(rctx, sess.Lease())
					cancel()
					sess.Orphan()
					return nil
				case <-sess.Done():
					log.Warn("host registration lease lost; registering again")
					continue
				}
			}
			sess.Orphan()
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("register host", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// registerService registers addr in a discoverd service until ctx is done,
// retrying until the first registration works.
func registerService(ctx context.Context, c *discoverdclient.Client, service, addr string, meta map[string]string, log *slog.Logger) error {
	var reg *discoverdclient.Registration
	for {
		var err error
		if reg, err = c.Register(ctx, service, addr, meta); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("register in discoverd", "service", service, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	<-ctx.Done()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := reg.Deregister(dctx); err != nil {
		log.Warn("deregister from discoverd", "service", service, "err", err)
	}
	return nil
}

func totalMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// group runs goroutines, remembers the first error and calls cancel on it;
// Wait waits for all of them.
type group struct {
	wg     sync.WaitGroup
	cancel func()
	once   sync.Once
	err    error
}

func newGroup(cancel func()) *group { return &group{cancel: cancel} }

func (g *group) Go(fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil {
			g.once.Do(func() {
				g.err = err
				g.cancel()
			})
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	return g.err
}

// requireToken guards the daemon's API (discoverd and the grid API): the
// cluster token opens everything, the service token (api.ServiceToken:
// the router's, blobstore's and log aggregator's) only discoverd's
// /services; /ping is open.
func requireToken(token string, h http.Handler) http.Handler {
	auth := httpapi.NewKeyAuth(token)
	svc := httpapi.NewKeyAuth(api.ServiceToken(token))
	open := func(r *http.Request) bool {
		return r.URL.Path == "/ping" || ((r.URL.Path == "/services" || strings.HasPrefix(r.URL.Path, "/services/")) && svc.Check(r))
	}
	return auth.Require(open, h)
}
