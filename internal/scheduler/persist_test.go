package scheduler

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

// flakyController fails PutJob while down, as an unreachable controller.
type flakyController struct {
	*fakeController
	mu       sync.Mutex
	down     bool
	attempts int
	recorded []string
}

func (c *flakyController) PutJob(ctx context.Context, j *api.Job) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts++
	if c.down {
		return errors.New("dial tcp: connection refused")
	}
	if j.AppID == "gone" {
		return api.NotFound("app not found")
	}
	c.recorded = append(c.recorded, j.UUID+" "+j.State)
	return nil
}

// TestPersisterRetriesInOrder: job states recorded while the controller is
// unreachable reach it, in order, once it is back; states the controller
// refuses for good are dropped without holding up the others.
func TestPersisterRetriesInOrder(t *testing.T) {
	ctl := &flakyController{fakeController: newFakeController(), down: true}
	p := newPersister(ctl, testLogger())
	p.retryMin, p.retryMax = time.Millisecond, 5*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { p.run(ctx); close(done) }()

	p.put(&api.Job{UUID: "a", State: api.JobStateDown})
	p.put(&api.Job{UUID: "b", State: api.JobStatePending})
	p.put(&api.Job{UUID: "x", AppID: "gone", State: api.JobStateUp})
	p.put(&api.Job{UUID: "b", State: api.JobStateStarting})
	for {
		ctl.mu.Lock()
		n := ctl.attempts
		ctl.mu.Unlock()
		if n >= 3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctl.mu.Lock()
	ctl.down = false
	ctl.mu.Unlock()
	p.put(&api.Job{UUID: "b", State: api.JobStateUp})
	want := []string{"a down", "b pending", "b starting", "b up"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctl.mu.Lock()
		got := append([]string(nil), ctl.recorded...)
		ctl.mu.Unlock()
		if len(got) >= len(want) {
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("recorded (-want +got):\n%s", diff)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorded only %v", got)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}
