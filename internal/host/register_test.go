package host_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// fakeRegistry records registrations as "+service addr job host" and
// deregistrations as "-service addr".
type fakeRegistry struct{ ops chan string }

type fakeReg struct {
	r         *fakeRegistry
	svc, addr string
}

func (f *fakeRegistry) Register(ctx context.Context, service, addr string, meta map[string]string) (host.Registration, error) {
	f.ops <- fmt.Sprintf("+%s %s %s %s", service, addr, meta[host.InstanceMetaJobID], meta[host.InstanceMetaHostID])
	return &fakeReg{f, service, addr}, nil
}

func (r *fakeReg) Deregister(ctx context.Context) error {
	r.r.ops <- fmt.Sprintf("-%s %s", r.svc, r.addr)
	return nil
}

// registryAgent is an agent on the fake runtime, which publishes a job's
// ports on firstPort, firstPort+1, ...
func registryAgent(t *testing.T, firstPort int) (*hostclient.Client, *fakeRegistry) {
	t.Helper()
	reg := &fakeRegistry{ops: make(chan string, 16)}
	fake := runtime.NewFake()
	fake.FirstPort = firstPort
	a, err := host.New(host.Config{ID: "h1", StateDir: t.TempDir(), Keys: []string{"k"}, Runtime: fake,
		StopGrace: 50 * time.Millisecond, HostIP: "127.0.0.1", Registry: reg}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() { srv.Close(); a.Close() })
	return hostclient.New(srv.URL, "k"), reg
}

func nextOp(t *testing.T, reg *fakeRegistry) string {
	t.Helper()
	select {
	case op := <-reg.ops:
		return op
	case <-time.After(30 * time.Second):
		t.Fatal("no registry operation")
		return ""
	}
}

func TestRegisterServicePorts(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	ports := testslot.Ports(t, 2)
	c, reg := registryAgent(t, ports[0])
	ctx := context.Background()
	job := busyboxJob("reg1", "sleep", "100")
	job.Config.Ports = []api.Port{{Port: 80, Proto: "tcp"}, {Port: 8080, Proto: "tcp", Service: &api.Service{Name: "web-svc"}}}
	if _, err := c.AddJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fmt.Sprintf("+web-svc 127.0.0.1:%d reg1 h1", ports[1]), nextOp(t, reg)); diff != "" {
		t.Fatalf("registration (-want +got):\n%s", diff)
	}
	stopped := make(chan error, 1)
	go func() { _, err := c.StopJob(ctx, "reg1"); stopped <- err }()
	// Deregistered before the job is signalled: the stop cannot finish
	// until the deregistration is recorded.
	if diff := cmp.Diff(fmt.Sprintf("-web-svc 127.0.0.1:%d", ports[1]), nextOp(t, reg)); diff != "" {
		t.Fatalf("deregistration (-want +got):\n%s", diff)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func TestRegisterWaitsForHealthCheck(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	port := testslot.Port(t)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var healthy atomic.Bool
	var failedProbes atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			failedProbes.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	defer srv.Close()

	c, reg := registryAgent(t, port)
	ctx := context.Background()
	job := busyboxJob("reg2", "sleep", "100")
	check := &api.HealthCheck{Type: "http", Interval: api.Duration(20 * time.Millisecond), Threshold: 1}
	job.Config.Ports = []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "checked", Check: check}}}
	if _, err := c.AddJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	// Not registered while the check fails.
	deadline := time.Now().Add(30 * time.Second)
	for failedProbes.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the health check never probed the job's port")
		}
		select {
		case op := <-reg.ops:
			t.Fatalf("registered while unhealthy: %s", op)
		case <-time.After(10 * time.Millisecond):
		}
	}
	healthy.Store(true)
	if diff := cmp.Diff(fmt.Sprintf("+checked 127.0.0.1:%d reg2 h1", port), nextOp(t, reg)); diff != "" {
		t.Fatalf("registration (-want +got):\n%s", diff)
	}
	healthy.Store(false)
	if diff := cmp.Diff(fmt.Sprintf("-checked 127.0.0.1:%d", port), nextOp(t, reg)); diff != "" {
		t.Fatalf("deregistration when unhealthy (-want +got):\n%s", diff)
	}
	if _, err := c.StopJob(ctx, "reg2"); err != nil {
		t.Fatal(err)
	}
}
