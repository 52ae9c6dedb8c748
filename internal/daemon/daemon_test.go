package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// runDaemon runs daemon.Run in the test process until the test ends.
func runDaemon(t *testing.T, n *node, services ...func(context.Context, *daemon.Deps) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- daemon.Run(ctx, daemon.Config{
			StateDir: n.dir, ListenIP: n.ip, EtcdClientPort: n.etcdClient, EtcdPeerPort: n.etcdPeer,
			DiscoverdPort: n.discPort, DNSPort: -1, TTL: 2 * time.Second, EtcdFast: true, Services: services,
		}, logging.Discard())
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("daemon %s: %v", n.name, err)
		}
	})
}

// TestClientHostAndServices: with one etcd member allowed, a joining host
// becomes an etcd client; plugged-in services get working Deps and run
// until the daemon stops.
func TestClientHostAndServices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, second := newNode(t, "m1", "127.0.0.1"), newNode(t, "c1", "127.0.0.1")
	hc := &daemon.HostConfig{HostID: "m1", ClusterID: "c", Token: token, Role: daemon.RoleInit, MaxEtcdMembers: 1}
	if err := hc.Save(first.dir); err != nil {
		t.Fatal(err)
	}
	runDaemon(t, first)
	first.waitHealthy(ctx, 1, 1, 1)

	var info api.ClusterInfo
	if err := (&httpclient.Client{URL: first.url(), Key: token}).Do(ctx, "GET", "/grid/cluster", nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != "c" || info.MaxEtcdMembers != 1 || len(info.EtcdEndpoints) != 1 {
		t.Fatalf("cluster info %+v", info)
	}
	hc2 := &daemon.HostConfig{HostID: "c1", ClusterID: info.ID, Token: token, Role: daemon.RoleJoin, EtcdEndpoints: info.EtcdEndpoints}
	if err := hc2.Save(second.dir); err != nil {
		t.Fatal(err)
	}
	got := make(chan *daemon.Deps, 1)
	stopped := make(chan struct{})
	t.Cleanup(func() {
		// Runs after the daemon's cleanup: Run returned only after its
		// services had.
		select {
		case <-stopped:
		default:
			t.Error("daemon.Run returned before its service stopped")
		}
	})
	runDaemon(t, second, func(ctx context.Context, d *daemon.Deps) error {
		// The service can use etcd and discoverd right away.
		if _, err := d.Etcd.Put(ctx, "/flt/service", d.HostID); err != nil {
			return err
		}
		if _, err := d.Discoverd.Register(ctx, "agent", d.ListenIP+":1113", nil); err != nil {
			return err
		}
		got <- d
		<-ctx.Done()
		close(stopped)
		return nil
	})
	var d *daemon.Deps
	select {
	case d = <-got:
	case <-ctx.Done():
		t.Fatal("service did not start")
	}
	if d.HostID != "c1" || d.ClusterID != "c" || d.Token != token || d.DiscoverdURL != second.url() {
		t.Fatalf("deps %+v", d)
	}
	st := first.waitHealthy(ctx, 2, 1, 1)
	for _, h := range st.Hosts {
		if h.EtcdMember != (h.ID == "m1") {
			t.Fatalf("host %s etcd member = %v", h.ID, h.EtcdMember)
		}
	}
	saved, err := daemon.LoadHostConfig(second.dir)
	if err != nil || saved.Role != daemon.RoleClient {
		t.Fatalf("second host config %+v, %v; want role client", saved, err)
	}
	res, err := d.Etcd.Get(ctx, api.KeyHosts+"c1")
	if err != nil || len(res.Kvs) != 1 {
		t.Fatalf("host key: %v %v", res, err)
	}
	var h api.Host
	if err := json.Unmarshal(res.Kvs[0].Value, &h); err != nil || h.Addr != "127.0.0.1" || h.URL != "http://127.0.0.1:1113" {
		t.Fatalf("host %+v %v", h, err)
	}
	if res.Kvs[0].Lease == 0 {
		t.Fatal("host key has no lease")
	}
}

// TestRunErrors: a daemon without host config, or with a bad listen IP,
// fails with an error that says what to do.
func TestRunErrors(t *testing.T) {
	ctx := context.Background()
	err := daemon.Run(ctx, daemon.Config{StateDir: t.TempDir(), ListenIP: "127.0.0.1"}, logging.Discard())
	if !errors.Is(err, daemon.ErrNoHostConfig) {
		t.Fatalf("no config: %v", err)
	}
	err = daemon.Run(ctx, daemon.Config{StateDir: t.TempDir(), ListenIP: "nope"}, logging.Discard())
	if err == nil {
		t.Fatal("bad listen ip: no error")
	}
	// A config whose role is member without etcd data is refused.
	dir := t.TempDir()
	(&daemon.HostConfig{HostID: "h", Token: "t", Role: daemon.RoleMember}).Save(dir)
	n := newNode(t, "x", "127.0.0.1")
	err = daemon.Run(ctx, daemon.Config{StateDir: dir, ListenIP: "127.0.0.1", EtcdClientPort: n.etcdClient, EtcdPeerPort: n.etcdPeer, DiscoverdPort: n.discPort, DNSPort: -1}, logging.Discard())
	if err == nil {
		t.Fatal("member without data: no error")
	}
}
