package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// setupBlobs is setup with a real blobstore (on disk) as the controller's.
func setupBlobs(t *testing.T) (*env, *blobclient.Client) {
	t.Helper()
	fs, err := blobstore.NewFS(t.TempDir(), blobstore.FSOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(blobstore.NewServer(fs, []string{testKey}, 0, logging.Discard()).Handler())
	t.Cleanup(srv.Close)
	blobs := blobclient.New(srv.URL, testKey, nil)
	e := setup(t)
	e.cfg.Blobs = blobs
	e.c, e.url = newServer(t, e.cfg)
	return e, blobs
}

// slugRelease uploads body as a layer and makes a release of app on it.
func slugRelease(t *testing.T, e *env, appID string, body []byte) (*api.Release, *api.ImageLayer) {
	t.Helper()
	sum := sha256.Sum256(body)
	l, err := e.c.PutLayer(ctx(t), hex.EncodeToString(sum[:]), bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	a := &api.Artifact{Type: api.ArtifactTypeFlynn, URI: l.URL, Manifest: &api.ImageManifest{Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{l}}}}}
	if err := e.c.CreateArtifact(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	r := &api.Release{AppID: appID, ArtifactIDs: []string{a.ID}}
	if err := e.c.CreateRelease(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	return r, l
}

// TestLayers: a layer goes into the blobstore through PUT /layers/{sha256}
// (checked against its hash) and comes back through its artifact; deleting
// a release deletes the layers no other release uses, and deleting an app
// the layers of its releases.
func TestLayers(t *testing.T) {
	e, blobs := setupBlobs(t)
	c := ctx(t)
	app := &api.App{Name: "layers"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	slug1, slug2 := []byte("\x1f\x8b first slug"), []byte("second slug")
	rel1, l1 := slugRelease(t, e, app.ID, slug1)
	if l1.Type != api.LayerTypeTarGz || l1.Length != int64(len(slug1)) || !strings.HasSuffix(l1.URL, "/layers/"+l1.ID+".tgz") {
		t.Fatalf("layer = %+v", l1)
	}
	rc, size, err := e.c.GetLayer(c, rel1.ArtifactIDs[0], l1.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, slug1) || size != int64(len(slug1)) {
		t.Fatalf("layer read back %q (size %d)", got, size)
	}
	_, _, err = e.c.GetLayer(c, rel1.ArtifactIDs[0], "nope")
	wantErr(t, err, api.ErrNotFound, "")

	// A body that does not hash to the id, and a bad id, are refused.
	sum := sha256.Sum256([]byte("other"))
	_, err = e.c.PutLayer(c, hex.EncodeToString(sum[:]), strings.NewReader("tampered"), 8)
	wantErr(t, err, api.ErrValidation, "")
	_, err = e.c.PutLayer(c, "not-a-hash", strings.NewReader("x"), 1)
	wantErr(t, err, api.ErrValidation, "id")

	// rel2 shares rel1's artifact; rel3 has its own layer.
	rel2 := &api.Release{AppID: app.ID, ArtifactIDs: rel1.ArtifactIDs}
	if err := e.c.CreateRelease(c, rel2); err != nil {
		t.Fatal(err)
	}
	rel3, l3 := slugRelease(t, e, app.ID, slug2)
	if err := e.c.SetAppRelease(c, app.ID, rel3.ID); err != nil {
		t.Fatal(err)
	}
	del, err := e.c.DeleteRelease(c, app.ID, rel1.ID)
	if err != nil || len(del.DeletedFiles) != 0 {
		t.Fatalf("delete rel1 (layer still used by rel2) = %+v, %v", del, err)
	}
	del, err = e.c.DeleteRelease(c, app.ID, rel2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/layers/" + l1.ID + ".tgz"}, del.DeletedFiles); diff != "" {
		t.Errorf("deleted files (-want +got):\n%s", diff)
	}
	if _, err := blobs.Head(c, "/layers/"+l1.ID+".tgz"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("layer of deleted releases still in the blobstore: %v", err)
	}
	// The release_deletion event has Flynn's shape.
	evs, err := e.c.ListEvents(c, eventOpts(app.ID, api.EventTypeReleaseDeletion, rel2.ID))
	if err != nil || len(evs) != 1 {
		t.Fatalf("release_deletion events = %v, %v", evs, err)
	}
	var rde api.ReleaseDeletionEvent
	if err := json.Unmarshal(evs[0].Data, &rde); err != nil || rde.ReleaseDeletion == nil || rde.ReleaseDeletion.ReleaseID != rel2.ID || len(rde.ReleaseDeletion.DeletedFiles) != 1 {
		t.Fatalf("release_deletion event data = %s, %v", evs[0].Data, err)
	}

	// A release of an image pushed to the cluster's registry: its layer
	// is the registry's, which outlives the app.
	regSum := sha256.Sum256([]byte("image layer"))
	regPath := "/registry/blobs/sha256/" + hex.EncodeToString(regSum[:])
	if _, err := blobs.Put(c, regPath, strings.NewReader("image layer"), nil); err != nil {
		t.Fatal(err)
	}
	regArt := &api.Artifact{Type: api.ArtifactTypeFlynn, URI: blobs.URL("/registry/manifests/sha256/x"), Manifest: &api.ImageManifest{
		Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{{ID: hex.EncodeToString(regSum[:]), Type: api.LayerTypeTar, Length: 11,
			Hashes: map[string]string{"sha256": hex.EncodeToString(regSum[:])}, URL: blobs.URL(regPath)}}}},
	}}
	if err := e.c.CreateArtifact(c, regArt); err != nil {
		t.Fatal(err)
	}
	if err := e.c.CreateRelease(c, &api.Release{AppID: app.ID, ArtifactIDs: []string{regArt.ID}}); err != nil {
		t.Fatal(err)
	}

	ad, err := e.c.DeleteApp(c, app.ID)
	if err != nil || len(ad.DeletedReleases) != 2 {
		t.Fatalf("delete app = %+v, %v", ad, err)
	}
	if _, err := blobs.Head(c, "/layers/"+l3.ID+".tgz"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("layer of a deleted app still in the blobstore: %v", err)
	}
	if _, err := blobs.Head(c, regPath); err != nil {
		t.Errorf("the registry's layer was deleted with the app: %v", err)
	}
}

// TestHostRunnerMissingCommand: a host agent that cannot start a job
// because its command is missing from the image makes a 4xx, any other
// start failure stays a platform error.
func TestHostRunnerMissingCommand(t *testing.T) {
	msg := ""
	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&api.ActiveJob{Status: api.HostJobFailed, Error: &msg})
	}))
	defer host.Close()
	h := &api.Host{ID: "h1", URL: host.URL}
	runner := &HostRunner{}
	msg = `start job: exec: "nope": no such file or directory in the job's image`
	err := runner.AddJob(context.Background(), h, &api.HostJob{ID: "h1-1"})
	wantErr(t, err, api.ErrValidation, "args")
	msg = "start job: runc run: cgroup busy"
	err = runner.AddJob(context.Background(), h, &api.HostJob{ID: "h1-2"})
	if err == nil || errors.Is(err, api.ErrValidation) || !strings.Contains(err.Error(), "cgroup busy") {
		t.Fatalf("other start failure = %v, want a plain error", err)
	}
}

// TestFlynnClientShapes checks replies Flynn's client reads: a 404 is not
// application/json (Flynn's client then returns its ErrNotFound), the
// status endpoint answers without the key, and a strategy the platform
// does not run is refused with the list of those it does.
func TestFlynnClientShapes(t *testing.T) {
	e := setup(t)
	get := func(path string, key bool) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, e.url+path, nil)
		req.Header.Set("Accept", "application/json")
		if key {
			req.SetBasicAuth("", testKey)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	res := get("/apps/nope", true)
	if res.StatusCode != 404 || res.Header.Get("Content-Type") != NotFoundContentType {
		t.Errorf("404: status %d, content type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	var body api.Error
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || body.Code != api.CodeNotFound {
		t.Errorf("404 body = %+v, %v", body, err)
	}
	res = get(api.StatusPath, false)
	var st api.StatusReply
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil || res.StatusCode != 200 || st.Data.Status != api.StatusHealthy || st.Data.Version == "" {
		t.Errorf("status = %d %+v, %v", res.StatusCode, st, err)
	}
	if res := get("/apps", false); res.StatusCode != 401 {
		t.Errorf("GET /apps without the key: %d", res.StatusCode)
	}
	app := &api.App{Name: "shapes"}
	if err := e.c.CreateApp(ctx(t), app); err != nil {
		t.Fatal(err)
	}
	err := e.c.UpdateApp(ctx(t), &api.App{ID: app.ID, Strategy: "sirenia"})
	wantErr(t, err, api.ErrValidation, "strategy")
	if !strings.Contains(err.Error(), "all-at-once, one-by-one, one-down-one-up, in-batches") {
		t.Errorf("strategy error %q does not list the strategies", err)
	}
	for _, s := range api.Strategies {
		if err := e.c.UpdateApp(ctx(t), &api.App{ID: app.ID, Strategy: s}); err != nil {
			t.Errorf("strategy %s: %v", s, err)
		}
	}
}

func eventOpts(appID, typ, objectID string) controllerclient.EventOptions {
	return controllerclient.EventOptions{AppID: appID, ObjectTypes: []string{typ}, ObjectID: objectID}
}
