package host_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
)

// TestVolumeKeptAcrossJobsAndRestarts: a job's volume is made on first use,
// owned by the job's user, and what a job writes there is read by the next
// job that binds it, also after the host agent restarts. One running job
// at a time may use it; it cannot be deleted while in use; a
// delete_on_stop volume goes with its job.
func TestVolumeKeptAcrossJobsAndRestarts(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	vol := func(j *api.HostJob, id string, del bool) *api.HostJob {
		j.Config.Volumes = []api.VolumeBinding{{VolumeID: id, Target: "/data", Writeable: true, DeleteOnStop: del}}
		j.Metadata = map[string]string{api.JobMetaApp: "app1", api.JobMetaProcessType: "db"}
		return j
	}
	a.add(vol(busyboxJob("w1", "sh", "-c", "id -u > /data/owner; echo hello > /data/f"), "v1", false))
	a.waitEnded("w1")
	if b, err := os.ReadFile(filepath.Join(a.stateDir, "volumes", "v1", "f")); err != nil || string(b) != "hello\n" {
		t.Fatalf("volume file on the host: %q %v", b, err)
	}
	// A long-running user: a second job may not bind the volume, and it
	// may not be deleted.
	a.add(vol(busyboxJob("r1", "sh", "-c", "cat /data/f /data/owner; sleep 100"), "v1", false))
	waitLog(t, a, "r1", "hello\n65534\n")
	if _, err := a.client.AddJob(ctx, vol(busyboxJob("r2", "true"), "v1", false)); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("second user of v1: %v, want conflict", err)
	}
	if err := a.client.DeleteVolume(ctx, "v1"); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("delete v1 in use: %v, want conflict", err)
	}
	v, err := a.client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if !v.InUse || v.JobID != "r1" || v.AppID != "app1" || v.JobType != "db" || v.Path != "/data" || v.Size == 0 || v.Type != api.VolumeTypeData {
		t.Fatalf("volume %+v", v)
	}
	if _, err := a.client.StopJob(ctx, "r1"); err != nil {
		t.Fatal(err)
	}

	a.stop()
	a.start()
	vs, err := a.client.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].ID != "v1" || vs[0].InUse {
		t.Fatalf("volumes after restart: %+v", vs)
	}
	a.add(vol(busyboxJob("r3", "sh", "-c", "echo again >> /data/f; cat /data/f"), "v1", false))
	a.waitEnded("r3")
	waitLog(t, a, "r3", "hello\nagain\n")

	a.add(vol(busyboxJob("tmp", "sh", "-c", "echo x > /data/x"), "scratch", true))
	a.waitEnded("tmp")
	if _, err := a.client.GetVolume(ctx, "scratch"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("delete_on_stop volume after its job: %v, want not found", err)
	}

	if err := a.client.DeleteVolume(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a.stateDir, "volumes", "v1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("v1 dir after delete: %v", err)
	}
	if err := a.client.DeleteVolume(ctx, "v1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("delete v1 again: %v, want not found", err)
	}
	for _, b := range []api.VolumeBinding{
		{VolumeID: "../x", Target: "/data"},
		{VolumeID: "ok", Target: "data"},
		{VolumeID: "ok", Target: "/proc/x"},
	} {
		j := busyboxJob("bad", "true")
		j.Config.Volumes = []api.VolumeBinding{b}
		if _, err := a.client.AddJob(ctx, j); !errors.Is(err, api.ErrValidation) {
			t.Errorf("binding %+v: %v, want validation error", b, err)
		}
	}
}
