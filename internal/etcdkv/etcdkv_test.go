package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptrace"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdserver"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func keys(kvs []*etcdkv.KeyValue) string {
	var s []string
	for _, kv := range kvs {
		s = append(s, string(kv.Key)+"="+string(kv.Value))
	}
	return strings.Join(s, ",")
}

func TestKV(t *testing.T) {
	srv := etcdtest.Start(t)
	c := etcdtest.KVOf(t, srv)
	x := ctx(t)
	for i, k := range []string{"/a/1", "/a/2", "/a/3", "/b/1", "/a"} {
		if _, err := c.Put(x, k, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	res, err := c.Get(x, "/a/", etcdkv.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(res.Kvs); got != "/a/1=v0,/a/2=v1,/a/3=v2" || res.Count != 3 || res.Header.Revision == 0 {
		t.Fatalf("prefix get: %s count %d header %+v", got, res.Count, res.Header)
	}
	if res.Kvs[0].CreateRevision == 0 || res.Kvs[0].ModRevision == 0 || res.Kvs[0].Version != 1 {
		t.Fatalf("revisions not decoded: %+v", res.Kvs[0])
	}
	// What clientv3 reads is what we read.
	cres, err := srv.Client().Get(x, "/a/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for i, kv := range cres.Kvs {
		if kv.ModRevision != res.Kvs[i].ModRevision || kv.CreateRevision != res.Kvs[i].CreateRevision || string(kv.Value) != string(res.Kvs[i].Value) {
			t.Fatalf("clientv3 reads %v, we read %+v", kv, res.Kvs[i])
		}
	}

	res, err = c.Get(x, "/a/", etcdkv.WithPrefix(), etcdkv.WithSort(etcdkv.SortByKey, etcdkv.SortDescend), etcdkv.WithLimit(2))
	if err != nil || keys(res.Kvs) != "/a/3=v2,/a/2=v1" || !res.More {
		t.Fatalf("sorted, limited: %s more %v err %v", keys(res.Kvs), res.More, err)
	}
	res, err = c.Get(x, "/a/", etcdkv.WithPrefix(), etcdkv.WithCountOnly())
	if err != nil || res.Count != 3 || len(res.Kvs) != 0 {
		t.Fatalf("count only: %d %d %v", res.Count, len(res.Kvs), err)
	}
	res, err = c.Get(x, "/a/", etcdkv.WithPrefix(), etcdkv.WithKeysOnly())
	if err != nil || keys(res.Kvs) != "/a/1=,/a/2=,/a/3=" {
		t.Fatalf("keys only: %s %v", keys(res.Kvs), err)
	}
	mid := res.Kvs[1].ModRevision
	res, err = c.Get(x, "/a/", etcdkv.WithPrefix(), etcdkv.WithMinModRev(mid), etcdkv.WithMaxModRev(mid))
	if err != nil || keys(res.Kvs) != "/a/2=v1" {
		t.Fatalf("mod revision filter: %s %v", keys(res.Kvs), err)
	}
	old := res.Header.Revision
	if _, err := c.Put(x, "/a/1", "new"); err != nil {
		t.Fatal(err)
	}
	res, err = c.Get(x, "/a/1", etcdkv.WithRev(old))
	if err != nil || keys(res.Kvs) != "/a/1=v0" {
		t.Fatalf("read at a revision: %s %v", keys(res.Kvs), err)
	}
	res, err = c.Get(x, "/nothing")
	if err != nil || len(res.Kvs) != 0 || res.Count != 0 {
		t.Fatalf("missing key: %+v %v", res, err)
	}
	// Values are bytes, not text.
	bin := string([]byte{0, 0xff, '\n', '"'})
	if _, err := c.Put(x, "/bin", bin); err != nil {
		t.Fatal(err)
	}
	if res, err = c.Get(x, "/bin"); err != nil || string(res.Kvs[0].Value) != bin {
		t.Fatalf("binary value: %s %v", keys(res.Kvs), err)
	}
	pres, err := c.Put(x, "/a/2", "again", etcdkv.WithPrevKV())
	if err != nil || pres.PrevKv == nil || string(pres.PrevKv.Value) != "v1" {
		t.Fatalf("put with prev kv: %+v %v", pres, err)
	}
	dres, err := c.Delete(x, "/a/", etcdkv.WithPrefix(), etcdkv.WithPrevKV())
	if err != nil || dres.Deleted != 3 || len(dres.PrevKvs) != 3 {
		t.Fatalf("prefix delete: %+v %v", dres, err)
	}
	if res, _ = c.Get(x, "/a", etcdkv.WithPrefix()); keys(res.Kvs) != "/a=v4" {
		t.Fatalf("after delete: %s", keys(res.Kvs))
	}
	// A revision that was compacted away is etcd's error.
	if _, err := srv.Client().Compact(x, old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(x, "/a", etcdkv.WithRev(old-1)); !errors.Is(err, etcdkv.ErrCompacted) {
		t.Fatalf("read of a compacted revision: %v", err)
	}
}

func TestTxn(t *testing.T) {
	c := etcdtest.KV(t)
	x := ctx(t)
	put := func(k, v string) int64 {
		res, err := c.Put(x, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return res.Header.Revision
	}
	rev := put("/t/k", "one")

	// Create if absent: fails, and the else branch reads.
	res, err := c.Txn(x).If(etcdkv.Compare(etcdkv.Version("/t/k"), "=", 0)).
		Then(etcdkv.OpPut("/t/k", "two")).
		Else(etcdkv.OpGet("/t/k"), etcdkv.OpGet("/t/", etcdkv.WithPrefix(), etcdkv.WithCountOnly())).Commit()
	if err != nil || res.Succeeded || len(res.Responses) != 2 {
		t.Fatalf("txn: %+v %v", res, err)
	}
	if kvs := res.Responses[0].GetResponseRange().Kvs; keys(kvs) != "/t/k=one" {
		t.Fatalf("else get: %s", keys(kvs))
	}
	if n := res.Responses[1].GetResponseRange().Count; n != 1 {
		t.Fatalf("else count: %d", n)
	}
	for _, tc := range []struct {
		cmp  etcdkv.Cmp
		want bool
	}{
		{etcdkv.Compare(etcdkv.Value("/t/k"), "=", "one"), true},
		{etcdkv.Compare(etcdkv.Value("/t/k"), "!=", "one"), false},
		{etcdkv.Compare(etcdkv.Value("/t/k"), ">", "a"), true},
		{etcdkv.Compare(etcdkv.ModRevision("/t/k"), "=", rev), true},
		{etcdkv.Compare(etcdkv.ModRevision("/t/k"), "<", rev), false},
		{etcdkv.Compare(etcdkv.CreateRevision("/t/k"), "=", rev), true},
		{etcdkv.Compare(etcdkv.CreateRevision("/t/none"), "=", 0), true},
		{etcdkv.Compare(etcdkv.Version("/t/k"), ">", 0), true},
		{etcdkv.Compare(etcdkv.LeaseValue("/t/k"), "=", etcdkv.NoLease), true},
	} {
		res, err := c.Txn(x).If(tc.cmp).Commit()
		if err != nil || res.Succeeded != tc.want {
			t.Errorf("compare %+v: succeeded %v, want %v (err %v)", tc.cmp, res != nil && res.Succeeded, tc.want, err)
		}
	}
	// The then branch: a put and a delete at one revision.
	put("/t/gone", "x")
	res, err = c.Txn(x).If(etcdkv.Compare(etcdkv.Value("/t/k"), "=", "one")).
		Then(etcdkv.OpPut("/t/k", "two"), etcdkv.OpDelete("/t/gone")).Commit()
	if err != nil || !res.Succeeded || res.Responses[0].GetResponsePut() == nil || res.Responses[1].GetResponseDeleteRange().Deleted != 1 {
		t.Fatalf("then branch: %+v %v", res, err)
	}
	// No comparison: the then branch always runs.
	res, err = c.Txn(x).Then(etcdkv.OpGet("/t/k")).Commit()
	if err != nil || !res.Succeeded || keys(res.Responses[0].GetResponseRange().Kvs) != "/t/k=two" {
		t.Fatalf("unconditional: %+v %v", res, err)
	}
}

// watchNext returns the watch's next response, or fails after a while.
func watchNext(t *testing.T, wc etcdkv.WatchChan) etcdkv.WatchResponse {
	t.Helper()
	select {
	case wr, ok := <-wc:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return wr
	case <-time.After(15 * time.Second):
		t.Fatal("no watch response")
	}
	panic("unreachable")
}

func TestWatch(t *testing.T) {
	srv := etcdtest.Start(t)
	c := etcdtest.KVOf(t, srv)
	x := ctx(t)
	first, _ := c.Put(x, "/w/a", "1")
	wc := c.Watch(x, "/w/", etcdkv.WithPrefix(), etcdkv.WithRev(first.Header.Revision), etcdkv.WithPrevKV())
	wr := watchNext(t, wc)
	if len(wr.Events) != 1 || wr.Events[0].Type != etcdkv.EventTypePut || string(wr.Events[0].Kv.Value) != "1" {
		t.Fatalf("first event: %+v", wr.Events)
	}
	c.Put(x, "/w/a", "2")
	c.Put(x, "/other", "x")
	c.Delete(x, "/w/a")
	wr = watchNext(t, wc)
	if ev := wr.Events[0]; ev.Type != etcdkv.EventTypePut || string(ev.Kv.Value) != "2" || string(ev.PrevKv.Value) != "1" {
		t.Fatalf("update: %+v", ev)
	}
	wr = watchNext(t, wc)
	if ev := wr.Events[0]; ev.Type != etcdkv.EventTypeDelete || string(ev.Kv.Key) != "/w/a" || string(ev.PrevKv.Value) != "2" {
		t.Fatalf("delete: %+v", ev)
	}

	// A watch of a compacted revision ends with ErrCompacted.
	last, _ := c.Put(x, "/w/b", "x")
	if _, err := srv.Client().Compact(x, last.Header.Revision); err != nil {
		t.Fatal(err)
	}
	wr = watchNext(t, c.Watch(x, "/w/", etcdkv.WithPrefix(), etcdkv.WithRev(first.Header.Revision)))
	if !errors.Is(wr.Err(), etcdkv.ErrCompacted) || wr.CompactRevision == 0 {
		t.Fatalf("watch of a compacted revision: %+v %v", wr, wr.Err())
	}

	// A watch ends, closing its channel, with its context.
	wctx, cancel := context.WithCancel(x)
	wc = c.Watch(wctx, "/w/")
	cancel()
	select {
	case _, ok := <-wc:
		if ok {
			t.Fatal("a response after cancel")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch channel not closed after cancel")
	}
}

// TestWatchResumes restarts the member under a watch (from now, with no
// start revision) and a read: the watch goes on from where it was, losing
// no change made while the member was away, and the read waits for it.
func TestWatchResumes(t *testing.T) {
	dir := t.TempDir()
	cfg := etcdserver.Config{
		Name: "resume", DataDir: dir, Fast: true,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
	}
	x := ctx(t)
	srv, err := etcdserver.Start(x, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close() }()
	c := etcdtest.KVOf(t, srv)
	wc := c.Watch(x, "/r/", etcdkv.WithPrefix())
	time.Sleep(200 * time.Millisecond) // the watch is created
	c.Put(x, "/r/1", "before")
	if wr := watchNext(t, wc); string(wr.Events[0].Kv.Value) != "before" {
		t.Fatalf("before: %+v", wr.Events[0])
	}
	srv.Close()
	// While it is down, a read waits (and is answered after the restart).
	read := make(chan error, 1)
	go func() {
		_, err := c.Get(x, "/r/1")
		read <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cfg.Existing = true
	srv2, err := etcdserver.Start(x, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv = srv2
	// Written with clientv3, so the change happens whatever our client's
	// state; then one more with ours.
	if _, err := srv2.Client().Put(x, "/r/2", "while"); err != nil {
		t.Fatal(err)
	}
	if wr := watchNext(t, wc); len(wr.Events) == 0 || string(wr.Events[0].Kv.Value) != "while" {
		t.Fatalf("after restart: %+v (err %v)", wr, wr.Err())
	}
	if err := <-read; err != nil {
		t.Fatalf("read across the restart: %v", err)
	}
}

func TestLeaseAndSession(t *testing.T) {
	srv := etcdtest.Start(t)
	c := etcdtest.KVOf(t, srv)
	x := ctx(t)
	g, err := c.Grant(x, 60)
	if err != nil || g.ID == 0 || g.TTL != 60 {
		t.Fatalf("grant: %+v %v", g, err)
	}
	if _, err := c.Put(x, "/l/k", "v", etcdkv.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	res, _ := c.Get(x, "/l/k")
	if etcdkv.LeaseID(res.Kvs[0].Lease) != g.ID {
		t.Fatalf("lease of the key: %d, want %d", res.Kvs[0].Lease, g.ID)
	}
	ka, err := c.KeepAliveOnce(x, g.ID)
	if err != nil || ka.TTL != 60 {
		t.Fatalf("keepalive: %+v %v", ka, err)
	}
	if err := c.Revoke(x, g.ID); err != nil {
		t.Fatal(err)
	}
	if res, _ = c.Get(x, "/l/k"); len(res.Kvs) != 0 {
		t.Fatal("key of a revoked lease is still there")
	}
	if _, err := c.KeepAliveOnce(x, g.ID); !errors.Is(err, etcdkv.ErrLeaseNotFound) {
		t.Fatalf("keepalive of a revoked lease: %v", err)
	}
	if err := c.Revoke(x, g.ID); !errors.Is(err, etcdkv.ErrLeaseNotFound) {
		t.Fatalf("revoke of a revoked lease: %v", err)
	}

	// A session outlives its TTL while renewed.
	s, err := etcdkv.NewSession(x, c, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.Put(x, "/l/s", "v", etcdkv.WithLease(s.Lease()))
	time.Sleep(2500 * time.Millisecond)
	if res, _ = c.Get(x, "/l/s"); len(res.Kvs) != 1 {
		t.Fatal("a renewed session's key expired")
	}
	// Revoked behind its back, it ends.
	srv.Client().Revoke(x, clientv3.LeaseID(s.Lease()))
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session not done after its lease was revoked")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close of an ended session: %v", err)
	}
}

// TestElection: one leader at a time, the next takes over when it closes,
// and candidates of etcd's own concurrency package wait their turn too.
func TestElection(t *testing.T) {
	srv := etcdtest.Start(t)
	c := etcdtest.KVOf(t, srv)
	x := ctx(t)
	s1, err := etcdkv.NewSession(x, c, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Campaign(x, "/e", "one"); err != nil {
		t.Fatal(err)
	}
	// A clientv3 candidate sees us as leader.
	cs, err := concurrency.NewSession(srv.Client(), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	el := concurrency.NewElection(cs, "/e")
	if l, err := el.Leader(x); err != nil || string(l.Kvs[0].Value) != "one" {
		t.Fatalf("clientv3 sees leader %v, err %v", l, err)
	}
	s2, err := etcdkv.NewSession(x, c, 5)
	if err != nil {
		t.Fatal(err)
	}
	won := make(chan error, 1)
	go func() { won <- s2.Campaign(x, "/e", "two") }()
	select {
	case err := <-won:
		t.Fatalf("second candidate elected while the first leads (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	s1.Close()
	select {
	case err := <-won:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second candidate not elected after the first resigned")
	}
	// The clientv3 candidate waits behind the second.
	cwon := make(chan error, 1)
	go func() { cwon <- el.Campaign(x, "three") }()
	select {
	case err := <-cwon:
		t.Fatalf("clientv3 candidate elected while ours leads (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	s2.Close()
	if err := <-cwon; err != nil {
		t.Fatal(err)
	}
	// A campaign given up (ctx ended) withdraws its candidacy.
	s3, _ := etcdkv.NewSession(x, c, 5)
	defer s3.Close()
	cctx, cancel := context.WithTimeout(x, 300*time.Millisecond)
	defer cancel()
	if err := s3.Campaign(cctx, "/e", "four"); err == nil {
		t.Fatal("campaign behind a leader returned without error when its ctx ended")
	}
	if res, _ := c.Get(x, "/e/", etcdkv.WithPrefix()); len(res.Kvs) != 1 {
		t.Fatalf("candidacy left behind: %s", keys(res.Kvs))
	}
}

// TestUnreachable: with no member up, a request waits until its context
// ends, and says so.
func TestUnreachable(t *testing.T) {
	c, err := etcdkv.New(etcdkv.Config{Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))}})
	if err != nil {
		t.Fatal(err)
	}
	x, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Put(x, "/k", "v"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put with no member: %v", err)
	}
	if _, err := etcdkv.New(etcdkv.Config{}); err == nil {
		t.Fatal("no endpoints accepted")
	}
}

// TestNamespace: a namespaced client sees its keys without the prefix and
// nothing outside it, in reads, writes, transactions and watches.
func TestNamespace(t *testing.T) {
	root := etcdtest.KV(t)
	x := ctx(t)
	ns := root.WithNamespace("/ns1")
	root.Put(x, "/outside", "o")
	root.Put(x, "/ns2/k", "other")
	wc := ns.Watch(x, "", etcdkv.WithFromKey(), etcdkv.WithPrevKV())
	time.Sleep(200 * time.Millisecond)
	if _, err := ns.Put(x, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	if res, _ := root.Get(x, "/ns1/k"); keys(res.Kvs) != "/ns1/k=v" {
		t.Fatalf("under the prefix: %s", keys(res.Kvs))
	}
	res, err := ns.Get(x, "", etcdkv.WithFromKey())
	if err != nil || keys(res.Kvs) != "/k=v" {
		t.Fatalf("all keys of the namespace: %s %v", keys(res.Kvs), err)
	}
	tres, err := ns.Txn(x).If(etcdkv.Compare(etcdkv.Value("/k"), "=", "v")).
		Then(etcdkv.OpPut("/k", "w", etcdkv.WithPrevKV()), etcdkv.OpGet("/", etcdkv.WithPrefix())).Commit()
	if err != nil || !tres.Succeeded || keys(tres.Responses[1].GetResponseRange().Kvs) != "/k=w" ||
		string(tres.Responses[0].GetResponsePut().PrevKv.Key) != "/k" {
		t.Fatalf("namespaced txn: %+v %v", tres, err)
	}
	if wr := watchNext(t, wc); string(wr.Events[0].Kv.Key) != "/k" || string(wr.Events[0].Kv.Value) != "v" {
		t.Fatalf("namespaced watch: %+v", wr.Events[0].Kv)
	}
	if wr := watchNext(t, wc); string(wr.Events[0].PrevKv.Key) != "/k" {
		t.Fatalf("namespaced watch prev kv: %+v", wr.Events[0].PrevKv)
	}
	dres, err := ns.Delete(x, "", etcdkv.WithFromKey(), etcdkv.WithPrevKV())
	if err != nil || dres.Deleted != 1 || string(dres.PrevKvs[0].Key) != "/k" {
		t.Fatalf("namespaced delete: %+v %v", dres, err)
	}
	if res, _ := root.Get(x, "/", etcdkv.WithPrefix()); keys(res.Kvs) != "/ns2/k=other,/outside=o" {
		t.Fatalf("outside the namespace: %s", keys(res.Kvs))
	}
}

// TestConnectionsReused: one request after another goes over one
// connection, not a new one (and, with TLS, a new handshake) each.
func TestConnectionsReused(t *testing.T) {
	c := etcdtest.KV(t)
	var fresh, reused atomic.Int32
	x := httptrace.WithClientTrace(ctx(t), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused.Add(1)
		} else {
			fresh.Add(1)
		}
	}})
	// Values large enough that the JSON ends before the body is seen to:
	// the client has to read on to its end to reuse the connection.
	big := strings.Repeat("x", 100<<10)
	for i := range 10 {
		if _, err := c.Put(x, "/r", fmt.Sprint(i, big)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(x, "/r"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Txn(x).If(etcdkv.Compare(etcdkv.Version("/r"), ">", 0)).Then(etcdkv.OpGet("/r")).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if fresh.Load() != 1 || reused.Load() != 29 {
		t.Fatalf("30 requests: %d new connections, %d reused; want 1 and 29", fresh.Load(), reused.Load())
	}
}

// TestVanishedMember: a member that vanishes without closing its
// connections (its packets dropped, as on a power or network loss): a read
// on a pooled connection to it fails by the TCP user timeout and goes to
// the next member, instead of waiting for an answer that never comes. The
// vanishing member is a proxy on 127.0.0.2 in front of the test's etcd,
// listed first; the second endpoint is the etcd itself.
func TestVanishedMember(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: drops the proxy's packets with iptables")
	}
	srv := etcdtest.Start(t)
	target := strings.TrimPrefix(srv.Endpoint(), "http://")
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
	c, err := etcdkv.New(etcdkv.Config{Endpoints: []string{"http://" + ln.Addr().String(), srv.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	x, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if _, err := c.Put(x, "/v", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(x, "/v"); err != nil { // a pooled connection to the proxy
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	rule := []string{"INPUT", "-i", "lo", "-p", "tcp", "-d", "127.0.0.2", "--dport", port, "-j", "DROP"}
	if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
		t.Skipf("iptables: %v %s", err, out)
	}
	defer exec.Command("iptables", append([]string{"-D"}, rule...)...).Run()
	start := time.Now()
	res, err := c.Get(x, "/v")
	if err != nil || string(res.Kvs[0].Value) != "1" {
		t.Fatalf("read after the first member vanished: %v", err)
	}
	t.Logf("answered by the second member after %s", time.Since(start).Round(100*time.Millisecond))
}
