package blobstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// ReplicaHeader marks a request from another blobstore instance, with the
// sender's instance id as its value. A PUT or DELETE so marked is stored
// (with the version in api.BlobModifiedHeader) and not replicated again; a
// GET or HEAD so marked is answered from this instance's own store only.
const ReplicaHeader = "Blobstore-Replica"

// Peers finds the blobstore instances of the cluster.
type Peers interface {
	// Instances returns the host:port of every live instance; the
	// asking instance may be among them.
	Instances(ctx context.Context) ([]string, error)
}

// DiscoverdPeers finds instances registered in discoverd.
type DiscoverdPeers struct {
	Client  *discoverdclient.Client
	Service string
}

// Instances implements Peers. A service that does not exist yet has no
// instances.
func (d DiscoverdPeers) Instances(ctx context.Context) ([]string, error) {
	insts, err := d.Client.Instances(ctx, d.Service)
	if errors.Is(err, api.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find blobstore instances in discoverd: %w", err)
	}
	out := make([]string, 0, len(insts))
	for _, in := range insts {
		out = append(out, in.Addr)
	}
	return out, nil
}

// StaticPeers is a fixed list of instances (host:port).
type StaticPeers []string

// Instances implements Peers.
func (s StaticPeers) Instances(context.Context) ([]string, error) { return s, nil }

// Timeouts of requests to peers.
const (
	peerDialTimeout = 3 * time.Second
	// peerStall ends a request whose body moves no byte for this long.
	peerStall = 30 * time.Second
	// peerReplyTimeout is how long a peer may take to answer once it
	// has the whole request (a PUT's fsync included).
	peerReplyTimeout = 60 * time.Second
	// peerQuickTimeout bounds the small requests (status, HEAD, lists
	// of one directory, DELETE).
	peerQuickTimeout = 10 * time.Second
	// peerStatusTimeout bounds the question "who are you?".
	peerStatusTimeout = 3 * time.Second
)

func newPeerHTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: peerDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: peerReplyTimeout,
		DisableCompression:    true,
	}
	return &http.Client{Transport: tr}
}

// peer is another blobstore instance, as seen by this one.
type peer struct {
	addr string // host:port
	from string // this instance's id, sent in ReplicaHeader
	key  string
	hc   *http.Client
}

func (p *peer) url(name string) string {
	parts := strings.Split(name, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return "http://" + p.addr + "/" + strings.Join(parts, "/")
}

func (p *peer) request(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set(ReplicaHeader, p.from)
	if p.key != "" {
		req.SetBasicAuth("", p.key)
	}
	return req, nil
}

// send sends req and maps a non-2xx reply to an *api.Error.
func (p *peer) send(req *http.Request) (*http.Response, error) {
	res, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode >= 300 {
		defer res.Body.Close()
		return nil, httpclient.ErrorFromResponse(res)
	}
	return res, nil
}

// idempotencyKey names a replicated write, which can be repeated: the
// header lets net/http send it again on a fresh connection.
func idempotencyKey(name string, version time.Time) string {
	return url.PathEscape(name) + "@" + strconv.FormatInt(version.UnixNano(), 10)
}

// status returns the peer's instance id.
func (p *peer) status(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, peerStatusTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodGet, "http://"+p.addr+statusPath, nil)
	if err != nil {
		return "", err
	}
	res, err := p.send(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	var st statusReply
	if err := json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&st); err != nil {
		return "", fmt.Errorf("decode status of %s: %w", p.addr, err)
	}
	return st.ID, nil
}

// put sends the open blob obj to the peer as a replica.
func (p *peer) put(ctx context.Context, name string, obj Object) error {
	info := obj.Info()
	ctx, st := withStall(ctx, peerStall)
	defer st.stop()
	req, err := p.request(ctx, http.MethodPut, p.url(name), st.reader(obj))
	if err != nil {
		return err
	}
	req.ContentLength = info.Size
	if info.Size == 0 {
		req.Body = http.NoBody
	} else {
		// Replayable, so that a kept-alive connection the peer closed
		// meanwhile is retried on a new one rather than taken for a
		// failed peer.
		req.GetBody = func() (io.ReadCloser, error) {
			if _, err := obj.Seek(0, io.SeekStart); err != nil {
				return nil, err
			}
			return io.NopCloser(st.reader(obj)), nil
		}
	}
	req.Header.Set("Idempotency-Key", idempotencyKey(name, info.Modified))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(api.BlobModifiedHeader, info.Modified.UTC().Format(time.RFC3339Nano))
	if info.SHA256 != "" {
		req.Header.Set(api.BlobSHA256Header, info.SHA256)
	}
	res, err := p.send(req)
	if err != nil {
		return fmt.Errorf("replicate %q to %s: %w", "/"+name, p.addr, err)
	}
	io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	return nil
}

// delete sends a delete of name at version at. It reports whether the
// peer had a blob there that it removed.
func (p *peer) delete(ctx context.Context, name string, at time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, peerQuickTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodDelete, p.url(name), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set(api.BlobModifiedHeader, at.UTC().Format(time.RFC3339Nano))
	req.Header.Set("Idempotency-Key", idempotencyKey(name, at))
	res, err := p.send(req)
	if errors.Is(err, api.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("replicate delete of %q to %s: %w", "/"+name, p.addr, err)
	}
	res.Body.Close()
	return res.StatusCode == http.StatusNoContent, nil
}

// head describes the peer's own copy of name.
func (p *peer) head(ctx context.Context, name string) (api.BlobInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, peerQuickTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodHead, p.url(name), nil)
	if err != nil {
		return api.BlobInfo{}, err
	}
	res, err := p.send(req)
	if err != nil {
		return api.BlobInfo{}, err
	}
	res.Body.Close()
	return peerInfo(name, res)
}

// get opens the peer's own copy of name. The body stops with an error
// when it stalls.
func (p *peer) get(ctx context.Context, name string) (io.ReadCloser, api.BlobInfo, error) {
	ctx, st := withStall(ctx, peerStall)
	req, err := p.request(ctx, http.MethodGet, p.url(name), nil)
	if err != nil {
		st.stop()
		return nil, api.BlobInfo{}, err
	}
	res, err := p.send(req)
	if err != nil {
		st.stop()
		return nil, api.BlobInfo{}, err
	}
	info, err := peerInfo(name, res)
	if err != nil {
		res.Body.Close()
		st.stop()
		return nil, api.BlobInfo{}, err
	}
	return &stallBody{Reader: st.reader(res.Body), body: res.Body, st: st}, info, nil
}

// peerInfo reads a blob's info from a peer's GET or HEAD reply: it must
// carry the exact version and the checksum, which replicas keep.
func peerInfo(name string, res *http.Response) (api.BlobInfo, error) {
	info := api.BlobInfo{Path: "/" + name, Size: res.ContentLength, SHA256: res.Header.Get(api.BlobSHA256Header)}
	mod, err := time.Parse(time.RFC3339Nano, res.Header.Get(api.BlobModifiedHeader))
	if err != nil {
		return api.BlobInfo{}, fmt.Errorf("peer reply for %q has no valid %s header", "/"+name, api.BlobModifiedHeader)
	}
	info.Modified = mod.UTC()
	if info.SHA256 != "" && ValidSHA256(info.SHA256) != nil {
		return api.BlobInfo{}, fmt.Errorf("peer reply for %q has an invalid %s header", "/"+name, api.BlobSHA256Header)
	}
	if info.Size < 0 {
		if n, err := strconv.ParseInt(res.Header.Get("Content-Length"), 10, 64); err == nil && n >= 0 {
			info.Size = n
		} else {
			return api.BlobInfo{}, fmt.Errorf("peer reply for %q has no Content-Length", "/"+name)
		}
	}
	return info, nil
}

// list lists the peer's own directory dir.
func (p *peer) list(ctx context.Context, dir string) ([]api.BlobEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, peerQuickTimeout)
	defer cancel()
	u := "http://" + p.addr + "/"
	if dir != "" {
		u = p.url(dir) + "/"
	}
	req, err := p.request(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	res, err := p.send(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var out []api.BlobEntry
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decode listing of %s: %w", p.addr, err)
	}
	return out, nil
}

// tree calls fn for every blob the peer holds.
func (p *peer) tree(ctx context.Context, fn func(treeEntry) error) error {
	ctx, st := withStall(ctx, peerStall)
	defer st.stop()
	req, err := p.request(ctx, http.MethodGet, "http://"+p.addr+treePath, nil)
	if err != nil {
		return err
	}
	res, err := p.send(req)
	if err != nil {
		return fmt.Errorf("list the blobs of %s: %w", p.addr, err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(st.reader(res.Body))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		var e treeEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("list the blobs of %s: %w", p.addr, err)
		}
		if e.Error != "" {
			return fmt.Errorf("list the blobs of %s: %s", p.addr, e.Error)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("list the blobs of %s: %w", p.addr, err)
	}
	return nil
}

// tombstones returns the peer's record of deletes.
func (p *peer) tombstones(ctx context.Context) ([]Tombstone, error) {
	ctx, st := withStall(ctx, peerStall)
	defer st.stop()
	req, err := p.request(ctx, http.MethodGet, "http://"+p.addr+tombstonesPath, nil)
	if err != nil {
		return nil, err
	}
	res, err := p.send(req)
	if err != nil {
		return nil, fmt.Errorf("read the deletes of %s: %w", p.addr, err)
	}
	defer res.Body.Close()
	var out []Tombstone
	if err := json.NewDecoder(st.reader(res.Body)).Decode(&out); err != nil {
		return nil, fmt.Errorf("read the deletes of %s: %w", p.addr, err)
	}
	return out, nil
}

// unreachable reports whether err means the peer could not be reached at
// all (nothing listens there, or its host is gone), as opposed to a peer
// that answered and failed.
func unreachable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// stall cancels a request when its body makes no progress for a while.
type stall struct {
	d      time.Duration
	t      *time.Timer
	cancel context.CancelFunc
}

func withStall(ctx context.Context, d time.Duration) (context.Context, *stall) {
	ctx, cancel := context.WithCancel(ctx)
	return ctx, &stall{d: d, t: time.AfterFunc(d, cancel), cancel: cancel}
}

// reader returns r, which pushes the deadline back on every read that
// moves bytes, and stops it at the end of r.
func (s *stall) reader(r io.Reader) io.Reader { return &stallReader{r: r, s: s} }

func (s *stall) stop() {
	s.t.Stop()
	s.cancel()
}

type stallReader struct {
	r io.Reader
	s *stall
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.s.t.Reset(r.s.d)
	}
	if err != nil {
		r.s.t.Stop()
	}
	return n, err
}

type stallBody struct {
	io.Reader
	body io.Closer
	st   *stall
}

func (b *stallBody) Close() error {
	err := b.body.Close()
	b.st.stop()
	return err
}
