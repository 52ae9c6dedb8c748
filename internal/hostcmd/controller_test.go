package hostcmd

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func TestComponentController(t *testing.T) {
	srv := etcdtest.Start(t)
	port := testslot.Port(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	vars := map[string]string{"AUTH_KEY": "k1,k2", "CLUSTER_DOMAIN": "dev.test"}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"component", "controller", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--etcd", srv.Endpoint()},
			Env{Stdout: &bytes.Buffer{}, Stderr: &stderr, Getenv: func(k string) string { return vars[k] }})
	}()
	c := controllerclient.New(fmt.Sprintf("http://127.0.0.1:%d", port), "k2")
	deadline := time.Now().Add(30 * time.Second)
	for c.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("controller never answered; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	app := &api.App{Name: "smoke"}
	if err := c.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	routes, err := c.RouteList(ctx, app.ID)
	if err != nil || len(routes) != 1 || routes[0].Domain != "smoke.dev.test" {
		t.Fatalf("routes = %v, %v", routes, err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, stderr.String())
	}
}
