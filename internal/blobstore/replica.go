package blobstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// ReplicationConfig turns on replication between the blobstore instances
// of a cluster, each with its own backend (the filesystem of its host).
type ReplicationConfig struct {
	// Peers finds the instances (this one may be among them).
	Peers Peers
	// Self is the host:port this instance is registered as, when known.
	Self string
	// Listen is the address this instance listens on. An instance
	// registered with its port and one of this host's IP addresses is
	// this one. (Others that answer with this instance's id are too, so
	// Self and Listen are optional; but an instance cannot ask itself
	// before it serves.)
	Listen string
	// Key is the cluster key sent with replicated writes.
	Key string
	// MinCopies is how many instances must hold a blob before a PUT
	// succeeds, capped at the number of instances that can be reached
	// (DefaultMinCopies when 0).
	MinCopies int
	// StateDir keeps the tombstones of deletes ("" keeps them in memory).
	StateDir string
	// NoSync skips fsync of the tombstone log.
	NoSync bool
	// TombstoneTTL is how long a delete is remembered
	// (DefaultTombstoneTTL when 0). An instance that comes back after
	// longer than this may bring a deleted blob back.
	TombstoneTTL time.Duration
	// SyncInterval is the time between anti-entropy passes, the first
	// of which runs at start (DefaultSyncInterval when 0; negative: no
	// passes, the instance catches up by read repair only).
	SyncInterval time.Duration
	// RetryInterval is the time between retries of replicas that failed
	// (DefaultRetryInterval when 0).
	RetryInterval time.Duration
}

// Replication defaults.
const (
	DefaultMinCopies     = 2
	DefaultTombstoneTTL  = 30 * 24 * time.Hour
	DefaultSyncInterval  = 5 * time.Minute
	DefaultRetryInterval = 10 * time.Second
	// maxPending bounds the replicas waiting for retry per peer; beyond
	// it the anti-entropy pass catches the peer up.
	maxPending = 100000
)

// replicator keeps an instance's blobs in step with its peers.
type replicator struct {
	id      string
	cfg     ReplicationConfig
	backend Backend
	tombs   *tombstones
	log     *slog.Logger
	hc      *http.Client // for peers

	local func(addr string) bool // whether addr is this instance's

	mu      sync.Mutex
	last    []string            // the last instances Peers returned
	warned  time.Time           // when a failure of Peers was last logged
	isSelf  map[string]bool     // addr → whether it is this instance (once known)
	pending map[string]*pending // peer addr → replicas to retry
	seq     uint64
}

type pending struct {
	ops     map[string]pendingOp // name → op
	dropped bool                 // ops were dropped for lack of room
}

type pendingOp struct {
	delete bool
	at     time.Time // the delete's version
	seq    uint64
}

func newReplicator(id string, cfg ReplicationConfig, b Backend, log *slog.Logger) (*replicator, error) {
	if cfg.Peers == nil {
		return nil, errors.New("blobstore replication needs a way to find peers")
	}
	if cfg.MinCopies <= 0 {
		cfg.MinCopies = DefaultMinCopies
	}
	if cfg.TombstoneTTL <= 0 {
		cfg.TombstoneTTL = DefaultTombstoneTTL
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	tombs, err := openTombstones(cfg.StateDir, cfg.TombstoneTTL, cfg.NoSync)
	if err != nil {
		return nil, err
	}
	return &replicator{
		id: id, cfg: cfg, backend: b, tombs: tombs, log: log,
		local:   localAddr(cfg.Listen),
		hc:      newPeerHTTPClient(),
		isSelf:  map[string]bool{},
		pending: map[string]*pending{},
	}, nil
}

// peers returns the other live instances. When the registry cannot be
// asked, the instances it last named are used.
func (r *replicator) peers(ctx context.Context) []*peer {
	addrs, err := r.cfg.Peers.Instances(ctx)
	warn := false
	r.mu.Lock()
	if err != nil {
		addrs = r.last
		if now := time.Now(); now.Sub(r.warned) > time.Minute {
			r.warned, warn = now, true
		}
	} else {
		r.last = addrs
	}
	r.mu.Unlock()
	if warn && ctx.Err() == nil {
		r.log.Warn("cannot list blobstore instances; using the last known (said at most once a minute)", "err", err, "instances", len(addrs))
	}
	var (
		out     []*peer
		unknown []*peer
	)
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] || a == r.cfg.Self || r.local(a) {
			continue
		}
		seen[a] = true
		p := &peer{addr: a, from: r.id, key: r.cfg.Key, hc: r.hc}
		r.mu.Lock()
		self, known := r.isSelf[a]
		r.mu.Unlock()
		switch {
		case !known:
			unknown = append(unknown, p)
		case !self:
			out = append(out, p)
		}
	}
	// Ask the instances not seen before who they are, at once.
	var wg sync.WaitGroup
	selfs := make([]bool, len(unknown))
	for i, p := range unknown {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := p.status(ctx)
			if err != nil {
				return // unreachable for now: tried as a peer, and asked again next time
			}
			selfs[i] = id == r.id
			r.mu.Lock()
			r.isSelf[p.addr] = selfs[i]
			r.mu.Unlock()
		}()
	}
	wg.Wait()
	for i, p := range unknown {
		if !selfs[i] {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].addr < out[j].addr })
	return out
}

// localAddr returns a function that reports whether an address is the
// one of listen: the same port, and the same IP or, when listen has none
// (or an unspecified one), any IP of this host.
func localAddr(listen string) func(string) bool {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "" || port == "0" {
		return func(string) bool { return false }
	}
	ips := map[string]bool{}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		ips[ip.String()] = true
	} else if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				ips[n.IP.String()] = true
			}
		}
	}
	return func(addr string) bool {
		h, p, err := net.SplitHostPort(addr)
		if err != nil || p != port {
			return false
		}
		ip := net.ParseIP(h)
		return ip != nil && ips[ip.String()]
	}
}

// outcome is how a replica went on one peer.
type outcome struct {
	p   *peer
	err error
}

// reach counts the outcomes: the peers that took the write, and those
// that answered at all.
func reach(outs []outcome) (ok, answered int, firstErr error) {
	for _, o := range outs {
		switch {
		case o.err == nil:
			ok++
			answered++
		case unreachable(o.err):
		default:
			answered++
		}
		if o.err != nil && firstErr == nil {
			firstErr = o.err
		}
	}
	return ok, answered, firstErr
}

// enough checks that a write held on copies instances (this one
// included) meets the minimum, given how many instances answered.
func (r *replicator) enough(op, name string, copies, answered int, firstErr error) error {
	need := min(r.cfg.MinCopies, answered)
	if copies >= need {
		return nil
	}
	r.log.Warn("write not replicated enough", "op", op, "path", "/"+name, "copies", copies, "need", need, "err", firstErr)
	return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf(
		"%s of %q reached %d blobstore instance(s) of the %d needed (%v); it will be retried in the background, but repeat the request to be sure it is kept",
		op, "/"+name, copies, need, firstErr)}
}

// replicatePut pushes the local blob at name to every peer and returns
// how many instances hold it. It fails when fewer than the minimum do.
func (r *replicator) replicatePut(ctx context.Context, name string) (int, error) {
	peers := r.peers(ctx)
	outs := make([]outcome, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = outcome{p: p, err: r.pushTo(ctx, p, name)}
		}()
	}
	wg.Wait()
	for _, o := range outs {
		if o.err != nil {
			r.enqueue(o.p.addr, name, pendingOp{})
		}
	}
	ok, answered, firstErr := reach(outs)
	return 1 + ok, r.enough("PUT", name, 1+ok, 1+answered, firstErr)
}

// errGone means the local blob went away before it could be sent: a
// later delete, which replicates itself.
var errGone = errors.New("blob deleted meanwhile")

// pushTo sends the local blob at name to p.
func (r *replicator) pushTo(ctx context.Context, p *peer, name string) error {
	obj, err := r.backend.Open(ctx, name)
	if errors.Is(err, api.ErrNotFound) {
		return errGone
	}
	if err != nil {
		return err
	}
	defer obj.Close()
	return p.put(ctx, name, obj)
}

// replicateDelete sends a delete of name at version at to every peer. It
// reports whether one of them had the blob, and fails when fewer
// instances than the minimum recorded the delete.
func (r *replicator) replicateDelete(ctx context.Context, name string, at time.Time) (bool, error) {
	peers := r.peers(ctx)
	outs := make([]outcome, len(peers))
	had := make([]bool, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			had[i], err = p.delete(ctx, name, at)
			outs[i] = outcome{p: p, err: err}
		}()
	}
	wg.Wait()
	anyHad := false
	for i, o := range outs {
		if o.err != nil {
			r.enqueue(o.p.addr, name, pendingOp{delete: true, at: at})
		}
		anyHad = anyHad || had[i]
	}
	ok, answered, firstErr := reach(outs)
	return anyHad, r.enough("DELETE", name, 1+ok, 1+answered, firstErr)
}

// enqueue records a replica to retry on the peer at addr; a later op on
// the same path replaces an earlier one.
func (r *replicator) enqueue(addr, name string, op pendingOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.pending[addr]
	if q == nil {
		q = &pending{ops: map[string]pendingOp{}}
		r.pending[addr] = q
	}
	if _, ok := q.ops[name]; !ok && len(q.ops) >= maxPending {
		if !q.dropped {
			r.log.Warn("too many replicas waiting for a peer; the anti-entropy pass will catch it up", "peer", addr)
		}
		q.dropped = true
		return
	}
	r.seq++
	op.seq = r.seq
	q.ops[name] = op
}

// pendingCount is how many replicas wait for retry (for tests and logs).
func (r *replicator) pendingCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, q := range r.pending {
		n += len(q.ops)
	}
	return n
}

// retry sends the replicas that failed before to the peers that are
// still registered, and forgets those of peers that are not (when one
// comes back, it catches up itself).
func (r *replicator) retry(ctx context.Context) {
	if r.pendingCount() == 0 {
		return
	}
	live := map[string]*peer{}
	for _, p := range r.peers(ctx) {
		live[p.addr] = p
	}
	type job struct {
		p   *peer
		ops map[string]pendingOp
	}
	var jobs []job
	r.mu.Lock()
	for addr, q := range r.pending {
		p, ok := live[addr]
		if !ok {
			r.log.Info("peer gone; forgetting its pending replicas", "peer", addr, "replicas", len(q.ops))
			delete(r.pending, addr)
			continue
		}
		ops := make(map[string]pendingOp, len(q.ops))
		for k, v := range q.ops {
			ops[k] = v
		}
		jobs = append(jobs, job{p: p, ops: ops})
	}
	r.mu.Unlock()
	for _, j := range jobs {
		names := make([]string, 0, len(j.ops))
		for n := range j.ops {
			names = append(names, n)
		}
		sort.Strings(names)
		done, failed := 0, 0
		for _, name := range names {
			if ctx.Err() != nil {
				return
			}
			op := j.ops[name]
			var err error
			if op.delete {
				_, err = j.p.delete(ctx, name, op.at)
			} else if err = r.pushTo(ctx, j.p, name); errors.Is(err, errGone) {
				err = nil
			}
			if unreachable(err) {
				failed = len(names) - done
				break
			}
			if err != nil {
				failed++
				r.log.Debug("replica retry failed", "peer", j.p.addr, "path", "/"+name, "err", err)
				continue
			}
			done++
			r.mu.Lock()
			if q := r.pending[j.p.addr]; q != nil && q.ops[name].seq == op.seq {
				delete(q.ops, name)
				if len(q.ops) == 0 && !q.dropped {
					delete(r.pending, j.p.addr)
				}
			}
			r.mu.Unlock()
		}
		if done > 0 || failed > 0 {
			r.log.Info("replicas retried", "peer", j.p.addr, "done", done, "failed", failed)
		}
	}
}

// find asks the peers for name and returns the one with the newest copy
// that no recorded delete covers.
func (r *replicator) find(ctx context.Context, name string) (*peer, api.BlobInfo, error) {
	peers := r.peers(ctx)
	infos := make([]api.BlobInfo, len(peers))
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i], errs[i] = p.head(ctx, name)
		}()
	}
	wg.Wait()
	var (
		best *peer
		info api.BlobInfo
	)
	for i, p := range peers {
		if errs[i] != nil {
			if !errors.Is(errs[i], api.ErrNotFound) {
				r.log.Debug("peer lookup failed", "peer", p.addr, "path", "/"+name, "err", errs[i])
			}
			continue
		}
		if r.tombs.dead(name, infos[i].Modified) {
			continue
		}
		if best == nil || infos[i].Modified.After(info.Modified) {
			best, info = p, infos[i]
		}
	}
	if best == nil {
		return nil, api.BlobInfo{}, notFound(name)
	}
	return best, info, nil
}

// fetch copies name from p into the local backend and returns what is
// stored locally afterwards.
func (r *replicator) fetch(ctx context.Context, p *peer, name string) (api.BlobInfo, error) {
	body, info, err := p.get(ctx, name)
	if err != nil {
		return api.BlobInfo{}, err
	}
	defer body.Close()
	if r.tombs.dead(name, info.Modified) {
		return api.BlobInfo{}, notFound(name)
	}
	got, err := r.backend.Put(ctx, name, body, PutOptions{SHA256: info.SHA256, Size: info.Size, Modified: info.Modified})
	if errors.Is(err, ErrStale) {
		return got, nil
	}
	if err != nil {
		return api.BlobInfo{}, fmt.Errorf("copy %q from %s: %w", "/"+name, p.addr, err)
	}
	return got, nil
}

// applyDelete applies a delete of name at version at, done elsewhere.
// It reports whether a local blob was removed.
func (r *replicator) applyDelete(ctx context.Context, name string, at time.Time) (bool, error) {
	if err := r.tombs.add(name, at); err != nil {
		return false, err
	}
	_, err := r.backend.Delete(ctx, name, DeleteOptions{Before: at})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrStale), errors.Is(err, api.ErrNotFound), errors.Is(err, api.ErrConflict):
		return false, nil
	}
	return false, err
}

// pullTombstones applies the deletes the peers recorded; an instance
// does this before it serves, so that it does not serve a blob deleted
// while it was away.
func (r *replicator) pullTombstones(ctx context.Context, peers []*peer) {
	var wg sync.WaitGroup
	lists := make([][]Tombstone, len(peers))
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := p.tombstones(ctx)
			if err != nil {
				if !unreachable(err) {
					r.log.Warn("cannot read a peer's deletes", "peer", p.addr, "err", err)
				}
				return
			}
			lists[i] = ts
		}()
	}
	wg.Wait()
	removed := 0
	for _, ts := range lists {
		for _, t := range ts {
			name, dir, err := ValidName(t.Path)
			if err != nil || dir || t.Deleted.IsZero() {
				continue
			}
			if time.Since(t.Deleted) > r.cfg.TombstoneTTL {
				continue
			}
			if at, ok := r.tombs.get(name); ok && !t.Deleted.After(at) {
				continue // applied before
			}
			ok, err := r.applyDelete(ctx, name, t.Deleted)
			if err != nil {
				r.log.Warn("cannot apply a peer's delete", "path", t.Path, "err", err)
				continue
			}
			if ok {
				removed++
			}
		}
	}
	if removed > 0 {
		r.log.Info("removed blobs deleted on other instances", "blobs", removed)
	}
}

// CatchUp applies the deletes recorded by the other instances. Run calls
// it before it serves.
func (r *replicator) catchUp(ctx context.Context) {
	r.pullTombstones(ctx, r.peers(ctx))
}

// syncOnce is one anti-entropy pass: apply the peers' deletes, then copy
// every blob a peer has in a newer version than this instance (or that
// this instance lacks), unless a recorded delete covers it. Each instance
// pulls; none pushes, so every instance ends with every live blob.
func (r *replicator) syncOnce(ctx context.Context) {
	if err := r.tombs.expire(time.Now()); err != nil {
		r.log.Warn("cannot expire tombstones", "err", err)
	}
	peers := r.peers(ctx)
	if len(peers) == 0 {
		return
	}
	r.pullTombstones(ctx, peers)
	local := map[string]time.Time{}
	var dead []string
	if err := walk(ctx, r.backend, func(e treeEntry) error {
		name := strings.TrimPrefix(e.Path, "/")
		if r.tombs.dead(name, e.Modified) {
			// Written back by a race with its delete.
			dead = append(dead, name)
			return nil
		}
		local[name] = e.Modified
		return nil
	}); err != nil {
		r.log.Warn("cannot list local blobs", "err", err)
		return
	}
	for _, name := range dead {
		at, _ := r.tombs.get(name)
		if _, err := r.applyDelete(ctx, name, at); err != nil {
			r.log.Warn("cannot remove a deleted blob", "path", "/"+name, "err", err)
		}
	}
	copied, failed := 0, 0
	for _, p := range peers {
		err := p.tree(ctx, func(e treeEntry) error {
			name, dir, err := ValidName(e.Path)
			if err != nil || dir || name == "" {
				return nil
			}
			if cur, ok := local[name]; ok && !e.Modified.After(cur) {
				return nil
			}
			if r.tombs.dead(name, e.Modified) {
				return nil
			}
			info, err := r.fetch(ctx, p, name)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if unreachable(err) {
					return err
				}
				if !errors.Is(err, api.ErrNotFound) {
					failed++
					r.log.Warn("cannot copy a blob from a peer", "peer", p.addr, "path", e.Path, "err", err)
				}
				return nil
			}
			local[name] = info.Modified
			copied++
			return nil
		})
		if err != nil && ctx.Err() == nil && !unreachable(err) {
			r.log.Warn("anti-entropy with a peer stopped", "peer", p.addr, "err", err)
		}
	}
	if copied > 0 || failed > 0 {
		r.log.Info("anti-entropy pass copied blobs from peers", "copied", copied, "failed", failed)
	}
}

// run retries failed replicas and runs the anti-entropy passes (the
// first at once) until ctx is done.
func (r *replicator) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if r.cfg.SyncInterval < 0 {
			return
		}
		for {
			r.syncOnce(ctx)
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.cfg.SyncInterval):
			}
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.cfg.RetryInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.retry(ctx)
			}
		}
	}()
	wg.Wait()
}

// mergeList lists dir across this instance and its peers: the union of
// their entries, files in their newest version, without deleted blobs.
func (r *replicator) mergeList(ctx context.Context, dir string, local []api.BlobEntry, localErr error) ([]api.BlobEntry, error) {
	peers := r.peers(ctx)
	lists := make([][]api.BlobEntry, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := p.list(ctx, dir)
			if err == nil {
				lists[i] = l
			}
		}()
	}
	wg.Wait()
	found := localErr == nil
	byName := map[string]api.BlobEntry{}
	for _, e := range local {
		byName[e.Name] = e
	}
	for _, l := range lists {
		if l != nil {
			found = true
		}
		for _, e := range l {
			if e.Name == "" || strings.Contains(e.Name, "/") {
				continue
			}
			full := e.Name
			if dir != "" {
				full = dir + "/" + e.Name
			}
			if !e.Dir && r.tombs.dead(full, e.Modified) {
				continue
			}
			cur, ok := byName[e.Name]
			switch {
			case !ok:
				byName[e.Name] = e
			case e.Dir && !cur.Dir:
				// A blob here and a directory there: the local view wins.
			case !e.Dir && !cur.Dir && e.Modified.After(cur.Modified):
				byName[e.Name] = e
			}
		}
	}
	if !found {
		return nil, localErr
	}
	out := make([]api.BlobEntry, 0, len(byName))
	for _, e := range byName {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// treeEntry is one blob in a tree listing, or, with Error, the reason the
// listing stops short.
type treeEntry struct {
	Path     string    `json:"path,omitempty"`
	Size     int64     `json:"size,omitempty"`
	Modified time.Time `json:"modified,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// walk calls fn for every blob of b, in path order.
func walk(ctx context.Context, b Backend, fn func(treeEntry) error) error {
	var visit func(dir string) error
	visit = func(dir string) error {
		entries, err := b.List(ctx, dir)
		if err != nil {
			if dir != "" && errors.Is(err, api.ErrNotFound) {
				return nil // removed while walking
			}
			return err
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := e.Name
			if dir != "" {
				name = dir + "/" + e.Name
			}
			if e.Dir {
				if err := visit(name); err != nil {
					return err
				}
				continue
			}
			if err := fn(treeEntry{Path: "/" + name, Size: e.Size, Modified: e.Modified}); err != nil {
				return err
			}
		}
		return nil
	}
	return visit("")
}
