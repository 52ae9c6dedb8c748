package scheduler

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

func TestPlaceVolumes(t *testing.T) {
	db := map[string]*api.ProcessType{"db": {Volumes: []api.VolumeReq{{Path: "/data"}}}}
	scratch := map[string]*api.ProcessType{"db": {Volumes: []api.VolumeReq{{Path: "/tmp/x", DeleteOnStop: true}}}}
	vol := VolumeID("a", "db", 1, 0)
	busyH2 := []*Job{
		placedJob("x1", "b", "r1", "", "h2", api.JobStateUp, 0),
		placedJob("x2", "b", "r1", "", "h2", api.JobStateUp, 0),
	}
	old := placedJob("o1", "a", "r0", "db", "h2", api.JobStateUp, 0)
	old.Index = 1
	tests := []struct {
		name    string
		forms   []*api.ExpandedFormation
		jobs    []*Job
		volumes map[string]string
		want    []string
	}{
		{
			name:  "a new volume goes where the job is placed",
			forms: []*api.ExpandedFormation{formation("a", "r1", db, map[string]int{"db": 1})},
			jobs:  busyH2,
			want:  []string{"start a/r1 db on h1"},
		},
		{
			name:    "a job goes back to the host holding its volume",
			forms:   []*api.ExpandedFormation{formation("a", "r1", db, map[string]int{"db": 1})},
			jobs:    busyH2,
			volumes: map[string]string{vol: "h2"},
			want:    []string{"start a/r1 db on h2"},
		},
		{
			name:    "a job whose volume's host is down waits",
			forms:   []*api.ExpandedFormation{formation("a", "r1", db, map[string]int{"db": 1})},
			volumes: map[string]string{vol: "h9"},
			want:    []string{"blocked a/r1 db: volume a-db-1 is on host h9, which is down"},
		},
		{
			name: "a new release's job waits for the old one to release the volume",
			forms: []*api.ExpandedFormation{
				formation("a", "r0", db, map[string]int{"db": 0}),
				formation("a", "r1", db, map[string]int{"db": 1}),
			},
			jobs:    []*Job{old},
			volumes: map[string]string{vol: "h2"},
			want:    []string{"blocked a/r1 db: waiting for job h2-o1 to release the volumes of db.1", "stop o1"},
		},
		{
			name:    "delete_on_stop volumes pin nothing",
			forms:   []*api.ExpandedFormation{formation("a", "r1", scratch, map[string]int{"db": 1})},
			jobs:    busyH2,
			volumes: map[string]string{vol: "h2"},
			want:    []string{"start a/r1 db on h1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := &Snapshot{Now: t0, Hosts: []*api.Host{host("h1", 0), host("h2", 0)}, Formations: tt.forms, Jobs: tt.jobs, Volumes: tt.volumes}
			got := summary(Place(snap, counter()))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHostJobVolumes(t *testing.T) {
	procs := map[string]*api.ProcessType{"db": {Volumes: []api.VolumeReq{{Path: "/data"}, {Path: "/scratch", DeleteOnStop: true}, {Path: "/wal"}}}}
	f := formation("a", "r1", procs, map[string]int{"db": 1})
	hj := HostJob(f, &Job{UUID: "u1", ID: "h1-u1", AppID: "a", ReleaseID: "r1", Type: "db", Index: 2})
	want := []api.VolumeBinding{
		{Target: "/data", VolumeID: "a-db-2", Writeable: true},
		{Target: "/scratch", VolumeID: "u1-1", Writeable: true, DeleteOnStop: true},
		{Target: "/wal", VolumeID: "a-db-2-2", Writeable: true},
	}
	if diff := cmp.Diff(want, hj.Config.Volumes); diff != "" {
		t.Errorf("volumes (-want +got):\n%s", diff)
	}
}

// The loop learns which host holds a volume from host listings and full
// syncs, and records the host of each volume it starts a job with.
func TestLoopTracksVolumes(t *testing.T) {
	ctx := context.Background()
	l := newLoop(Config{Cluster: nopCluster{}, Controller: nopController{}, Clock: fixedClock{}, Parallel: 1}, testLogger())
	for _, id := range []string{"h1", "h2"} {
		l.hosts[id] = &hostState{host: host(id, 0), synced: true, cancel: func() {}}
	}
	l.apply(ctx, hostJobsEvent{hostID: "h2", since: l.seq.Load(), volumes: []string{"v-listed"}})
	l.apply(ctx, &fullSyncEvent{since: l.seq.Load(), hosts: []*api.Host{host("h1", 0), host("h2", 0)},
		jobs: map[string][]*api.ActiveJob{"h1": nil, "h2": nil}, volumes: map[string][]string{"h1": {"v-synced"}}})
	f := formation("a", "r1", map[string]*api.ProcessType{"db": {Volumes: []api.VolumeReq{{Path: "/data"}}}}, map[string]int{"db": 1})
	j := &Job{UUID: "u1", ID: "h2-u1", HostID: "h2", AppID: "a", ReleaseID: "r1", Type: "db", Index: 1, State: api.JobStateStarting}
	l.formations[FormationKey("a", "r1")] = f
	l.startJob(ctx, j)
	want := map[string]string{"v-listed": "h2", "v-synced": "h1", VolumeID("a", "db", 1, 0): "h2"}
	if diff := cmp.Diff(want, l.snapshot().Volumes); diff != "" {
		t.Errorf("volumes (-want +got):\n%s", diff)
	}
}
