// Package scheduler keeps the cluster running what the controller's
// formations ask for. Place is a pure function from a state snapshot
// (hosts, formations, jobs) to a plan (jobs to start where, jobs to stop,
// jobs that cannot be placed); Scheduler is the loop that follows hosts,
// host job events and formation changes, applies plans through the Cluster
// interface, restarts crashed jobs with backoff and records job state
// through the Controller interface. RunElected runs one active Scheduler
// among any number of replicas with an etcd election.
package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Job is a job as the scheduler tracks it: wanted by a formation (or a
// one-off job it only watches), placed on a host or waiting to be.
type Job struct {
	// UUID identifies the job from the moment it is scheduled.
	UUID string
	// ID is the host job id "<host-id>-<uuid>", set once the job is placed.
	ID string
	// HostID is the host the job runs on. A pending job with a HostID is
	// pinned to that host (an omni job waiting out its restart backoff).
	HostID    string
	AppID     string
	ReleaseID string
	// Type is the process type; empty for one-off jobs, which the
	// scheduler tracks but never places, stops for scaling or restarts.
	Type string
	// State is one of api.JobState*.
	State string
	// Memory is the job's memory request in bytes (see memoryRequest).
	Memory int64
	// Restarts counts restarts of this formation slot so far.
	Restarts int
	// Index numbers the formation's jobs of a type from 1, kept across
	// restarts: the job's DYNO is <type>.<index>, as on Heroku.
	Index int
	// RunAt is when a pending job may start (restart backoff).
	RunAt time.Time
	// CreatedAt is when the job was scheduled; StartedAt when it came up.
	CreatedAt time.Time
	StartedAt time.Time
	// Reason says why a job is blocked.
	Reason string
}

// FormationKey identifies a formation: an app and one of its releases.
func FormationKey(appID, releaseID string) string { return appID + "/" + releaseID }

func (j *Job) formationKey() string { return FormationKey(j.AppID, j.ReleaseID) }

// placed reports whether j was given to a host (it has a host job id).
func (j *Job) placed() bool { return j.ID != "" }

// active reports whether j counts towards its formation's process count.
func (j *Job) active() bool {
	switch j.State {
	case api.JobStatePending, api.JobStateBlocked, api.JobStateStarting, api.JobStateUp:
		return true
	}
	return false
}

func (j *Job) clone() *Job { c := *j; return &c }

// Snapshot is the state placement works from.
type Snapshot struct {
	Now        time.Time
	Hosts      []*api.Host
	Formations []*api.ExpandedFormation
	Jobs       []*Job
	// Volumes maps the id of each persistent volume the hosts hold to its
	// host's id (hosts that are down included, when known).
	Volumes map[string]string
}

// Plan is what to do to make the cluster match the formations. Jobs in a
// plan are copies; the snapshot is never modified.
type Plan struct {
	// Start are jobs to give to their host now (State starting, HostID and
	// ID set): new jobs and pending jobs that became due.
	Start []*Job
	// Stop are placed jobs to stop, newest first within a process type.
	Stop []*Job
	// Cancel are pending jobs that are no longer wanted.
	Cancel []*Job
	// Blocked are jobs no host can take now (State blocked, Reason set).
	Blocked []*Job
}

// Reasons a job is blocked.
const (
	ReasonNoHosts       = "no hosts available"
	ReasonNoMatchingTag = "no hosts found matching job tags"
)

// Place computes the plan that moves snap towards its formations. newUUID
// names new jobs. Rules:
//
//   - A process type of a formation wants Processes[type] jobs; an omni
//     type wants that many on every host matching its tags.
//   - Jobs are placed on a host matching the type's tags with enough free
//     memory, preferring the host with the fewest active jobs of the same
//     formation and type, then the fewest active jobs overall.
//   - Scaling down cancels pending jobs first, then stops the newest.
//   - A type of an app with meta flynn-system-critical=true is never taken
//     to zero jobs: when no formation of the app wants any, the oldest job
//     is kept.
//   - Jobs of formations the snapshot does not list are stopped; one-off
//     jobs (no type) are left alone.
//   - Jobs on hosts not in the snapshot are ignored (the caller marks them
//     down).
//   - A job of a process type with volumes (kept ones, not
//     delete_on_stop) goes to the host that holds its volume (VolumeID),
//     and waits, blocked, while that host is down or while another job
//     (of an older release, say) still runs on the volume: a database's
//     data has one server. A volume no host holds is made where the job
//     is placed.
func Place(snap *Snapshot, newUUID func() string) *Plan {
	p := &placer{
		snap:    snap,
		newUUID: newUUID,
		plan:    &Plan{},
		hosts:   make(map[string]*hostLoad, len(snap.Hosts)),
		groups:  make(map[groupKey]*group),
	}
	p.index()
	keys := slices.SortedFunc(maps.Keys(p.groups), func(a, b groupKey) int {
		return cmp.Or(strings.Compare(a.formation, b.formation), strings.Compare(a.typ, b.typ))
	})
	for _, k := range keys {
		p.placeGroup(p.groups[k])
	}
	return p.plan
}

type groupKey struct{ formation, typ string }

// group is one process type of one formation with its jobs.
type group struct {
	key      groupKey
	f        *api.ExpandedFormation // nil: formation unknown
	proc     *api.ProcessType
	want     int
	tags     map[string]string
	memory   int64
	critical bool
	jobs     []*Job      // active jobs, on known hosts or unplaced
	perHost  []int       // active jobs per host, by hostLoad.idx
	matching []*hostLoad // hosts matching tags, computed lazily
	matched  bool
	indexes  map[int]bool // Index values in use, computed lazily
}

type hostLoad struct {
	host   *api.Host
	idx    int   // in placer.order
	used   int64 // memory requested by active jobs
	active int   // active jobs
}

type placer struct {
	snap    *Snapshot
	newUUID func() string
	plan    *Plan
	hosts   map[string]*hostLoad
	order   []*hostLoad // hosts sorted by id
	groups  map[groupKey]*group
	// appWant is the count all formations of an app want per type, for
	// the critical-app rule.
	appWant map[groupKey]int
	// appActive is the active job count per app and type.
	appActive map[groupKey]int
}

func (p *placer) index() {
	for _, h := range p.snap.Hosts {
		hl := &hostLoad{host: h}
		p.hosts[h.ID] = hl
		p.order = append(p.order, hl)
	}
	slices.SortFunc(p.order, func(a, b *hostLoad) int { return strings.Compare(a.host.ID, b.host.ID) })
	for i, hl := range p.order {
		hl.idx = i
	}
	p.appWant = make(map[groupKey]int)
	p.appActive = make(map[groupKey]int)
	for _, f := range p.snap.Formations {
		if f.App == nil || f.Release == nil {
			continue
		}
		fk := FormationKey(f.App.ID, f.Release.ID)
		for typ, proc := range f.Release.Processes {
			if proc == nil {
				continue
			}
			g := p.group(groupKey{fk, typ})
			g.f, g.proc = f, proc
			if !f.Deleted {
				g.want = max(f.Processes[typ], 0)
			}
			g.tags = f.Tags[typ]
			g.memory = MemoryRequest(proc.Resources)
			g.critical = f.App.Meta[api.MetaSystemCritical] == "true"
			p.appWant[groupKey{f.App.ID, typ}] += g.want
		}
	}
	for _, j := range p.snap.Jobs {
		if !j.active() || j.Type == "" {
			if j.active() && j.HostID != "" {
				if hl := p.hosts[j.HostID]; hl != nil {
					hl.used += j.Memory
					hl.active++
				}
			}
			continue
		}
		var hl *hostLoad
		if j.HostID != "" {
			if hl = p.hosts[j.HostID]; hl == nil {
				continue
			}
			hl.used += j.Memory
			hl.active++
		}
		g := p.group(groupKey{j.formationKey(), j.Type})
		g.jobs = append(g.jobs, j)
		if hl != nil {
			g.perHost[hl.idx]++
		}
		p.appActive[groupKey{j.AppID, j.Type}]++
	}
}

func (p *placer) group(k groupKey) *group {
	g := p.groups[k]
	if g == nil {
		g = &group{key: k, perHost: make([]int, len(p.order))}
		p.groups[k] = g
	}
	return g
}

// MemoryRequest is a job's or process type's memory request, or its limit
// when it sets no request, or api.DefaultMemoryRequest: a job that asks for
// nothing still takes room, so a host is not overcommitted without bound.
func MemoryRequest(r api.Resources) int64 { return api.MemoryRequest(r) }

func tagsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func (p *placer) matchingHosts(g *group) []*hostLoad {
	if !g.matched {
		g.matched = true
		for _, hl := range p.order {
			if tagsMatch(g.tags, hl.host.Tags) {
				g.matching = append(g.matching, hl)
			}
		}
	}
	return g.matching
}

func fits(hl *hostLoad, mem int64) bool {
	return hl.host.Memory <= 0 || mem <= 0 || hl.used+mem <= hl.host.Memory
}

// newestFirst orders jobs for scale down: unplaced before placed, then
// the most recently created first.
func newestFirst(a, b *Job) int {
	if a.placed() != b.placed() {
		if !a.placed() {
			return -1
		}
		return 1
	}
	return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), strings.Compare(b.UUID, a.UUID))
}

func (p *placer) placeGroup(g *group) {
	if g.proc != nil && g.proc.Omni {
		p.placeOmni(g)
		return
	}
	want := g.want
	if g.f != nil && g.critical && p.appWant[groupKey{g.f.App.ID, g.key.typ}] == 0 && len(g.jobs) > 0 {
		// Keep the oldest job of a critical app's type that nothing else runs.
		want = 1
	}
	if n := len(g.jobs); n > want {
		slices.SortFunc(g.jobs, newestFirst)
		p.remove(g, g.jobs[:n-want])
		g.jobs = g.jobs[n-want:]
	}
	for len(g.jobs) < want {
		g.jobs = append(g.jobs, p.newJob(g, ""))
	}
	for _, j := range g.jobs {
		if j.placed() || j.RunAt.After(p.snap.Now) {
			continue
		}
		p.placeJob(g, j)
	}
}

func (p *placer) remove(g *group, jobs []*Job) {
	for _, j := range jobs {
		c := j.clone()
		hl := p.hosts[j.HostID]
		if hl != nil {
			g.perHost[hl.idx]--
		}
		if !j.placed() {
			p.plan.Cancel = append(p.plan.Cancel, c)
			continue
		}
		c.State = api.JobStateStopping
		p.plan.Stop = append(p.plan.Stop, c)
		if hl != nil {
			hl.used -= j.Memory
			hl.active--
		}
	}
}

func (p *placer) newJob(g *group, hostID string) *Job {
	if g.indexes == nil {
		g.indexes = make(map[int]bool)
		for _, j := range g.jobs {
			g.indexes[j.Index] = true
		}
	}
	index := 1
	for g.indexes[index] {
		index++
	}
	g.indexes[index] = true
	return &Job{
		Index:     index,
		UUID:      p.newUUID(),
		HostID:    hostID,
		AppID:     g.f.App.ID,
		ReleaseID: g.f.Release.ID,
		Type:      g.key.typ,
		State:     api.JobStatePending,
		Memory:    g.memory,
		CreatedAt: p.snap.Now,
	}
}

// placeJob picks a host for the unplaced job j of g.
func (p *placer) placeJob(g *group, j *Job) {
	if hl, reason, pinned := p.volumeHost(g, j); pinned {
		switch {
		case reason != "":
			p.block(j, reason)
		case !fits(hl, j.Memory):
			p.block(j, fmt.Sprintf("host %s, which holds the job's volume, does not have %d bytes of memory free", hl.host.ID, j.Memory))
		default:
			p.start(g, j, hl)
		}
		return
	}
	var best *hostLoad
	anyMatch := false
	for _, hl := range p.matchingHosts(g) {
		anyMatch = true
		if !fits(hl, j.Memory) {
			continue
		}
		if best == nil {
			best = hl
			continue
		}
		if c := cmp.Compare(g.perHost[hl.idx], g.perHost[best.idx]); c < 0 || c == 0 && hl.active < best.active {
			best = hl
		}
	}
	if best == nil {
		reason := ReasonNoHosts
		switch {
		case anyMatch:
			reason = fmt.Sprintf("no host has %d bytes of memory free", j.Memory)
		case len(p.order) > 0:
			reason = ReasonNoMatchingTag
		}
		p.block(j, reason)
		return
	}
	p.start(g, j, best)
}

// volumeHost says where job j of g must run for its kept volumes: pinned
// is false when it has none or none exists yet (any host will do);
// otherwise the host holding them, or why the job must wait.
func (p *placer) volumeHost(g *group, j *Job) (hl *hostLoad, reason string, pinned bool) {
	if g.proc == nil || !keepsVolumes(g.proc) {
		return nil, "", false
	}
	for _, o := range p.snap.Jobs {
		if o.UUID != j.UUID && o.placed() && o.active() && o.AppID == j.AppID && o.Type == j.Type && o.Index == j.Index && o.Index > 0 {
			return nil, fmt.Sprintf("waiting for job %s to release the volumes of %s.%d", o.ID, j.Type, j.Index), true
		}
	}
	for i, v := range g.proc.Volumes {
		if v.DeleteOnStop {
			continue
		}
		id := VolumeID(j.AppID, j.Type, j.Index, i)
		hostID, ok := p.snap.Volumes[id]
		if !ok {
			continue
		}
		if hl = p.hosts[hostID]; hl == nil {
			return nil, fmt.Sprintf("volume %s is on host %s, which is down", id, hostID), true
		}
		if !tagsMatch(g.tags, hl.host.Tags) {
			return nil, fmt.Sprintf("volume %s is on host %s, which lacks the type's tags", id, hostID), true
		}
		return hl, "", true
	}
	return nil, "", false
}

// keepsVolumes reports whether proc has a volume that outlives its jobs.
func keepsVolumes(proc *api.ProcessType) bool {
	for _, v := range proc.Volumes {
		if !v.DeleteOnStop {
			return true
		}
	}
	return false
}

// VolumeID names the n-th volume of the index-th job of an app's process
// type: the same for every release and every restart, so the job finds
// its data again. A delete_on_stop volume is named after its job instead.
func VolumeID(appID, typ string, index, n int) string {
	id := fmt.Sprintf("%s-%s-%d", appID, typ, index)
	if n > 0 {
		id += fmt.Sprintf("-%d", n)
	}
	return id
}

func (p *placer) start(g *group, j *Job, hl *hostLoad) {
	c := j.clone()
	c.HostID = hl.host.ID
	c.ID = hl.host.ID + "-" + c.UUID
	c.State = api.JobStateStarting
	c.Reason = ""
	p.plan.Start = append(p.plan.Start, c)
	g.perHost[hl.idx]++
	hl.used += j.Memory
	hl.active++
}

func (p *placer) block(j *Job, reason string) {
	c := j.clone()
	c.State = api.JobStateBlocked
	c.Reason = reason
	p.plan.Blocked = append(p.plan.Blocked, c)
}

// placeOmni keeps want jobs of g on every host matching its tags, and
// none elsewhere.
func (p *placer) placeOmni(g *group) {
	byHost := make(map[string][]*Job)
	var unpinned []*Job
	for _, j := range g.jobs {
		if j.HostID == "" {
			unpinned = append(unpinned, j)
			continue
		}
		byHost[j.HostID] = append(byHost[j.HostID], j)
	}
	p.remove(g, unpinned)
	matching := make(map[string]bool)
	for _, hl := range p.matchingHosts(g) {
		matching[hl.host.ID] = true
		jobs := byHost[hl.host.ID]
		if n := len(jobs); n > g.want {
			slices.SortFunc(jobs, newestFirst)
			p.remove(g, jobs[:n-g.want])
			jobs = jobs[n-g.want:]
		}
		for len(jobs) < g.want {
			j := p.newJob(g, hl.host.ID)
			jobs = append(jobs, j)
		}
		for _, j := range jobs {
			switch {
			case j.placed():
			case j.RunAt.After(p.snap.Now):
				// Waiting out its restart backoff.
			case fits(hl, j.Memory):
				p.start(g, j, hl)
			default:
				p.block(j, fmt.Sprintf("host %s does not have %d bytes of memory free", hl.host.ID, j.Memory))
			}
		}
	}
	for _, hostID := range slices.Sorted(maps.Keys(byHost)) {
		if !matching[hostID] {
			jobs := byHost[hostID]
			slices.SortFunc(jobs, newestFirst)
			p.remove(g, jobs)
		}
	}
}

// Request is one job that no formation wants, a one-off job or a build,
// to place on a host.
type Request struct {
	// Tags the host must have.
	Tags map[string]string
	// Memory is the job's memory request in bytes (0: none).
	Memory int64
}

// PlaceOne picks the host for one job by Place's rules: among the hosts
// that have the tags and the memory free, the one with the fewest active
// jobs (ties by host id). Its error, when no host can take the job, is
// one of the Reason* texts.
func PlaceOne(snap *Snapshot, req Request) (*api.Host, error) {
	p := &placer{snap: snap, plan: &Plan{}, hosts: make(map[string]*hostLoad, len(snap.Hosts)), groups: make(map[groupKey]*group)}
	p.index()
	if len(p.order) == 0 {
		return nil, errors.New(ReasonNoHosts)
	}
	var best *hostLoad
	tagged := false
	for _, hl := range p.order {
		if !tagsMatch(req.Tags, hl.host.Tags) {
			continue
		}
		tagged = true
		if !fits(hl, req.Memory) {
			continue
		}
		if best == nil || hl.active < best.active {
			best = hl
		}
	}
	switch {
	case best != nil:
		return best.host, nil
	case !tagged:
		return nil, errors.New(ReasonNoMatchingTag)
	}
	return nil, fmt.Errorf("no host has %d MiB of memory free for the job", req.Memory>>20)
}

// ActiveJobs are a host's running and starting jobs as placement counts
// them (memory requests included).
func ActiveJobs(hostID string, jobs []*api.ActiveJob) []*Job {
	var out []*Job
	for _, aj := range jobs {
		if aj.Job == nil || (aj.Status != api.HostJobRunning && aj.Status != api.HostJobStarting) {
			continue
		}
		state := api.JobStateUp
		if aj.Status == api.HostJobStarting {
			state = api.JobStateStarting
		}
		out = append(out, &Job{
			ID: aj.Job.ID, HostID: hostID, AppID: aj.Job.Metadata[api.JobMetaApp], ReleaseID: aj.Job.Metadata[api.JobMetaRelease],
			Type: aj.Job.Metadata[api.JobMetaProcessType], State: state, Memory: MemoryRequest(aj.Job.Resources),
		})
	}
	return out
}

// PlaceOnCluster picks the host for one job from the cluster as it is
// now: its hosts and what runs on them. Hosts that cannot be asked are
// left out.
func PlaceOnCluster(ctx context.Context, c Cluster, req Request) (*api.Host, error) {
	hosts, err := c.ListHosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	snap := &Snapshot{}
	for _, h := range hosts {
		jobs, err := c.ListJobs(ctx, h.ID)
		if err != nil {
			continue // a host that does not answer takes no job
		}
		snap.Hosts = append(snap.Hosts, h)
		snap.Jobs = append(snap.Jobs, ActiveJobs(h.ID, jobs)...)
	}
	return PlaceOne(snap, req)
}

// NewJobID names a job of host: "<host-id>-<uuid>", and returns the uuid
// too.
func NewJobID(hostID string) (id, uuid string) {
	uuid = newUUID()
	return hostID + "-" + uuid, uuid
}

// JobEnv is the env every job of an app gets from the platform:
// FLYNN_APP_ID, FLYNN_APP_NAME, FLYNN_RELEASE_ID, and FLYNN_PROCESS_TYPE
// for a process type (the host adds FLYNN_JOB_ID, PORT and the rest).
func JobEnv(app *api.App, releaseID, typ string) map[string]string {
	env := map[string]string{"FLYNN_APP_ID": app.ID, "FLYNN_APP_NAME": app.Name, "FLYNN_RELEASE_ID": releaseID}
	if typ != "" {
		env["FLYNN_PROCESS_TYPE"] = typ
	}
	return env
}

// JobMetadata is the host job metadata naming a job's app, release and
// process type (by which the scheduler, logs and `flynn ps` know it).
func JobMetadata(app *api.App, releaseID, typ string) map[string]string {
	m := map[string]string{api.JobMetaApp: app.ID, api.JobMetaAppName: app.Name}
	if releaseID != "" {
		m[api.JobMetaRelease] = releaseID
	}
	if typ != "" {
		m[api.JobMetaProcessType] = typ
	}
	return m
}
