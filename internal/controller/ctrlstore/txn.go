// Package ctrlstore keeps the controller's state in etcd under
// api.KeyController: apps, artifacts, releases, formations, scale requests,
// jobs, deployments, routes, providers, resources, SSH keys and the event
// log. Every change is one etcd transaction that also appends its events,
// so event ids (derived from the transaction's revision) increase
// monotonically and a follower that resumes with since_id misses nothing.
// The store holds no state of its own: any number of controllers can share
// one etcd.
package ctrlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// Key prefixes below api.KeyController.
const (
	pApps       = "apps/"
	pAppNames   = "app-names/"
	pArtifacts  = "artifacts/"
	pReleases   = "releases/"
	pFormations = "formations/"
	pScales     = "scale-requests/"
	// pScalePending indexes the pending scale request of a formation:
	// <app>/<release> → request id.
	pScalePending = "scale-pending/"
	pJobs         = "jobs/"
	pDeployments  = "deployments/"
	pDeployLock   = "deploy-locks/"
	pRoutes       = "routes/"
	pRouteIndex   = "route-index/"
	pProviders    = "providers/"
	pResources    = "resources/"
	pKeys         = "keys/"
	pEvents       = "events/"
)

// eventsPerTxn is how many events one transaction may append: an event's
// id is revision<<eventShift | index.
const eventShift = 8

// EventID is the id of the seq'th event appended by the transaction that
// committed at revision rev.
func EventID(rev int64, seq int) int64 { return rev<<eventShift | int64(seq) }

// eventRev is the revision of the transaction that appended event id.
func eventRev(id int64) int64 { return id >> eventShift }

// Store is the controller's state in etcd.
type Store struct {
	cli  *etcdkv.Client
	root string
	now  func() time.Time
}

// New returns a store on cli rooted at api.KeyController.
func New(cli *etcdkv.Client) *Store {
	return &Store{cli: cli, root: api.KeyController, now: func() time.Time { return time.Now().UTC() }}
}

// NewID returns a new random object id.
func NewID() string { return uuid.NewString() }

func (s *Store) key(prefix string, parts ...string) string {
	k := s.root + prefix
	for i, p := range parts {
		if i > 0 {
			k += "/"
		}
		k += p
	}
	return k
}

// errMissing is returned by get when the key does not exist.
var errMissing = errors.New("missing")

// get decodes key into v and returns its mod revision.
func (s *Store) get(ctx context.Context, key string, v any) (int64, error) {
	res, err := s.cli.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(res.Kvs) == 0 {
		return 0, errMissing
	}
	if err := json.Unmarshal(res.Kvs[0].Value, v); err != nil {
		return 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return res.Kvs[0].ModRevision, nil
}

// getObj is get that maps a missing key to a not-found api error.
func (s *Store) getObj(ctx context.Context, key, what, id string, v any) (int64, error) {
	rev, err := s.get(ctx, key, v)
	if errors.Is(err, errMissing) {
		return 0, api.NotFound("%s %q not found", what, id)
	}
	return rev, err
}

// list decodes every value under prefix with fn.
func (s *Store) list(ctx context.Context, prefix string, fn func(v []byte) error) error {
	res, err := s.cli.Get(ctx, prefix, etcdkv.WithPrefix())
	if err != nil {
		return fmt.Errorf("etcd list %s: %w", prefix, err)
	}
	for _, kv := range res.Kvs {
		if err := fn(kv.Value); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
	}
	return nil
}

func listOf[T any](ctx context.Context, s *Store, prefix string, keep func(*T) bool) ([]*T, error) {
	out := []*T{}
	err := s.list(ctx, prefix, func(b []byte) error {
		v := new(T)
		if err := json.Unmarshal(b, v); err != nil {
			return err
		}
		if keep == nil || keep(v) {
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// newestFirst sorts a listing (and its error) newest first by created, as
// Flynn's controller lists: its CLI's release rollback takes the second
// release listed.
func newestFirst[T any](items []*T, err error, created func(*T) time.Time) ([]*T, error) {
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(items, func(a, b *T) int { return created(b).Compare(created(a)) })
	return items, nil
}

// txn collects the writes, conditions and events of one transaction.
type txn struct {
	s      *Store
	cmps   []etcdkv.Cmp
	ops    []etcdkv.Op
	events []storedEvent
	err    error
}

// storedEvent is an event as stored: its id comes from the key's
// revision and Seq.
type storedEvent struct {
	api.Event
	Seq int `json:"seq"`
}

func (s *Store) txn() *txn { return &txn{s: s} }

func (t *txn) put(key string, v any) {
	b, err := json.Marshal(v)
	if err != nil && t.err == nil {
		t.err = fmt.Errorf("encode %s: %w", key, err)
	}
	t.ops = append(t.ops, etcdkv.OpPut(key, string(b)))
}

func (t *txn) putRaw(key, v string) { t.ops = append(t.ops, etcdkv.OpPut(key, v)) }

func (t *txn) del(key string) { t.ops = append(t.ops, etcdkv.OpDelete(key)) }

func (t *txn) delPrefix(prefix string) {
	t.ops = append(t.ops, etcdkv.OpDelete(prefix, etcdkv.WithPrefix()))
}

// missing requires key not to exist.
func (t *txn) missing(key string) {
	t.cmps = append(t.cmps, etcdkv.Compare(etcdkv.CreateRevision(key), "=", 0))
}

// unchanged requires key to be at mod revision rev (0: not to exist).
func (t *txn) unchanged(key string, rev int64) {
	t.cmps = append(t.cmps, etcdkv.Compare(etcdkv.ModRevision(key), "=", rev))
}

// event appends an event whose data is v.
func (t *txn) event(appID, typ, objID string, v any) {
	b, err := json.Marshal(v)
	if err != nil && t.err == nil {
		t.err = fmt.Errorf("encode event: %w", err)
	}
	t.events = append(t.events, storedEvent{
		Event: api.Event{AppID: appID, ObjectType: typ, ObjectID: objID, Data: b, CreatedAt: t.s.now()},
		Seq:   len(t.events),
	})
}

// commit runs the transaction. It returns false when a condition failed.
func (t *txn) commit(ctx context.Context) (bool, error) {
	if t.err != nil {
		return false, t.err
	}
	if len(t.events) >= 1<<eventShift {
		return false, fmt.Errorf("transaction has %d events, more than %d", len(t.events), 1<<eventShift-1)
	}
	ops := t.ops
	for _, e := range t.events {
		b, err := json.Marshal(e)
		if err != nil {
			return false, fmt.Errorf("encode event: %w", err)
		}
		ops = append(ops, etcdkv.OpPut(t.s.key(pEvents, NewID()), string(b)))
	}
	res, err := t.s.cli.Txn(ctx).If(t.cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcd txn: %w", err)
	}
	return res.Succeeded, nil
}

// maxRetries bounds optimistic-concurrency retries of read-modify-write.
const maxRetries = 20

var errRetry = api.Conflict("too many concurrent changes; retry the request")
