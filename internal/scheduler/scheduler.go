package scheduler

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Cluster is the scheduler's view of the hosts and their jobs. Stream
// methods call fn for each event, in order, until ctx ends or the stream
// breaks, and return the error that ended it; fn may block.
type Cluster interface {
	// ListHosts returns the hosts that are up.
	ListHosts(ctx context.Context) ([]*api.Host, error)
	// StreamHosts reports hosts coming up and going away.
	StreamHosts(ctx context.Context, fn func(HostEvent)) error
	// ListJobs returns the jobs a host knows, running or ended.
	ListJobs(ctx context.Context, hostID string) ([]*api.ActiveJob, error)
	// StreamJobs reports a host's job events.
	StreamJobs(ctx context.Context, hostID string, fn func(*api.HostJobEvent)) error
	// AddJob starts job on a host.
	AddJob(ctx context.Context, hostID string, job *api.HostJob) error
	// StopJob stops a job. A job the host does not know is api.ErrNotFound.
	StopJob(ctx context.Context, hostID, jobID string) error
}

// VolumeLister is implemented by a Cluster that lists its hosts' volumes,
// so jobs with volumes go back to the host holding them after the
// scheduler restarts.
type VolumeLister interface {
	ListVolumes(ctx context.Context, hostID string) ([]*api.Volume, error)
}

// HostEvent is a host coming up (Up, with its registration) or going away
// (its lease expired or it deregistered).
type HostEvent struct {
	Up   bool
	Host *api.Host
}

// Controller is the scheduler's view of the controller.
type Controller interface {
	// ListFormations returns the formations to run: every formation whose
	// app and release exist, including ones scaled to zero.
	ListFormations(ctx context.Context) ([]*api.ExpandedFormation, error)
	// StreamFormations reports changed formations (Deleted when removed).
	StreamFormations(ctx context.Context, fn func(*api.ExpandedFormation)) error
	// PutJob records a job's state. Jobs are identified by UUID; ID is
	// empty until the job is placed on a host.
	PutJob(ctx context.Context, job *api.Job) error
}

// JobRecords is implemented by a Controller that can list its job
// records, so the scheduler settles records no job backs any more.
type JobRecords interface {
	// ListActiveJobs returns the job records that are not down.
	ListActiveJobs(ctx context.Context) ([]*api.Job, error)
}

// Drainer takes a job out of service before it is stopped.
type Drainer interface {
	// Drain deregisters the job's discoverd instances and returns once
	// its in-flight requests have drained (or ctx ends).
	Drain(ctx context.Context, hostID, jobID string) error
}

// Clock tells the time and waits; tests use a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// JobMetaRestarts is the host job metadata key carrying the restart count
// of a formation job, so a new leader continues the backoff.
const JobMetaRestarts = "flynn-scheduler.restarts"

// Backoff is Flynn's restart policy: after restart number n (0 for the
// first), wait 0 s for the first 5 restarts, 10 s for the next 10, then
// 30 s.
func Backoff(n int) time.Duration {
	switch {
	case n < 5:
		return 0
	case n < 15:
		return 10 * time.Second
	}
	return 30 * time.Second
}

// RestartResetAfter is how long a job must have run for its formation
// slot's restart count to start again from zero.
const RestartResetAfter = 5 * time.Minute

// Config configures a Scheduler. Cluster and Controller are required.
type Config struct {
	Cluster    Cluster
	Controller Controller
	// Drainer, when set, drains jobs before they are stopped.
	Drainer Drainer
	// DrainTimeout bounds Drain (default 10 s).
	DrainTimeout time.Duration
	// Clock defaults to the real clock.
	Clock Clock
	// ResyncInterval is how often hosts, jobs and formations are listed in
	// full (default 30 s).
	ResyncInterval time.Duration
	// RetryInterval is the wait before a broken stream is reopened
	// (default 1 s).
	RetryInterval time.Duration
	// Backoff maps a restart count to a delay (default Backoff).
	Backoff func(restarts int) time.Duration
	// Parallel bounds concurrent AddJob and StopJob calls (default 32).
	Parallel int
}

// Scheduler runs the formations on the cluster. Create it with New and
// call Run; it keeps no state between runs.
type Scheduler struct {
	cfg Config
	log *slog.Logger
}

// New returns a Scheduler.
func New(cfg Config, log *slog.Logger) (*Scheduler, error) {
	if cfg.Cluster == nil || cfg.Controller == nil {
		return nil, errors.New("scheduler: Cluster and Controller are required")
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = 30 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.Backoff == nil {
		cfg.Backoff = Backoff
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 32
	}
	return &Scheduler{cfg: cfg, log: log.With("component", "scheduler")}, nil
}

// Run schedules until ctx ends. It starts from a full listing of hosts,
// their jobs and the formations, so it can take over from another
// scheduler at any time. Only one Run should act on a cluster at a time
// (see RunElected). It returns nil when ctx is cancelled.
func (s *Scheduler) Run(ctx context.Context) error {
	l := newLoop(s.cfg, s.log)
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		l.wg.Wait()
	}()
	l.start(ctx)
	l.run(ctx)
	return nil
}

// Events the loop applies, all on its goroutine.
type (
	fullSyncEvent struct {
		since      int64 // l.seq before listing
		at         time.Time
		hosts      []*api.Host
		jobs       map[string][]*api.ActiveJob // by host; missing: list failed
		volumes    map[string][]string         // volume ids by host
		formations []*api.ExpandedFormation
		records    []*api.Job // the controller's job records not down (nil: unknown)
	}
	hostEvent     HostEvent
	hostJobsEvent struct {
		hostID string
		since  int64 // l.seq before listing
		jobs   []*api.ActiveJob
		// volumes are the host's volume ids (nil: not listed).
		volumes []string
	}
	hostJobEvent struct {
		hostID string
		ev     *api.HostJobEvent
	}
	formationEvent struct{ f *api.ExpandedFormation }
	startResult    struct {
		uuid string
		err  error
	}
	stopResult struct {
		uuid string
		err  error
	}
)

type hostState struct {
	host   *api.Host
	synced bool // its jobs have been listed
	cancel context.CancelFunc
}

type loop struct {
	cfg   Config
	log   *slog.Logger
	clock Clock
	wg    sync.WaitGroup
	sem   chan struct{}

	events chan any

	// ready is set once a full sync has been applied; the sync goroutine
	// reads it.
	ready atomic.Bool

	// State below is owned by the loop goroutine.
	hosts      map[string]*hostState
	formations map[string]*api.ExpandedFormation
	jobs       map[string]*Job   // by UUID
	byID       map[string]*Job   // by host job id
	inflight   map[string]bool   // UUIDs with an AddJob or StopJob under way
	volumes    map[string]string // host id by volume id

	// seq orders changes against listings: a listing taken at seq n says
	// nothing of formations received, or jobs started, after n.
	seq           atomic.Int64
	formationSeen map[string]int64 // by formation key
	startSeq      map[string]int64 // by job UUID
	endedSeq      map[string]int64 // by host job id, of jobs seen ending

	persist *persister
	newUUID func() string
}

func newLoop(cfg Config, log *slog.Logger) *loop {
	return &loop{
		cfg:           cfg,
		log:           log,
		clock:         cfg.Clock,
		sem:           make(chan struct{}, cfg.Parallel),
		events:        make(chan any, 256),
		hosts:         make(map[string]*hostState),
		formations:    make(map[string]*api.ExpandedFormation),
		jobs:          make(map[string]*Job),
		byID:          make(map[string]*Job),
		inflight:      make(map[string]bool),
		volumes:       make(map[string]string),
		formationSeen: make(map[string]int64),
		startSeq:      make(map[string]int64),
		endedSeq:      make(map[string]int64),
		persist:       newPersister(cfg.Controller, log),
		newUUID:       newUUID,
	}
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (l *loop) send(ctx context.Context, ev any) {
	select {
	case l.events <- ev:
	case <-ctx.Done():
	}
}

// goroutine runs fn on a goroutine the loop waits for.
func (l *loop) goroutine(fn func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn()
	}()
}

// follow runs stream until ctx ends, reopening it after RetryInterval
// when it breaks.
func (l *loop) follow(ctx context.Context, name string, stream func(context.Context) error) {
	l.goroutine(func() {
		for ctx.Err() == nil {
			err := stream(ctx)
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("stream broke", "stream", name, "err", err)
			select {
			case <-time.After(l.cfg.RetryInterval):
			case <-ctx.Done():
			}
		}
	})
}

func (l *loop) start(ctx context.Context) {
	l.goroutine(func() { l.persist.run(ctx) })
	l.follow(ctx, "hosts", func(ctx context.Context) error {
		return l.cfg.Cluster.StreamHosts(ctx, func(e HostEvent) { l.send(ctx, hostEvent(e)) })
	})
	l.follow(ctx, "formations", func(ctx context.Context) error {
		return l.cfg.Controller.StreamFormations(ctx, func(f *api.ExpandedFormation) { l.send(ctx, formationEvent{f}) })
	})
	l.goroutine(func() {
		for {
			if ev, err := l.fullSync(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				l.log.Warn("full sync failed", "err", err)
			} else {
				l.send(ctx, ev)
			}
			wait := l.cfg.ResyncInterval
			if !l.isReady() {
				wait = l.cfg.RetryInterval
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
	})
}

func (l *loop) isReady() bool { return l.ready.Load() }

// hostListTimeout bounds listing one host's jobs and volumes in a sync.
const hostListTimeout = 15 * time.Second

func (l *loop) fullSync(ctx context.Context) (*fullSyncEvent, error) {
	since := l.seq.Load()
	hosts, err := l.cfg.Cluster.ListHosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	formations, err := l.cfg.Controller.ListFormations(ctx)
	if err != nil {
		return nil, fmt.Errorf("list formations: %w", err)
	}
	ev := &fullSyncEvent{since: since, at: l.clock.Now(), hosts: hosts, formations: formations, jobs: make(map[string][]*api.ActiveJob), volumes: make(map[string][]string)}
	if rl, ok := l.cfg.Controller.(JobRecords); ok {
		if ev.records, err = rl.ListActiveJobs(ctx); err != nil {
			l.log.Warn("list job records", "err", err)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, l.cfg.Parallel)
	for _, h := range hosts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// A host that cannot be reached (its network cut while its
			// lease lasts) must not hold up the sync of the others: a
			// sync that never ends would never settle its jobs' records
			// once the host is gone.
			hctx, cancel := context.WithTimeout(ctx, hostListTimeout)
			defer cancel()
			jobs, err := l.cfg.Cluster.ListJobs(hctx, h.ID)
			if err != nil {
				l.log.Warn("list host jobs", "host", h.ID, "err", err)
				return
			}
			vols := l.listVolumes(hctx, h.ID)
			mu.Lock()
			ev.jobs[h.ID] = jobs
			ev.volumes[h.ID] = vols
			mu.Unlock()
		}()
	}
	wg.Wait()
	return ev, nil
}

func (l *loop) run(ctx context.Context) {
	dirty := false
	for {
		if dirty && l.ready.Load() {
			l.rectify(ctx)
			dirty = false
		}
		var wake <-chan time.Time
		if next := l.nextRunAt(); !next.IsZero() {
			wake = l.clock.After(next.Sub(l.clock.Now()))
		}
		select {
		case ev := <-l.events:
			l.apply(ctx, ev)
			// Apply whatever else is queued before placing.
		drain:
			for n := 0; n < 1000; n++ {
				select {
				case ev := <-l.events:
					l.apply(ctx, ev)
				default:
					break drain
				}
			}
			dirty = true
		case <-wake:
			dirty = true
		case <-ctx.Done():
			return
		}
	}
}

// nextRunAt is the earliest future RunAt of a pending job.
func (l *loop) nextRunAt() time.Time {
	now := l.clock.Now()
	var next time.Time
	for _, j := range l.jobs {
		if j.State == api.JobStatePending && j.RunAt.After(now) && (next.IsZero() || j.RunAt.Before(next)) {
			next = j.RunAt
		}
	}
	return next
}

func (l *loop) apply(ctx context.Context, ev any) {
	switch ev := ev.(type) {
	case *fullSyncEvent:
		l.applyFullSync(ctx, ev)
	case hostEvent:
		if ev.Host == nil {
			return
		}
		if ev.Up {
			l.addHost(ctx, ev.Host, nil, false, 0)
		} else {
			l.hostLost(ctx, ev.Host.ID)
		}
	case hostJobsEvent:
		if hs := l.hosts[ev.hostID]; hs != nil {
			l.reconcileHost(ctx, ev.hostID, ev.jobs, ev.since)
			hs.synced = true
			for _, id := range ev.volumes {
				l.volumes[id] = ev.hostID
			}
		}
	case hostJobEvent:
		if l.hosts[ev.hostID] != nil && ev.ev.Job != nil {
			l.applyActiveJob(ctx, ev.hostID, ev.ev.Job, -1)
		}
	case formationEvent:
		if ev.f == nil || ev.f.App == nil || ev.f.Release == nil {
			return
		}
		key := FormationKey(ev.f.App.ID, ev.f.Release.ID)
		l.formationSeen[key] = l.seq.Add(1)
		if ev.f.Deleted {
			delete(l.formations, key)
		} else {
			l.formations[key] = ev.f
		}
	case startResult:
		delete(l.inflight, ev.uuid)
		j := l.jobs[ev.uuid]
		if ev.err == nil || j == nil {
			return
		}
		l.log.Warn("start job", "job", j.ID, "host", j.HostID, "err", ev.err)
		msg := ev.err.Error()
		l.exited(ctx, j, nil, &msg)
	case stopResult:
		delete(l.inflight, ev.uuid)
		j := l.jobs[ev.uuid]
		if j == nil {
			return
		}
		if errors.Is(ev.err, api.ErrNotFound) {
			l.exited(ctx, j, nil, nil)
		} else if ev.err != nil {
			l.log.Warn("stop job", "job", j.ID, "host", j.HostID, "err", ev.err)
		}
	}
}

func (l *loop) applyFullSync(ctx context.Context, ev *fullSyncEvent) {
	formations := make(map[string]*api.ExpandedFormation, len(ev.formations))
	for _, f := range ev.formations {
		if f.App != nil && f.Release != nil && !f.Deleted {
			formations[FormationKey(f.App.ID, f.Release.ID)] = f
		}
	}
	// Changes streamed since the listing began are newer than it.
	for key, seq := range l.formationSeen {
		if seq <= ev.since {
			delete(l.formationSeen, key)
			continue
		}
		if f := l.formations[key]; f != nil {
			formations[key] = f
		} else {
			delete(formations, key)
		}
	}
	l.formations = formations
	for id, seq := range l.endedSeq {
		if seq <= ev.since {
			delete(l.endedSeq, id)
		}
	}
	listed := make(map[string]bool, len(ev.hosts))
	for hostID, ids := range ev.volumes {
		for _, id := range ids {
			l.volumes[id] = hostID
		}
	}
	for _, h := range ev.hosts {
		listed[h.ID] = true
		jobs, ok := ev.jobs[h.ID]
		if hs := l.hosts[h.ID]; hs != nil {
			hs.host = h
			if ok {
				l.reconcileHost(ctx, h.ID, jobs, ev.since)
				hs.synced = true
			}
			continue
		}
		l.addHost(ctx, h, jobs, ok, ev.since)
	}
	for id := range l.hosts {
		if !listed[id] {
			l.hostLost(ctx, id)
		}
	}
	l.settleRecords(ev)
	l.ready.Store(true)
}

// recordGrace is how old a job record must be before it is settled as
// down because its host does not know the job: a one-off job is recorded
// by the controller just before its host is asked to start it.
const recordGrace = time.Minute

// settleRecords records down the controller's job records that no job
// backs any more: jobs that ended while no scheduler ran (a power loss, a
// restart of every host), jobs of hosts that are gone, and pending jobs
// of an earlier scheduler. Jobs this scheduler tracks are its own to
// record.
func (l *loop) settleRecords(ev *fullSyncEvent) {
	if ev.records == nil {
		return
	}
	listed := make(map[string]bool, len(ev.hosts))
	for _, h := range ev.hosts {
		listed[h.ID] = true
	}
	onHost := map[string]*api.ActiveJob{}
	for _, jobs := range ev.jobs {
		for _, aj := range jobs {
			onHost[aj.Job.ID] = aj
		}
	}
	for _, rec := range ev.records {
		if rec.State == api.JobStateDown || (rec.UUID != "" && l.jobs[rec.UUID] != nil) || (rec.ID != "" && l.byID[rec.ID] != nil) {
			continue
		}
		down := *rec
		down.State = api.JobStateDown
		switch aj := onHost[rec.ID]; {
		case rec.HostID == "":
			// Pending or blocked under an earlier scheduler.
		case aj != nil:
			if aj.Status == api.HostJobRunning || aj.Status == api.HostJobStarting {
				continue
			}
			if aj.ExitStatus != nil {
				st := int32(*aj.ExitStatus)
				down.ExitStatus = &st
			}
			down.HostError = aj.Error
		case listed[rec.HostID]:
			if _, synced := ev.jobs[rec.HostID]; !synced || ev.at.Sub(rec.UpdatedAt) < recordGrace {
				continue
			}
		}
		// Else the record's host is gone.
		l.log.Info("settle a stale job record", "job", rec.ID, "uuid", rec.UUID, "app", rec.AppID, "was", rec.State)
		l.persist.put(&down)
	}
}

// addHost follows a host that came up. Its jobs are listed by its stream
// follower unless listed is set (listed at since).
func (l *loop) addHost(ctx context.Context, h *api.Host, jobs []*api.ActiveJob, listed bool, since int64) {
	if hs := l.hosts[h.ID]; hs != nil {
		hs.host = h
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	hs := &hostState{host: h, cancel: cancel}
	l.hosts[h.ID] = hs
	if listed {
		l.reconcileHost(ctx, h.ID, jobs, since)
		hs.synced = true
	}
	l.log.Info("host up", "host", h.ID)
	id := h.ID
	l.follow(hctx, "host "+id, func(ctx context.Context) error {
		errc := make(chan error, 1)
		var wg sync.WaitGroup
		wg.Add(1)
		// Open the stream first so no event between the listing and the
		// stream is lost; events replayed over the listing are idempotent.
		listed := make(chan struct{})
		go func() {
			defer wg.Done()
			errc <- l.cfg.Cluster.StreamJobs(ctx, id, func(ev *api.HostJobEvent) {
				<-listed
				l.send(ctx, hostJobEvent{id, ev})
			})
		}()
		since := l.seq.Load()
		jobs, err := l.cfg.Cluster.ListJobs(ctx, id)
		close(listed)
		if err == nil {
			l.send(ctx, hostJobsEvent{id, since, jobs, l.listVolumes(ctx, id)})
		}
		wg.Wait()
		if err != nil {
			return fmt.Errorf("list jobs: %w", err)
		}
		return <-errc
	})
}

// hostLost marks the jobs of a host that went away down; placement
// replaces formation jobs on other hosts.
func (l *loop) hostLost(ctx context.Context, id string) {
	hs := l.hosts[id]
	if hs == nil {
		return
	}
	hs.cancel()
	delete(l.hosts, id)
	l.log.Warn("host lost", "host", id)
	for _, j := range l.jobs {
		if j.HostID != id {
			continue
		}
		msg := "host " + id + " went away"
		j.State = api.JobStateDown
		l.record(j, nil, &msg)
		l.forget(j)
	}
}

// reconcileHost applies a full listing of a host's jobs, taken at since.
func (l *loop) reconcileHost(ctx context.Context, hostID string, jobs []*api.ActiveJob, since int64) {
	seen := make(map[string]bool, len(jobs))
	for _, aj := range jobs {
		if aj == nil || aj.Job == nil {
			continue
		}
		seen[aj.Job.ID] = true
		l.applyActiveJob(ctx, hostID, aj, since)
	}
	for _, j := range l.jobs {
		if j.HostID != hostID || !j.placed() || seen[j.ID] || l.inflight[j.UUID] || l.startSeq[j.UUID] > since {
			continue
		}
		// The host does not know a job we gave it: it is gone.
		msg := "job vanished from its host"
		l.exited(ctx, j, nil, &msg)
	}
}

// applyActiveJob applies a job's state as its host reports it, live
// (since < 0) or in a listing taken at since.
func (l *loop) applyActiveJob(ctx context.Context, hostID string, aj *api.ActiveJob, since int64) {
	if aj.Job == nil {
		return
	}
	j := l.byID[aj.Job.ID]
	ended := aj.Status == api.HostJobDone || aj.Status == api.HostJobCrashed || aj.Status == api.HostJobFailed
	if j == nil {
		if ended {
			return // history from before we followed this host
		}
		if seq, ok := l.endedSeq[aj.Job.ID]; ok && since >= 0 && seq > since {
			return // a listing from before we saw it end
		}
		j = l.adopt(hostID, aj)
	}
	switch {
	case ended:
		var status *int32
		if aj.ExitStatus != nil {
			s := int32(*aj.ExitStatus)
			status = &s
		}
		l.exited(ctx, j, status, aj.Error)
	case aj.Status == api.HostJobRunning:
		if j.State == api.JobStatePending || j.State == api.JobStateStarting {
			j.State = api.JobStateUp
			// Our clock, not the host's: the restart reset compares it
			// with our Now.
			if j.StartedAt.IsZero() {
				j.StartedAt = l.clock.Now()
			}
			l.record(j, nil, nil)
		}
		if j.State == api.JobStateStopping && !l.inflight[j.UUID] {
			// A stop that did not take: try again.
			l.stop(ctx, j)
		}
	}
}

// adopt starts tracking a running job the scheduler did not start here:
// one started by a previous leader, or a one-off job.
func (l *loop) adopt(hostID string, aj *api.ActiveJob) *Job {
	meta := aj.Job.Metadata
	j := &Job{
		UUID:      strings.TrimPrefix(aj.Job.ID, hostID+"-"),
		ID:        aj.Job.ID,
		HostID:    hostID,
		AppID:     meta[api.JobMetaApp],
		ReleaseID: meta[api.JobMetaRelease],
		Type:      meta[api.JobMetaProcessType],
		State:     api.JobStateStarting,
		Memory:    MemoryRequest(aj.Job.Resources),
		CreatedAt: aj.CreatedAt,
		StartedAt: aj.StartedAt,
	}
	if j.ReleaseID == "" {
		// Not a formation's job (e.g. a build job, which names a process
		// type for its logs): watch it like a one-off job, never stop it.
		j.Type = ""
	}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = l.clock.Now()
	}
	j.Restarts, _ = strconv.Atoi(meta[JobMetaRestarts])
	if _, n, ok := strings.Cut(aj.Job.Config.Env["DYNO"], "."); ok && j.Type != "" {
		j.Index, _ = strconv.Atoi(n)
	}
	l.jobs[j.UUID] = j
	l.byID[j.ID] = j
	return j
}

// exited handles a job that ended. A formation job that ended without
// being asked to is replaced after its restart backoff.
func (l *loop) exited(ctx context.Context, j *Job, status *int32, hostErr *string) {
	if j.State == api.JobStateDown {
		return
	}
	wasStopping := j.State == api.JobStateStopping
	j.State = api.JobStateDown
	l.record(j, status, hostErr)
	l.forget(j)
	if wasStopping || j.Type == "" {
		return
	}
	f := l.formations[j.formationKey()]
	if f == nil || f.Release.Processes[j.Type] == nil {
		return
	}
	now := l.clock.Now()
	n := j.Restarts
	if !j.StartedAt.IsZero() && now.Sub(j.StartedAt) >= RestartResetAfter {
		n = 0
	}
	r := &Job{
		UUID:      l.newUUID(),
		AppID:     j.AppID,
		ReleaseID: j.ReleaseID,
		Type:      j.Type,
		State:     api.JobStatePending,
		Memory:    j.Memory,
		Restarts:  n + 1,
		Index:     j.Index,
		RunAt:     now.Add(l.cfg.Backoff(n)),
		CreatedAt: now,
	}
	if f.Release.Processes[j.Type].Omni {
		r.HostID = j.HostID
	}
	l.log.Info("job exited, restarting", "job", j.ID, "app", j.AppID, "type", j.Type, "restarts", r.Restarts, "run_at", r.RunAt)
	l.jobs[r.UUID] = r
	l.record(r, nil, nil)
}

func (l *loop) forget(j *Job) {
	delete(l.jobs, j.UUID)
	delete(l.startSeq, j.UUID)
	if j.ID != "" {
		delete(l.byID, j.ID)
		l.endedSeq[j.ID] = l.seq.Add(1)
	}
}

// listVolumes returns the ids of a host's volumes, or nil when the
// cluster cannot list them.
func (l *loop) listVolumes(ctx context.Context, hostID string) []string {
	vl, ok := l.cfg.Cluster.(VolumeLister)
	if !ok {
		return nil
	}
	vs, err := vl.ListVolumes(ctx, hostID)
	if err != nil {
		l.log.Warn("list volumes", "host", hostID, "err", err)
		return nil
	}
	ids := make([]string, 0, len(vs))
	for _, v := range vs {
		if !v.DeleteOnStop {
			ids = append(ids, v.ID)
		}
	}
	return ids
}

func (l *loop) snapshot() *Snapshot {
	s := &Snapshot{Now: l.clock.Now(), Volumes: l.volumes}
	for _, hs := range l.hosts {
		if hs.synced {
			s.Hosts = append(s.Hosts, hs.host)
		}
	}
	for _, f := range l.formations {
		s.Formations = append(s.Formations, f)
	}
	s.Jobs = make([]*Job, 0, len(l.jobs))
	for _, j := range l.jobs {
		s.Jobs = append(s.Jobs, j)
	}
	return s
}

// rectify computes a plan from the current state and applies it.
func (l *loop) rectify(ctx context.Context) {
	plan := Place(l.snapshot(), l.newUUID)
	for _, c := range plan.Cancel {
		if j := l.jobs[c.UUID]; j != nil {
			j.State = api.JobStateDown
			l.record(j, nil, nil)
			l.forget(j)
		}
	}
	for _, c := range plan.Blocked {
		j := l.jobs[c.UUID]
		if j == nil {
			j = c
			l.jobs[c.UUID] = j
		} else if j.State == c.State && j.Reason == c.Reason {
			continue
		}
		*j = *c
		l.log.Warn("job blocked", "app", j.AppID, "type", j.Type, "reason", j.Reason)
		l.record(j, nil, &j.Reason)
	}
	for _, c := range plan.Stop {
		if j := l.jobs[c.UUID]; j != nil && !l.inflight[j.UUID] {
			j.State = api.JobStateStopping
			l.record(j, nil, nil)
			l.stop(ctx, j)
		}
	}
	for _, c := range plan.Start {
		j := l.jobs[c.UUID]
		if j == nil {
			j = c
			l.jobs[c.UUID] = j
		} else {
			*j = *c
		}
		l.byID[j.ID] = j
		l.record(j, nil, nil)
		l.startJob(ctx, j)
	}
}

func (l *loop) startJob(ctx context.Context, j *Job) {
	f := l.formations[j.formationKey()]
	hj := hostJob(f, j)
	for _, v := range hj.Config.Volumes {
		if !v.DeleteOnStop {
			l.volumes[v.VolumeID] = j.HostID
		}
	}
	hostID := j.HostID
	uuid := j.UUID
	l.inflight[uuid] = true
	l.startSeq[uuid] = l.seq.Add(1)
	l.goroutine(func() {
		l.sem <- struct{}{}
		err := l.cfg.Cluster.AddJob(ctx, hostID, hj)
		<-l.sem
		l.send(ctx, startResult{uuid, err})
	})
}

func (l *loop) stop(ctx context.Context, j *Job) {
	hostID, id, uuid := j.HostID, j.ID, j.UUID
	l.inflight[uuid] = true
	l.goroutine(func() {
		if l.cfg.Drainer != nil {
			dctx, cancel := context.WithTimeout(ctx, l.cfg.DrainTimeout)
			if err := l.cfg.Drainer.Drain(dctx, hostID, id); err != nil && ctx.Err() == nil {
				l.log.Warn("drain job", "job", id, "err", err)
			}
			cancel()
		}
		l.sem <- struct{}{}
		err := l.cfg.Cluster.StopJob(ctx, hostID, id)
		<-l.sem
		l.send(ctx, stopResult{uuid, err})
	})
}

// HostJob is the host's description of formation job j: the formation's
// artifacts, the release env overlaid with the process env and the
// FLYNN_APP_ID, FLYNN_APP_NAME, FLYNN_RELEASE_ID and FLYNN_PROCESS_TYPE
// variables (and DYNO=<type>.<index> once the job has an index), the process's args, ports, mounts and resources, and the
// app, release and type metadata keys.
func HostJob(f *api.ExpandedFormation, j *Job) *api.HostJob { return hostJob(f, j) }

// hostJob is the host's description of formation job j.
func hostJob(f *api.ExpandedFormation, j *Job) *api.HostJob {
	proc := f.Release.Processes[j.Type]
	env := make(map[string]string, len(f.Release.Env)+len(proc.Env))
	maps.Copy(env, f.Release.Env)
	maps.Copy(env, proc.Env)
	maps.Copy(env, JobEnv(f.App, j.ReleaseID, j.Type))
	if j.Index > 0 {
		env["DYNO"] = j.Type + "." + strconv.Itoa(j.Index)
	}
	meta := JobMetadata(f.App, j.ReleaseID, j.Type)
	meta[JobMetaRestarts] = strconv.Itoa(j.Restarts)
	return &api.HostJob{
		ID:        j.ID,
		Artifacts: f.Artifacts,
		Metadata:  meta,
		Config: api.HostJobConfig{
			Args:        proc.Args,
			Env:         env,
			Ports:       proc.Ports,
			Mounts:      proc.Mounts,
			Volumes:     volumeBindings(proc, j),
			HostNetwork: proc.HostNetwork,
		},
		Resources: proc.Resources,
		Resurrect: proc.Resurrect,
	}
}

// volumeBindings are the host volumes of formation job j: VolumeID for
// the kept ones, the job's own for delete_on_stop ones.
func volumeBindings(proc *api.ProcessType, j *Job) []api.VolumeBinding {
	var out []api.VolumeBinding
	for i, v := range proc.Volumes {
		id := VolumeID(j.AppID, j.Type, j.Index, i)
		if v.DeleteOnStop || j.Index == 0 {
			id = fmt.Sprintf("%s-%d", j.UUID, i)
		}
		out = append(out, api.VolumeBinding{Target: v.Path, VolumeID: id, Writeable: true, DeleteOnStop: v.DeleteOnStop})
	}
	return out
}

// record queues j's state for the controller.
func (l *loop) record(j *Job, status *int32, hostErr *string) {
	aj := &api.Job{
		ID:         j.ID,
		UUID:       j.UUID,
		HostID:     j.HostID,
		AppID:      j.AppID,
		ReleaseID:  j.ReleaseID,
		Type:       j.Type,
		State:      j.State,
		ExitStatus: status,
		HostError:  hostErr,
		CreatedAt:  j.CreatedAt,
		UpdatedAt:  l.clock.Now(),
	}
	if j.State == api.JobStatePending && !j.RunAt.IsZero() {
		t := j.RunAt
		aj.RunAt = &t
	}
	if j.Restarts > 0 {
		r := int32(j.Restarts)
		aj.Restarts = &r
	}
	l.persist.put(aj)
}

// persister sends job states to the controller off the loop goroutine, in
// the order they changed, retrying while the controller cannot be reached
// (a restarting controller must not lose the states of the jobs that
// replace it).
type persister struct {
	ctl    Controller
	log    *slog.Logger
	mu     sync.Mutex
	queue  []*api.Job
	notify chan struct{}
	// retryMin and retryMax bound the wait between attempts while the
	// controller cannot be reached.
	retryMin, retryMax time.Duration
}

func newPersister(ctl Controller, log *slog.Logger) *persister {
	return &persister{ctl: ctl, log: log, notify: make(chan struct{}, 1), retryMin: 200 * time.Millisecond, retryMax: 5 * time.Second}
}

func (p *persister) put(j *api.Job) {
	p.mu.Lock()
	p.queue = append(p.queue, j)
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *persister) run(ctx context.Context) {
	backoff := p.retryMin
	for {
		select {
		case <-p.notify:
		case <-ctx.Done():
			return
		}
		for {
			p.mu.Lock()
			batch := p.queue
			p.queue = nil
			p.mu.Unlock()
			failed := -1
			for i, j := range batch {
				err := p.ctl.PutJob(ctx, j)
				if err == nil {
					continue
				}
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, api.ErrValidation) || errors.Is(err, api.ErrNotFound) {
					// The controller will never take it (e.g. the app
					// is gone): drop it.
					p.log.Warn("record job state: dropped", "job", j.UUID, "state", j.State, "err", err)
					continue
				}
				// The controller is unreachable (e.g. restarting): keep
				// this state and the later ones, in order, and retry.
				p.log.Warn("record job state: will retry", "job", j.UUID, "state", j.State, "err", err, "in", backoff)
				failed = i
				break
			}
			if failed < 0 {
				backoff = p.retryMin
				break
			}
			p.mu.Lock()
			p.queue = append(batch[failed:], p.queue...)
			p.mu.Unlock()
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, p.retryMax)
		}
	}
}
