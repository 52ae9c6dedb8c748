package scheduler

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

func TestEtcdHosts(t *testing.T) {
	cli := etcdtest.KV(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put := func(h *api.Host, lease etcdkv.LeaseID) {
		t.Helper()
		b, _ := json.Marshal(h)
		if _, err := cli.Put(ctx, api.KeyHosts+h.ID, string(b), etcdkv.WithLease(lease)); err != nil {
			t.Fatal(err)
		}
	}
	put(&api.Host{ID: "h1", URL: "http://10.0.0.1:1113"}, etcdkv.NoLease)
	cli.Put(ctx, api.KeyHosts+"bad", "{not json")
	e := &EtcdHosts{Client: cli}
	hosts, err := e.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*api.Host{{ID: "h1", URL: "http://10.0.0.1:1113"}}, hosts); diff != "" {
		t.Errorf("hosts (-want +got):\n%s", diff)
	}

	events := make(chan HostEvent, 10)
	done := make(chan error, 1)
	go func() { done <- e.StreamHosts(ctx, func(ev HostEvent) { events <- ev }) }()
	// The watch may open after the first put; retry until seen.
	lease, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var up HostEvent
	deadline := time.After(20 * time.Second)
	for up.Host == nil {
		put(&api.Host{ID: "h2", Tags: map[string]string{"a": "b"}}, lease.ID)
		select {
		case up = <-events:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no up event")
		}
	}
	if diff := cmp.Diff(HostEvent{Up: true, Host: &api.Host{ID: "h2", Tags: map[string]string{"a": "b"}}}, up); diff != "" {
		t.Errorf("up event (-want +got):\n%s", diff)
	}
	// The lease is never kept alive: the host expires and is reported down.
	for {
		select {
		case ev := <-events:
			if !ev.Up {
				if ev.Host.ID != "h2" {
					t.Fatalf("down event for %q, want h2", ev.Host.ID)
				}
				cancel()
				<-done
				return
			}
		case <-deadline:
			t.Fatal("no down event after the lease expired")
		}
	}
}
