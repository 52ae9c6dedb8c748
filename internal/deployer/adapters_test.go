package deployer

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// TestWaitInstanceOutlastsDiscoverd: WaitInstance asked while discoverd
// cannot be reached keeps watching, and returns once discoverd is back and
// the job's instance registered, not with the first dial's error (which
// left the deployer waiting on that job for good).
func TestWaitInstanceOutlastsDiscoverd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// An address nothing listens on yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := discoverdclient.New("http://"+addr, "t")
	w := &DiscoverdWaiter{C: c}
	done := make(chan error, 1)
	go func() { done <- w.WaitInstance(ctx, "a1-web", "h1-j1") }()

	time.Sleep(3 * waitInstanceRetry) // a few failed watches
	select {
	case err := <-done:
		t.Fatalf("WaitInstance returned %v while discoverd was down and nothing registered", err)
	default:
	}
	store := discoverd.NewStore(etcdtest.Client(t), 5*time.Second)
	srv := httptest.NewUnstartedServer(discoverd.Handler(store, httpapi.NewKeyAuth("t"), logging.Discard()))
	if srv.Listener, err = net.Listen("tcp", addr); err != nil {
		t.Skipf("the address was taken meanwhile: %v", err)
	}
	srv.Start()
	defer srv.Close()
	if _, err := c.Register(ctx, "a1-web", "10.0.0.1:1", map[string]string{InstanceMetaJobID: "h1-other"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitInstance returned %v for another job's instance", err)
	case <-time.After(3 * waitInstanceRetry):
	}
	if _, err := c.Register(ctx, "a1-web", "10.0.0.1:2", map[string]string{InstanceMetaJobID: "h1-j1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitInstance: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("WaitInstance did not return once the job's instance registered")
	}
}
