// Package discoverd is Flynn's service registry: services, their instances
// (each under an etcd lease, so an instance whose owner stops heartbeating
// vanishes within the TTL), the leader of each service (the oldest live
// instance), compare-and-set service metadata, the HTTP API on :1111 with
// Server-Sent Event streams, and DNS for the .discoverd zone.
//
// All state lives in etcd under api.KeyDiscoverd, so every host's discoverd
// is stateless and any of them answers for the whole cluster.
package discoverd

import (
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/api"
)

// DefaultTTL is how long an instance lives without a heartbeat.
const DefaultTTL = 10 * time.Second

// Store is the service registry on etcd.
type Store struct {
	cli *clientv3.Client
	ttl time.Duration
}

// NewStore returns a registry on cli whose instances expire ttl after their
// last heartbeat (DefaultTTL when zero; etcd leases have 1 s granularity).
func NewStore(cli *clientv3.Client, ttl time.Duration) *Store {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second {
		ttl = time.Second
	}
	return &Store{cli: cli, ttl: ttl}
}

// TTL is the instance time-to-live.
func (s *Store) TTL() time.Duration { return s.ttl }

var serviceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidateServiceName checks a service name: lower-case letters, digits,
// '-' and '_', at most 63 characters, so it is a valid DNS label.
func ValidateServiceName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return api.Validation("service", "invalid service name %q: use 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit", name)
	}
	return nil
}

// InstanceID is the id of the instance at proto-addr (Flynn's md5 scheme).
func InstanceID(proto, addr string) string {
	sum := md5.Sum([]byte(proto + "-" + addr))
	return hex.EncodeToString(sum[:])
}

// ValidateInstance checks and normalises an instance for registration with
// the given id: proto defaults to tcp, addr must be IP:port, and id must be
// InstanceID(proto, addr).
func ValidateInstance(id string, inst *api.Instance) error {
	if inst.Proto == "" {
		inst.Proto = "tcp"
	}
	if inst.Proto != "tcp" && inst.Proto != "udp" {
		return api.Validation("proto", "invalid proto %q: want tcp or udp", inst.Proto)
	}
	host, port, err := net.SplitHostPort(inst.Addr)
	if err != nil {
		return api.Validation("addr", "invalid addr %q: want IP:port", inst.Addr)
	}
	if net.ParseIP(host) == nil {
		return api.Validation("addr", "invalid addr %q: host must be an IP address", inst.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return api.Validation("addr", "invalid addr %q: port must be 1-65535", inst.Addr)
	}
	want := InstanceID(inst.Proto, inst.Addr)
	if inst.ID == "" {
		inst.ID = id
	}
	if id != want || inst.ID != want {
		return api.Validation("id", "instance id %q does not match md5(%s-%s) = %s", id, inst.Proto, inst.Addr, want)
	}
	return nil
}

func serviceKey(svc string) string   { return api.KeyDiscoverd + "services/" + svc + "/" }
func configKey(svc string) string    { return serviceKey(svc) + "config" }
func metaKey(svc string) string      { return serviceKey(svc) + "meta" }
func instancesKey(svc string) string { return serviceKey(svc) + "instances/" }
func instanceKey(svc, id string) string {
	return instancesKey(svc) + id
}

func notFound(svc string) error {
	return api.NotFound("service %q not found: create it with PUT /services/%s", svc, svc)
}

// AddService creates a service. It fails with api.ErrObjectExists when the
// service exists.
func (s *Store) AddService(ctx context.Context, svc string, cfg api.ServiceConfig) error {
	if err := ValidateServiceName(svc); err != nil {
		return err
	}
	if cfg.LeaderType == "" {
		cfg.LeaderType = api.LeaderTypeOldest
	}
	if cfg.LeaderType != api.LeaderTypeOldest {
		return api.Validation("leader_type", "unsupported leader_type %q: only %q is supported", cfg.LeaderType, api.LeaderTypeOldest)
	}
	b, _ := json.Marshal(cfg)
	k := configKey(svc)
	res, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("add service %q: %w", svc, err)
	}
	if !res.Succeeded {
		return api.Exists("service %q exists", svc)
	}
	return nil
}

// Service returns a service's configuration.
func (s *Store) Service(ctx context.Context, svc string) (*api.ServiceConfig, error) {
	if err := ValidateServiceName(svc); err != nil {
		return nil, err
	}
	res, err := s.cli.Get(ctx, configKey(svc))
	if err != nil {
		return nil, fmt.Errorf("get service %q: %w", svc, err)
	}
	if len(res.Kvs) == 0 {
		return nil, notFound(svc)
	}
	cfg := &api.ServiceConfig{}
	if err := json.Unmarshal(res.Kvs[0].Value, cfg); err != nil {
		return nil, fmt.Errorf("decode service %q: %w", svc, err)
	}
	return cfg, nil
}

// RemoveService deletes a service with its instances and meta.
func (s *Store) RemoveService(ctx context.Context, svc string) error {
	if err := ValidateServiceName(svc); err != nil {
		return err
	}
	k := configKey(svc)
	res, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), ">", 0)).
		Then(clientv3.OpDelete(serviceKey(svc), clientv3.WithPrefix())).Commit()
	if err != nil {
		return fmt.Errorf("remove service %q: %w", svc, err)
	}
	if !res.Succeeded {
		return notFound(svc)
	}
	return nil
}

// Services lists the names of all services, sorted.
func (s *Store) Services(ctx context.Context) ([]string, error) {
	prefix := api.KeyDiscoverd + "services/"
	res, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var names []string
	for _, kv := range res.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), prefix)
		if name, ok := strings.CutSuffix(rest, "/config"); ok && !strings.Contains(name, "/") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

func decodeInstance(kv []byte, createRev int64) (*api.Instance, error) {
	inst := &api.Instance{}
	if err := json.Unmarshal(kv, inst); err != nil {
		return nil, err
	}
	inst.Index = uint64(createRev)
	return inst, nil
}

func sameInstance(a, b *api.Instance) bool {
	return a.Addr == b.Addr && a.Proto == b.Proto && maps.Equal(a.Meta, b.Meta)
}

// Register registers inst (with id) in svc, or renews its heartbeat when it
// is registered already. It reports whether the instance was new. A changed
// meta is written (an update event) under the same lease.
func (s *Store) Register(ctx context.Context, svc, id string, inst *api.Instance) (*api.Instance, bool, error) {
	if err := ValidateServiceName(svc); err != nil {
		return nil, false, err
	}
	if err := ValidateInstance(id, inst); err != nil {
		return nil, false, err
	}
	inst.Index = 0
	k := instanceKey(svc, id)
	res, err := s.cli.Txn(ctx).Then(clientv3.OpGet(configKey(svc), clientv3.WithCountOnly()), clientv3.OpGet(k)).Commit()
	if err != nil {
		return nil, false, fmt.Errorf("register instance: %w", err)
	}
	if res.Responses[0].GetResponseRange().Count == 0 {
		return nil, false, notFound(svc)
	}
	if kvs := res.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].Lease != 0 {
		kv := kvs[0]
		old, derr := decodeInstance(kv.Value, kv.CreateRevision)
		lease := clientv3.LeaseID(kv.Lease)
		_, kerr := s.cli.KeepAliveOnce(ctx, lease)
		switch {
		case kerr == nil && derr == nil && sameInstance(old, inst):
			return old, false, nil
		case kerr == nil:
			b, _ := json.Marshal(inst)
			// Only overwrite the key we read, so a concurrent expiry
			// turns into a fresh registration below.
			pres, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", kv.CreateRevision)).
				Then(clientv3.OpPut(k, string(b), clientv3.WithLease(lease))).Commit()
			if err != nil {
				return nil, false, fmt.Errorf("update instance: %w", err)
			}
			if pres.Succeeded {
				inst.Index = uint64(kv.CreateRevision)
				return inst, false, nil
			}
		case !errors.Is(kerr, rpctypes.ErrLeaseNotFound):
			return nil, false, fmt.Errorf("renew instance lease: %w", kerr)
		}
	}
	lease, err := s.cli.Grant(ctx, int64(s.ttl/time.Second))
	if err != nil {
		return nil, false, fmt.Errorf("grant lease: %w", err)
	}
	b, _ := json.Marshal(inst)
	pres, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(configKey(svc)), ">", 0)).
		Then(clientv3.OpPut(k, string(b), clientv3.WithLease(lease.ID))).Commit()
	if err != nil {
		return nil, false, fmt.Errorf("register instance: %w", err)
	}
	if !pres.Succeeded {
		s.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, false, notFound(svc)
	}
	inst.Index = uint64(pres.Header.Revision)
	return inst, true, nil
}

// Deregister removes an instance at once.
func (s *Store) Deregister(ctx context.Context, svc, id string) error {
	if err := ValidateServiceName(svc); err != nil {
		return err
	}
	res, err := s.cli.Delete(ctx, instanceKey(svc, id), clientv3.WithPrevKV())
	if err != nil {
		return fmt.Errorf("deregister instance: %w", err)
	}
	if res.Deleted == 0 {
		return api.NotFound("instance %q of service %q not found", id, svc)
	}
	if lease := res.PrevKvs[0].Lease; lease != 0 {
		// The lease held only this key; dropping it is tidiness, not
		// correctness, so its error does not matter.
		s.cli.Revoke(ctx, clientv3.LeaseID(lease))
	}
	return nil
}

// Instances lists a service's live instances, oldest first.
func (s *Store) Instances(ctx context.Context, svc string) ([]*api.Instance, error) {
	insts, _, err := s.instances(ctx, svc, false)
	return insts, err
}

// instances reads the instances; serializable reads are served by the
// local member without a round through the leader (for DNS).
func (s *Store) instances(ctx context.Context, svc string, serializable bool) ([]*api.Instance, int64, error) {
	if err := ValidateServiceName(svc); err != nil {
		return nil, 0, err
	}
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	res, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(configKey(svc), append(opts, clientv3.WithCountOnly())...),
		clientv3.OpGet(instancesKey(svc), append(opts, clientv3.WithPrefix())...),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("list instances: %w", err)
	}
	if res.Responses[0].GetResponseRange().Count == 0 {
		return nil, 0, notFound(svc)
	}
	insts := []*api.Instance{}
	for _, kv := range res.Responses[1].GetResponseRange().Kvs {
		inst, err := decodeInstance(kv.Value, kv.CreateRevision)
		if err != nil {
			continue // not ours to interpret; never fail a listing on it
		}
		insts = append(insts, inst)
	}
	sortInstances(insts)
	return insts, res.Header.Revision, nil
}

func sortInstances(insts []*api.Instance) {
	slices.SortFunc(insts, func(a, b *api.Instance) int { return cmp.Compare(a.Index, b.Index) })
}

// Leader returns the service's leader: its oldest live instance.
func (s *Store) Leader(ctx context.Context, svc string) (*api.Instance, error) {
	insts, err := s.Instances(ctx, svc)
	if err != nil {
		return nil, err
	}
	if len(insts) == 0 {
		return nil, api.NotFound("service %q has no leader: it has no instances", svc)
	}
	return insts[0], nil
}

// storedMeta is the meta value in etcd; the index is the key's revision.
type storedMeta struct {
	Data     json.RawMessage `json:"data"`
	LeaderID string          `json:"leader_id,omitempty"`
}

// Meta returns the service's metadata.
func (s *Store) Meta(ctx context.Context, svc string) (*api.ServiceMeta, error) {
	if err := ValidateServiceName(svc); err != nil {
		return nil, err
	}
	res, err := s.cli.Txn(ctx).Then(clientv3.OpGet(configKey(svc), clientv3.WithCountOnly()), clientv3.OpGet(metaKey(svc))).Commit()
	if err != nil {
		return nil, fmt.Errorf("get meta: %w", err)
	}
	if res.Responses[0].GetResponseRange().Count == 0 {
		return nil, notFound(svc)
	}
	kvs := res.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, api.NotFound("service %q has no meta", svc)
	}
	return decodeMeta(kvs[0].Value, kvs[0].ModRevision)
}

func decodeMeta(b []byte, rev int64) (*api.ServiceMeta, error) {
	var sm storedMeta
	if err := json.Unmarshal(b, &sm); err != nil {
		return nil, fmt.Errorf("decode meta: %w", err)
	}
	return &api.ServiceMeta{Data: sm.Data, LeaderID: sm.LeaderID, Index: uint64(rev)}, nil
}

// SetMeta writes the service's metadata if m.Index is the current index (0
// when the service has no meta yet), and returns it with its new index. A
// stale index fails with api.ErrConflict.
func (s *Store) SetMeta(ctx context.Context, svc string, m *api.ServiceMeta) (*api.ServiceMeta, error) {
	if err := ValidateServiceName(svc); err != nil {
		return nil, err
	}
	if len(m.Data) == 0 || !json.Valid(m.Data) {
		return nil, api.Validation("data", "data must be a JSON value")
	}
	b, _ := json.Marshal(storedMeta{Data: m.Data, LeaderID: m.LeaderID})
	k := metaKey(svc)
	res, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.Version(configKey(svc)), ">", 0),
		clientv3.Compare(clientv3.ModRevision(k), "=", int64(m.Index)),
	).Then(clientv3.OpPut(k, string(b))).Else(clientv3.OpGet(configKey(svc), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return nil, fmt.Errorf("set meta: %w", err)
	}
	if !res.Succeeded {
		if res.Responses[0].GetResponseRange().Count == 0 {
			return nil, notFound(svc)
		}
		return nil, api.Conflict("meta of service %q has changed since index %d: get it again and retry", svc, m.Index)
	}
	return &api.ServiceMeta{Data: m.Data, LeaderID: m.LeaderID, Index: uint64(res.Header.Revision)}, nil
}

// Watch sends svc's events to send: an up event per live instance (oldest
// first), the leader, the service meta when set, then current; after that
// every change as it happens, each followed by a leader event when the
// leader changed. It returns when ctx is done (nil), when send fails, when
// the service is removed (nil) or when the etcd watch breaks (an error; the
// caller should reconnect).
func (s *Store) Watch(ctx context.Context, svc string, send func(*api.ServiceEvent) error) error {
	if err := ValidateServiceName(svc); err != nil {
		return err
	}
	res, err := s.cli.Get(ctx, serviceKey(svc), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("watch service: %w", err)
	}
	w := &watchState{svc: svc, send: send, insts: map[string]*api.Instance{}}
	found := false
	var meta *api.ServiceMeta
	for _, kv := range res.Kvs {
		switch kind, id := w.classify(string(kv.Key)); kind {
		case "config":
			found = true
		case "meta":
			meta, _ = decodeMeta(kv.Value, kv.ModRevision)
		case "instance":
			if inst, err := decodeInstance(kv.Value, kv.CreateRevision); err == nil {
				w.insts[id] = inst
			}
		}
	}
	if !found {
		return notFound(svc)
	}
	initial := slices.Collect(maps.Values(w.insts))
	sortInstances(initial)
	for _, inst := range initial {
		if err := send(&api.ServiceEvent{Service: svc, Kind: api.EventKindUp, Instance: inst}); err != nil {
			return err
		}
	}
	if err := w.checkLeader(); err != nil {
		return err
	}
	if meta != nil {
		if err := send(&api.ServiceEvent{Service: svc, Kind: api.EventKindServiceMeta, ServiceMeta: meta}); err != nil {
			return err
		}
	}
	if err := send(&api.ServiceEvent{Service: svc, Kind: api.EventKindCurrent}); err != nil {
		return err
	}

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, serviceKey(svc), clientv3.WithPrefix(), clientv3.WithRev(res.Header.Revision+1))
	for wres := range wch {
		if err := wres.Err(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch service %q: %w", svc, err)
		}
		for _, ev := range wres.Events {
			done, err := w.apply(ev)
			if err != nil || done {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("watch service %q: watch closed", svc)
}

// watchState is one watcher's view of a service.
type watchState struct {
	svc    string
	send   func(*api.ServiceEvent) error
	insts  map[string]*api.Instance
	leader string
}

func (w *watchState) classify(key string) (kind, id string) {
	rest := strings.TrimPrefix(key, serviceKey(w.svc))
	switch {
	case rest == "config":
		return "config", ""
	case rest == "meta":
		return "meta", ""
	case strings.HasPrefix(rest, "instances/"):
		return "instance", strings.TrimPrefix(rest, "instances/")
	}
	return "", ""
}

// apply turns one etcd event into service events. done is true when the
// service was removed.
func (w *watchState) apply(ev *clientv3.Event) (done bool, err error) {
	kind, id := w.classify(string(ev.Kv.Key))
	put := ev.Type == clientv3.EventTypePut
	switch kind {
	case "config":
		if !put {
			for _, inst := range w.sorted() {
				if err := w.send(&api.ServiceEvent{Service: w.svc, Kind: api.EventKindDown, Instance: inst}); err != nil {
					return true, err
				}
			}
			return true, nil
		}
	case "meta":
		if put {
			m, err := decodeMeta(ev.Kv.Value, ev.Kv.ModRevision)
			if err != nil {
				return false, nil
			}
			return false, w.send(&api.ServiceEvent{Service: w.svc, Kind: api.EventKindServiceMeta, ServiceMeta: m})
		}
	case "instance":
		if put {
			inst, err := decodeInstance(ev.Kv.Value, ev.Kv.CreateRevision)
			if err != nil {
				return false, nil
			}
			k := api.EventKindUpdate
			if old, ok := w.insts[id]; !ok || old.Index != inst.Index {
				k = api.EventKindUp
				if ok {
					// Re-created under the same id without a delete in
					// between: report the old one gone first.
					if err := w.send(&api.ServiceEvent{Service: w.svc, Kind: api.EventKindDown, Instance: old}); err != nil {
						return true, err
					}
				}
			}
			w.insts[id] = inst
			if err := w.send(&api.ServiceEvent{Service: w.svc, Kind: k, Instance: inst}); err != nil {
				return true, err
			}
		} else {
			old, ok := w.insts[id]
			if !ok {
				return false, nil
			}
			delete(w.insts, id)
			if err := w.send(&api.ServiceEvent{Service: w.svc, Kind: api.EventKindDown, Instance: old}); err != nil {
				return true, err
			}
		}
		return false, w.checkLeader()
	}
	return false, nil
}

func (w *watchState) sorted() []*api.Instance {
	insts := slices.Collect(maps.Values(w.insts))
	sortInstances(insts)
	return insts
}

// checkLeader sends a leader event when the oldest instance changed.
func (w *watchState) checkLeader() error {
	var leader *api.Instance
	for _, inst := range w.insts {
		if leader == nil || inst.Index < leader.Index {
			leader = inst
		}
	}
	if leader == nil {
		w.leader = ""
		return nil
	}
	key := leader.ID + "/" + strconv.FormatUint(leader.Index, 10)
	if key == w.leader {
		return nil
	}
	w.leader = key
	return w.send(&api.ServiceEvent{Service: w.svc, Kind: api.EventKindLeader, Instance: leader})
}
