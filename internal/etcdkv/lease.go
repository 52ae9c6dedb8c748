package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// LeaseGrantResponse answers Grant.
type LeaseGrantResponse struct {
	Header *ResponseHeader `json:"header"`
	ID     LeaseID         `json:"ID,omitempty,string"`
	TTL    int64           `json:"TTL,omitempty,string"`
	Error  string          `json:"error,omitempty"`
}

// LeaseKeepAliveResponse answers KeepAliveOnce.
type LeaseKeepAliveResponse struct {
	Header *ResponseHeader `json:"header"`
	ID     LeaseID         `json:"ID,omitempty,string"`
	TTL    int64           `json:"TTL,omitempty,string"`
}

type leaseRequest struct {
	TTL int64   `json:"TTL,omitempty,string"`
	ID  LeaseID `json:"ID,omitempty,string"`
}

// Grant creates a lease of ttl seconds.
func (c *Client) Grant(ctx context.Context, ttl int64) (*LeaseGrantResponse, error) {
	var res LeaseGrantResponse
	if err := c.do(ctx, "/v3/lease/grant", leaseRequest{TTL: ttl}, &res, false); err != nil {
		return nil, err
	}
	if res.Error != "" {
		return nil, &Error{Code: 2, Message: res.Error}
	}
	fill(&res.Header)
	return &res, nil
}

// Revoke ends lease id, deleting the keys attached to it.
func (c *Client) Revoke(ctx context.Context, id LeaseID) error {
	var res struct {
		Header *ResponseHeader `json:"header"`
	}
	return c.do(ctx, "/v3/lease/revoke", leaseRequest{ID: id}, &res, false)
}

// KeepAliveOnce renews lease id for its TTL; ErrLeaseNotFound says it has
// expired.
func (c *Client) KeepAliveOnce(ctx context.Context, id LeaseID) (*LeaseKeepAliveResponse, error) {
	// The gateway's keepalive is a stream; a body of one request gets one
	// answer.
	var res struct {
		Result *LeaseKeepAliveResponse `json:"result"`
	}
	if err := c.do(ctx, "/v3/lease/keepalive", leaseRequest{ID: id}, &res, true); err != nil {
		return nil, err
	}
	if res.Result == nil || res.Result.TTL <= 0 {
		return nil, ErrLeaseNotFound
	}
	fill(&res.Result.Header)
	return res.Result, nil
}

// Session is a lease kept alive in the background, for an election: while
// the process lives, so does its candidacy.
type Session struct {
	c      *Client
	id     LeaseID
	ttl    int64
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// NewSession grants a lease of ttl seconds and renews it every ttl/3
// until ctx ends, Close is called, or the lease cannot be renewed before
// it expires (then Done is closed).
func NewSession(ctx context.Context, c *Client, ttl int) (*Session, error) {
	if ttl < 1 {
		ttl = 1
	}
	g, err := c.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	s := &Session{c: c, id: g.ID, ttl: int64(ttl), cancel: cancel, done: make(chan struct{})}
	go s.keepAlive(kctx)
	return s, nil
}

func (s *Session) keepAlive(ctx context.Context) {
	defer close(s.done)
	ttl := time.Duration(s.ttl) * time.Second
	expires := time.Now().Add(ttl)
	every := max(ttl/3, 100*time.Millisecond)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		// Each renewal must land before the lease would expire.
		rctx, cancel := context.WithDeadline(ctx, expires)
		sent := time.Now()
		res, err := s.c.KeepAliveOnce(rctx, s.id)
		cancel()
		switch {
		case err == nil:
			expires = sent.Add(time.Duration(res.TTL) * time.Second)
		case errors.Is(err, ErrLeaseNotFound), time.Now().After(expires):
			return
		}
	}
}

// Lease is the session's lease.
func (s *Session) Lease() LeaseID { return s.id }

// Done is closed when the session has ended: its lease expired or could
// not be renewed in time, or it was closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Close stops renewing the lease and revokes it, which deletes the keys
// attached to it (an election's candidacy: it resigns).
func (s *Session) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		<-s.done
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.ttl)*time.Second)
		defer cancel()
		if err = s.c.Revoke(ctx, s.id); errors.Is(err, ErrLeaseNotFound) {
			err = nil
		}
	})
	return err
}

// Campaign waits until this session leads the election under prefix, as
// etcd's concurrency package does it (and interoperates with it): the
// candidate puts prefix/<lease id in hex> = val under its lease, and
// leads once no key under prefix was created before its own. If ctx ends
// first, the candidacy is withdrawn.
func (s *Session) Campaign(ctx context.Context, prefix, val string) (err error) {
	key := fmt.Sprintf("%s/%x", prefix, int64(s.id))
	res, err := s.c.Txn(ctx).If(Compare(CreateRevision(key), "=", 0)).
		Then(OpPut(key, val, WithLease(s.id))).
		Else(OpGet(key)).Commit()
	if err != nil {
		return err
	}
	rev := res.Header.Revision
	if !res.Succeeded {
		kv := res.Responses[0].GetResponseRange().Kvs
		if len(kv) == 0 {
			return fmt.Errorf("campaign: key %s vanished", key)
		}
		rev = kv[0].CreateRevision
		if string(kv[0].Value) != val {
			if _, err := s.c.Put(ctx, key, val, WithLease(s.id)); err != nil {
				return err
			}
		}
	}
	defer func() {
		if err != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.c.Delete(dctx, key)
			cancel()
		}
	}()
	for {
		// The candidate just before us, if any: wait for its key to go.
		opts := append(WithLastCreate(), WithMaxCreateRev(rev-1))
		prev, err := s.c.Get(ctx, prefix+"/", append(opts, WithPrefix())...)
		if err != nil {
			return err
		}
		if len(prev.Kvs) == 0 {
			return nil
		}
		if err := s.waitDelete(ctx, string(prev.Kvs[0].Key), prev.Header.Revision); err != nil {
			return err
		}
	}
}

// waitDelete returns when key, which existed at revision rev, is deleted.
func (s *Session) waitDelete(ctx context.Context, key string, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// A candidacy whose lease is gone has nothing to wait for.
		select {
		case <-s.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	for wr := range s.c.Watch(wctx, key, WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == EventTypeDelete {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.done:
		return errors.New("campaign: session ended")
	default:
	}
	return errors.New("campaign: watch ended")
}
