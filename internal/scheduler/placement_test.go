package scheduler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func host(id string, mem int64, tags ...string) *api.Host {
	h := &api.Host{ID: id, Memory: mem}
	for i := 0; i+1 < len(tags); i += 2 {
		if h.Tags == nil {
			h.Tags = make(map[string]string)
		}
		h.Tags[tags[i]] = tags[i+1]
	}
	return h
}

// formation builds an expanded formation of app/release with the given
// process types and counts.
func formation(app, release string, procs map[string]*api.ProcessType, counts map[string]int) *api.ExpandedFormation {
	return &api.ExpandedFormation{
		App:       &api.App{ID: app, Name: app},
		Release:   &api.Release{ID: release, AppID: app, Processes: procs},
		Processes: counts,
	}
}

func mem(n int64) api.Resources {
	return api.Resources{api.ResourceMemory: {Request: &n}}
}

// placed is a job of app/release/type on host, created at t0+age minutes.
func placedJob(uuid, app, release, typ, hostID, state string, minute int) *Job {
	return &Job{
		UUID: uuid, ID: hostID + "-" + uuid, HostID: hostID,
		AppID: app, ReleaseID: release, Type: typ, State: state,
		CreatedAt: t0.Add(time.Duration(minute) * time.Minute),
	}
}

func pendingJob(uuid, app, release, typ string) *Job {
	return &Job{UUID: uuid, AppID: app, ReleaseID: release, Type: typ, State: api.JobStatePending, CreatedAt: t0}
}

// summary renders a plan as sorted lines.
func summary(p *Plan) []string {
	var out []string
	for _, j := range p.Start {
		out = append(out, fmt.Sprintf("start %s %s on %s", j.formationKey(), j.Type, j.HostID))
	}
	for _, j := range p.Stop {
		out = append(out, "stop "+j.UUID)
	}
	for _, j := range p.Cancel {
		out = append(out, "cancel "+j.UUID)
	}
	for _, j := range p.Blocked {
		out = append(out, fmt.Sprintf("blocked %s %s: %s", j.formationKey(), j.Type, j.Reason))
	}
	slices.Sort(out)
	return out
}

func counter() func() string {
	n := 0
	return func() string { n++; return fmt.Sprintf("new%d", n) }
}

func TestPlace(t *testing.T) {
	web := map[string]*api.ProcessType{"web": {}}
	webWorker := map[string]*api.ProcessType{"web": {}, "worker": {}}
	critical := formation("ctl", "r1", web, map[string]int{"web": 0})
	critical.App.Meta = map[string]string{api.MetaSystemCritical: "true"}
	tagged := formation("a", "r1", web, map[string]int{"web": 2})
	tagged.Tags = map[string]map[string]string{"web": {"disk": "ssd"}}

	tests := []struct {
		name  string
		hosts []*api.Host
		forms []*api.ExpandedFormation
		jobs  []*Job
		want  []string
	}{
		{
			name:  "spread over empty hosts",
			hosts: []*api.Host{host("h1", 0), host("h2", 0), host("h3", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 3})},
			want:  []string{"start a/r1 web on h1", "start a/r1 web on h2", "start a/r1 web on h3"},
		},
		{
			name:  "fewest of formation and type first",
			hosts: []*api.Host{host("h1", 0), host("h2", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", webWorker, map[string]int{"web": 3, "worker": 1})},
			jobs: []*Job{
				placedJob("w1", "a", "r1", "web", "h1", api.JobStateUp, 0),
				placedJob("w2", "a", "r1", "web", "h1", api.JobStateUp, 0),
				// Other apps' jobs on h2 do not count against spreading a/r1 web.
				placedJob("x1", "b", "r1", "", "h2", api.JobStateUp, 0),
				placedJob("x2", "b", "r1", "", "h2", api.JobStateUp, 0),
			},
			// worker ties on its own count (0 and 0); h1 has 3 jobs after
			// web's placement, h2 has 3 too, so the id decides.
			want: []string{"start a/r1 web on h2", "start a/r1 worker on h1"},
		},
		{
			name:  "ties broken by fewest jobs overall",
			hosts: []*api.Host{host("h1", 0), host("h2", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 1})},
			jobs: []*Job{
				placedJob("x1", "b", "r1", "", "h1", api.JobStateUp, 0),
			},
			want: []string{"start a/r1 web on h2"},
		},
		{
			name:  "tags constrain placement",
			hosts: []*api.Host{host("h1", 0), host("h2", 0, "disk", "ssd"), host("h3", 0, "disk", "hdd")},
			forms: []*api.ExpandedFormation{tagged},
			want:  []string{"start a/r1 web on h2", "start a/r1 web on h2"},
		},
		{
			name:  "no host matches tags",
			hosts: []*api.Host{host("h1", 0), host("h3", 0, "disk", "hdd")},
			forms: []*api.ExpandedFormation{tagged},
			want: []string{
				"blocked a/r1 web: no hosts found matching job tags",
				"blocked a/r1 web: no hosts found matching job tags",
			},
		},
		{
			name:  "no hosts at all",
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 1})},
			want:  []string{"blocked a/r1 web: no hosts available"},
		},
		{
			name:  "memory requests fill hosts then block",
			hosts: []*api.Host{host("h1", 1000), host("h2", 500)},
			forms: []*api.ExpandedFormation{formation("a", "r1",
				map[string]*api.ProcessType{"web": {Resources: mem(400)}}, map[string]int{"web": 4})},
			want: []string{
				"blocked a/r1 web: no host has 400 bytes of memory free",
				"start a/r1 web on h1", "start a/r1 web on h1", "start a/r1 web on h2",
			},
		},
		{
			name:  "jobs without a memory request take the default",
			hosts: []*api.Host{host("h1", 2*api.DefaultMemoryRequest), host("h2", api.DefaultMemoryRequest)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 4})},
			want: []string{
				fmt.Sprintf("blocked a/r1 web: no host has %d bytes of memory free", api.DefaultMemoryRequest),
				"start a/r1 web on h1", "start a/r1 web on h1", "start a/r1 web on h2",
			},
		},
		{
			name:  "memory used by other jobs counts",
			hosts: []*api.Host{host("h1", 1000), host("h2", 1000)},
			forms: []*api.ExpandedFormation{formation("a", "r1",
				map[string]*api.ProcessType{"web": {Resources: mem(600)}}, map[string]int{"web": 1})},
			jobs: []*Job{func() *Job {
				j := placedJob("x1", "b", "r1", "", "h1", api.JobStateUp, 0) // a one-off
				j.Memory = 500
				return j
			}()},
			want: []string{"start a/r1 web on h2"},
		},
		{
			name:  "omni runs on every host",
			hosts: []*api.Host{host("h1", 0), host("h2", 0), host("h3", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1",
				map[string]*api.ProcessType{"router": {Omni: true}}, map[string]int{"router": 1})},
			jobs: []*Job{placedJob("o1", "a", "r1", "router", "h1", api.JobStateUp, 0)},
			want: []string{"start a/r1 router on h2", "start a/r1 router on h3"},
		},
		{
			name:  "omni respects tags and leaves other hosts",
			hosts: []*api.Host{host("h1", 0, "edge", "yes"), host("h2", 0)},
			forms: []*api.ExpandedFormation{func() *api.ExpandedFormation {
				f := formation("a", "r1", map[string]*api.ProcessType{"router": {Omni: true}}, map[string]int{"router": 2})
				f.Tags = map[string]map[string]string{"router": {"edge": "yes"}}
				return f
			}()},
			jobs: []*Job{placedJob("o2", "a", "r1", "router", "h2", api.JobStateUp, 0)},
			want: []string{"start a/r1 router on h1", "start a/r1 router on h1", "stop o2"},
		},
		{
			name:  "scale down cancels pending then stops newest",
			hosts: []*api.Host{host("h1", 0), host("h2", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 1})},
			jobs: []*Job{
				placedJob("old", "a", "r1", "web", "h1", api.JobStateUp, 1),
				placedJob("newest", "a", "r1", "web", "h2", api.JobStateUp, 3),
				placedJob("middle", "a", "r1", "web", "h1", api.JobStateStarting, 2),
				pendingJob("p1", "a", "r1", "web"),
			},
			want: []string{"cancel p1", "stop middle", "stop newest"},
		},
		{
			name:  "stopping and down jobs do not count",
			hosts: []*api.Host{host("h1", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 1})},
			jobs: []*Job{
				placedJob("s", "a", "r1", "web", "h1", api.JobStateStopping, 1),
				placedJob("d", "a", "r1", "web", "h1", api.JobStateDown, 1),
			},
			want: []string{"start a/r1 web on h1"},
		},
		{
			name:  "pending job in backoff waits",
			hosts: []*api.Host{host("h1", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 2})},
			jobs: []*Job{
				func() *Job { j := pendingJob("p1", "a", "r1", "web"); j.RunAt = t0.Add(time.Second); return j }(),
				func() *Job { j := pendingJob("p2", "a", "r1", "web"); j.RunAt = t0; return j }(),
			},
			want: []string{"start a/r1 web on h1"},
		},
		{
			name:  "critical app keeps its oldest job",
			hosts: []*api.Host{host("h1", 0)},
			forms: []*api.ExpandedFormation{critical},
			jobs: []*Job{
				placedJob("c1", "ctl", "r1", "web", "h1", api.JobStateUp, 1),
				placedJob("c2", "ctl", "r1", "web", "h1", api.JobStateUp, 2),
			},
			want: []string{"stop c2"},
		},
		{
			name:  "critical app moves to its new release",
			hosts: []*api.Host{host("h1", 0)},
			forms: []*api.ExpandedFormation{critical, func() *api.ExpandedFormation {
				f := formation("ctl", "r2", web, map[string]int{"web": 1})
				f.App.Meta = critical.App.Meta
				return f
			}()},
			jobs: []*Job{placedJob("c1", "ctl", "r1", "web", "h1", api.JobStateUp, 1)},
			want: []string{"start ctl/r2 web on h1", "stop c1"},
		},
		{
			name:  "jobs of unknown or deleted formations stop, one-offs stay",
			hosts: []*api.Host{host("h1", 0)},
			forms: []*api.ExpandedFormation{func() *api.ExpandedFormation {
				f := formation("a", "r1", web, map[string]int{"web": 1})
				f.Deleted = true
				return f
			}()},
			jobs: []*Job{
				placedJob("j1", "a", "r1", "web", "h1", api.JobStateUp, 1),
				placedJob("j2", "gone", "r9", "web", "h1", api.JobStateUp, 1),
				placedJob("j3", "a", "r1", "", "h1", api.JobStateUp, 1),
			},
			want: []string{"stop j1", "stop j2"},
		},
		{
			name:  "jobs on lost hosts are ignored",
			hosts: []*api.Host{host("h2", 0)},
			forms: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 1})},
			jobs:  []*Job{placedJob("j1", "a", "r1", "web", "h1", api.JobStateUp, 1)},
			want:  []string{"start a/r1 web on h2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := &Snapshot{Now: t0, Hosts: tt.hosts, Formations: tt.forms, Jobs: tt.jobs}
			before := fmt.Sprint(jobStrings(tt.jobs))
			got := summary(Place(snap, counter()))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			if after := fmt.Sprint(jobStrings(tt.jobs)); after != before {
				t.Errorf("Place modified the snapshot:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func jobStrings(jobs []*Job) []string {
	var out []string
	for _, j := range jobs {
		out = append(out, fmt.Sprintf("%+v", *j))
	}
	return out
}

func TestPlaceStartedJobsHaveHostIDs(t *testing.T) {
	snap := &Snapshot{
		Now:        t0,
		Hosts:      []*api.Host{host("h1", 0)},
		Formations: []*api.ExpandedFormation{formation("a", "r1", map[string]*api.ProcessType{"web": {Resources: mem(7)}}, map[string]int{"web": 1})},
	}
	p := Place(snap, counter())
	want := []*Job{{
		UUID: "new1", ID: "h1-new1", HostID: "h1", AppID: "a", ReleaseID: "r1", Type: "web",
		State: api.JobStateStarting, Memory: 7, Index: 1, CreatedAt: t0,
	}}
	if diff := cmp.Diff(want, p.Start); diff != "" {
		t.Errorf("started jobs (-want +got):\n%s", diff)
	}
}

// TestPlaceNumbersJobs: new jobs of a formation's type get the lowest
// free index (their DYNO is <type>.<index>), per release and type.
func TestPlaceNumbersJobs(t *testing.T) {
	web := map[string]*api.ProcessType{"web": {}, "worker": {}}
	running := placedJob("u2", "a", "r1", "web", "h1", api.JobStateUp, 0)
	running.Index = 2
	snap := &Snapshot{
		Now:        t0,
		Hosts:      []*api.Host{host("h1", 0)},
		Formations: []*api.ExpandedFormation{formation("a", "r1", web, map[string]int{"web": 3, "worker": 1})},
		Jobs:       []*Job{running},
	}
	var got []string
	for _, j := range Place(snap, counter()).Start {
		got = append(got, fmt.Sprintf("%s.%d", j.Type, j.Index))
	}
	slices.Sort(got)
	if diff := cmp.Diff([]string{"web.1", "web.3", "worker.1"}, got); diff != "" {
		t.Errorf("indexes of started jobs (-want +got):\n%s", diff)
	}
	j := &Job{UUID: "u1", ID: "h1-u1", HostID: "h1", AppID: "a", ReleaseID: "r1", Type: "web", Index: 3}
	if dyno := HostJob(snap.Formations[0], j).Config.Env["DYNO"]; dyno != "web.3" {
		t.Errorf("DYNO = %q, want web.3", dyno)
	}
}
