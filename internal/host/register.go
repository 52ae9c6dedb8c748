package host

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/scheduler/healthcheck"
)

// Registry registers jobs' published ports in service discovery. A job
// port with a Service is registered once the job runs (and, when the
// service has a Check, once the check passes; it is taken out while the
// check fails) and deregistered when the job stops or ends.
type Registry interface {
	// Register adds addr to service with meta and keeps it alive until
	// the returned Registration is deregistered.
	Register(ctx context.Context, service, addr string, meta map[string]string) (Registration, error)
}

// Registration is one registered instance.
type Registration interface {
	Deregister(ctx context.Context) error
}

// DrainWaiter is optionally implemented by a Registry: WaitDrained
// returns once no router has requests to addrs in flight (or ctx ends).
// StopJob calls it between deregistering a job and signalling it.
type DrainWaiter interface {
	WaitDrained(ctx context.Context, addrs []string) error
}

// Instance meta keys the agent sets on the instances it registers.
const (
	InstanceMetaJobID       = "FLYNN_JOB_ID"
	InstanceMetaAppID       = "FLYNN_APP_ID"
	InstanceMetaReleaseID   = "FLYNN_RELEASE_ID"
	InstanceMetaProcessType = "FLYNN_PROCESS_TYPE"
	// InstanceMetaHostID names the host the job runs on: a router that
	// finds one backend's host gone passes over its other backends too,
	// whatever their addresses.
	InstanceMetaHostID = api.InstanceMetaHostID
)

// Remover is optionally implemented by a Registry: Remove deregisters the
// instance at addr from service when the job that registered it is gone
// without deregistering it (its host lost power). The agent removes a
// dead job's instances so that a router never sends its traffic to a new
// job that reuses the port.
type Remover interface {
	Remove(ctx context.Context, service, addr string) error
}

// RouterAPIService is the discoverd service of routers' API servers,
// which DiscoverdRegistry asks whether a stopping job has drained.
const RouterAPIService = api.RouterAPIService

// DiscoverdRegistry is the Registry of a discoverd client. It implements
// DrainWaiter by asking every instance of RouterAPIService (if any) for
// GET /drained?addr=...&wait=. It is nil when c is nil.
func DiscoverdRegistry(c *discoverdclient.Client, token string) Registry {
	if c == nil {
		return nil
	}
	return &discoverdRegistry{c: c, token: token}
}

type discoverdRegistry struct {
	c     *discoverdclient.Client
	token string
}

func (d *discoverdRegistry) Register(ctx context.Context, service, addr string, meta map[string]string) (Registration, error) {
	return d.c.Register(ctx, service, addr, meta)
}

func (d *discoverdRegistry) Remove(ctx context.Context, service, addr string) error {
	return d.c.RemoveInstance(ctx, service, addr)
}

func (d *discoverdRegistry) WaitDrained(ctx context.Context, addrs []string) error {
	routers, err := d.c.Instances(ctx, RouterAPIService)
	if err != nil || len(routers) == 0 {
		return nil // no routers to wait for
	}
	wait := "10s"
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl).Round(time.Millisecond).String()
	}
	var wg sync.WaitGroup
	for _, r := range routers {
		for _, addr := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Routers hold the service token, not the cluster token.
				hc := &httpclient.Client{URL: "http://" + r.Addr, Key: api.ServiceToken(d.token)}
				var st api.DrainStatus
				hc.Do(ctx, http.MethodGet, "/drained?addr="+url.QueryEscape(addr)+"&wait="+url.QueryEscape(wait), nil, &st)
			}()
		}
	}
	wg.Wait()
	return nil
}

// jobRegs are the registrations of one job's ports.
type jobRegs struct {
	cancel context.CancelFunc
	done   chan struct{}
	addrs  []string
}

// registerJob starts registering a running job's service ports; the
// caller holds a.mu.
func (a *Agent) registerJob(aj *api.ActiveJob) {
	if a.cfg.Registry == nil || aj.Job == nil || a.regs[aj.Job.ID] != nil {
		return
	}
	ports := a.servicePorts(aj)
	if len(ports) == 0 {
		return
	}
	meta := map[string]string{
		InstanceMetaJobID:       aj.Job.ID,
		InstanceMetaAppID:       aj.Job.Metadata[api.JobMetaApp],
		InstanceMetaReleaseID:   aj.Job.Metadata[api.JobMetaRelease],
		InstanceMetaProcessType: aj.Job.Metadata[api.JobMetaProcessType],
		InstanceMetaHostID:      a.cfg.ID,
	}
	for k, v := range meta {
		if v == "" {
			delete(meta, k)
		}
	}
	ctx, cancel := context.WithCancel(a.runCtx)
	r := &jobRegs{cancel: cancel, done: make(chan struct{})}
	a.regs[aj.Job.ID] = r
	var wg sync.WaitGroup
	for _, p := range ports {
		r.addrs = append(r.addrs, p.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.keepRegistered(ctx, aj.Job.ID, p.svc, p.addr, meta)
		}()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		wg.Wait()
		close(r.done)
	}()
}

// servicePort is a job port registered in a service, at addr.
type servicePort struct {
	svc  *api.Service
	addr string
}

// servicePorts are the job's ports that are registered in services.
func (a *Agent) servicePorts(aj *api.ActiveJob) []servicePort {
	ip := a.publishIP()
	var ports []servicePort
	for i, p := range aj.Job.Config.Ports {
		if p.Service == nil || p.Service.Name == "" {
			continue
		}
		hp := p.Port
		if i < len(aj.HostPorts) && aj.HostPorts[i] != 0 {
			hp = aj.HostPorts[i]
		}
		if hp == 0 {
			continue
		}
		ports = append(ports, servicePort{p.Service, net.JoinHostPort(ip, strconv.Itoa(hp))})
	}
	return ports
}

// removeInstances deregisters a job's instances that a previous life of
// the agent registered and this one did not (it died with its host):
// with a health check, the job is not registered again before it is seen
// dead, so its old instances would live out their TTL, pointing at a port
// a new job may get.
func (a *Agent) removeInstances(aj *api.ActiveJob) {
	rm, ok := a.cfg.Registry.(Remover)
	if !ok || aj.Job == nil {
		return
	}
	for _, p := range a.servicePorts(aj) {
		ctx, cancel := context.WithTimeout(a.runCtx, 5*time.Second)
		if err := rm.Remove(ctx, p.svc.Name, p.addr); err != nil && a.runCtx.Err() == nil {
			a.log.Warn("remove a dead job's instance", "job", aj.Job.ID, "service", p.svc.Name, "addr", p.addr, "err", err)
		}
		cancel()
	}
}

// publishIP is the address job ports are published on.
func (a *Agent) publishIP() string {
	if a.cfg.HostIP != "" {
		return a.cfg.HostIP
	}
	u, err := url.Parse(a.URL())
	if err == nil && u.Hostname() != "" {
		return u.Hostname()
	}
	return "127.0.0.1"
}

// keepRegistered registers addr in svc while the job is healthy (always,
// without a check) until ctx ends, then deregisters it.
func (a *Agent) keepRegistered(ctx context.Context, jobID string, svc *api.Service, addr string, meta map[string]string) {
	log := a.log.With("job", jobID, "service", svc.Name, "addr", addr)
	var reg Registration
	deregister := func() {
		if reg == nil {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := reg.Deregister(dctx); err != nil {
			log.Warn("deregister job", "err", err)
		} else {
			log.Info("job deregistered")
		}
		cancel()
		reg = nil
	}
	defer deregister()
	register := func() {
		for reg == nil && ctx.Err() == nil {
			r, err := a.cfg.Registry.Register(ctx, svc.Name, addr, meta)
			if err == nil {
				reg = r // not on error: a nil *Registration in the interface is not nil
				log.Info("job registered")
				return
			}
			if ctx.Err() != nil {
				return
			}
			log.Warn("register job", "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	if svc.Check == nil {
		register()
		<-ctx.Done()
		return
	}
	c, err := healthcheck.New(svc.Check, addr)
	if err != nil {
		log.Warn("bad health check; not registering", "err", err)
		return
	}
	c.Monitor(ctx, func(healthy bool, err error) {
		if healthy {
			register()
		} else {
			log.Warn("job unhealthy", "err", err)
			deregister()
		}
	})
}

// deregisterJob stops registering a job and waits until its instances
// are deregistered. It returns their addresses. The caller must not hold
// a.mu.
func (a *Agent) deregisterJob(id string) []string {
	a.mu.Lock()
	r := a.regs[id]
	delete(a.regs, id)
	a.mu.Unlock()
	if r == nil {
		return nil
	}
	r.cancel()
	<-r.done
	return r.addrs
}

// drain takes a job out of service before it is stopped: deregister its
// instances, then wait (up to DrainTimeout) for routers to finish their
// requests to it.
func (a *Agent) drain(ctx context.Context, id string) {
	addrs := a.deregisterJob(id)
	dw, ok := a.cfg.Registry.(DrainWaiter)
	if len(addrs) == 0 || !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	if err := dw.WaitDrained(ctx, addrs); err != nil {
		a.log.Warn("wait for job to drain", "job", id, "err", fmt.Errorf("drain: %w", err))
	}
}
