// Package deployer moves an app from one release to another by changing
// formations and watching the jobs the scheduler starts and stops, and
// completes scale requests once the scaled formation serves.
// Strategies (api.Strategies): all-at-once (the default: start the whole
// new formation, wait for it, then stop the old one), one-by-one (per
// process type, start one new job, wait for it, stop one old job,
// repeat), in-batches (one-by-one with batches of the deployment's batch
// size) and one-down-one-up (per process type, stop one old job, then
// start one new job and wait for it). New jobs count once they are up
// and, for process types with a discoverd service, registered there
// (which happens only once their health check passes): then traffic
// reaches them. A new job that fails, or a deployment that outlasts its
// deploy_timeout, fails the deployment and restores the old formation.
// Before any of that, a new release with a release command (Heroku's
// release phase, api.ReleasePhaseJob) has it run as a one-off job, unless
// the deployment's client ran it already; a command that fails fails the
// deployment.
// Progress is reported as api.DeploymentEvents.
package deployer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Controller is the deployer's view of the controller. Methods return
// errors matching api.ErrNotFound for missing objects.
type Controller interface {
	// StreamDeployments reports deployments to run (status pending),
	// including those pending or running (left by a deployer that stopped)
	// when the stream opens, until ctx ends or the stream breaks.
	StreamDeployments(ctx context.Context, fn func(*api.Deployment)) error
	GetRelease(ctx context.Context, id string) (*api.Release, error)
	// GetFormation returns the formation of an app's release.
	GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error)
	// PutFormation creates or replaces a formation.
	PutFormation(ctx context.Context, f *api.Formation) error
	// StreamJobs reports the app's jobs as last recorded, then every
	// recorded change, until ctx ends or the stream breaks. (Reporting the
	// current jobs first means no change is lost however long the stream
	// takes to open.)
	StreamJobs(ctx context.Context, appID string, fn func(*api.Job)) error
	// UpdateDeployment records a deployment's status and finish time,
	// with a deployment event of that status.
	UpdateDeployment(ctx context.Context, d *api.Deployment) error
	// AddDeploymentEvent records a step of a deployment.
	AddDeploymentEvent(ctx context.Context, e *api.DeploymentEvent) error
	// SetAppRelease makes a release the app's current one.
	SetAppRelease(ctx context.Context, appID, releaseID string) error
}

// JobLister is implemented by Controllers that can list an app's jobs.
// A deployment then knows the jobs before its first step (a strategy that
// first stops an old job needs to have seen it).
type JobLister interface {
	ListJobs(ctx context.Context, appID string) ([]*api.Job, error)
}

// JobRunner is implemented by Controllers that can run one-off jobs: the
// release command of a release that has one (api.ReleasePhaseJob) runs
// as one before the release is deployed.
type JobRunner interface {
	RunJob(ctx context.Context, appID string, j *api.NewJob) (*api.Job, error)
	DeleteJob(ctx context.Context, appID, jobID string) error
}

// Discoverd tells when a job serves.
type Discoverd interface {
	// WaitInstance returns once the job's instance is registered in
	// service (the host registers it once its health check passes).
	WaitInstance(ctx context.Context, service, jobID string) error
}

// Config configures a Deployer. Controller is required.
type Config struct {
	Controller Controller
	// Discoverd, when set, makes new jobs of process types with a service
	// count only once registered.
	Discoverd Discoverd
	// RollbackTimeout bounds restoring the old formation (default 10 s).
	RollbackTimeout time.Duration
	// RetryInterval is the wait before a broken stream is reopened
	// (default 1 s).
	RetryInterval time.Duration
	// ScaleTimeout bounds how long a scale request is watched
	// (DefaultScaleTimeout when 0).
	ScaleTimeout time.Duration
	// CrashLimit is how many crashes of a process type's jobs fail a
	// scale request waiting on them (default 3).
	CrashLimit int
}

// Deployer runs deployments.
type Deployer struct {
	cfg Config
	log *slog.Logger
}

// New returns a Deployer.
func New(cfg Config, log *slog.Logger) (*Deployer, error) {
	if cfg.Controller == nil {
		return nil, errors.New("deployer: Controller is required")
	}
	if cfg.RollbackTimeout <= 0 {
		cfg.RollbackTimeout = 10 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.ScaleTimeout <= 0 {
		cfg.ScaleTimeout = DefaultScaleTimeout
	}
	if cfg.CrashLimit <= 0 {
		cfg.CrashLimit = 3
	}
	return &Deployer{cfg: cfg, log: log.With("component", "deployer")}, nil
}

// Run follows pending deployments and runs them, one at a time per app,
// and (when the Controller implements ScaleRequests) completes scale
// requests, until ctx ends. It returns nil when ctx is cancelled.
func (d *Deployer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if sr, ok := d.cfg.Controller.(ScaleRequests); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.runScales(ctx, sr)
		}()
	}
	var mu sync.Mutex
	queues := make(map[string][]*api.Deployment) // by app; head is running
	seen := make(map[string]bool)
	var runApp func(appID string)
	runApp = func(appID string) {
		defer wg.Done()
		for {
			mu.Lock()
			q := queues[appID]
			if len(q) == 0 || ctx.Err() != nil {
				delete(queues, appID)
				mu.Unlock()
				return
			}
			dep := q[0]
			mu.Unlock()
			if err := d.Deploy(ctx, dep); err != nil && ctx.Err() == nil {
				d.log.Warn("deployment failed", "app", dep.AppID, "deployment", dep.ID, "err", err)
			}
			mu.Lock()
			queues[appID] = queues[appID][1:]
			mu.Unlock()
		}
	}
	for ctx.Err() == nil {
		err := d.cfg.Controller.StreamDeployments(ctx, func(dep *api.Deployment) {
			mu.Lock()
			defer mu.Unlock()
			// A running one was left by a deployer that stopped (killed,
			// or no longer the leader): it is taken up where it stands.
			if seen[dep.ID] || dep.Status != "" && dep.Status != api.DeploymentPending && dep.Status != api.DeploymentRunning {
				return
			}
			seen[dep.ID] = true
			queues[dep.AppID] = append(queues[dep.AppID], dep)
			if len(queues[dep.AppID]) == 1 {
				wg.Add(1)
				go runApp(dep.AppID)
			}
		})
		if ctx.Err() != nil {
			break
		}
		d.log.Warn("deployment stream broke", "err", err)
		select {
		case <-time.After(d.cfg.RetryInterval):
		case <-ctx.Done():
		}
	}
	return nil
}

// ErrTimeout is the cause of a deployment that outlasted its timeout.
var ErrTimeout = errors.New("deployment timed out")

// Deploy runs one deployment to completion or failure, recording its
// status and events. On failure it restores the old formation and returns
// the reason.
func (d *Deployer) Deploy(ctx context.Context, dep *api.Deployment) error {
	r := &run{d: d, dep: dep, jobs: make(map[string]*api.Job), ready: make(map[string]bool)}
	return r.deploy(ctx)
}

// run is one deployment under way.
type run struct {
	d   *Deployer
	dep *api.Deployment

	// resumed: the deployment was running when this run began (its
	// deployer stopped part way): the formations may be part-scaled.
	resumed    bool
	newRelease *api.Release
	oldForm    *api.Formation // as it was before the deployment
	target     map[string]int // new release's processes
	newForm    *api.Formation // as currently asked for
	curOld     *api.Formation // as currently asked for

	// Job state, fed by the job stream.
	updates chan *api.Job
	served  chan string // UUIDs of jobs registered in discoverd
	jobs    map[string]*api.Job
	ready   map[string]bool // new-release jobs counted as up (UUIDs)
	waiting map[string]bool // UUIDs with a discoverd wait under way
	wg      sync.WaitGroup
}

func (r *run) ctl() Controller { return r.d.cfg.Controller }

func (r *run) event(ctx context.Context, e api.DeploymentEvent) {
	e.AppID, e.DeploymentID = r.dep.AppID, r.dep.ID
	if e.Status == "" {
		e.Status = api.DeploymentRunning
	}
	if err := r.ctl().AddDeploymentEvent(ctx, &e); err != nil {
		r.d.log.Warn("record deployment event", "deployment", r.dep.ID, "err", err)
	}
}

func (r *run) finish(ctx context.Context, status string) {
	now := time.Now()
	r.dep.Status = status
	r.dep.FinishedAt = &now
	if err := r.ctl().UpdateDeployment(ctx, r.dep); err != nil {
		r.d.log.Warn("record deployment status", "deployment", r.dep.ID, "err", err)
	}
}

func (r *run) deploy(ctx context.Context) (err error) {
	dep := r.dep
	if dep.Strategy == "" {
		dep.Strategy = api.StrategyAllAtOnce
	}
	if !slices.Contains(api.Strategies, dep.Strategy) {
		err := fmt.Errorf("unknown deploy strategy %q (want one of %s)", dep.Strategy, strings.Join(api.Strategies, ", "))
		r.event(ctx, api.DeploymentEvent{ReleaseID: dep.NewReleaseID, Status: api.DeploymentFailed, Error: err.Error()})
		r.finish(ctx, api.DeploymentFailed)
		return err
	}
	timeout := time.Duration(cmp.Or(dep.DeployTimeout, api.DefaultDeployTimeout)) * time.Second

	// The controller may be out of reach for a moment (a deploy or scale
	// of the controller itself stops the instance this talks to): the
	// reads and writes before the deploy starts are retried, for as
	// long as the deploy may take.
	rctx, rcancel := context.WithTimeout(ctx, timeout)
	defer rcancel()
	r.resumed = dep.Status == api.DeploymentRunning
	if r.resumed {
		r.d.log.Info("taking up a deployment left running", "app", dep.AppID, "deployment", dep.ID)
	}
	dep.Status = api.DeploymentRunning
	if err := r.d.retry(rctx, func() error { return r.ctl().UpdateDeployment(rctx, dep) }); err != nil {
		return fmt.Errorf("deployment %s: mark running: %w", dep.ID, err)
	}
	r.event(ctx, api.DeploymentEvent{ReleaseID: dep.NewReleaseID})

	sctx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		r.wg.Wait()
	}()
	err = r.prepare(sctx, rctx)
	if err == nil {
		err = r.releasePhase(sctx)
	}
	if err == nil {
		dctx, cancel := context.WithTimeoutCause(sctx, timeout, fmt.Errorf("%w after %s", ErrTimeout, timeout))
		err = r.strategy(dctx)
		if err != nil && dctx.Err() != nil && ctx.Err() == nil {
			err = context.Cause(dctx)
		}
		cancel()
	}
	if ctx.Err() != nil {
		return ctx.Err() // shutting down: the next leader takes it up
	}
	if err != nil {
		r.event(ctx, api.DeploymentEvent{ReleaseID: dep.NewReleaseID, Status: api.DeploymentFailed, Error: err.Error()})
		r.rollback(ctx)
		r.finish(ctx, api.DeploymentFailed)
		return fmt.Errorf("deployment %s of app %s: %w", dep.ID, dep.AppID, err)
	}
	if err := r.ctl().SetAppRelease(ctx, dep.AppID, dep.NewReleaseID); err != nil {
		return fmt.Errorf("deployment %s: set app release: %w", dep.ID, err)
	}
	// Recording the status also records its "complete" event, so a
	// client that sees the event finds the deployment complete.
	r.finish(ctx, api.DeploymentComplete)
	return nil
}

// prepare loads the releases and formations and starts following jobs.
// Its controller requests are retried while rctx lasts.
func (r *run) prepare(ctx, rctx context.Context) error {
	dep := r.dep
	var rel *api.Release
	err := r.d.retry(rctx, func() (err error) {
		rel, err = r.ctl().GetRelease(rctx, dep.NewReleaseID)
		return err
	})
	if err != nil {
		return fmt.Errorf("get release %s: %w", dep.NewReleaseID, err)
	}
	r.newRelease = rel
	r.oldForm = &api.Formation{AppID: dep.AppID, ReleaseID: dep.OldReleaseID}
	if dep.OldReleaseID != "" {
		var f *api.Formation
		err := r.d.retry(rctx, func() (err error) {
			f, err = r.ctl().GetFormation(rctx, dep.AppID, dep.OldReleaseID)
			return err
		})
		switch {
		case errors.Is(err, api.ErrNotFound):
		case err != nil:
			return fmt.Errorf("get formation of release %s: %w", dep.OldReleaseID, err)
		default:
			r.oldForm = f
		}
	}
	r.target = dep.Processes
	if r.target == nil {
		r.target = r.oldForm.Processes
	}
	for typ := range r.target {
		if rel.Processes[typ] == nil {
			return fmt.Errorf("release %s has no process type %q", rel.ID, typ)
		}
	}
	tags := dep.Tags
	if tags == nil {
		tags = r.oldForm.Tags
	}
	r.newForm = &api.Formation{AppID: dep.AppID, ReleaseID: dep.NewReleaseID, Processes: make(map[string]int), Tags: tags}
	r.curOld = &api.Formation{AppID: dep.AppID, ReleaseID: dep.OldReleaseID, Processes: maps.Clone(r.oldForm.Processes), Tags: r.oldForm.Tags}
	if r.curOld.Processes == nil {
		r.curOld.Processes = make(map[string]int)
	}
	if r.resumed && dep.Processes != nil && dep.OldReleaseID != "" && dep.OldReleaseID != dep.NewReleaseID {
		// The old formation may be part-scaled down: as it was before
		// the deployment, it ran the deployment's processes (the
		// controller copies them from it), which a failure restores.
		orig := *r.oldForm
		orig.Processes = maps.Clone(dep.Processes)
		r.oldForm = &orig
	}

	r.updates = make(chan *api.Job, 256)
	r.served = make(chan string, 64)
	r.waiting = make(map[string]bool)
	if jl, ok := r.ctl().(JobLister); ok {
		var jobs []*api.Job
		err := r.d.retry(rctx, func() (err error) {
			jobs, err = jl.ListJobs(rctx, dep.AppID)
			return err
		})
		if err != nil {
			return fmt.Errorf("list jobs of app %s: %w", dep.AppID, err)
		}
		for _, j := range jobs {
			if err := r.apply(ctx, j); err != nil {
				return err
			}
		}
	}
	// Follow the app's jobs; updates are applied while waiting.
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for ctx.Err() == nil {
			err := r.ctl().StreamJobs(ctx, dep.AppID, func(j *api.Job) {
				select {
				case r.updates <- j:
				case <-ctx.Done():
				}
			})
			if ctx.Err() != nil {
				return
			}
			r.d.log.Warn("job stream broke", "app", dep.AppID, "err", err)
			select {
			case <-time.After(r.d.cfg.RetryInterval):
			case <-ctx.Done():
			}
		}
	}()
	return nil
}

// count returns the active (and, for the new release, ready) jobs of a
// release and type.
func (r *run) count(releaseID, typ string) (active, ready int) {
	for _, j := range r.jobs {
		if j.ReleaseID != releaseID || j.Type != typ {
			continue
		}
		switch j.State {
		case api.JobStatePending, api.JobStateBlocked, api.JobStateStarting, api.JobStateUp, api.JobStateStopping:
			active++
		}
		if r.ready[j.UUID] {
			ready++
		}
	}
	return active, ready
}

// service is the discoverd service a process type registers, if any.
func service(p *api.ProcessType) string {
	if p == nil {
		return ""
	}
	if p.Service != "" {
		return p.Service
	}
	for _, port := range p.Ports {
		if port.Service != nil && port.Service.Name != "" {
			return port.Service.Name
		}
	}
	return ""
}

// waitUntil applies job updates until cond holds. A new-release job that
// goes down fails the deployment.
func (r *run) waitUntil(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case j := <-r.updates:
			if err := r.apply(ctx, j); err != nil {
				return err
			}
		case uuid := <-r.served:
			delete(r.waiting, uuid)
			if j := r.jobs[uuid]; j != nil && j.State == api.JobStateUp && !r.ready[uuid] {
				r.markReady(ctx, j)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (r *run) markReady(ctx context.Context, j *api.Job) {
	if r.ready[j.UUID] {
		return
	}
	r.ready[j.UUID] = true
	r.event(ctx, api.DeploymentEvent{ReleaseID: j.ReleaseID, JobType: j.Type, JobState: api.JobStateUp})
}

func (r *run) apply(ctx context.Context, j *api.Job) error {
	prev := r.jobs[j.UUID]
	if stale(prev, j) {
		return nil
	}
	r.jobs[j.UUID] = j
	if prev != nil && prev.State == j.State {
		return nil
	}
	if prev == nil && j.State == api.JobStateDown && !r.dep.CreatedAt.IsZero() && j.UpdatedAt.Before(r.dep.CreatedAt) {
		// History: a job of this release that ended before the deployment
		// began (rolling back to a release that ran before).
		return nil
	}
	isNew := j.ReleaseID == r.dep.NewReleaseID && r.target[j.Type] > 0
	isOld := j.ReleaseID == r.dep.OldReleaseID && r.dep.OldReleaseID != r.dep.NewReleaseID
	switch {
	case isNew && j.State == api.JobStateUp:
		svc := service(r.newRelease.Processes[j.Type])
		if svc == "" || r.d.cfg.Discoverd == nil {
			r.markReady(ctx, j)
			return nil
		}
		if r.waiting[j.UUID] {
			return nil
		}
		r.waiting[j.UUID] = true
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := r.d.cfg.Discoverd.WaitInstance(ctx, svc, j.ID); err != nil {
				return
			}
			select {
			case r.served <- j.UUID:
			case <-ctx.Done():
			}
		}()
	case isNew && j.State == api.JobStateDown:
		delete(r.ready, j.UUID)
		if r.newForm.Processes[j.Type] == 0 {
			return nil // we scaled it down
		}
		msg := j.End()
		r.event(ctx, api.DeploymentEvent{ReleaseID: j.ReleaseID, JobType: j.Type, JobState: api.JobStateDown, Error: msg})
		return fmt.Errorf("a %s job of release %s %s", j.Type, j.ReleaseID, msg)
	case isOld && j.State == api.JobStateDown && prev != nil:
		r.event(ctx, api.DeploymentEvent{ReleaseID: j.ReleaseID, JobType: j.Type, JobState: api.JobStateDown})
	}
	return nil
}

// stale says whether j is an older record of the job than prev (a job
// stream replays changes recorded before its listing).
func stale(prev, j *api.Job) bool {
	return prev != nil && !j.UpdatedAt.IsZero() && j.UpdatedAt.Before(prev.UpdatedAt)
}

func (r *run) put(ctx context.Context, f *api.Formation) error {
	cp := *f
	cp.Processes = maps.Clone(f.Processes)
	if err := r.ctl().PutFormation(ctx, &cp); err != nil {
		return fmt.Errorf("scale release %s: %w", f.ReleaseID, err)
	}
	return nil
}

// types returns the process types the deployment touches, sorted.
func (r *run) types() []string {
	set := maps.Clone(r.target)
	if set == nil {
		set = make(map[string]int)
	}
	for typ := range r.oldForm.Processes {
		set[typ] = 0
	}
	return slices.Sorted(maps.Keys(set))
}

func (r *run) strategy(ctx context.Context) error {
	if r.dep.OldReleaseID == "" || r.dep.OldReleaseID == r.dep.NewReleaseID {
		r.curOld = nil // a first deploy, or scaling a release in place
	}
	switch r.dep.Strategy {
	case api.StrategyOneByOne:
		return r.inBatches(ctx, 1)
	case api.StrategyInBatches:
		n := 1
		if r.dep.DeployBatchSize != nil && *r.dep.DeployBatchSize > 0 {
			n = *r.dep.DeployBatchSize
		}
		return r.inBatches(ctx, n)
	case api.StrategyOneDownOneUp:
		return r.oneDownOneUp(ctx)
	}
	return r.allAtOnce(ctx)
}

func (r *run) oldGone(typ string) func() bool {
	return func() bool {
		if r.curOld == nil {
			return true
		}
		active, _ := r.count(r.curOld.ReleaseID, typ)
		return active <= r.curOld.Processes[typ]
	}
}

func (r *run) newReady(typ string) func() bool {
	return func() bool {
		_, ready := r.count(r.newForm.ReleaseID, typ)
		return ready >= r.newForm.Processes[typ]
	}
}

func (r *run) allAtOnce(ctx context.Context) error {
	maps.Copy(r.newForm.Processes, r.target)
	if err := r.put(ctx, r.newForm); err != nil {
		return err
	}
	for _, typ := range r.types() {
		if err := r.waitUntil(ctx, r.newReady(typ)); err != nil {
			return err
		}
	}
	if r.curOld == nil {
		return nil
	}
	clear(r.curOld.Processes)
	if err := r.put(ctx, r.curOld); err != nil {
		return err
	}
	for _, typ := range r.types() {
		if err := r.waitUntil(ctx, r.oldGone(typ)); err != nil {
			return err
		}
	}
	return nil
}

// inBatches, per process type, starts up to n new jobs and waits for them,
// then stops up to n old jobs and waits for them to go, until the new
// formation is complete and the old one gone (one-by-one is n = 1).
func (r *run) inBatches(ctx context.Context, n int) error {
	for _, typ := range r.types() {
		for {
			progressed := false
			if up := min(n, r.target[typ]-r.newForm.Processes[typ]); up > 0 {
				r.newForm.Processes[typ] += up
				if err := r.put(ctx, r.newForm); err != nil {
					return err
				}
				if err := r.waitUntil(ctx, r.newReady(typ)); err != nil {
					return err
				}
				progressed = true
			}
			if r.curOld != nil {
				if down := min(n, r.curOld.Processes[typ]); down > 0 {
					r.curOld.Processes[typ] -= down
					if err := r.put(ctx, r.curOld); err != nil {
						return err
					}
					if err := r.waitUntil(ctx, r.oldGone(typ)); err != nil {
						return err
					}
					progressed = true
				}
			}
			if !progressed {
				break
			}
		}
	}
	return nil
}

// oneDownOneUp, per process type, stops one old job and waits for it to
// go, then starts one new job and waits for it, until done: never more
// jobs of a type than the formation asks for.
func (r *run) oneDownOneUp(ctx context.Context) error {
	for _, typ := range r.types() {
		for {
			progressed := false
			if r.curOld != nil && r.curOld.Processes[typ] > 0 {
				r.curOld.Processes[typ]--
				if err := r.put(ctx, r.curOld); err != nil {
					return err
				}
				if err := r.waitUntil(ctx, r.oldGone(typ)); err != nil {
					return err
				}
				progressed = true
			}
			if r.newForm.Processes[typ] < r.target[typ] {
				r.newForm.Processes[typ]++
				if err := r.put(ctx, r.newForm); err != nil {
					return err
				}
				if err := r.waitUntil(ctx, r.newReady(typ)); err != nil {
					return err
				}
				progressed = true
			}
			if !progressed {
				break
			}
		}
	}
	return nil
}

// rollback restores the old formation and scales the new release to zero.
func (r *run) rollback(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.d.cfg.RollbackTimeout)
	defer cancel()
	if r.oldForm == nil {
		return
	}
	if r.dep.OldReleaseID != "" && r.dep.OldReleaseID != r.dep.NewReleaseID {
		if err := r.put(ctx, r.oldForm); err != nil {
			r.d.log.Warn("rollback: restore old formation", "deployment", r.dep.ID, "err", err)
		}
		zero := &api.Formation{AppID: r.dep.AppID, ReleaseID: r.dep.NewReleaseID, Processes: map[string]int{}, Tags: r.newForm.Tags}
		if err := r.put(ctx, zero); err != nil {
			r.d.log.Warn("rollback: scale new release down", "deployment", r.dep.ID, "err", err)
		}
		return
	}
	if err := r.put(ctx, r.oldForm); err != nil {
		r.d.log.Warn("rollback: restore formation", "deployment", r.dep.ID, "err", err)
	}
}
