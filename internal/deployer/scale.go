package deployer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// ScaleRequests is implemented by Controllers that can follow and complete
// scale requests. A Deployer whose Controller implements it completes
// every pending scale request once the formation runs exactly the jobs
// asked for and all of them are ready: up and, for process types with a
// discoverd service, registered there (their health check passed, so
// traffic reaches them). `flynn scale` waits for that.
type ScaleRequests interface {
	// StreamScaleRequests reports the pending scale requests when the
	// stream opens, then every scale request that changes, until ctx
	// ends or the stream breaks.
	StreamScaleRequests(ctx context.Context, fn func(*api.ScaleRequest)) error
	// CompleteScaleRequest marks a pending scale request complete.
	CompleteScaleRequest(ctx context.Context, req *api.ScaleRequest) error
	// FailScaleRequest marks a pending scale request failed, with why.
	FailScaleRequest(ctx context.Context, req *api.ScaleRequest, reason string) error
}

// DefaultScaleTimeout is how long a scale request is watched before the
// deployer gives up on it (it stays pending).
const DefaultScaleTimeout = 10 * time.Minute

// runScales follows scale requests and completes them, until ctx ends.
func (d *Deployer) runScales(ctx context.Context, sr ScaleRequests) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	watching := make(map[string]context.CancelFunc) // by request id
	for ctx.Err() == nil {
		err := sr.StreamScaleRequests(ctx, func(req *api.ScaleRequest) {
			mu.Lock()
			defer mu.Unlock()
			if req.State != api.ScaleRequestPending {
				if cancel := watching[req.ID]; cancel != nil {
					cancel()
				}
				delete(watching, req.ID)
				return
			}
			if _, ok := watching[req.ID]; ok {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, d.cfg.ScaleTimeout)
			watching[req.ID] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cancel()
				err := d.completeScale(wctx, sr, req)
				if err != nil && ctx.Err() == nil {
					if errors.Is(err, context.DeadlineExceeded) {
						d.log.Warn("scale request not complete in time", "app", req.AppID, "scale_request", req.ID, "timeout", d.cfg.ScaleTimeout)
					} else if !errors.Is(err, context.Canceled) {
						d.log.Warn("complete scale request", "app", req.AppID, "scale_request", req.ID, "err", err)
					}
				}
				mu.Lock()
				if _, ok := watching[req.ID]; ok {
					watching[req.ID] = nil // done: not watched again while it is pending
				}
				mu.Unlock()
			}()
		})
		if ctx.Err() != nil {
			break
		}
		d.log.Warn("scale request stream broke", "err", err)
		select {
		case <-time.After(d.cfg.RetryInterval):
		case <-ctx.Done():
		}
	}
}

// completeScale waits until the formation of req runs as asked and every
// job of it is ready, then marks req complete.
func (d *Deployer) completeScale(ctx context.Context, sr ScaleRequests, req *api.ScaleRequest) error {
	// The controller may be out of reach for a moment (a scale of the
	// controller itself stops the instance this talks to): retried, as
	// the request is watched only once.
	var rel *api.Release
	err := d.retry(ctx, func() (err error) {
		rel, err = d.cfg.Controller.GetRelease(ctx, req.ReleaseID)
		return err
	})
	if err != nil {
		return fmt.Errorf("get release %s: %w", req.ReleaseID, err)
	}
	want := maps.Clone(req.OldProcesses)
	if want == nil {
		want = make(map[string]int)
	}
	if req.NewProcesses != nil {
		maps.Copy(want, *req.NewProcesses)
	}
	w := &readiness{d: d, rel: rel, jobs: make(map[string]*api.Job), ready: make(map[string]bool), waiting: make(map[string]bool),
		updates: make(chan *api.Job, 256), served: make(chan string, 64)}
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		w.wg.Wait()
	}()
	if err := d.retry(ctx, func() error { return w.follow(ctx, req.AppID) }); err != nil {
		return err
	}
	done := func() bool {
		for typ := range w.types(want) {
			active, ready := w.count(typ)
			p := rel.Processes[typ]
			if p != nil && p.Omni {
				// One per host: as many as there are hosts, all ready.
				if ready != active || active < want[typ] {
					return false
				}
				continue
			}
			if active != want[typ] || ready != want[typ] {
				return false
			}
		}
		return true
	}
	// A process type whose jobs keep crashing will not come up: after
	// CrashLimit crashes the request fails, saying why, instead of
	// being waited on until it times out.
	crashes := map[string]int{}
	for !done() {
		select {
		case j := <-w.updates:
			if prev := w.jobs[j.UUID]; prev != nil && j.ReleaseID == rel.ID && j.State == api.JobStateDown &&
				(prev.State == api.JobStateUp || prev.State == api.JobStateStarting) && want[j.Type] > 0 {
				if crashes[j.Type]++; crashes[j.Type] >= d.cfg.CrashLimit {
					reason := fmt.Sprintf("%s crashed %d times; the last %s", j.Type, crashes[j.Type], j.End())
					return d.failScale(ctx, sr, req, reason)
				}
			}
			w.apply(ctx, j)
		case uuid := <-w.served:
			delete(w.waiting, uuid)
			if j := w.jobs[uuid]; j != nil && j.State == api.JobStateUp {
				w.ready[uuid] = true
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Record it, retrying while the controller cannot be reached; a
	// request that ended meanwhile (cancelled, deleted) needs nothing.
	for {
		err := sr.CompleteScaleRequest(ctx, req)
		if err == nil || errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrNotFound) {
			return nil
		}
		d.log.Warn("record scale request complete", "app", req.AppID, "scale_request", req.ID, "err", err)
		select {
		case <-time.After(d.cfg.RetryInterval):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retry calls fn until it succeeds, fails with an answer of the
// controller's other than "unavailable" (not found, invalid, conflict...),
// or ctx ends, waiting RetryInterval after each failure: what it retries
// is the controller out of reach or failing.
func (d *Deployer) retry(ctx context.Context, fn func() error) error {
	for failed := 0; ; failed++ {
		err := fn()
		var ae *api.Error
		if err == nil || ctx.Err() != nil || errors.As(err, &ae) && ae.Code != api.CodeUnavailable && ae.Code != api.CodeUnknown {
			if err == nil && failed > 0 {
				d.log.Info("controller request succeeded after retries", "failed", failed)
			}
			return err
		}
		// Said at the first failure and every tenth after it, not at
		// each retry, while the controller is away.
		if failed%10 == 0 {
			d.log.Warn("controller request failed; retrying", "err", err, "failed", failed+1)
		}
		select {
		case <-time.After(d.cfg.RetryInterval):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// failScale records req failed, retrying while the controller cannot be
// reached.
func (d *Deployer) failScale(ctx context.Context, sr ScaleRequests, req *api.ScaleRequest, reason string) error {
	d.log.Warn("scale request failed", "app", req.AppID, "scale_request", req.ID, "reason", reason)
	for {
		err := sr.FailScaleRequest(ctx, req, reason)
		if err == nil || errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrNotFound) {
			return nil
		}
		select {
		case <-time.After(d.cfg.RetryInterval):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// readiness follows the jobs of one release and tells which are ready:
// up and, for process types with a service, registered in discoverd.
type readiness struct {
	d       *Deployer
	rel     *api.Release
	jobs    map[string]*api.Job // by UUID, this release's
	ready   map[string]bool
	waiting map[string]bool
	updates chan *api.Job
	served  chan string
	wg      sync.WaitGroup
}

// follow starts following the app's jobs, after applying a listing of
// them when the Controller can list.
func (w *readiness) follow(ctx context.Context, appID string) error {
	ctl := w.d.cfg.Controller
	if jl, ok := ctl.(JobLister); ok {
		jobs, err := jl.ListJobs(ctx, appID)
		if err != nil {
			return fmt.Errorf("list jobs of app %s: %w", appID, err)
		}
		for _, j := range jobs {
			w.apply(ctx, j)
		}
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for ctx.Err() == nil {
			err := ctl.StreamJobs(ctx, appID, func(j *api.Job) {
				select {
				case w.updates <- j:
				case <-ctx.Done():
				}
			})
			if ctx.Err() != nil {
				return
			}
			w.d.log.Warn("job stream broke", "app", appID, "err", err)
			select {
			case <-time.After(w.d.cfg.RetryInterval):
			case <-ctx.Done():
			}
		}
	}()
	return nil
}

func (w *readiness) apply(ctx context.Context, j *api.Job) {
	if j.ReleaseID != w.rel.ID || j.Type == "" || stale(w.jobs[j.UUID], j) {
		return
	}
	w.jobs[j.UUID] = j
	if j.State != api.JobStateUp {
		delete(w.ready, j.UUID)
		return
	}
	if w.ready[j.UUID] || w.waiting[j.UUID] {
		return
	}
	svc := service(w.rel.Processes[j.Type])
	if svc == "" || w.d.cfg.Discoverd == nil {
		w.ready[j.UUID] = true
		return
	}
	w.waiting[j.UUID] = true
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		if err := w.d.cfg.Discoverd.WaitInstance(ctx, svc, j.ID); err != nil {
			return
		}
		select {
		case w.served <- j.UUID:
		case <-ctx.Done():
		}
	}()
}

// types are the process types to check: those asked for and those with
// jobs.
func (w *readiness) types(want map[string]int) map[string]bool {
	out := make(map[string]bool)
	for t := range want {
		out[t] = true
	}
	for _, j := range w.jobs {
		out[j.Type] = true
	}
	return out
}

// count returns the active and ready jobs of a type.
func (w *readiness) count(typ string) (active, ready int) {
	for _, j := range w.jobs {
		if j.Type != typ {
			continue
		}
		switch j.State {
		case api.JobStatePending, api.JobStateBlocked, api.JobStateStarting, api.JobStateUp, api.JobStateStopping:
			active++
		}
		if w.ready[j.UUID] {
			ready++
		}
	}
	return active, ready
}

// StreamScaleRequests reports the pending scale requests, then every
// scale request event.
func (c *ControllerClient) StreamScaleRequests(ctx context.Context, fn func(*api.ScaleRequest)) error {
	o := controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeScaleRequest}}
	return c.follow(ctx, o, func() error {
		reqs, err := c.C.PendingScaleRequests(ctx)
		if err != nil {
			return fmt.Errorf("list pending scale requests: %w", err)
		}
		for _, r := range reqs {
			fn(r)
		}
		return nil
	}, func(e *api.Event) error {
		req := &api.ScaleRequest{}
		if err := json.Unmarshal(e.Data, req); err != nil {
			return fmt.Errorf("decode scale request event %d: %w", e.ID, err)
		}
		if req.AppID == "" {
			req.AppID = e.AppID
		}
		fn(req)
		return nil
	})
}

// CompleteScaleRequest marks a scale request complete.
func (c *ControllerClient) CompleteScaleRequest(ctx context.Context, req *api.ScaleRequest) error {
	_, err := c.C.UpdateScaleRequest(ctx, req.AppID, req.ReleaseID, req.ID, api.ScaleRequestComplete)
	return err
}

// FailScaleRequest marks a pending scale request failed.
func (c *ControllerClient) FailScaleRequest(ctx context.Context, req *api.ScaleRequest, reason string) error {
	_, err := c.C.FailScaleRequest(ctx, req.AppID, req.ReleaseID, req.ID, reason)
	return err
}

var _ ScaleRequests = (*ControllerClient)(nil)
