// Package etcdtest starts embedded etcd members with fast ticks for tests.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/internal/etcdserver"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs a one-member etcd on loopback with fast ticks, in a temporary
// directory, and stops it when the test ends. It returns the server, whose
// Client() is ready to use.
func Start(t testing.TB) *etcdserver.Server {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := etcdserver.Start(ctx, etcdserver.Config{
			Name:      "test",
			DataDir:   t.TempDir(),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			Fast:      true,
		})
		cancel()
		if err != nil {
			lastErr = err // most likely a port taken between probe and bind
			continue
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	t.Fatalf("start etcd: %v", lastErr)
	return nil
}

// Client is Start(t).Client().
func Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return Start(t).Client()
}
