package discoverdclient

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

func instanceID(proto, addr string) string {
	sum := md5.Sum([]byte(proto + "-" + addr))
	return hex.EncodeToString(sum[:])
}

func decodeBody(res *http.Response, out any) error {
	if err := json.NewDecoder(res.Body).Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("decode reply: %w", err)
	}
	return nil
}

// Watcher follows one service: it keeps a cached set of the live instances
// and the leader, and delivers each change as an event on Events(). After a
// lost connection it reconnects (to another server if need be) and reports
// only what changed meanwhile, so every change is seen once.
type Watcher struct {
	c       *Client
	service string
	events  chan *api.ServiceEvent
	cancel  context.CancelFunc
	done    chan struct{}
	current chan struct{}

	mu     sync.Mutex
	insts  map[string]*api.Instance
	leader *api.Instance
	meta   *api.ServiceMeta
	err    error
}

// Watch starts watching service. It returns once the first connection is
// open (failing with api.ErrNotFound for an unknown service); events keep
// coming, across reconnects, until ctx is done or Close is called. The
// first events are up for each live instance, leader, service_meta if set,
// then current. Events must be read: the watcher waits for the reader.
func (c *Client) Watch(ctx context.Context, service string) (*Watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		c: c, service: service, cancel: cancel,
		events: make(chan *api.ServiceEvent, 256), done: make(chan struct{}), current: make(chan struct{}),
		insts: map[string]*api.Instance{},
	}
	er, err := w.connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	go w.run(ctx, er)
	return w, nil
}

func (w *Watcher) connect(ctx context.Context) (*httpclient.EventReader, error) {
	var er *httpclient.EventReader
	err := w.c.do(ctx, func(s *httpclient.Client) error {
		var err error
		er, err = s.Stream(ctx, svcPath(w.service))
		return err
	})
	return er, err
}

// Events delivers the service's events. It is closed when the watcher
// stops.
func (w *Watcher) Events() <-chan *api.ServiceEvent { return w.events }

// Instances is the cached set of live instances, oldest first.
func (w *Watcher) Instances() []*api.Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	insts := slices.Collect(maps.Values(w.insts))
	slices.SortFunc(insts, func(a, b *api.Instance) int {
		switch {
		case a.Index < b.Index:
			return -1
		case a.Index > b.Index:
			return 1
		}
		return 0
	})
	return insts
}

// Leader is the cached leader, nil when the service has none.
func (w *Watcher) Leader() *api.Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leader
}

// Meta is the cached service meta, nil when none is set.
func (w *Watcher) Meta() *api.ServiceMeta {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.meta
}

// Err is why the watcher stopped (after Events is closed); nil when it was
// closed or its context ended.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// WaitCurrent waits until the watcher has received the service's current
// state once.
func (w *Watcher) WaitCurrent(ctx context.Context) error {
	select {
	case <-w.current:
		return nil
	case <-w.done:
		if err := w.Err(); err != nil {
			return err
		}
		return errors.New("watcher closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the watcher and waits for it to end.
func (w *Watcher) Close() {
	w.cancel()
	<-w.done
}

func (w *Watcher) run(ctx context.Context, er *httpclient.EventReader) {
	defer close(w.done)
	defer close(w.events)
	first := true
	backoff := 100 * time.Millisecond
	for {
		err := w.follow(ctx, er, first)
		er.Close()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, api.ErrNotFound) {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		first = false
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			er, err = w.connect(ctx)
			if err == nil {
				backoff = 100 * time.Millisecond
				break
			}
			if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrUnauthorized) {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				// The service was removed: report its instances gone.
				for _, inst := range w.Instances() {
					w.forget(ctx, inst)
				}
				return
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

func (w *Watcher) forget(ctx context.Context, inst *api.Instance) {
	w.mu.Lock()
	delete(w.insts, inst.ID)
	w.mu.Unlock()
	w.emit(ctx, &api.ServiceEvent{Service: w.service, Kind: api.EventKindDown, Instance: inst})
}

func (w *Watcher) emit(ctx context.Context, ev *api.ServiceEvent) {
	select {
	case w.events <- ev:
	case <-ctx.Done():
	}
}

// follow reads one connection's events into the cache. On a reconnect
// (first false) the server's initial snapshot is merged: only instances
// that are new or changed are reported, and those missing at current are
// reported down.
func (w *Watcher) follow(ctx context.Context, er *httpclient.EventReader, first bool) error {
	seen := map[string]bool{}
	snapshot := true
	for {
		raw, err := er.Next()
		if err != nil {
			return err
		}
		ev := &api.ServiceEvent{}
		if err := json.Unmarshal(raw.Data, ev); err != nil {
			continue
		}
		if ev.Kind == "" {
			ev.Kind = raw.Event
		}
		if ev.Service == "" {
			ev.Service = w.service
		}
		switch ev.Kind {
		case api.EventKindUp, api.EventKindUpdate:
			if ev.Instance == nil {
				continue
			}
			seen[ev.Instance.ID] = true
			w.mu.Lock()
			old, had := w.insts[ev.Instance.ID]
			w.insts[ev.Instance.ID] = ev.Instance
			w.mu.Unlock()
			if snapshot && had {
				if old.Index != ev.Instance.Index {
					w.emit(ctx, &api.ServiceEvent{Service: w.service, Kind: api.EventKindDown, Instance: old})
					w.emit(ctx, ev)
				} else if !sameInstance(old, ev.Instance) {
					w.emit(ctx, &api.ServiceEvent{Service: w.service, Kind: api.EventKindUpdate, Instance: ev.Instance})
				}
				continue
			}
		case api.EventKindDown:
			if ev.Instance == nil {
				continue
			}
			w.mu.Lock()
			_, had := w.insts[ev.Instance.ID]
			delete(w.insts, ev.Instance.ID)
			w.mu.Unlock()
			if !had {
				continue
			}
		case api.EventKindLeader:
			w.mu.Lock()
			same := w.leader != nil && ev.Instance != nil && w.leader.ID == ev.Instance.ID && w.leader.Index == ev.Instance.Index
			w.leader = ev.Instance
			w.mu.Unlock()
			if same {
				continue
			}
		case api.EventKindServiceMeta:
			w.mu.Lock()
			same := w.meta != nil && ev.ServiceMeta != nil && w.meta.Index == ev.ServiceMeta.Index
			w.meta = ev.ServiceMeta
			w.mu.Unlock()
			if same {
				continue
			}
		case api.EventKindCurrent:
			snapshot = false
			if !first {
				for _, inst := range w.Instances() {
					if !seen[inst.ID] {
						w.forget(ctx, inst)
					}
				}
				w.mu.Lock()
				if len(w.insts) == 0 {
					w.leader = nil
				}
				w.mu.Unlock()
				continue // the consumer saw current once already
			}
			select {
			case <-w.current:
			default:
				close(w.current)
			}
		}
		w.emit(ctx, ev)
	}
}

func sameInstance(a, b *api.Instance) bool {
	return a.Addr == b.Addr && a.Proto == b.Proto && maps.Equal(a.Meta, b.Meta)
}
