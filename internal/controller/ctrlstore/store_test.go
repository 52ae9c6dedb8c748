package ctrlstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

// TestEventIDs checks that events of concurrent writers through two stores
// get unique, increasing ids, that a transaction's several events keep
// their order, and that a follower resuming from any id sees exactly the
// later events.
func TestEventIDs(t *testing.T) {
	cli := etcdtest.KV(t)
	s1, s2 := New(cli), New(cli)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := s1
			if i%2 == 1 {
				s = s2
			}
			app := &api.App{ID: NewID(), Name: fmt.Sprintf("app-%d", i)}
			route := &api.Route{Type: api.RouteHTTP, ID: NewID(), ParentRef: ParentRef(app.ID), Service: app.Name + "-web", Domain: app.Name + ".test"}
			if err := s.CreateApp(ctx, app, route); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	evs, _, err := s1.ListEvents(ctx, EventFilter{}, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 40 {
		t.Fatalf("%d events, want 40", len(evs))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].ID <= evs[i-1].ID {
			t.Fatalf("event %d id %d after %d", i, evs[i].ID, evs[i-1].ID)
		}
	}
	// In each transaction the app event precedes its route event.
	for i := 0; i < len(evs); i += 2 {
		if evs[i].ObjectType != api.EventTypeApp || evs[i+1].ObjectType != api.EventTypeRoute || evs[i].AppID != evs[i+1].AppID {
			t.Fatalf("events %d,%d = %s %s", i, i+1, evs[i].ObjectType, evs[i+1].ObjectType)
		}
	}
	for _, from := range []int{0, 1, 17, 38} {
		fctx, fcancel := context.WithCancel(ctx)
		var got []int64
		err := s2.FollowEvents(fctx, EventFilter{}, evs[from].ID, func(e *api.Event) error {
			got = append(got, e.ID)
			if len(got) == len(evs)-from-1 {
				fcancel()
			}
			return nil
		})
		fcancel()
		if err != context.Canceled {
			t.Fatalf("follow from %d: %v", from, err)
		}
		var want []int64
		for _, e := range evs[from+1:] {
			want = append(want, e.ID)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("follow from %d (-want +got):\n%s", from, diff)
		}
	}
	e, err := s2.GetEvent(ctx, evs[5].ID)
	if err != nil || e.ObjectID != evs[5].ObjectID {
		t.Fatalf("get event = %+v, %v", e, err)
	}
}
