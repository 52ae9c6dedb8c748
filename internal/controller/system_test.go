package controller

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// TestSystemApps checks what the cluster key may not do to system apps,
// and that tenant apps cannot be given privileged releases, whichever way
// a release reaches an app.
func TestSystemApps(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	sys := controllerclient.New(e.url, testSystemKey)

	// Only the system key marks system apps.
	wantForbidden := func(t *testing.T, what string, err error) {
		t.Helper()
		if !errors.Is(err, api.ErrForbidden) {
			t.Fatalf("%s: err = %v, want forbidden", what, err)
		}
		if e, _ := api.AsError(err); e.HTTPStatus() != 403 {
			t.Fatalf("%s: status %d, want 403", what, e.HTTPStatus())
		}
	}
	wantForbidden(t, "create a system app", e.c.CreateApp(c, &api.App{Name: "evil", Meta: map[string]string{api.MetaSystemApp: "true"}}))
	wantForbidden(t, "create a critical app", e.c.CreateApp(c, &api.App{Name: "evil", Meta: map[string]string{"flynn-system-anything": "x"}}))
	ctl := &api.App{Name: "controller", Meta: map[string]string{api.MetaSystemApp: "true", api.MetaSystemCritical: "true"}}
	if err := sys.CreateApp(c, ctl); err != nil {
		t.Fatal(err)
	}
	tenant := &api.App{Name: "tenant", Meta: map[string]string{"owner": "me"}}
	if err := e.c.CreateApp(c, tenant); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.UpdateAppMeta(c, tenant.ID, map[string]string{"owner": "me", api.MetaSystemApp: "true"})
	wantForbidden(t, "mark a tenant app system", err)
	_, err = e.c.UpdateAppMeta(c, ctl.ID, map[string]string{"note": "x"})
	wantForbidden(t, "unmark a system app", err)
	// Other meta of either kind of app is the cluster key's to change.
	if _, err := e.c.UpdateAppMeta(c, ctl.ID, map[string]string{api.MetaSystemApp: "true", api.MetaSystemCritical: "true", "note": "x"}); err != nil {
		t.Fatalf("other meta of a system app: %v", err)
	}
	if _, err := e.c.UpdateAppMeta(c, tenant.ID, map[string]string{"owner": "you"}); err != nil {
		t.Fatalf("tenant meta: %v", err)
	}
	_, err = e.c.DeleteApp(c, "controller")
	wantForbidden(t, "delete a system app", err)
	_, err = sys.DeleteApp(c, "controller")
	wantForbidden(t, "delete a system app with the system key", err)
	if _, err := e.c.GetApp(c, "controller"); err != nil {
		t.Fatalf("system app gone: %v", err)
	}

	// Privileged releases.
	docker := &api.Artifact{Type: api.ArtifactTypeDocker, URI: "docker://busybox"}
	root := uint32(0)
	rootArt := &api.Artifact{Type: api.ArtifactTypeFlynn, URI: "http://blob/x.json", Manifest: &api.ImageManifest{
		Entrypoints: map[string]*api.Entrypoint{"_default": {Uid: &root}},
	}}
	for _, a := range []*api.Artifact{docker, rootArt} {
		if err := e.c.CreateArtifact(c, a); err != nil {
			t.Fatal(err)
		}
	}
	proc := func(p api.ProcessType) map[string]*api.ProcessType {
		if p.Args == nil {
			p.Args = []string{"sh"}
		}
		return map[string]*api.ProcessType{"web": &p}
	}
	privileged := []struct {
		name string
		rel  api.Release
	}{
		{"host network", api.Release{ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{HostNetwork: true})}},
		{"host path", api.Release{ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{Mounts: []api.Mount{{Location: "/etc", Target: "/x"}}})}},
		{"writable binary", api.Release{ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{Mounts: []api.Mount{{Location: api.HostMountPrefix + "bin", Target: "/x", Writeable: true}}})}},
		{"cluster key mount", api.Release{ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{Mounts: []api.Mount{{Location: api.HostMountPrefix + "tls", Target: "/x"}}})}},
		{"data mount", api.Release{ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{Mounts: []api.Mount{{Location: api.HostMountPrefix + "data/blobstore", Target: "/x"}}})}},
		{"uid 0", api.Release{ArtifactIDs: []string{rootArt.ID}, Processes: proc(api.ProcessType{})}},
		{"system meta", api.Release{ArtifactIDs: []string{docker.ID}, Meta: map[string]string{api.MetaSystemApp: "true"}, Processes: proc(api.ProcessType{})}},
	}
	for _, tt := range privileged {
		t.Run(tt.name, func(t *testing.T) {
			rel := tt.rel
			rel.AppID = tenant.ID
			wantForbidden(t, "tenant release", e.c.CreateRelease(c, &rel))
			rel = tt.rel
			wantForbidden(t, "release of no app, cluster key", e.c.CreateRelease(c, &rel))
			// A system app may run it; so may a release of no app made
			// with the system key, but not in a tenant app.
			rel = tt.rel
			rel.AppID = ctl.ID
			if err := e.c.CreateRelease(c, &rel); err != nil {
				t.Fatalf("system app release: %v", err)
			}
			free := tt.rel
			if err := sys.CreateRelease(c, &free); err != nil {
				t.Fatalf("release of no app, system key: %v", err)
			}
			wantForbidden(t, "set release", e.c.SetAppRelease(c, tenant.ID, free.ID))
			_, err := e.c.CreateDeployment(c, tenant.ID, free.ID)
			wantForbidden(t, "deploy", err)
			wantForbidden(t, "formation", e.c.PutFormation(c, &api.Formation{AppID: tenant.ID, ReleaseID: free.ID, Processes: map[string]int{"web": 1}}))
			_, err = e.c.ScaleAppRelease(c, tenant.ID, free.ID, map[string]int{"web": 1}, nil)
			wantForbidden(t, "scale", err)
			_, err = e.c.RunJob(c, tenant.ID, &api.NewJob{ReleaseID: free.ID, Args: []string{"id"}})
			wantForbidden(t, "run", err)
			if err := e.c.SetAppRelease(c, ctl.ID, free.ID); err != nil {
				t.Fatalf("set a system app's release: %v", err)
			}
		})
	}

	// What every app may have: the platform's read-only mounts, its own
	// user; and a one-off job cannot bring a root artifact along.
	ok := &api.Release{AppID: tenant.ID, ArtifactIDs: []string{docker.ID}, Processes: proc(api.ProcessType{Mounts: []api.Mount{
		{Location: api.HostMountPrefix + "bin", Target: "/usr/local/bin/flynn-host"},
		{Location: "/etc/ssl/certs/ca-certificates.crt", Target: "/etc/ssl/certs/ca-certificates.crt"},
	}})}
	if err := e.c.CreateRelease(c, ok); err != nil {
		t.Fatalf("tenant release with the platform's mounts: %v", err)
	}
	if err := e.c.SetAppRelease(c, tenant.ID, ok.ID); err != nil {
		t.Fatal(err)
	}
	hb, _ := json.Marshal(api.Host{ID: "host1", URL: "http://127.0.0.1:1"})
	if _, err := e.etcd.Put(c, api.KeyHosts+"host1", string(hb)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RunJob(c, tenant.ID, &api.NewJob{Args: []string{"id"}}); err != nil {
		t.Fatalf("tenant one-off job: %v", err)
	}
	_, err = e.c.RunJob(c, tenant.ID, &api.NewJob{Args: []string{"id"}, ArtifactIDs: []string{rootArt.ID}})
	wantForbidden(t, "one-off job with a root artifact", err)
}
