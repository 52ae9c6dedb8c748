// Package discoverdclient is the Go client of discoverd, Flynn's service
// registry: register an instance and keep it alive with a background
// heartbeat, list instances, find a service's leader, read and
// compare-and-set service metadata, and watch a service with a cached view
// of its instances and leader.
//
//	c := discoverdclient.New("http://127.0.0.1:1111", token)
//	reg, err := c.Register(ctx, "web", "10.0.0.5:8080", nil)
//	defer reg.Deregister(ctx)
//
//	w, err := c.Watch(ctx, "web")
//	defer w.Close()
//	for ev := range w.Events() { ... }
//
// A client given several server URLs fails over between them, so a
// registration and a watch survive the loss of one host.
package discoverdclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// Client talks to one or more discoverd servers of a cluster.
type Client struct {
	servers []*httpclient.Client
	mu      sync.Mutex
	cur     int // index of the server that last worked
}

// New returns a client of the discoverd at url (e.g. http://10.0.0.1:1111)
// authenticating with the cluster token. url may list several servers
// separated by commas; requests fail over between them.
func New(url, token string) *Client {
	return NewMulti(strings.Split(url, ","), token)
}

// NewMulti returns a client that fails over between the given servers.
func NewMulti(urls []string, token string) *Client {
	c := &Client{}
	for _, u := range urls {
		if u = strings.TrimSpace(u); u != "" {
			c.servers = append(c.servers, &httpclient.Client{URL: u, Key: token})
		}
	}
	return c
}

// isConnErr reports whether err means the server could not be reached (or
// is unhealthy), so another server should be tried.
func isConnErr(err error) bool {
	if err == nil {
		return false
	}
	if e, ok := api.AsError(err); ok {
		return e.Code == api.CodeUnavailable || e.Code == api.CodeUnknown
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// do runs fn against the current server and, on connection errors, the
// others in turn.
func (c *Client) do(ctx context.Context, fn func(*httpclient.Client) error) error {
	if len(c.servers) == 0 {
		return errors.New("discoverd client has no server URL")
	}
	c.mu.Lock()
	start := c.cur
	c.mu.Unlock()
	var err error
	for i := range c.servers {
		n := (start + i) % len(c.servers)
		err = fn(c.servers[n])
		if !isConnErr(err) || ctx.Err() != nil {
			if err == nil && n != start {
				c.mu.Lock()
				c.cur = n
				c.mu.Unlock()
			}
			return err
		}
	}
	c.mu.Lock()
	c.cur = (start + 1) % len(c.servers)
	c.mu.Unlock()
	return err
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	return c.do(ctx, func(s *httpclient.Client) error { return s.Do(ctx, method, path, in, out) })
}

func svcPath(service string) string { return "/services/" + url.PathEscape(service) }

// Ping checks that a server answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/ping", nil, nil)
}

// AddService creates a service. It fails with api.ErrObjectExists when it
// exists.
func (c *Client) AddService(ctx context.Context, service string) error {
	return c.call(ctx, http.MethodPut, svcPath(service), api.ServiceConfig{LeaderType: api.LeaderTypeOldest}, nil)
}

// RemoveService deletes a service and its instances.
func (c *Client) RemoveService(ctx context.Context, service string) error {
	return c.call(ctx, http.MethodDelete, svcPath(service), nil, nil)
}

// RemoveInstance deregisters the tcp instance at addr from service, as
// its owner would: for instances whose owner is gone (a job that died
// with its host). An instance that is not registered is not an error.
func (c *Client) RemoveInstance(ctx context.Context, service, addr string) error {
	err := c.call(ctx, http.MethodDelete, svcPath(service)+"/instances/"+url.PathEscape(instanceID("tcp", addr)), nil, nil)
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	return err
}

// Services lists the names of all services.
func (c *Client) Services(ctx context.Context) ([]string, error) {
	var names []string
	err := c.call(ctx, http.MethodGet, "/services", nil, &names)
	return names, err
}

// Instances lists a service's live instances, oldest first.
func (c *Client) Instances(ctx context.Context, service string) ([]*api.Instance, error) {
	var insts []*api.Instance
	err := c.call(ctx, http.MethodGet, svcPath(service)+"/instances", nil, &insts)
	return insts, err
}

// Leader returns the service's leader (its oldest live instance); it fails
// with api.ErrNotFound when the service has no instance.
func (c *Client) Leader(ctx context.Context, service string) (*api.Instance, error) {
	inst := &api.Instance{}
	if err := c.call(ctx, http.MethodGet, svcPath(service)+"/leader", nil, inst); err != nil {
		return nil, err
	}
	return inst, nil
}

// Meta returns the service's metadata; api.ErrNotFound when none is set.
func (c *Client) Meta(ctx context.Context, service string) (*api.ServiceMeta, error) {
	m := &api.ServiceMeta{}
	if err := c.call(ctx, http.MethodGet, svcPath(service)+"/meta", nil, m); err != nil {
		return nil, err
	}
	return m, nil
}

// SetMeta writes the service's metadata if m.Index is still its index (0
// for the first write) and sets m.Index to the new index. When another
// writer came first it fails with api.ErrConflict: read it again and retry.
func (c *Client) SetMeta(ctx context.Context, service string, m *api.ServiceMeta) error {
	out := &api.ServiceMeta{}
	if err := c.call(ctx, http.MethodPut, svcPath(service)+"/meta", m, out); err != nil {
		return err
	}
	m.Index = out.Index
	return nil
}

// InstanceID is the id discoverd gives the instance at proto-addr.
func InstanceID(proto, addr string) string {
	return instanceID(proto, addr)
}

// putInstance registers or heartbeats inst and returns the server's TTL.
func (c *Client) putInstance(ctx context.Context, service string, inst *api.Instance) (*api.Instance, time.Duration, error) {
	var out api.Instance
	var ttl time.Duration
	err := c.do(ctx, func(s *httpclient.Client) error {
		req, err := s.NewRequest(ctx, http.MethodPut, svcPath(service)+"/instances/"+url.PathEscape(inst.ID), inst)
		if err != nil {
			return err
		}
		res, err := s.Send(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		if secs, err := time.ParseDuration(res.Header.Get("Discoverd-Ttl") + "s"); err == nil && secs > 0 {
			ttl = secs
		}
		return decodeBody(res, &out)
	})
	if err != nil {
		return nil, 0, err
	}
	return &out, ttl, nil
}

// Register adds an instance at addr (IP:port, tcp) with meta to service,
// creating the service if needed, and keeps it alive with a heartbeat in
// the background: every third of the server's TTL, re-registering it on
// another server after a connection loss. The heartbeat runs until
// Deregister is called.
func (c *Client) Register(ctx context.Context, service, addr string, meta map[string]string) (*Registration, error) {
	if err := c.AddService(ctx, service); err != nil && !errors.Is(err, api.ErrObjectExists) {
		return nil, fmt.Errorf("register %s in %q: %w", addr, service, err)
	}
	inst := &api.Instance{ID: instanceID("tcp", addr), Addr: addr, Proto: "tcp", Meta: meta}
	got, ttl, err := c.putInstance(ctx, service, inst)
	if err != nil {
		return nil, fmt.Errorf("register %s in %q: %w", addr, service, err)
	}
	r := &Registration{c: c, service: service, inst: got, ttl: ttl, stop: make(chan struct{}), done: make(chan struct{})}
	go r.heartbeat()
	return r, nil
}

// Registration is a registered instance kept alive by a heartbeat.
type Registration struct {
	c       *Client
	service string
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	mu   sync.Mutex
	inst *api.Instance
	ttl  time.Duration
	err  error
}

// Instance is the registered instance (its Index is set by the server).
func (r *Registration) Instance() *api.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := *r.inst
	return &i
}

// Err is the last heartbeat error, nil when the last heartbeat worked.
func (r *Registration) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// SetMeta changes the instance's meta (an update event for watchers).
func (r *Registration) SetMeta(ctx context.Context, meta map[string]string) error {
	r.mu.Lock()
	inst := *r.inst
	r.mu.Unlock()
	inst.Meta = meta
	got, _, err := r.c.putInstance(ctx, r.service, &inst)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.inst = got
	r.mu.Unlock()
	return nil
}

func (r *Registration) interval() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ttl <= 0 {
		return 3 * time.Second
	}
	return max(r.ttl/3, 100*time.Millisecond)
}

func (r *Registration) heartbeat() {
	defer close(r.done)
	t := time.NewTimer(r.interval())
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.interval())
		r.mu.Lock()
		inst := *r.inst
		r.mu.Unlock()
		got, ttl, err := r.c.putInstance(ctx, r.service, &inst)
		if errors.Is(err, api.ErrNotFound) {
			// The service was removed: re-create it and register again.
			if err = r.c.AddService(ctx, r.service); err == nil || errors.Is(err, api.ErrObjectExists) {
				got, ttl, err = r.c.putInstance(ctx, r.service, &inst)
			}
		}
		cancel()
		r.mu.Lock()
		r.err = err
		if err == nil {
			r.inst = got
			if ttl > 0 {
				r.ttl = ttl
			}
		}
		r.mu.Unlock()
		next := r.interval()
		if err != nil {
			next = min(next, time.Second) // retry soon, before the TTL ends
		}
		t.Reset(next)
	}
}

// Deregister stops the heartbeat and removes the instance at once. It is
// safe to call more than once.
func (r *Registration) Deregister(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		close(r.stop)
		<-r.done
		err = r.c.call(ctx, http.MethodDelete, svcPath(r.service)+"/instances/"+url.PathEscape(r.inst.ID), nil, nil)
		if errors.Is(err, api.ErrNotFound) {
			err = nil
		}
	})
	return err
}
