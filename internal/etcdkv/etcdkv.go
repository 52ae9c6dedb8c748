// Package etcdkv is a small etcd v3 client that speaks etcd's JSON gateway
// (the /v3/... HTTP endpoints every etcd member serves on its client URL)
// over HTTP/1.1 and mutual TLS, instead of gRPC.
//
// The platform's components (controller, scheduler, router, gitreceive)
// use it: clientv3 brings gRPC, protobuf and their registries, about
// 10 MB of binary and of resident memory in each of those processes,
// where this client needs only net/http and encoding/json, which they link
// anyway. The host daemon, which embeds the etcd server, keeps clientv3.
//
// The API follows clientv3's names for the part the components use (Get,
// Put, Delete, Txn with If/Then/Else, Watch, leases), so code reads the
// same:
//
//	res, err := cli.Get(ctx, "/flynn/apps/", etcdkv.WithPrefix())
//
// Like clientv3, a request that could not be sent (no member reachable)
// waits and tries the members in turn until its context ends, a read is
// also retried on another member when its connection breaks, and a watch
// resumes after the last revision it delivered when its stream breaks.
package etcdkv

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config says how to reach the cluster's etcd.
type Config struct {
	// Endpoints are the members' client URLs ("https://10.0.0.1:2379");
	// one without a scheme gets https when TLS is set, http otherwise.
	Endpoints []string
	// TLS, when set, is used for every connection (the component's
	// certificate for etcd's mutual TLS).
	TLS *tls.Config
	// DialTimeout bounds one connection attempt (default 5 s).
	DialTimeout time.Duration
}

// Client is safe for concurrent use.
type Client struct {
	endpoints []string
	hc        *http.Client
	cur       *atomic.Int64 // index of the endpoint that last answered
	ns        string        // WithNamespace's prefix
}

// New returns a client for cfg. It does not connect: the first request
// does.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdkv: no endpoints")
	}
	c := &Client{cur: new(atomic.Int64)}
	for _, ep := range cfg.Endpoints {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		if !strings.Contains(ep, "://") {
			if cfg.TLS != nil {
				ep = "https://" + ep
			} else {
				ep = "http://" + ep
			}
		}
		c.endpoints = append(c.endpoints, strings.TrimSuffix(ep, "/"))
	}
	if len(c.endpoints) == 0 {
		return nil, errors.New("etcdkv: no endpoints")
	}
	dt := cfg.DialTimeout
	if dt <= 0 {
		dt = 5 * time.Second
	}
	d := &net.Dialer{
		Timeout: dt,
		// A member that vanishes (power, network) without closing its
		// connections: an idle one (a watch's) is found dead by
		// keepalives, one with a request written to it by the user
		// timeout, in seconds; the request is then tried elsewhere (a read)
		// or fails (a write), where it would wait forever.
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control: func(_, _ string, rc syscall.RawConn) error {
			rc.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(userTimeout/time.Millisecond))
			})
			return nil
		},
	}
	tr := &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     cfg.TLS,
		TLSHandshakeTimeout: dt,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	}
	c.hc = &http.Client{Transport: tr}
	return c, nil
}

// Close releases the client's idle connections. Watches and sessions end
// with their contexts.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// WithNamespace returns a client that shares c's connections and sees
// only the keys under prefix, without it: its keys, ranges, comparisons
// and watches are prefixed on the way out, and the keys it reads back are
// stripped of prefix.
func (c *Client) WithNamespace(prefix string) *Client {
	n := *c
	n.ns = c.ns + prefix
	return &n
}

// Endpoints returns the members' client URLs the client uses.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// Error is an error etcd answered with.
type Error struct {
	Code    int // gRPC status code
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is matches the sentinel errors below by message, as etcd's own errors
// are told apart.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == e.Message
}

// etcd's errors that callers test for, with errors.Is.
var (
	ErrCompacted     = &Error{Code: 11, Message: "etcdserver: mvcc: required revision has been compacted"}
	ErrFutureRev     = &Error{Code: 11, Message: "etcdserver: mvcc: required revision is a future revision"}
	ErrLeaseNotFound = &Error{Code: 5, Message: "etcdserver: requested lease not found"}
	ErrNoLeader      = &Error{Code: 14, Message: "etcdserver: no leader"}
)

// requireLeaderKey marks a context made by WithRequireLeader.
type requireLeaderKey struct{}

// WithRequireLeader makes requests and watches under ctx fail (a watch:
// end with an error) when the member that serves them has no leader,
// rather than wait or serve stale data.
func WithRequireLeader(ctx context.Context) context.Context {
	return context.WithValue(ctx, requireLeaderKey{}, true)
}

// userTimeout bounds how long data written to a member may go
// unacknowledged (TCP_USER_TIMEOUT, Linux).
const userTimeout = 10 * time.Second

// codeCanceled and codeUnavailable are gRPC's Canceled and Unavailable;
// maxUnavailable bounds the tries of a read that keeps getting the latter.
const (
	codeCanceled    = 1
	codeUnavailable = 14
	maxUnavailable  = 100
)

// errNotSent says a request never reached a member: it is safe to send
// again, to another one.
type errNotSent struct{ err error }

func (e errNotSent) Error() string { return e.err.Error() }
func (e errNotSent) Unwrap() error { return e.err }

// post sends one request to one endpoint and returns the response, whose
// body the caller closes. A status other than 200 is returned as *Error.
func (c *Client) post(ctx context.Context, ep, path string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if ctx.Value(requireLeaderKey{}) != nil {
		// grpc-gateway passes Grpc-Metadata-* on as gRPC metadata;
		// hasleader is what clientv3.WithRequireLeader sets.
		req.Header.Set("Grpc-Metadata-Hasleader", "true")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, errNotSent{err}
		}
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		defer res.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		if e := decodeError(b); e != nil {
			return nil, e
		}
		return nil, fmt.Errorf("etcd %s: %s: %s", path, res.Status, bytes.TrimSpace(b))
	}
	return res, nil
}

// decodeError reads the gateway's error bodies: {"error": "...", "code":
// N, "message": "..."} for a request, {"error": {"code": N, "message":
// "..."}} inside a stream.
func decodeError(b []byte) *Error {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Code    int             `json:"code"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	if len(v.Error) > 0 && v.Error[0] == '{' {
		var inner struct {
			Code     int    `json:"code"`
			GRPCCode int    `json:"grpc_code"`
			Message  string `json:"message"`
		}
		if json.Unmarshal(v.Error, &inner) != nil {
			return nil
		}
		if inner.Code == 0 {
			inner.Code = inner.GRPCCode
		}
		return &Error{Code: inner.Code, Message: inner.Message}
	}
	if v.Message == "" {
		json.Unmarshal(v.Error, &v.Message)
	}
	if v.Message == "" {
		return nil
	}
	return &Error{Code: v.Code, Message: v.Message}
}

// do sends a unary request and decodes its answer into out. A request
// that was not sent is tried on the next member, and when none answers,
// again after a pause, until ctx ends; so is a read (retry) whose
// connection broke.
func (c *Client) do(ctx context.Context, path string, in, out any, retry bool) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	backoff := 50 * time.Millisecond
	broken := 0
	for attempt := 0; ; attempt++ {
		i := int(c.cur.Load())
		ep := c.endpoints[i%len(c.endpoints)]
		res, err := c.post(ctx, ep, path, body)
		if err == nil {
			err = json.NewDecoder(res.Body).Decode(out)
			// Read to the end, so that the connection is reused rather
			// than closed (and a new one made, TLS handshake and all).
			io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
			if err == nil {
				return nil
			}
			err = fmt.Errorf("etcd %s: decode: %w", path, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ee *Error
		var ns errNotSent
		switch {
		case errors.As(err, &ee):
			// etcd's answer. Unavailable (a member starting, or without a
			// leader for now) is worth another try for a read, as
			// clientv3 retries it; a write may have been applied.
			if ee.Code != codeUnavailable || !retry || attempt >= maxUnavailable {
				return err
			}
		case !errors.As(err, &ns):
			// Sent, and the connection broke (or TLS failed): a read is
			// tried once more on each member, a write is not.
			if broken++; !retry || broken > len(c.endpoints) {
				return err
			}
		}
		// Next member; after a round of them all, wait a little.
		c.cur.CompareAndSwap(int64(i), int64((i+1)%len(c.endpoints)))
		if (attempt+1)%len(c.endpoints) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Second)
		}
	}
}
