// Package etcdtest starts embedded etcd members with fast ticks for tests.
package etcdtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdserver"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// Start runs a one-member etcd on loopback with fast ticks, in a temporary
// directory, and stops it when the test ends. It returns the server, whose
// Client() is ready to use.
func Start(t testing.TB) *etcdserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Ports from the test slot: no other process can hold them.
	s, err := etcdserver.Start(ctx, etcdserver.Config{
		Name:      "test",
		DataDir:   t.TempDir(),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
		Fast:      true,
	})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Client is Start(t).Client().
func Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return Start(t).Client()
}

// KV is a gateway client (what the components use) to a member Start(t)
// runs.
func KV(t testing.TB) *etcdkv.Client {
	t.Helper()
	return KVOf(t, Start(t))
}

// KVOf is a gateway client to s.
func KVOf(t testing.TB, s *etcdserver.Server) *etcdkv.Client {
	t.Helper()
	c, err := etcdkv.New(etcdkv.Config{Endpoints: []string{s.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
