package router

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
)

// Discoverer follows the instances of a discoverd service. Watch sends the
// current instances as up events, then a current event, then changes (up,
// update, down, leader). The channel is closed when ctx ends or the stream
// fails; the router then watches again.
type Discoverer interface {
	Watch(ctx context.Context, service string) (<-chan api.ServiceEvent, error)
}

// MemDiscoverer is an in-memory Discoverer for tests and benchmarks. The
// service leader is the instance with the lowest Index.
type MemDiscoverer struct {
	mu       sync.Mutex
	next     uint64
	services map[string]*memService
}

type memService struct {
	instances map[string]*api.Instance
	leader    string
	watchers  map[chan api.ServiceEvent]struct{}
}

// NewMemDiscoverer returns an empty in-memory registry.
func NewMemDiscoverer() *MemDiscoverer {
	return &MemDiscoverer{services: map[string]*memService{}}
}

func (m *MemDiscoverer) svc(name string) *memService {
	s := m.services[name]
	if s == nil {
		s = &memService{instances: map[string]*api.Instance{}, watchers: map[chan api.ServiceEvent]struct{}{}}
		m.services[name] = s
	}
	return s
}

// Register adds (or updates) an instance with the given addr; its ID is
// the addr.
func (m *MemDiscoverer) Register(service, addr string) {
	m.RegisterMeta(service, addr, nil)
}

// RegisterMeta is Register with instance meta.
func (m *MemDiscoverer) RegisterMeta(service, addr string, meta map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.svc(service)
	kind := api.EventKindUpdate
	inst := s.instances[addr]
	if inst == nil {
		m.next++
		inst = &api.Instance{ID: addr, Addr: addr, Proto: "tcp", Index: m.next}
		s.instances[addr] = inst
		kind = api.EventKindUp
	}
	if meta != nil {
		inst.Meta = meta
	}
	m.send(s, service, kind, inst)
	m.electLocked(s, service)
}

// Unregister removes the instance with the given addr.
func (m *MemDiscoverer) Unregister(service, addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.svc(service)
	inst := s.instances[addr]
	if inst == nil {
		return
	}
	delete(s.instances, addr)
	m.send(s, service, api.EventKindDown, inst)
	m.electLocked(s, service)
}

func (m *MemDiscoverer) electLocked(s *memService, service string) {
	var leader *api.Instance
	for _, in := range s.instances {
		if leader == nil || in.Index < leader.Index {
			leader = in
		}
	}
	id := ""
	if leader != nil {
		id = leader.ID
	}
	if id != s.leader {
		s.leader = id
		if leader != nil {
			m.send(s, service, api.EventKindLeader, leader)
		}
	}
}

func (m *MemDiscoverer) send(s *memService, service, kind string, inst *api.Instance) {
	cp := *inst
	for ch := range s.watchers {
		select {
		case ch <- api.ServiceEvent{Service: service, Kind: kind, Instance: &cp}:
		default: // a stuck watcher loses events; tests read promptly
		}
	}
}

// Watch implements Discoverer.
func (m *MemDiscoverer) Watch(ctx context.Context, service string) (<-chan api.ServiceEvent, error) {
	ch := make(chan api.ServiceEvent, 1024)
	m.mu.Lock()
	s := m.svc(service)
	for _, in := range s.instances {
		cp := *in
		ch <- api.ServiceEvent{Service: service, Kind: api.EventKindUp, Instance: &cp}
	}
	if l := s.instances[s.leader]; l != nil {
		cp := *l
		ch <- api.ServiceEvent{Service: service, Kind: api.EventKindLeader, Instance: &cp}
	}
	ch <- api.ServiceEvent{Service: service, Kind: api.EventKindCurrent}
	s.watchers[ch] = struct{}{}
	m.mu.Unlock()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(s.watchers, ch)
		close(ch)
	})
	return ch, nil
}

// Discoverd follows services through discoverd with the Go client. The
// client's watcher reconnects by itself and reports only what changed while
// it was away, so the router sees one continuous stream per service.
type Discoverd struct {
	Client *discoverdclient.Client
}

// Watch implements Discoverer.
func (d *Discoverd) Watch(ctx context.Context, service string) (<-chan api.ServiceEvent, error) {
	// A route may name a service before its first instance exists (a new
	// app): create it, so the watch starts now and sees that instance at
	// once instead of polling for the service to appear.
	if err := d.Client.AddService(ctx, service); err != nil && !errors.Is(err, api.ErrObjectExists) {
		return nil, fmt.Errorf("watch service %q: %w", service, err)
	}
	w, err := d.Client.Watch(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("watch service %q: %w", service, err)
	}
	ch := make(chan api.ServiceEvent, 64)
	go func() {
		defer close(ch)
		defer w.Close()
		for ev := range w.Events() {
			select {
			case ch <- *ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

var errNoBackend = errors.New("no backend available")
