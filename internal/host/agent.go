// Package host is the host agent: it accepts jobs over Flynn's host HTTP
// API (PUT /host/jobs/{id} and friends), resolves their images into
// layers, runs them through a runtime.Runtime, persists their state in
// bbolt so running jobs are re-adopted after a restart, and streams job
// events, logs and attach sessions.
package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/version"
)

// Config configures a host agent.
type Config struct {
	// ID is the host's id (default: the hostname).
	ID string
	// StateDir holds the job database, layers, job directories and
	// network state (default /var/lib/flynn).
	StateDir string
	// Listen is the API address (default ":1113"); Listener, when set,
	// is used instead.
	Listen   string
	Listener net.Listener
	// URL is the API URL the host advertises (default derived from Listen).
	URL string
	// Keys are the accepted cluster tokens. At least one is required.
	Keys []string
	// Runc is the OCI runtime binary (default "runc").
	Runc string
	// SupervisorCmd runs a job's supervisor; the job directory is
	// appended (default runtime.DefaultSupervisorCmd: flynn-supervisor next
	// to this executable, else this executable's supervise command).
	SupervisorCmd []string
	// Bridge and Subnet are the job network (defaults flynnbr0,
	// 100.64.0.0/16); HostIP is where ports are published (default all).
	Bridge string
	Subnet string
	HostIP string
	// PortMin and PortMax bound the host ports given to jobs (default
	// network.DefaultPortMin-DefaultPortMax).
	PortMin, PortMax int
	// DNS is the nameserver jobs use (default the bridge address).
	DNS string
	// Discoverd is the discoverd URL given to jobs as $DISCOVERD.
	Discoverd string
	// CgroupParent is the cgroup jobs go under (default "flynn").
	CgroupParent string
	// StopGrace is how long DELETE waits after SIGTERM before SIGKILL
	// (default 10s).
	StopGrace time.Duration
	// MaxEndedJobs is how many ended jobs (with their logs) the host
	// keeps; older ones are removed (default 100).
	MaxEndedJobs int
	// Runtime replaces the runc runtime (unit tests use runtime.Fake).
	Runtime runtime.Runtime
	// Registry, when set, registers jobs' service ports (see register.go).
	Registry Registry
	// DrainTimeout bounds the wait for routers to drain a stopping job
	// (default 10s).
	DrainTimeout time.Duration
	// HTTP fetches image layers (default http.DefaultClient); the daemon
	// gives one that dials *.discoverd names through discoverd, so layers
	// can live in the blobstore, on whichever host it runs.
	HTTP *http.Client
	// ResolveMount turns a mount location of the form "flynn-host:NAME"
	// into a directory or file of this host (its flynn-host binary, the
	// cluster's TLS files, a data dir): the platform's own jobs name what
	// they need without naming any host's paths. Nil refuses such
	// mounts.
	ResolveMount func(ctx context.Context, location string) (string, error)
	// SystemEnv, when set, gives env every host-network job gets (the
	// platform's components): this host's address and etcd endpoints.
	// The job's own env wins.
	SystemEnv func() map[string]string
	// MountAllow are the host paths jobs may bind-mount (see
	// PlatformMounts); a mount of any other path is refused.
	MountAllow []AllowedMount
	// MemoryCapacity is the memory the host's jobs may ask for in all
	// (api.MemoryRequest of each running job; default the host's total
	// memory): a job beyond it is refused, however it was placed.
	MemoryCapacity int64
	// RouterPorts, DNSPorts and DenyNets shape the jobs' firewall (see
	// network.Config; nil takes the defaults).
	RouterPorts []network.PortRange
	DNSPorts    []int
	DenyNets    []netip.Prefix
}

// MountPrefix starts the mount locations that Config.ResolveMount turns
// into this host's paths.
const MountPrefix = api.HostMountPrefix

// LocalBusyboxLayer is built by each host from its own busybox binary; its
// digest is the host's own, whatever the manifest says.
const LocalBusyboxLayer = api.LocalBusyboxLayer

// Agent is a running host agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	db     *bolt.DB
	state  *stateWriter // writes to db
	rt     runtime.Runtime
	images *image.Store
	auth   *httpapi.KeyAuth
	mounts mountAllowList

	mu      sync.Mutex
	jobs    map[string]*job
	subs    map[chan *api.HostJobEvent]bool
	regs    map[string]*jobRegs // service registrations by job id
	wg      sync.WaitGroup      // job watchers
	runCtx  context.Context
	stopRun context.CancelFunc
	ship    *logShipper // nil without discoverd

	busyboxOnce sync.Mutex
	busyboxDir  string

	// volSizes remembers volumes' sizes (see volumeSize).
	volSizeMu sync.Mutex
	volSizes  map[string]volSize
}

// job is the agent's record of one job.
type job struct {
	active *api.ActiveJob
	// done is closed when the job has ended.
	done     chan struct{}
	stopping bool
	// adopted: running when this agent started (a previous agent, or the
	// host before a power loss, registered its instances).
	adopted bool
}

var bucketJobs = []byte("jobs")

// New opens the agent's state and runtime. Jobs that were running when the
// previous agent stopped are adopted by Run.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/flynn"
	}
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = h
	}
	if cfg.Listen == "" {
		cfg.Listen = ":1113"
	}
	if cfg.MaxEndedJobs <= 0 {
		cfg.MaxEndedJobs = 100
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.MemoryCapacity <= 0 {
		cfg.MemoryCapacity = totalMemory()
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("host agent: a cluster token is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("host agent: %w", err)
	}
	images, err := image.NewStore(filepath.Join(cfg.StateDir, "images"))
	if err != nil {
		return nil, fmt.Errorf("host agent: %w", err)
	}
	if cfg.HTTP != nil {
		images.SetHTTPClient(cfg.HTTP)
	}
	rt := cfg.Runtime
	if rt == nil {
		netm, err := network.New(network.Config{
			Bridge: cfg.Bridge, Subnet: cfg.Subnet, HostIP: cfg.HostIP, StateDir: filepath.Join(cfg.StateDir, "net"),
			PortMin: cfg.PortMin, PortMax: cfg.PortMax,
			RouterPorts: cfg.RouterPorts, DNSPorts: cfg.DNSPorts, DenyNets: cfg.DenyNets,
		})
		if err != nil {
			return nil, fmt.Errorf("host agent: %w", err)
		}
		rt, err = runtime.NewRunc(runtime.Config{
			StateDir: filepath.Join(cfg.StateDir, "containers"), Runc: cfg.Runc, SupervisorCmd: cfg.SupervisorCmd,
			CgroupParent: cfg.CgroupParent, DNS: cfg.DNS, Network: netm,
		})
		if err != nil {
			return nil, fmt.Errorf("host agent: %w", err)
		}
	}
	db, err := bolt.Open(filepath.Join(cfg.StateDir, "host-state.bolt"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("host agent: open state: %w", err)
	}
	a := &Agent{
		cfg: cfg, log: log.With("component", "host"), db: db, state: newStateWriter(db), rt: rt, images: images,
		auth: httpapi.NewKeyAuth(cfg.Keys...), mounts: newMountAllowList(cfg.MountAllow),
		jobs: map[string]*job{}, subs: map[chan *api.HostJobEvent]bool{}, regs: map[string]*jobRegs{},
	}
	a.runCtx, a.stopRun = context.WithCancel(context.Background())
	if cfg.Discoverd != "" {
		// The log aggregator holds the service token, not the host
		// agents' cluster token.
		a.ship = newLogShipper(a, discoverdclient.New(cfg.Discoverd, cfg.Keys[0]), api.ServiceToken(cfg.Keys[0]))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketJobs)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			aj := &api.ActiveJob{}
			if err := json.Unmarshal(v, aj); err != nil {
				return fmt.Errorf("job %s: %w", k, err)
			}
			j := &job{active: aj, done: make(chan struct{})}
			if !running(aj.Status) {
				close(j.done)
			}
			a.jobs[string(k)] = j
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("host agent: load state: %w", err)
	}
	return a, nil
}

func running(status string) bool {
	return status == api.HostJobStarting || status == api.HostJobRunning
}

// URL is the agent's advertised API URL.
func (a *Agent) URL() string {
	if a.cfg.URL != "" {
		return a.cfg.URL
	}
	addr := a.cfg.Listen
	if a.cfg.Listener != nil {
		addr = a.cfg.Listener.Addr().String()
	}
	host, port, _ := net.SplitHostPort(addr)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Run adopts the jobs that were running, serves the API until ctx ends,
// then waits for its goroutines and closes the state. Jobs keep running.
func (a *Agent) Run(ctx context.Context) error {
	defer a.db.Close()
	if a.ship != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.ship.run(a.runCtx) }()
	}
	if k, ok := a.rt.(runtime.SpareKeeper); ok {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := k.KeepSpares(a.runCtx, a.log); err != nil {
				a.log.Error("keep spares", "err", err)
			}
		}()
	}
	a.mu.Lock()
	for id, j := range a.jobs {
		if running(j.active.Status) {
			a.log.Info("adopting job", "job", id, "pid", j.active.PID)
			j.adopted = true
			a.watch(id, j)
			a.registerJob(j.active)
		}
	}
	a.mu.Unlock()
	ln := a.cfg.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", a.cfg.Listen)
		if err != nil {
			a.stopRun()
			a.wg.Wait()
			return fmt.Errorf("host agent: %w", err)
		}
	}
	a.log.Info("host agent listening", "addr", ln.Addr().String(), "id", a.cfg.ID)
	err := httpapi.Serve(ctx, ln, a.Handler(), a.log)
	a.stopRun()
	a.wg.Wait()
	return err
}

// Close releases the agent's state without serving (for callers that
// used New and Handler but not Run).
func (a *Agent) Close() error {
	a.stopRun()
	a.wg.Wait()
	return a.db.Close()
}

// collect removes the oldest ended jobs beyond MaxEndedJobs, with their
// logs and records.
func (a *Agent) collect() {
	a.mu.Lock()
	var ended []*api.ActiveJob
	for _, j := range a.jobs {
		if !running(j.active.Status) {
			ended = append(ended, j.active)
		}
	}
	if len(ended) <= a.cfg.MaxEndedJobs {
		a.mu.Unlock()
		return
	}
	sort.Slice(ended, func(i, k int) bool { return ended[i].EndedAt.Before(ended[k].EndedAt) })
	var ids []string
	for _, aj := range ended[:len(ended)-a.cfg.MaxEndedJobs] {
		ids = append(ids, aj.Job.ID)
		delete(a.jobs, aj.Job.ID)
	}
	a.mu.Unlock()
	for _, id := range ids {
		if err := a.rt.Remove(context.Background(), id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			a.log.Error("remove ended job", "job", id, "err", err)
		}
		if err := a.state.queue(id, nil)(); err != nil {
			a.log.Error("remove ended job", "job", id, "err", err)
		}
	}
}

// persist writes a job's record.
func (a *Agent) persist(aj *api.ActiveJob) error {
	return a.queuePersist(aj)()
}

// queuePersist queues a job's record as it is now and returns a function
// that waits until it is written. Called under a.mu, it keeps the order
// of a job's records without holding the lock for the write.
func (a *Agent) queuePersist(aj *api.ActiveJob) (wait func() error) {
	b, err := json.Marshal(aj)
	if err != nil {
		return func() error { return err }
	}
	return a.state.queue(aj.Job.ID, b)
}

// copyActive snapshots a job's state; the caller holds a.mu.
func copyActive(aj *api.ActiveJob) *api.ActiveJob {
	c := *aj
	c.HostPorts = append([]int(nil), aj.HostPorts...)
	return &c
}

func (a *Agent) emit(event string, aj *api.ActiveJob) {
	ev := &api.HostJobEvent{Event: event, JobID: aj.Job.ID, Job: copyActive(aj)}
	for c := range a.subs {
		select {
		case c <- ev:
		default: // a subscriber too slow to keep up is cut off
			delete(a.subs, c)
			close(c)
		}
	}
}

func (a *Agent) subscribe() chan *api.HostJobEvent {
	c := make(chan *api.HostJobEvent, 256)
	a.mu.Lock()
	a.subs[c] = true
	a.mu.Unlock()
	return c
}

func (a *Agent) unsubscribe(c chan *api.HostJobEvent) {
	a.mu.Lock()
	if a.subs[c] {
		delete(a.subs, c)
		close(c)
	}
	a.mu.Unlock()
}

// List returns all jobs the host knows, oldest first.
func (a *Agent) List() []*api.ActiveJob {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*api.ActiveJob, 0, len(a.jobs))
	for _, j := range a.jobs {
		out = append(out, copyActive(j.active))
	}
	sort.Slice(out, func(i, k int) bool {
		if !out[i].CreatedAt.Equal(out[k].CreatedAt) {
			return out[i].CreatedAt.Before(out[k].CreatedAt)
		}
		return out[i].Job.ID < out[k].Job.ID
	})
	return out
}

// Get returns one job.
func (a *Agent) Get(id string) (*api.ActiveJob, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	j, ok := a.jobs[id]
	if !ok {
		return nil, api.NotFound("job %q not found on host %s", id, a.cfg.ID)
	}
	return copyActive(j.active), nil
}

// Status is GET /host/status.
func (a *Agent) Status() *api.HostStatus {
	return &api.HostStatus{ID: a.cfg.ID, PID: os.Getpid(), URL: a.URL(), Version: version.String()}
}

// Handler is the agent's HTTP API, behind the cluster token.
func (a *Agent) Handler() http.Handler {
	return httpapi.Wrap(a.log, a.auth.Require(nil, a.routes()))
}

var (
	noDeadline time.Time
	noCancel   = context.Background()
)

// totalMemory is the host's memory in bytes (0 when unknown).
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
