package blobstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

const (
	clusterToken = "cluster-token"
	clusterKey   = "cluster-key"
)

// cluster is a discoverd (on a real etcd) and the blobstore instances
// registered in it, each a real server (blobstore.Run) on its own port
// and data directory, as on separate hosts.
type cluster struct {
	t    *testing.T
	url  string // discoverd
	disc *discoverdclient.Client
	log  *slog.Logger // the instances' log, shown when the test fails
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	store := discoverd.NewStore(etcdtest.Client(t), 10*time.Second)
	srv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(clusterToken), logging.Discard()))
	t.Cleanup(srv.Close)
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("blobstore logs:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &cluster{t: t, url: srv.URL, disc: discoverdclient.New(srv.URL, clusterToken), log: log}
}

// syncBuffer is a bytes.Buffer for several writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// instance is one blobstore server of a cluster. Its address and data
// directory stay the same across restarts.
type instance struct {
	name string
	addr string
	dir  string
	cfg  blobstore.Config
	c    *blobclient.Client
	cl   *cluster

	cancel context.CancelFunc
	done   chan error
	reg    *discoverdclient.Registration
}

// add makes an instance; mod adjusts its config. Anti-entropy passes and
// retries are off unless mod turns them on, so each test sees only the
// mechanism it is about.
func (cl *cluster) add(name string, mod func(*blobstore.Config)) *instance {
	t := cl.t
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))
	in := &instance{name: name, addr: addr, dir: testslot.Dir(t), cl: cl}
	in.cfg = blobstore.Config{
		Listen: addr, Dir: in.dir, NoSync: true, Keys: []string{clusterKey},
		Discoverd: cl.url, DiscoverdToken: clusterToken,
		SyncInterval: -1, RetryInterval: time.Hour,
	}
	if mod != nil {
		mod(&in.cfg)
	}
	in.c = blobclient.New("http://"+addr, clusterKey, nil)
	t.Cleanup(func() {
		in.stop(t)
		if in.reg != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			in.reg.Deregister(ctx)
		}
	})
	return in
}

// start runs the instance, waits until it answers, and registers it in
// discoverd the first time, as its host would once its health check
// passes.
func (in *instance) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel, in.done = cancel, make(chan error, 1)
	go func() { in.done <- blobstore.Run(ctx, in.cfg, in.cl.log.With("instance", in.name)) }()
	waitFor(t, "blobstore "+in.name+" to answer on "+in.addr, func() (bool, string) {
		select {
		case err := <-in.done:
			t.Fatalf("blobstore %s stopped: %v", in.name, err)
		default:
		}
		res, err := http.Get("http://" + in.addr + "/.well-known/status")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, res.Status
	})
	if in.reg == nil {
		reg, err := in.cl.disc.Register(context.Background(), blobstore.DefaultService, in.addr, nil)
		if err != nil {
			t.Fatalf("register %s: %v", in.name, err)
		}
		in.reg = reg
	}
}

// stop stops the instance's server and waits for it to end. Its
// discoverd registration stays, as a dead host's does until it expires:
// its peers still find it and must cope with it being unreachable.
func (in *instance) stop(t *testing.T) {
	t.Helper()
	if in.cancel == nil {
		return
	}
	in.cancel()
	in.cancel = nil
	select {
	case err := <-in.done:
		if err != nil {
			t.Errorf("blobstore %s ended with %v", in.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("blobstore %s did not stop within 30s", in.name)
	}
}

// file reads the blob at p from the instance's own disk.
func (in *instance) file(p string) ([]byte, error) {
	return os.ReadFile(filepath.Join(in.dir, filepath.FromSlash(p)))
}

// hasFile checks that the instance's disk holds want at p, with the
// version of info.
func (in *instance) hasFile(t *testing.T, p string, want []byte, info api.BlobInfo) {
	t.Helper()
	got, err := in.file(p)
	if err != nil {
		t.Fatalf("%s: %s is not on its disk: %v", in.name, p, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %s on disk has %d bytes (sha %s), want %d (sha %s)", in.name, p, len(got), sum(got), len(want), sum(want))
	}
	fi, err := os.Stat(filepath.Join(in.dir, filepath.FromSlash(p)))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(info.Modified) {
		t.Fatalf("%s: %s has version %s on disk, want %s (the writer's)", in.name, p, fi.ModTime().UTC().Format(time.RFC3339Nano), info.Modified.Format(time.RFC3339Nano))
	}
}

func (in *instance) lacksFile(t *testing.T, p string) {
	t.Helper()
	if _, err := in.file(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: %s is on its disk (err %v), want it gone", in.name, p, err)
	}
}

// waitFor polls cond until it holds, failing with what it waited for and
// what it saw last after a generous deadline.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := ""
	for {
		ok, seen := cond()
		if ok {
			return
		}
		last = seen
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s; last saw: %s", what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func blob(seed uint64, n int) []byte {
	b := make([]byte, n)
	io.ReadFull(newPattern(seed), b)
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestReplicatedWrite: a PUT through one instance is on the other's disk
// when it returns, with the same version, and reads (whole, ranges,
// checksums, listings) work through either; overwrite, copy and delete
// replicate too.
func TestReplicatedWrite(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.add("a", nil), cl.add("b", nil)
	a.start(t)
	b.start(t)
	ctx := ctxT(t)

	data := blob(1, 300<<10)
	info, err := a.c.Put(ctx, "/slugs/app/1.tgz", bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Copies != 2 {
		t.Fatalf("PUT through a: copies = %d, want 2", info.Copies)
	}
	b.hasFile(t, "/slugs/app/1.tgz", data, info)

	got, ginfo := getAll(t, b.c, "/slugs/app/1.tgz")
	if !bytes.Equal(got, data) || ginfo.SHA256 != sum(data) || !ginfo.Modified.Equal(info.Modified) {
		t.Fatalf("GET through b: %d bytes, info %+v; want %d bytes, sha %s, modified %s", len(got), ginfo, len(data), sum(data), info.Modified)
	}
	rc, rinfo, err := b.c.GetRange(ctx, "/slugs/app/1.tgz", 1000, 5000)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(part, data[1000:6000]) || rinfo.SHA256 != sum(data) {
		t.Fatalf("range through b: %d bytes, sha header %s", len(part), rinfo.SHA256)
	}

	// Overwrite through b; a has the new version.
	data2 := blob(2, 1000)
	info2, err := b.c.Put(ctx, "/slugs/app/1.tgz", bytes.NewReader(data2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !info2.Modified.After(info.Modified) {
		t.Fatalf("overwrite has version %s, not after %s", info2.Modified, info.Modified)
	}
	a.hasFile(t, "/slugs/app/1.tgz", data2, info2)

	// A server-side copy replicates like a PUT.
	cinfo, err := a.c.Copy(ctx, "/copies/1.tgz", "/slugs/app/1.tgz")
	if err != nil {
		t.Fatal(err)
	}
	b.hasFile(t, "/copies/1.tgz", data2, cinfo)

	entries, err := b.c.List(ctx, "/slugs/app/")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "1.tgz" || entries[0].Size != int64(len(data2)) {
		t.Fatalf("list through b = %+v", entries)
	}

	// Delete through b: gone from both.
	if err := b.c.Delete(ctx, "/slugs/app/1.tgz"); err != nil {
		t.Fatal(err)
	}
	a.lacksFile(t, "/slugs/app/1.tgz")
	b.lacksFile(t, "/slugs/app/1.tgz")
	for _, in := range []*instance{a, b} {
		if _, err := in.c.Head(ctx, "/slugs/app/1.tgz"); !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("HEAD through %s after delete: %v, want not found", in.name, err)
		}
	}
}

// TestInstanceDown: with a stopped (but still registered) instance, its
// blobs are served by the other, writes go on with the copies that can
// be made, and the missed write reaches the stopped instance when it
// returns (the writer retries).
func TestInstanceDown(t *testing.T) {
	cl := newCluster(t)
	a := cl.add("a", nil)
	b := cl.add("b", func(c *blobstore.Config) { c.RetryInterval = 50 * time.Millisecond })
	a.start(t)
	b.start(t)
	ctx := ctxT(t)

	blobs := map[string][]byte{"/slugs/x.tgz": blob(3, 70<<10), "/cache/app/c.tar": blob(4, 10), "/layers/l1": {}}
	for p, d := range blobs {
		if _, err := a.c.Put(ctx, p, bytes.NewReader(d), nil); err != nil {
			t.Fatal(err)
		}
	}
	a.stop(t)

	for p, d := range blobs {
		got, info := getAll(t, b.c, p)
		if !bytes.Equal(got, d) || info.SHA256 != sum(d) {
			t.Fatalf("GET %s through b with a down: %d bytes, sha %s; want %d, %s", p, len(got), info.SHA256, len(d), sum(d))
		}
	}
	rc, _, err := b.c.GetRange(ctx, "/slugs/x.tgz", 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(part, blobs["/slugs/x.tgz"][100:]) {
		t.Fatalf("range through b with a down: %d bytes", len(part))
	}

	// a is still registered: b finds it, cannot reach it, and does not
	// count it.
	insts, err := cl.disc.Instances(ctx, blobstore.DefaultService)
	if err != nil || len(insts) != 2 {
		t.Fatalf("discoverd lists %d instances (%v), want both, the stopped one included", len(insts), err)
	}
	late := blob(5, 4096)
	info, err := b.c.Put(ctx, "/slugs/late.tgz", bytes.NewReader(late), nil)
	if err != nil {
		t.Fatalf("PUT through b with a unreachable: %v", err)
	}
	if info.Copies != 1 {
		t.Fatalf("PUT through b with a unreachable: copies = %d, want 1", info.Copies)
	}

	a.start(t)
	waitFor(t, "b's retry to bring /slugs/late.tgz to a's disk", func() (bool, string) {
		got, err := a.file("/slugs/late.tgz")
		if err != nil {
			return false, err.Error()
		}
		return bytes.Equal(got, late), fmt.Sprintf("%d bytes", len(got))
	})
	a.hasFile(t, "/slugs/late.tgz", late, info)
}

// TestEmptyInstanceFills: an instance started with an empty directory
// copies every live blob from its peers in its first anti-entropy pass,
// with their versions, and not a blob that was deleted.
func TestEmptyInstanceFills(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.add("a", nil), cl.add("b", nil)
	a.start(t)
	b.start(t)
	ctx := ctxT(t)
	want := map[string][]byte{}
	infos := map[string]api.BlobInfo{}
	for i, p := range []string{"/a", "/slugs/one", "/slugs/two", "/deep/er/than/that", "/gone/soon"} {
		d := blob(uint64(10+i), 1000*i)
		info, err := a.c.Put(ctx, p, bytes.NewReader(d), nil)
		if err != nil {
			t.Fatal(err)
		}
		want[p], infos[p] = d, info
	}
	if err := b.c.Delete(ctx, "/gone/soon"); err != nil {
		t.Fatal(err)
	}
	delete(want, "/gone/soon")

	c := cl.add("c", func(c *blobstore.Config) { c.SyncInterval = time.Hour })
	c.start(t)
	waitFor(t, "c's first pass to copy the 4 blobs", func() (bool, string) {
		var have []string
		for p := range want {
			if _, err := c.file(p); err == nil {
				have = append(have, p)
			}
		}
		slices.Sort(have)
		return len(have) == len(want), fmt.Sprint(have)
	})
	for p, d := range want {
		c.hasFile(t, p, d, infos[p])
	}
	c.lacksFile(t, "/gone/soon")
}

// TestReadRepair: an instance that lacks blobs (it was not there when
// they were written, and runs no anti-entropy pass) serves them from a
// peer and keeps a copy: a plain GET (streamed), a HEAD, a range and a
// conditional GET; listings include the peers' blobs.
func TestReadRepair(t *testing.T) {
	cl := newCluster(t)
	a := cl.add("a", nil)
	a.start(t)
	ctx := ctxT(t)
	blobs := map[string][]byte{"/r/get": blob(20, 200<<10), "/r/head": blob(21, 10), "/r/range": blob(22, 5000), "/r/cond": blob(23, 7)}
	infos := map[string]api.BlobInfo{}
	for p, d := range blobs {
		info, err := a.c.Put(ctx, p, bytes.NewReader(d), nil)
		if err != nil {
			t.Fatal(err)
		}
		if info.Copies != 1 {
			t.Fatalf("PUT %s with one instance: copies = %d", p, info.Copies)
		}
		infos[p] = info
	}
	b := cl.add("b", nil)
	b.start(t)
	for p := range blobs {
		b.lacksFile(t, p)
	}

	entries, err := b.c.List(ctx, "/r/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "cond,get,head,range" {
		t.Fatalf("list through b = %v, want a's blobs", names)
	}

	got, info := getAll(t, b.c, "/r/get")
	if !bytes.Equal(got, blobs["/r/get"]) || info.SHA256 != sum(got) || !info.Modified.Equal(infos["/r/get"].Modified) {
		t.Fatalf("GET through b: %d bytes, info %+v", len(got), info)
	}
	b.hasFile(t, "/r/get", blobs["/r/get"], infos["/r/get"])

	hinfo, err := b.c.Head(ctx, "/r/head")
	if err != nil || hinfo.Size != 10 || hinfo.SHA256 != sum(blobs["/r/head"]) {
		t.Fatalf("HEAD through b: %+v, %v", hinfo, err)
	}
	b.hasFile(t, "/r/head", blobs["/r/head"], infos["/r/head"])

	rc, _, err := b.c.GetRange(ctx, "/r/range", 10, 20)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(part, blobs["/r/range"][10:30]) {
		t.Fatalf("range through b = %d bytes", len(part))
	}
	b.hasFile(t, "/r/range", blobs["/r/range"], infos["/r/range"])

	req, _ := http.NewRequest(http.MethodGet, "http://"+b.addr+"/r/cond", nil)
	req.SetBasicAuth("", clusterKey)
	req.Header.Set("If-None-Match", `"`+sum(blobs["/r/cond"])+`"`)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotModified {
		t.Fatalf("conditional GET through b: status %d, want 304", res.StatusCode)
	}

	if _, _, err := b.c.Get(ctx, "/r/none"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("GET of a blob no instance has: %v, want not found", err)
	}
}

// TestDeleteStaysDeleted: a blob deleted while an instance is down does
// not come back: not from the returning instance (it applies the deletes
// before it serves), not through read repair, not through anti-entropy,
// even when the instance that took the delete was down meanwhile too.
func TestDeleteStaysDeleted(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.add("a", nil), cl.add("b", nil)
	a.start(t)
	b.start(t)
	ctx := ctxT(t)
	for _, p := range []string{"/x", "/y", "/z"} {
		if _, err := a.c.Put(ctx, p, strings.NewReader(p), nil); err != nil {
			t.Fatal(err)
		}
	}

	// b misses the delete of /x, and applies it before it serves again.
	b.stop(t)
	if err := a.c.Delete(ctx, "/x"); err != nil {
		t.Fatalf("DELETE through a with b down: %v", err)
	}
	b.start(t)
	b.lacksFile(t, "/x")
	for _, in := range []*instance{a, b} {
		if _, err := in.c.Head(ctx, "/x"); !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("HEAD /x through %s: %v, want not found", in.name, err)
		}
	}

	// b misses the delete of /y, then a stops and b returns first: b
	// still has /y and knows nothing of its delete. This time b runs
	// anti-entropy passes.
	b.stop(t)
	b.cfg.SyncInterval = 50 * time.Millisecond
	if err := a.c.Delete(ctx, "/y"); err != nil {
		t.Fatal(err)
	}
	a.stop(t)
	b.start(t)
	if got, _ := getAll(t, b.c, "/y"); string(got) != "/y" {
		t.Fatalf("b with a down serves /y = %q", got)
	}
	// a returns with its delete (kept on disk): its read repair does not
	// bring /y back from b, and b's anti-entropy applies the delete.
	a.start(t)
	if _, err := a.c.Head(ctx, "/y"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("HEAD /y through a: %v, want not found (b's copy is deleted)", err)
	}
	a.lacksFile(t, "/y")
	waitFor(t, "b's anti-entropy pass to apply a's delete of /y", func() (bool, string) {
		_, err := b.file("/y")
		return errors.Is(err, os.ErrNotExist), fmt.Sprintf("stat /y on b: %v", err)
	})
	if _, err := b.c.Head(ctx, "/y"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("HEAD /y through b: %v, want not found", err)
	}
	entries, err := a.c.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "z" {
		t.Fatalf("list through a = %+v, want only z", entries)
	}

	// A blob written again after its delete is live everywhere.
	info, err := b.c.Put(ctx, "/x", strings.NewReader("again"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.hasFile(t, "/x", []byte("again"), info)
}

// TestNotEnoughCopies: a PUT that a reachable peer refuses fails with
// 503, since the blob is on fewer instances than the minimum; with a
// minimum of 1 it succeeds.
func TestNotEnoughCopies(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.add("a", nil), cl.add("b", nil)
	a.start(t)
	b.start(t)
	ctx := ctxT(t)
	// On b only, /p is a blob, so b cannot store /p/x.
	if err := os.WriteFile(filepath.Join(b.dir, "p"), []byte("p"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := a.c.Put(ctx, "/p/x", strings.NewReader("x"), nil)
	if !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("PUT that b refuses: err = %v, want service unavailable", err)
	}
	if e, _ := api.AsError(err); e == nil || e.Status != http.StatusServiceUnavailable || !strings.Contains(e.Message, "1 blobstore instance(s) of the 2 needed") {
		t.Fatalf("PUT that b refuses: %#v", e)
	}

	c := cl.add("c", func(c *blobstore.Config) { c.MinCopies = 1 })
	c.start(t)
	info, err := c.c.Put(ctx, "/p/y", strings.NewReader("y"), nil)
	if err != nil {
		t.Fatalf("PUT through c (minimum 1) that b refuses: %v", err)
	}
	if info.Copies != 2 {
		t.Fatalf("PUT through c: copies = %d, want 2 (c and a)", info.Copies)
	}
}

// TestReplicaRequests: the requests instances send each other need the
// key and a version, and bad ones get 4xx JSON errors; a stale replica
// does not replace a newer blob nor undo a delete.
func TestReplicaRequests(t *testing.T) {
	cl := newCluster(t)
	a := cl.add("a", nil)
	a.start(t)
	ctx := ctxT(t)
	base := "http://" + a.addr
	info, err := a.c.Put(ctx, "/v", strings.NewReader("new"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Put(ctx, "/d", strings.NewReader("d"), nil); err != nil {
		t.Fatal(err)
	}
	if err := a.c.Delete(ctx, "/d"); err != nil {
		t.Fatal(err)
	}
	old := info.Modified.Add(-time.Hour).Format(time.RFC3339Nano)

	type req struct {
		method, path string
		key          bool
		header       map[string]string
		body         string
		wantStatus   int
		wantCode     api.ErrorCode
	}
	replica := func(h map[string]string) map[string]string {
		out := map[string]string{blobstore.ReplicaHeader: "peer"}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name string
		req  req
	}{
		{"put without key", req{"PUT", "/r", false, replica(map[string]string{api.BlobModifiedHeader: old}), "x", 401, api.CodeUnauthorized}},
		{"put without version", req{"PUT", "/r", true, replica(nil), "x", 400, api.CodeValidation}},
		{"put with a bad version", req{"PUT", "/r", true, replica(map[string]string{api.BlobModifiedHeader: "yesterday"}), "x", 400, api.CodeValidation}},
		{"put with a copy source", req{"PUT", "/r", true, replica(map[string]string{api.BlobModifiedHeader: old, api.BlobCopyFromHeader: "/v"}), "", 400, api.CodeValidation}},
		{"put with a bad checksum", req{"PUT", "/r", true, replica(map[string]string{api.BlobModifiedHeader: old, api.BlobSHA256Header: sum([]byte("y"))}), "x", 400, api.CodeValidation}},
		{"put an older version", req{"PUT", "/v", true, replica(map[string]string{api.BlobModifiedHeader: old}), "old", 200, ""}},
		{"put a deleted version", req{"PUT", "/d", true, replica(map[string]string{api.BlobModifiedHeader: old}), "d", 200, ""}},
		{"delete without version", req{"DELETE", "/v", true, replica(nil), "", 400, api.CodeValidation}},
		{"delete an older version", req{"DELETE", "/v", true, replica(map[string]string{api.BlobModifiedHeader: old}), "", 200, ""}},
		{"delete a missing blob", req{"DELETE", "/nope", true, replica(map[string]string{api.BlobModifiedHeader: old}), "", 404, api.CodeNotFound}},
		{"write the tree", req{"PUT", "/.well-known/blobstore/tree", true, nil, "x", 400, api.CodeValidation}},
		{"post the tree", req{"POST", "/.well-known/blobstore/tree", true, nil, "x", 405, api.CodeMethodNotAllowed}},
		{"replica get of a bad path", req{"GET", "/a/../b", false, replica(nil), "", 400, api.CodeValidation}},
		{"tree", req{"GET", "/.well-known/blobstore/tree", true, nil, "", 200, ""}},
		{"tombstones", req{"GET", "/.well-known/blobstore/tombstones", true, nil, "", 200, ""}},
		{"tree without key", req{"GET", "/.well-known/blobstore/tree", false, nil, "", 401, api.CodeUnauthorized}},
		{"tombstones without key", req{"GET", "/.well-known/blobstore/tombstones", false, nil, "", 401, api.CodeUnauthorized}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hr, err := http.NewRequest(tt.req.method, base+tt.req.path, strings.NewReader(tt.req.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.req.key {
				hr.SetBasicAuth("", clusterKey)
			}
			for k, v := range tt.req.header {
				hr.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.req.wantStatus {
				t.Fatalf("status %d (%s), want %d", res.StatusCode, body, tt.req.wantStatus)
			}
			if tt.req.wantCode != "" {
				var e api.Error
				if err := json.Unmarshal(body, &e); err != nil || e.Code != tt.req.wantCode {
					t.Fatalf("body %s, want a JSON error with code %s", body, tt.req.wantCode)
				}
			}
		})
	}
	if got, _ := getAll(t, a.c, "/v"); string(got) != "new" {
		t.Fatalf("/v = %q after stale replicas, want the newer blob", got)
	}
	if _, err := a.c.Head(ctx, "/d"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("/d after a replica older than its delete: %v, want not found", err)
	}
	if _, err := a.c.Head(ctx, "/r"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("/r stored by a refused replica: %v", err)
	}
}

// TestReplicatedErrors runs the error table of TestErrors against an
// instance with a peer: bad input still gets the same 4xx errors.
func TestReplicatedErrors(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.add("a", nil), cl.add("b", nil)
	a.start(t)
	b.start(t)
	testErrors(t, a.c)
}

// TestReturningInstanceGetsOverwrites: a path overwritten while an
// instance was away is brought to its new version by the instance's
// first anti-entropy pass.
func TestReturningInstanceGetsOverwrites(t *testing.T) {
	cl := newCluster(t)
	a := cl.add("a", nil)
	b := cl.add("b", func(c *blobstore.Config) { c.SyncInterval = time.Hour })
	a.start(t)
	b.start(t)
	ctx := ctxT(t)
	if _, err := a.c.Put(ctx, "/cache/app.tgz", strings.NewReader("first build"), nil); err != nil {
		t.Fatal(err)
	}
	b.stop(t)
	info, err := a.c.Put(ctx, "/cache/app.tgz", strings.NewReader("second build"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b.start(t)
	waitFor(t, "b's first pass to copy the second build", func() (bool, string) {
		got, err := b.file("/cache/app.tgz")
		return string(got) == "second build", fmt.Sprintf("%q, %v", got, err)
	})
	b.hasFile(t, "/cache/app.tgz", []byte("second build"), info)
}

// TestConcurrentWritesConverge: writes of one path racing on two
// instances leave both with the same version (the latest) once their
// anti-entropy passes have run.
func TestConcurrentWritesConverge(t *testing.T) {
	cl := newCluster(t)
	fast := func(c *blobstore.Config) { c.SyncInterval = 50 * time.Millisecond }
	a, b := cl.add("a", fast), cl.add("b", fast)
	a.start(t)
	b.start(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, in := range []*instance{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				body := fmt.Sprintf("%s-%d", in.name, i)
				if _, err := in.c.Put(ctx, "/race", strings.NewReader(body), nil); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	waitFor(t, "a and b to hold the same version of /race", func() (bool, string) {
		var seen []string
		for _, in := range []*instance{a, b} {
			info, err := in.c.Head(ctx, "/race")
			if err != nil {
				return false, err.Error()
			}
			got, _ := in.file("/race")
			seen = append(seen, fmt.Sprintf("%s: %q sha %s at %s", in.name, got, info.SHA256, info.Modified.Format(time.RFC3339Nano)))
		}
		return strings.TrimPrefix(seen[0], "a: ") == strings.TrimPrefix(seen[1], "b: "), strings.Join(seen, "; ")
	})
}

// TestReadRepairChecksum: a blob that a peer serves corrupted (not
// matching its checksum) reaches the client cut short, so the client
// sees an error, and the instance keeps no copy.
func TestReadRepairChecksum(t *testing.T) {
	cl := newCluster(t)
	b := cl.add("b", nil)
	b.start(t)
	ctx := ctxT(t)
	mem := blobstore.NewMem()
	data := blob(40, 100<<10)
	if _, err := mem.Put(ctx, "lie", bytes.NewReader(data), blobstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	h := blobstore.NewServer(mem, nil, 0, logging.Discard()).Handler()
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w = &corrupter{ResponseWriter: w}
		}
		h.ServeHTTP(w, r)
	}))
	defer liar.Close()
	reg, err := cl.disc.Register(ctx, blobstore.DefaultService, strings.TrimPrefix(liar.URL, "http://"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Deregister(ctx)

	rc, info, err := b.c.Get(ctx, "/lie")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err == nil {
		t.Fatalf("read a corrupted blob of %d bytes (sha %s, announced %s) without an error", len(got), sum(got), info.SHA256)
	}
	if len(got) >= len(data) {
		t.Fatalf("the corrupted blob reached the client whole (%d bytes): %v", len(got), err)
	}
	b.lacksFile(t, "/lie")
}

// corrupter flips the first byte of a reply body.
type corrupter struct {
	http.ResponseWriter
	done bool
}

func (c *corrupter) Write(p []byte) (int, error) {
	if !c.done && len(p) > 0 {
		c.done = true
		q := append([]byte{p[0] ^ 0xff}, p[1:]...)
		return c.ResponseWriter.Write(q)
	}
	return c.ResponseWriter.Write(p)
}
