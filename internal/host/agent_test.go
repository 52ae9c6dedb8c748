package host_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// fakeAgent is an agent on the in-memory runtime behind an httptest server.
func fakeAgent(t *testing.T) (*hostclient.Client, *runtime.Fake, string) {
	t.Helper()
	fake := runtime.NewFake()
	a, err := host.New(host.Config{ID: "h1", StateDir: t.TempDir(), Keys: []string{"k"}, Runtime: fake, StopGrace: 50 * time.Millisecond}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() { srv.Close(); a.Close() })
	return hostclient.New(srv.URL, "k"), fake, srv.URL
}

// fakeJob is a busybox job, or (without root, where the layer is not
// built) a job whose image cannot be pulled.
func fakeJob(id string, args ...string) *api.HostJob {
	if busyboxLayer == "" {
		return &api.HostJob{ID: id, Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: "127.0.0.1:1/none"}}, Config: api.HostJobConfig{Args: args}}
	}
	return busyboxJob(id, args...)
}

func TestFakeLifecycleAndEvents(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	c, fake, _ := fakeAgent(t)
	ctx := context.Background()
	events, err := c.StreamEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	aj, err := c.AddJob(ctx, fakeJob("j1", "sleep", "100"))
	if err != nil {
		t.Fatal(err)
	}
	if aj.Status != api.HostJobRunning || aj.HostID != "h1" || aj.PID == 0 {
		t.Fatalf("added %+v", aj)
	}
	spec, _ := fake.Spec("j1")
	if spec.UID != runtime.NobodyID || !contains(spec.Env, "FLYNN_JOB_ID=j1") {
		t.Fatalf("spec %+v", spec)
	}
	if _, err := c.AddJob(ctx, fakeJob("j1", "x")); !errors.Is(err, api.ErrObjectExists) {
		t.Fatalf("duplicate: %v", err)
	}
	stopped, err := c.StopJob(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if stopped.Status != api.HostJobDone || exitStatus(stopped) != 128+15 {
		t.Fatalf("stopped %s %d", stopped.Status, exitStatus(stopped))
	}
	failed, err := c.AddJob(ctx, fakeJob("j2", "fail"))
	if err != nil {
		t.Fatal(err)
	}
	if failed.Status != api.HostJobFailed || failed.Error == nil {
		t.Fatalf("failed job %+v", failed)
	}
	var got []string
	for len(got) < 5 {
		ev, err := events.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Event+":"+ev.JobID)
	}
	want := []string{"create:j1", "start:j1", "stop:j1", "create:j2", "error:j2"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if err := c.SignalJob(ctx, "j1", "TERM"); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("signal ended job: %v", err)
	}
	if _, err := c.GetJob(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
}

func TestFakeValidationStartsNothing(t *testing.T) {
	c, fake, url := fakeAgent(t)
	ctx := context.Background()
	big := int64(1 << 30)
	for _, j := range []*api.HostJob{
		{ID: "a", Config: api.HostJobConfig{Args: []string{"x"}}},
		{ID: "b", Artifacts: []*api.Artifact{{Type: "tarball"}}},
		{ID: "c", Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: "x/y"}}, Resources: api.Resources{"max_fd": {Limit: &big}}},
		{ID: "d", Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: "x/y"}}, Config: api.HostJobConfig{Ports: []api.Port{{Port: 80, Proto: "sctp"}}}},
		{ID: "e", Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: "x/y"}}, Config: api.HostJobConfig{Env: map[string]string{"A=B": "c"}}},
	} {
		if _, err := c.AddJob(ctx, j); !errors.Is(err, api.ErrValidation) {
			t.Errorf("job %s: err = %v, want validation error", j.ID, err)
		}
	}
	if fake.Starts != 0 {
		t.Fatalf("runtime started %d jobs", fake.Starts)
	}
	bad := hostclient.New(url, "wrong")
	if _, err := bad.ListJobs(ctx); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestDockerArtifactFromRegistry(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	layer, err := tarball.LayerFromFile(busyboxLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := mutate.AppendLayers(empty.Image, layer)
	cf, _ := img.ConfigFile()
	cf.Config.Cmd = []string{"/bin/sh", "-c", "echo hi"}
	cf.Config.Env = []string{"FROM_IMAGE=1"}
	img, _ = mutate.ConfigFile(img, cf)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/flt/busybox:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	c, fake, _ := fakeAgent(t)
	aj, err := c.AddJob(context.Background(), &api.HostJob{ID: "oci", Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: ref}}})
	if err != nil {
		t.Fatal(err)
	}
	if aj.Status != api.HostJobRunning {
		t.Fatalf("status %s", aj.Status)
	}
	spec, _ := fake.Spec("oci")
	if diff := cmp.Diff([]string{"/bin/sh", "-c", "echo hi"}, spec.Args); diff != "" {
		t.Fatal(diff)
	}
	if len(spec.Layers) != 1 || !contains(spec.Env, "FROM_IMAGE=1") {
		t.Fatalf("spec %+v", spec)
	}
	if _, err := os.Stat(spec.Layers[0] + "/bin/busybox"); err != nil {
		t.Fatalf("pulled layer not extracted: %v", err)
	}
}

func TestEndedJobsAreCollected(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	fake := runtime.NewFake()
	a, err := host.New(host.Config{ID: "h1", StateDir: t.TempDir(), Keys: []string{"k"}, Runtime: fake, MaxEndedJobs: 2}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	for _, id := range []string{"f1", "f2", "f3", "f4"} {
		// Jobs that fail to start end at once.
		aj, err := a.AddJob(ctx, fakeJob(id, "fail"))
		if err != nil || aj.Status != api.HostJobFailed {
			t.Fatalf("add %s: %v %+v", id, err, aj)
		}
		time.Sleep(time.Millisecond) // distinct end times
	}
	var ids []string
	for _, aj := range a.List() {
		ids = append(ids, aj.Job.ID)
	}
	if diff := cmp.Diff([]string{"f3", "f4"}, ids); diff != "" {
		t.Fatalf("kept jobs (-want +got):\n%s", diff)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestImageUser: a job runs as its image's user (a slug's app user, or an
// OCI image's user pushed to the cluster's registry) unless its config
// names one, and as nobody when neither does or the image's user is root.
func TestImageUser(t *testing.T) {
	if busyboxLayer == "" {
		t.Skip("needs the busybox layer (root)")
	}
	c, fake, _ := fakeAgent(t)
	ctx := context.Background()
	uid := uint32(1000)
	tests := []struct {
		id      string
		imgUID  *uint32
		imgUser string
		jobUID  *uint32
		wantUID uint32
		wantGID uint32
	}{
		{"u-none", nil, "", nil, runtime.NobodyID, runtime.NobodyID},
		{"u-image", &uid, "", nil, 1000, 1000},
		{"u-job", &uid, "", new(uint32), 0, 0},
		{"u-oci-user", nil, "4242:7", nil, 4242, 7},
		{"u-oci-root", nil, "0", nil, runtime.NobodyID, runtime.NobodyID},
		{"u-oci-root-group", nil, "4242:0", nil, runtime.NobodyID, runtime.NobodyID},
		{"u-oci-job", nil, "4242:7", &uid, 1000, 1000},
	}
	for _, tt := range tests {
		j := fakeJob(tt.id, "true")
		j.Artifacts[0].Manifest.Entrypoints = map[string]*api.Entrypoint{"_default": {Uid: tt.imgUID, Gid: tt.imgUID, User: tt.imgUser}}
		j.Config.Uid = tt.jobUID
		if _, err := c.AddJob(ctx, j); err != nil {
			t.Fatalf("%s: %v", tt.id, err)
		}
		spec, _ := fake.Spec(tt.id)
		if spec.UID != tt.wantUID || spec.GID != tt.wantGID {
			t.Errorf("%s: uid/gid %d/%d, want %d/%d", tt.id, spec.UID, spec.GID, tt.wantUID, tt.wantGID)
		}
	}
}
