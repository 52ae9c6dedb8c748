package bootstrap

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// MarkerKey is the etcd key that records a finished bootstrap.
const MarkerKey = "/flynn/bootstrap"

// Ports are the host ports the system components listen on (they all run
// with host networking). The controller has none: each of its jobs gets a
// port from its host and is found through discoverd (service controller)
// and the router (controller.DOMAIN), so it scales like any app.
type Ports struct {
	HTTP, HTTPS, RouterAPI, Blobstore, Logagg, GitHTTP, GitSSH int
	// Postgres is the routers' TCP route port apps reach the postgres
	// appliance's leader at (default DefaultPostgresPort; within the
	// routers' TCP range).
	Postgres int
	// MySQL is the routers' TCP route port of the mysql appliance's
	// leader (default DefaultMySQLPort).
	MySQL int
	// Redis is the routers' TCP route port of the redis appliance's
	// leader (default DefaultRedisPort).
	Redis int
}

// DefaultRedisPort is Ports.Redis when not set (the routers' TCP range
// is 3000-3500: 3379 for Redis's 6379).
const DefaultRedisPort = 3379

// DefaultMySQLPort is Ports.MySQL when not set.
const DefaultMySQLPort = 3306

// DefaultPostgresPort is Ports.Postgres when not set.
const DefaultPostgresPort = 3432

// DefaultPostgresHost is the host name apps are given for the postgres
// appliance (PGHOST): its leader's host, whose router forwards the route
// port to the leader.
const DefaultPostgresHost = "leader.postgres.discoverd"

// DefaultPorts are the ports of a production cluster.
var DefaultPorts = Ports{HTTP: 80, HTTPS: 443, RouterAPI: 5000, Blobstore: 5380, Logagg: 5381, GitHTTP: 5382, GitSSH: 2222, Postgres: DefaultPostgresPort, MySQL: DefaultMySQLPort, Redis: DefaultRedisPort}

// Config says which cluster to bootstrap and how.
type Config struct {
	// DiscoverdURL is a host's discoverd API; Token the cluster token.
	DiscoverdURL string
	Token        string
	// Domain is CLUSTER_DOMAIN: apps are served at <app>.<Domain>.
	Domain string
	// StateDir is where the secrets, certificates, the busybox layer and
	// the system apps' data are kept on this host.
	StateDir string
	// FlynnHost is the flynn-host binary bind-mounted into system jobs
	// (default: this executable).
	FlynnHost string
	// Busybox is the busybox binary of the system jobs' rootfs.
	Busybox string
	Ports   Ports
	// Manifest is the steps to run (default DefaultManifest()).
	Manifest *Manifest
	// PostgresHost is the host name apps get for the postgres appliance
	// (default DefaultPostgresHost); a cluster whose jobs have no
	// discoverd DNS gives an address of the hosts' routers instead.
	PostgresHost string
	// MySQLHost is the host name apps get for the mysql appliance
	// (default leader.mysql.discoverd).
	MySQLHost string
	// RedisHost is the host name apps get for the redis appliance
	// (default leader.redis.discoverd).
	RedisHost string
	// StackLayer is the build stack's layer tar on this host, given to
	// gitreceive as $STACK_URL (file://...).
	StackLayer string
	// StartJobs makes deploy-app start the jobs itself, as run-app does,
	// instead of waiting for the scheduler to start them.
	StartJobs bool
	// Out gets one progress line per step.
	Out io.Writer
	// EtcdTLS is the client TLS config for the cluster's etcd (nil: plain
	// HTTP, for a cluster with no internal CA). With it, the components
	// that use etcd get the flynn-host:etcd-tls mount.
	EtcdTLS *tls.Config
}

// Result is what a bootstrapped cluster's users need.
type Result struct {
	Domain string `json:"domain"`
	// Key is the controller (cluster API) key.
	Key string `json:"key"`
	// Pin is base64 sha256 of the wildcard certificate's DER.
	Pin string `json:"pin"`
	// CACert is the cluster CA (PEM).
	CACert string `json:"ca_cert"`
	// ControllerURL and GitURL reach the controller and gitreceive
	// through the router: https://controller.DOMAIN and
	// https://git.DOMAIN, with the HTTPS port when it is not 443.
	ControllerURL string `json:"controller_url"`
	GitURL        string `json:"git_url"`
	// SSHGit is host:port of git over SSH.
	SSHGit string `json:"ssh_git,omitempty"`
	// BlobURL is the blobstore's address on the first host, which this
	// machine reaches (artifacts name it blobstore.discoverd).
	BlobURL string `json:"blob_url,omitempty"`
	// AlreadyDone is set when the cluster was bootstrapped before.
	AlreadyDone bool `json:"-"`
}

// ClusterAddLine is the command that adds the cluster to a flynn CLI.
func (r *Result) ClusterAddLine(name string) string {
	return "flynn cluster add " + strings.Join(r.ClusterAddArgs(name), " ")
}

// ClusterAddArgs are the arguments of `flynn cluster add` that add the
// cluster as name.
func (r *Result) ClusterAddArgs(name string) []string {
	args := []string{"-p", r.Pin}
	if r.ControllerURL != "" && r.ControllerURL != "https://controller."+r.Domain {
		args = append(args, "--controller-url", r.ControllerURL)
	}
	if r.GitURL != "" && r.GitURL != "https://git."+r.Domain {
		args = append(args, "--git-url", r.GitURL)
	}
	if r.SSHGit != "" {
		args = append(args, "--ssh-git", r.SSHGit)
	}
	return append(args, name, r.Domain, r.Key)
}

// run is the state of one bootstrap.
type run struct {
	cfg      Config
	log      *slog.Logger
	vars     map[string]string
	hosts    []*api.Host
	etcd     *clientv3.Client
	disc     *discoverdclient.Client
	ctl      *controllerclient.Client
	res      *Result
	art      *api.Artifact
	stackArt *api.Artifact
	apps     map[string]*appState
	tlsDir   string
}

// appState is what the bootstrap made of one system app.
type appState struct {
	app     *api.App
	release *api.Release
	art     *api.Artifact
	started bool
}

// Run bootstraps the cluster. On a cluster bootstrapped before it changes
// nothing and returns the recorded result with AlreadyDone set.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (*Result, error) {
	if cfg.Domain == "" {
		return nil, errors.New("bootstrap: the cluster domain is required")
	}
	if cfg.Manifest == nil {
		cfg.Manifest = DefaultManifest()
	}
	if err := cfg.Manifest.Validate(); err != nil {
		return nil, err
	}
	if cfg.Ports == (Ports{}) {
		cfg.Ports = DefaultPorts
	}
	if cfg.Ports.Postgres == 0 {
		cfg.Ports.Postgres = DefaultPostgresPort
	}
	if cfg.PostgresHost == "" {
		cfg.PostgresHost = DefaultPostgresHost
	}
	if cfg.Ports.MySQL == 0 {
		cfg.Ports.MySQL = DefaultMySQLPort
	}
	if cfg.MySQLHost == "" {
		cfg.MySQLHost = "leader.mysql.discoverd"
	}
	if cfg.Ports.Redis == 0 {
		cfg.Ports.Redis = DefaultRedisPort
	}
	if cfg.RedisHost == "" {
		cfg.RedisHost = "leader.redis.discoverd"
	}
	if cfg.FlynnHost == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.FlynnHost = exe
	}
	if cfg.Busybox == "" {
		cfg.Busybox = image.DefaultBusybox
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	r := &run{cfg: cfg, log: log, apps: map[string]*appState{}, tlsDir: filepath.Join(cfg.StateDir, "bootstrap")}
	dc := &httpclient.Client{URL: strings.TrimSuffix(cfg.DiscoverdURL, "/"), Key: cfg.Token}
	r.disc = discoverdclient.New(strings.TrimSuffix(cfg.DiscoverdURL, "/"), cfg.Token)
	var info api.ClusterInfo
	if err := dc.Do(ctx, "GET", "/grid/cluster", nil, &info); err != nil {
		return nil, fmt.Errorf("bootstrap: ask discoverd at %s about the cluster (is flynn-host daemon running?): %w", cfg.DiscoverdURL, err)
	}
	var st api.GridStatus
	if err := dc.Do(ctx, "GET", "/grid/status", nil, &st); err != nil {
		return nil, fmt.Errorf("bootstrap: list hosts: %w", err)
	}
	if len(st.Hosts) == 0 {
		return nil, errors.New("bootstrap: no host is up: start flynn-host daemon first")
	}
	sort.Slice(st.Hosts, func(i, j int) bool { return st.Hosts[i].ID < st.Hosts[j].ID })
	for _, h := range st.Hosts {
		if h.ID == st.HostID { // the host we talk to goes first
			r.hosts = append([]*api.Host{h}, r.hosts...)
		} else {
			r.hosts = append(r.hosts, h)
		}
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 10 * time.Second, TLS: cfg.EtcdTLS, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("bootstrap: etcd: %w", err)
	}
	defer etcd.Close()
	r.etcd = etcd
	if prev, err := r.marker(ctx); err != nil || prev != nil {
		return prev, err
	}
	listenIP := r.hosts[0].Addr
	p := cfg.Ports
	r.vars = map[string]string{
		"CLUSTER_DOMAIN":    cfg.Domain,
		"CLUSTER_TOKEN":     cfg.Token,
		"SERVICE_TOKEN":     api.ServiceToken(cfg.Token),
		"DISCOVERD":         strings.TrimSuffix(cfg.DiscoverdURL, "/"),
		"ETCD_ENDPOINTS":    strings.Join(info.EtcdEndpoints, ","),
		"LISTEN_IP":         listenIP,
		"HTTP_PORT":         strconv.Itoa(p.HTTP),
		"HTTPS_PORT":        strconv.Itoa(p.HTTPS),
		"ROUTER_API_PORT":   strconv.Itoa(p.RouterAPI),
		"BLOBSTORE_PORT":    strconv.Itoa(p.Blobstore),
		"LOGAGG_PORT":       strconv.Itoa(p.Logagg),
		"GIT_HTTP_PORT":     strconv.Itoa(p.GitHTTP),
		"GIT_SSH_PORT":      strconv.Itoa(p.GitSSH),
		"PG_PUBLIC_PORT":    strconv.Itoa(p.Postgres),
		"PG_PUBLIC_HOST":    cfg.PostgresHost,
		"MYSQL_PUBLIC_PORT": strconv.Itoa(p.MySQL),
		"MYSQL_PUBLIC_HOST": cfg.MySQLHost,
		"REDIS_PUBLIC_PORT": strconv.Itoa(p.Redis),
		"REDIS_PUBLIC_HOST": cfg.RedisHost,
	}
	r.vars["FLYNN_HOST_BIN"] = cfg.FlynnHost
	if cfg.StackLayer != "" {
		digest, err := stackDigest(cfg.StackLayer)
		if err != nil {
			return nil, fmt.Errorf("stack layer: %w", err)
		}
		r.vars["STACK_URL"] = "file://" + cfg.StackLayer
		r.vars["STACK_SHA256"] = digest
	}
	r.res = &Result{
		Domain:        cfg.Domain,
		ControllerURL: routedURL("controller."+cfg.Domain, p.HTTPS),
		GitURL:        routedURL("git."+cfg.Domain, p.HTTPS),
		SSHGit:        net.JoinHostPort(listenIP, strconv.Itoa(p.GitSSH)),
		BlobURL:       "http://" + net.JoinHostPort(listenIP, strconv.Itoa(p.Blobstore)),
	}
	for _, s := range cfg.Manifest.Steps {
		if app := cfg.Manifest.Apps[s.App]; app != nil && app.RequiresStack && r.vars["STACK_URL"] == "" {
			fmt.Fprintf(cfg.Out, "%-24s skipped: app %s runs on the stack and this cluster has none\n", s.ID, s.App)
			continue
		}
		start := time.Now()
		err := r.step(ctx, s)
		switch {
		case err != nil && s.Optional:
			fmt.Fprintf(cfg.Out, "%-24s skipped (optional): %v\n", s.ID, err)
		case err != nil:
			fmt.Fprintf(cfg.Out, "%-24s FAILED\n", s.ID)
			return nil, fmt.Errorf("bootstrap step %s (%s): %w", s.ID, s.Action, err)
		default:
			fmt.Fprintf(cfg.Out, "%-24s done in %s\n", s.ID, time.Since(start).Round(time.Millisecond))
		}
	}
	b, _ := json.Marshal(r.res)
	if _, err := etcd.Put(ctx, MarkerKey, string(b)); err != nil {
		return nil, fmt.Errorf("bootstrap: record completion: %w", err)
	}
	return r.res, nil
}

// routedURL is the HTTPS URL of host through the router.
func routedURL(host string, httpsPort int) string {
	if httpsPort == 443 {
		return "https://" + host
	}
	return "https://" + net.JoinHostPort(host, strconv.Itoa(httpsPort))
}

// marker returns the result of an earlier bootstrap, or nil.
func (r *run) marker(ctx context.Context) (*Result, error) {
	resp, err := r.etcd.Get(ctx, MarkerKey)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: read %s: %w", MarkerKey, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	res := &Result{AlreadyDone: true}
	if err := json.Unmarshal(resp.Kvs[0].Value, res); err != nil {
		return nil, fmt.Errorf("bootstrap: decode %s: %w", MarkerKey, err)
	}
	return res, nil
}

// expand replaces ${NAME} with the bootstrap's variables.
func (r *run) expand(s string) string {
	return os.Expand(s, func(k string) string { return r.vars[k] })
}

func (r *run) step(ctx context.Context, s *Step) error {
	timeout := time.Duration(s.Timeout)
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	switch s.Action {
	case ActionGenKeys:
		r.res.Key = randomHex(16)
		r.vars["CONTROLLER_KEY"] = r.res.Key
		// The system key makes apps system apps (flynn-system-* meta):
		// only the controller and this bootstrap hold it.
		r.vars["SYSTEM_KEY"] = randomHex(16)
		r.vars["ROUTER_COOKIE_KEY"] = randomHex(32)
		r.vars["POSTGRES_API_KEY"] = randomHex(24)
		r.vars["MYSQL_API_KEY"] = randomHex(24)
		r.vars["REDIS_API_KEY"] = randomHex(24)
		return nil
	case ActionGenTLS:
		return r.genTLS(ctx)
	case ActionRunApp:
		return r.runApp(ctx, s.App)
	case ActionWaitController:
		return r.waitController(ctx, timeout)
	case ActionAddApp:
		return r.addApp(ctx, s.App)
	case ActionDeployApp:
		if r.cfg.StartJobs {
			if err := r.runApp(ctx, s.App); err != nil {
				return err
			}
		}
		if err := r.addApp(ctx, s.App); err != nil {
			return err
		}
		return r.waitApp(ctx, s.App, timeout)
	case ActionAddRoute:
		return r.addRoute(ctx, s)
	case ActionAddProvider:
		return r.addProvider(ctx, s)
	case ActionWaitHTTP:
		return waitHTTP(ctx, r.expand(s.URL), r.expand(s.Host), s.Status, timeout)
	case ActionUploadStack:
		return r.uploadStack(ctx)
	}
	return fmt.Errorf("unknown action %q", s.Action)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// artifact is the system apps' image: a busybox layer each host builds
// from its own busybox binary (api.LocalBusyboxLayer), with the
// flynn-host binary bind-mounted in. No host has to fetch it, so the
// platform can start on any host, the blobstore included.
func (r *run) artifact() (*api.Artifact, error) {
	if r.art != nil {
		return r.art, nil
	}
	r.art = &api.Artifact{
		ID: uuid.NewString(), Type: api.ArtifactTypeFlynn, URI: api.LocalBusyboxLayer,
		Meta: map[string]string{"flynn.component": "system"},
		// System components run as root (host ports, the cluster's TLS
		// key, the state dir); apps run as an unprivileged user.
		Manifest: &api.ImageManifest{Type: api.ManifestType, Entrypoints: map[string]*api.Entrypoint{
			"_default": {Uid: &rootID, Gid: &rootID},
		}, Rootfs: []*api.ImageRootfs{{
			Platform: &api.ImagePlatform{Architecture: "amd64", OS: "linux"},
			Layers:   []*api.ImageLayer{{ID: "busybox", Type: api.LayerTypeTarGz, URL: api.LocalBusyboxLayer}},
		}}},
	}
	return r.art, nil
}

var rootID uint32

// release builds the app's release: the manifest's process types with the
// variables filled in, ports set from $PORT, and the mounts every system
// job needs.
func (r *run) release(name string) (*appState, error) {
	if st := r.apps[name]; st != nil {
		return st, nil
	}
	spec := r.cfg.Manifest.Apps[name]
	art, err := r.artifact()
	if err != nil {
		return nil, err
	}
	if spec.Stack && r.vars["STACK_URL"] != "" {
		art = r.stackArtifact()
	}
	procs := map[string]*api.ProcessType{}
	for typ, p := range spec.Processes {
		q := *p
		q.Args = nil
		for _, a := range p.Args {
			q.Args = append(q.Args, r.expand(a))
		}
		q.Env = map[string]string{}
		for k, v := range p.Env {
			q.Env[k] = r.expand(v)
		}
		q.Ports = nil
		for i, pt := range p.Ports {
			if pt.Port == 0 && i == 0 && q.Env["PORT"] != "" {
				pt.Port, _ = strconv.Atoi(q.Env["PORT"])
			}
			if pt.Port == 0 && !q.HostNetwork {
				return nil, fmt.Errorf("app %s: process %s: port %d has no number (set PORT)", name, typ, i)
			}
			q.Ports = append(q.Ports, pt)
		}
		// Paths of whichever host runs the job (see api.HostMountPrefix),
		// never of the host bootstrapping.
		tls := api.HostMountPrefix + "tls-public"
		if spec.Root {
			tls = api.HostMountPrefix + "tls"
		}
		q.Mounts = append(append([]api.Mount(nil), p.Mounts...),
			api.Mount{Location: api.HostMountPrefix + "bin", Target: "/bin/flynn-host"},
			api.Mount{Location: tls, Target: "/etc/flynn"},
		)
		if len(p.Args) > 0 {
			// A component's own binary (flynn-host still serves the
			// one-off jobs of the release, such as redis-restore).
			if c, ok := api.ComponentBinary(p.Args[0]); ok {
				q.Mounts = append(q.Mounts, api.Mount{Location: api.HostMountPrefix + "component/" + c, Target: p.Args[0]})
			}
		}
		if spec.DataDir {
			q.Mounts = append(q.Mounts, api.Mount{Location: api.HostMountPrefix + "data/" + name, Target: "/data", Writeable: true})
		}
		if spec.Etcd && r.cfg.EtcdTLS != nil {
			q.Mounts = append(q.Mounts, api.Mount{Location: api.HostMountPrefix + "etcd-tls", Target: "/etc/flynn-etcd"})
			q.Env["ETCD_TLS_DIR"] = "/etc/flynn-etcd"
		}
		procs[typ] = &q
	}
	meta := map[string]string{api.MetaSystemApp: "true"}
	if spec.Critical {
		meta[api.MetaSystemCritical] = "true"
	}
	if spec.Restore {
		meta[api.MetaSystemRestore] = "true"
	}
	appID := uuid.NewString()
	st := &appState{
		app:     &api.App{ID: appID, Name: name, Meta: meta, Strategy: spec.Strategy},
		release: &api.Release{ID: uuid.NewString(), AppID: appID, ArtifactIDs: []string{art.ID}, Processes: procs, Meta: map[string]string{api.MetaSystemApp: "true"}},
	}
	st.art = art
	r.apps[name] = st
	return st, nil
}

// stackArtifact is the build stack's layer as a system image (run as root,
// with flynn-host bind-mounted like the busybox one).
func (r *run) stackArtifact() *api.Artifact {
	if r.stackArt != nil {
		return r.stackArt
	}
	digest := r.vars["STACK_SHA256"]
	url := r.vars["STACK_URL"]
	r.stackArt = &api.Artifact{
		ID: uuid.NewString(), Type: api.ArtifactTypeFlynn, URI: url,
		Meta: map[string]string{"flynn.component": "system", "flynn.stack": "true"},
		Manifest: &api.ImageManifest{Type: api.ManifestType, Entrypoints: map[string]*api.Entrypoint{
			"_default": {Uid: &rootID, Gid: &rootID},
		}, Rootfs: []*api.ImageRootfs{{
			Platform: &api.ImagePlatform{Architecture: "amd64", OS: "linux"},
			Layers: []*api.ImageLayer{{
				ID: digest, Type: api.LayerTypeTar,
				Hashes: map[string]string{"sha256": digest}, URL: url,
			}},
		}}},
	}
	return r.stackArt
}

// uploadStack puts the stack layer in the blobstore, unless it is there,
// and points STACK_URL at it there: build jobs and gitreceive, on any
// host, fetch it from the blobstore (each host once per digest).
func (r *run) uploadStack(ctx context.Context) error {
	if r.cfg.StackLayer == "" {
		return nil
	}
	digest := r.vars["STACK_SHA256"]
	path := "/stacks/" + digest + ".tar"
	blobs := blobclient.New("http://blobstore"+discoverdclient.ServiceDomain, r.res.Key, r.disc.HTTPClient())
	fi, err := os.Stat(r.cfg.StackLayer)
	if err != nil {
		return err
	}
	if info, err := blobs.Head(ctx, path); err != nil || info.Size != fi.Size() {
		f, err := os.Open(r.cfg.StackLayer)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := blobs.Put(ctx, path, f, &blobclient.PutOptions{SHA256: digest, Size: fi.Size()}); err != nil {
			return fmt.Errorf("upload the stack layer: %w", err)
		}
	}
	r.vars["STACK_URL"] = blobs.URL(path)
	return nil
}

// runApp starts the app's formation directly, the jobs of each type
// spread over the hosts in turn; omni types on every host.
func (r *run) runApp(ctx context.Context, name string) error {
	st, err := r.release(name)
	if err != nil {
		return err
	}
	spec := r.cfg.Manifest.Apps[name]
	types := make([]string, 0, len(spec.Formation))
	for t := range spec.Formation {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, typ := range types {
		proc := st.release.Processes[typ]
		if proc.Omni {
			for _, h := range r.hosts {
				if err := r.startJob(ctx, h, st, typ, 0, spec.Root); err != nil {
					return err
				}
			}
			continue
		}
		n := r.count(name, typ)
		if spec.Restore {
			n = min(n, 1) // (see AppSpec.Restore)
		}
		for i := 0; i < n; i++ {
			if err := r.startJob(ctx, r.hosts[i%len(r.hosts)], st, typ, i+1, spec.Root); err != nil {
				return err
			}
		}
	}
	st.started = true
	return nil
}

// startAttempts is how many times a system job is started on its host
// before the bootstrap gives up: a host that has just come up may fail a
// first start (its network or images still being set up), as a running
// cluster's scheduler would simply start the job again.
const startAttempts = 3

func (r *run) startJob(ctx context.Context, h *api.Host, st *appState, typ string, index int, root bool) error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = r.startJobOnce(ctx, h, st, typ, index, root); err == nil || ctx.Err() != nil {
			return err
		}
		if attempt < startAttempts {
			r.log.Warn("system job failed to start; starting it again", "app", st.app.Name, "type", typ, "host", h.ID, "err", err)
			select {
			case <-ctx.Done():
				return err
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
	}
	return err
}

func (r *run) startJobOnce(ctx context.Context, h *api.Host, st *appState, typ string, index int, root bool) error {
	// The host job as the scheduler would make it, so it adopts it.
	f := &api.ExpandedFormation{App: st.app, Release: st.release, Artifacts: []*api.Artifact{st.art}}
	id, uuid := scheduler.NewJobID(h.ID)
	hj := scheduler.HostJob(f, &scheduler.Job{ID: id, UUID: uuid, HostID: h.ID, AppID: st.app.ID, ReleaseID: st.release.ID, Type: typ, Index: index})
	if root {
		zero := uint32(0)
		hj.Config.Uid, hj.Config.Gid = &zero, &zero
	}
	hc := hostclient.New(h.URL, r.cfg.Token)
	aj, err := hc.AddJob(ctx, hj)
	if err != nil {
		return fmt.Errorf("start %s/%s on host %s: %w", st.app.Name, typ, h.ID, err)
	}
	if aj.Status != api.HostJobRunning && aj.Status != api.HostJobStarting {
		msg := aj.Status
		if aj.Error != nil {
			msg += ": " + *aj.Error
		}
		return fmt.Errorf("start %s/%s on host %s: %s", st.app.Name, typ, h.ID, msg)
	}
	r.log.Info("system job started", "app", st.app.Name, "type", typ, "job", hj.ID)
	return nil
}

// waitController waits until a controller registered in discoverd
// answers, and talks to the controller through discoverd from then on.
func (r *run) waitController(ctx context.Context, timeout time.Duration) error {
	key := r.vars["SYSTEM_KEY"]
	if key == "" { // a manifest without the keys step
		key = r.res.Key
	}
	r.ctl = controllerclient.NewWithHTTP("http://controller"+discoverdclient.ServiceDomain, key, r.disc.HTTPClient())
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := poll(ctx, func() error {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := r.ctl.ListApps(pctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("no controller registered in discoverd answered: %w", err)
	}
	return nil
}

// poll calls check every pollInterval until it succeeds, and returns nil,
// or until ctx ends, and returns check's last error.
func poll(ctx context.Context, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pollInterval):
		}
	}
}

const pollInterval = 200 * time.Millisecond

// addApp registers the app, its artifact, release and formation in the
// controller, and makes the release current.
func (r *run) addApp(ctx context.Context, name string) error {
	if r.ctl == nil {
		return errors.New("the controller is not up yet: put wait-controller first")
	}
	st, err := r.release(name)
	if err != nil {
		return err
	}
	if _, err := r.ctl.GetArtifact(ctx, st.art.ID); errors.Is(err, api.ErrNotFound) {
		if err := r.ctl.CreateArtifact(ctx, st.art); err != nil {
			return fmt.Errorf("create artifact: %w", err)
		}
	}
	app := *st.app
	if err := r.ctl.CreateApp(ctx, &app); err != nil {
		return fmt.Errorf("create app %s: %w", name, err)
	}
	rel := *st.release
	if err := r.ctl.CreateRelease(ctx, &rel); err != nil {
		return fmt.Errorf("create release of %s: %w", name, err)
	}
	procs := map[string]int{}
	for typ := range r.cfg.Manifest.Apps[name].Formation {
		procs[typ] = r.count(name, typ)
	}
	if err := r.ctl.PutFormation(ctx, &api.Formation{AppID: st.app.ID, ReleaseID: st.release.ID, Processes: procs}); err != nil {
		return fmt.Errorf("put formation of %s: %w", name, err)
	}
	if err := r.ctl.SetAppRelease(ctx, st.app.ID, st.release.ID); err != nil {
		return fmt.Errorf("set release of %s: %w", name, err)
	}
	return nil
}

// count is how many jobs of the app's process type run: the manifest's
// count, raised to 2 for an app that spreads when the cluster has 2 hosts
// or more (one host's loss then leaves one running).
func (r *run) count(name, typ string) int {
	spec := r.cfg.Manifest.Apps[name]
	n := spec.Formation[typ]
	if spec.Spread && n > 0 && len(r.hosts) > 1 {
		n = max(n, 2)
	}
	return n
}

// waitApp waits until every port of the app's processes is ready: a
// fixed port accepts connections on the first host, a port the host gave
// the job is registered in its service (once healthy).
func (r *run) waitApp(ctx context.Context, name string, timeout time.Duration) error {
	st := r.apps[name]
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for typ, p := range st.release.Processes {
		if r.cfg.Manifest.Apps[name].Formation[typ] == 0 {
			continue
		}
		for _, pt := range p.Ports {
			var check func() error
			var what string
			if pt.Service != nil {
				what = "has not registered in service " + pt.Service.Name
				check = func() error {
					insts, err := r.disc.Instances(ctx, pt.Service.Name)
					if err == nil && len(insts) == 0 {
						err = errors.New("no instance")
					}
					return err
				}
			} else {
				addr := net.JoinHostPort(r.vars["LISTEN_IP"], strconv.Itoa(pt.Port))
				what = "is not listening on " + addr
				check = func() error {
					c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
					if err == nil {
						c.Close()
					}
					return err
				}
			}
			if poll(ctx, check) != nil {
				hint := ""
				if !st.started {
					hint = " (the scheduler starts it: is the scheduler running?)"
				}
				return fmt.Errorf("%s/%s %s%s", name, typ, what, hint)
			}
		}
	}
	return nil
}

func (r *run) addRoute(ctx context.Context, s *Step) error {
	st := r.apps[s.App]
	if st == nil {
		return fmt.Errorf("app %s was not added before its route", s.App)
	}
	rt := &api.Route{Type: "http", Domain: r.expand(s.Domain), Service: r.expand(s.Service), Leader: s.Leader, MaxBodyBytes: s.MaxBodyBytes}
	if s.Type == api.RouteTCP {
		port, err := strconv.Atoi(r.expand(s.Port))
		if err != nil {
			return fmt.Errorf("tcp route of %s: port %q: %w", s.App, r.expand(s.Port), err)
		}
		rt = &api.Route{Type: api.RouteTCP, Port: int32(port), Service: r.expand(s.Service), Leader: s.Leader}
	}
	if err := r.ctl.CreateRoute(ctx, st.app.ID, rt); err != nil && !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrObjectExists) {
		return fmt.Errorf("route %s%s: %w", rt.Domain, s.Port, err)
	}
	return nil
}

// addProvider registers a resource provider in the controller.
func (r *run) addProvider(ctx context.Context, s *Step) error {
	if r.ctl == nil {
		return errors.New("the controller is not up yet: put wait-controller first")
	}
	p := &api.Provider{Name: r.expand(s.Name), URL: r.expand(s.URL)}
	if err := r.ctl.CreateProvider(ctx, p); err != nil && !errors.Is(err, api.ErrObjectExists) {
		return fmt.Errorf("provider %s: %w", p.Name, err)
	}
	return nil
}

// waitHTTP polls url (with Host header host) until it answers with one of
// want (any status below 500 when want is empty).
func waitHTTP(ctx context.Context, url, host string, want []int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	if host != "" {
		req.Host = host
	}
	err = poll(ctx, func() error {
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if len(want) == 0 && res.StatusCode < 500 || slices.Contains(want, res.StatusCode) {
			return nil
		}
		return errors.New(res.Status)
	})
	if err != nil {
		return fmt.Errorf("%s (host %s) did not answer as expected; last: %v", url, host, err)
	}
	return nil
}

// stackDigest is the sha256 of the stack layer, cached beside it in
// <layer>.sha256 (hashing half a gigabyte on every up would be slow).
func stackDigest(layer string) (string, error) {
	fi, err := os.Stat(layer)
	if err != nil {
		return "", err
	}
	cache := layer + ".sha256"
	if ci, err := os.Stat(cache); err == nil && !ci.ModTime().Before(fi.ModTime()) {
		if b, err := os.ReadFile(cache); err == nil && len(strings.TrimSpace(string(b))) == 64 {
			return strings.TrimSpace(string(b)), nil
		}
	}
	digest, err := image.FileDigest(layer)
	if err != nil {
		return "", err
	}
	os.WriteFile(cache, []byte(digest+"\n"), 0o644) // only a cache
	return digest, nil
}

// WaitRouted waits until the controller answers through this host's
// router at res.ControllerURL's port, over TLS checked against the
// cluster CA: what the CLI needs. It is how `up` waits for a cluster that
// restores itself (after a power loss or a restart).
func WaitRouted(ctx context.Context, res *Result, timeout time.Duration) error {
	u, err := url.Parse(res.ControllerURL)
	if err != nil || u.Hostname() == "" {
		return fmt.Errorf("the cluster's controller URL %q is not a URL", res.ControllerURL)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(res.CACert)) {
		return errors.New("the cluster's CA certificate is not PEM")
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: u.Hostname()},
	}, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = poll(ctx, func() error {
		req, err := http.NewRequestWithContext(ctx, "GET", "https://"+net.JoinHostPort("127.0.0.1", port)+"/ping", nil)
		if err != nil {
			return err
		}
		req.Host = u.Host
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
			return nil
		}
		return errors.New(resp.Status)
	})
	if err != nil {
		return fmt.Errorf("the controller did not answer through the router within %s; last: %v", timeout, err)
	}
	return nil
}
