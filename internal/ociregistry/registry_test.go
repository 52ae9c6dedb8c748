package ociregistry_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/ociregistry"
)

const key = "cluster-key"

// newRegistry serves a registry on a blobstore served by httptest, both
// through their real HTTP handlers and client. A new Registry value per
// request shows that no state is kept between requests.
func newRegistry(t *testing.T) (host string, blobs *blobclient.Client, arts *artifacts) {
	t.Helper()
	bs := httptest.NewServer(blobstore.NewServer(blobstore.NewMem(), []string{"blobkey"}, 0, logging.Discard()).Handler())
	t.Cleanup(bs.Close)
	blobs = blobclient.New(bs.URL, "blobkey", nil)
	auth := httpapi.NewKeyAuth(key)
	arts = &artifacts{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ociregistry.New(ociregistry.Config{Blobs: blobs, Auth: auth, Artifacts: arts}, logging.Discard()).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), blobs, arts
}

// artifacts records the artifacts the registry creates.
type artifacts struct {
	mu   sync.Mutex
	list []*api.Artifact
}

func (a *artifacts) CreateArtifact(ctx context.Context, art *api.Artifact) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.list = append(a.list, art)
	return nil
}

func TestPushPull(t *testing.T) {
	host, blobs, arts := newRegistry(t)
	img, err := random.Image(1<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"/bin/server"}, Cmd: []string{"--port", "8080"},
		Env: []string{"PATH=/bin", "A=b=c"}, WorkingDir: "/srv", User: "app",
	})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/myapp:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	cred := remote.WithAuth(&authn.Basic{Username: "flynn", Password: key})
	if err := remote.Write(ref, img, cred); err != nil {
		t.Fatalf("push: %v", err)
	}
	// A second push of the same image finds its blobs there.
	if err := remote.Write(ref, img, cred); err != nil {
		t.Fatalf("push again: %v", err)
	}

	got, err := remote.Image(ref, cred)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	wantDigest, _ := img.Digest()
	gotDigest, err := got.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if gotDigest != wantDigest {
		t.Errorf("pulled digest %s, pushed %s", gotDigest, wantDigest)
	}
	wantLayers, _ := img.Layers()
	gotLayers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(gotLayers) != len(wantLayers) {
		t.Fatalf("pulled %d layers, pushed %d", len(gotLayers), len(wantLayers))
	}
	for i, l := range gotLayers {
		d, _ := wantLayers[i].Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc) // the digest is verified at EOF
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		want, _ := wantLayers[i].Size()
		if int64(len(b)) != want {
			t.Errorf("layer %d: %d bytes, want %d", i, len(b), want)
		}
		// The layer is in the blobstore by digest, where hosts fetch it.
		info, err := blobs.Head(t.Context(), ociregistry.BlobPath(d.String()))
		if err != nil || info.SHA256 != d.Hex {
			t.Errorf("layer %d in the blobstore: %+v, %v", i, info, err)
		}
	}
	// By digest too.
	byDigest, err := name.ParseReference(host+"/myapp@"+wantDigest.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Get(byDigest, cred); err != nil {
		t.Errorf("pull by digest: %v", err)
	}
	// No upload is left behind.
	if ents, err := blobs.List(t.Context(), "/registry/uploads/"); err == nil {
		for _, e := range ents {
			if rest, err := blobs.List(t.Context(), "/registry/uploads/"+e.Name+"/"); err == nil && len(rest) > 0 {
				t.Errorf("upload %s left behind: %v", e.Name, rest)
			}
		}
	}
	tags, err := remote.List(ref.Context(), cred)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"v1"}, tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}

	// The push of the manifest recorded the image as an artifact whose
	// layers are the blobs, by digest.
	if len(arts.list) != 1 {
		t.Fatalf("%d artifacts, want 1 (a second push of the same manifest does not send it)", len(arts.list))
	}
	art := arts.list[0]
	want := &api.Artifact{
		Type: api.ArtifactTypeFlynn,
		Meta: map[string]string{api.MetaRegistryRepository: "myapp", api.MetaRegistryDigest: wantDigest.String()},
		Manifest: &api.ImageManifest{
			Type: api.ManifestType,
			Entrypoints: map[string]*api.Entrypoint{"_default": {
				Args: []string{"/bin/server", "--port", "8080"}, Env: map[string]string{"PATH": "/bin", "A": "b=c"},
				WorkingDir: "/srv", User: "app",
			}},
			Rootfs: []*api.ImageRootfs{{Platform: &api.ImagePlatform{Architecture: "amd64", OS: "linux"}}},
		},
	}
	for _, l := range wantLayers {
		d, _ := l.Digest()
		size, _ := l.Size()
		want.Manifest.Rootfs[0].Layers = append(want.Manifest.Rootfs[0].Layers, &api.ImageLayer{
			ID: d.Hex, Type: api.LayerTypeTarGz, Length: size, Hashes: map[string]string{"sha256": d.Hex},
			URL: blobs.URL(ociregistry.BlobPath(d.String())),
		})
		want.Size += size
	}
	if diff := cmp.Diff(want, art, cmpopts.IgnoreFields(api.Artifact{}, "URI")); diff != "" {
		t.Errorf("artifact (-want +got):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	host, _, _ := newRegistry(t)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/myapp:v1", name.Insecure)

	tests := []struct {
		name   string
		do     func() error
		status int
	}{
		{"push with a wrong key", func() error {
			return remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "flynn", Password: "wrong"}))
		}, http.StatusUnauthorized},
		{"push with no key", func() error { return remote.Write(ref, img) }, http.StatusUnauthorized},
		{"pull an unknown tag", func() error {
			_, err := remote.Image(ref, remote.WithAuth(&authn.Basic{Username: "anyone", Password: key}))
			return err
		}, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			var te *transport.Error
			if !errors.As(err, &te) || te.StatusCode != tt.status {
				t.Fatalf("got %v, want HTTP %d", err, tt.status)
			}
		})
	}

	// A manifest naming blobs that were never pushed is refused, and
	// a blob whose content does not match its digest.
	req := func(method, path, body string) *http.Response {
		t.Helper()
		r, _ := http.NewRequest(method, "http://"+host+path, strings.NewReader(body))
		r.SetBasicAuth("", key)
		res, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	missing := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`
	if res := req(http.MethodPut, "/v2/myapp/manifests/v2", missing); res.StatusCode != http.StatusBadRequest {
		t.Errorf("manifest with unknown blobs: %s, want 400", res.Status)
	}
	if res := req(http.MethodPost, "/v2/myapp/blobs/uploads/?digest=sha256:"+strings.Repeat("b", 64), "not that"); res.StatusCode != http.StatusBadRequest {
		t.Errorf("blob that does not match its digest: %s, want 400", res.Status)
	}
	if res := req(http.MethodGet, "/v2/", ""); res.StatusCode != http.StatusOK {
		t.Errorf("version check: %s", res.Status)
	}
}

// TestChunkedUpload: an upload sent in several PATCHes and a final PUT,
// each request to a new Registry, is one blob; a chunk that does not start
// where the upload ends is refused.
func TestChunkedUpload(t *testing.T) {
	host, blobs, _ := newRegistry(t)
	do := func(method, path, contentRange, body string) *http.Response {
		t.Helper()
		r, _ := http.NewRequest(method, "http://"+host+path, strings.NewReader(body))
		r.SetBasicAuth("any", key)
		if contentRange != "" {
			r.Header.Set("Content-Range", contentRange)
		}
		res, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	res := do(http.MethodPost, "/v2/team/app/blobs/uploads/", "", "")
	loc := res.Header.Get("Location")
	if res.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload: %s, location %q", res.Status, loc)
	}
	if res := do(http.MethodPatch, loc, "0-4", "hello"); res.StatusCode != http.StatusAccepted || res.Header.Get("Range") != "0-4" {
		t.Fatalf("first chunk: %s, range %q", res.Status, res.Header.Get("Range"))
	}
	if res := do(http.MethodPatch, loc, "3-7", "oops!"); res.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("chunk at the wrong offset: %s, want 416", res.Status)
	}
	if res := do(http.MethodPatch, loc, "", ", "); res.StatusCode != http.StatusAccepted || res.Header.Get("Range") != "0-6" {
		t.Fatalf("second chunk: %s, range %q", res.Status, res.Header.Get("Range"))
	}
	content := "hello, world"
	sum := sha256.Sum256([]byte(content))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if res := do(http.MethodPut, loc+"?digest="+digest, "", "world"); res.StatusCode != http.StatusCreated || res.Header.Get("Docker-Content-Digest") != digest {
		t.Fatalf("finish upload: %s", res.Status)
	}
	rc, _, err := blobs.Get(t.Context(), ociregistry.BlobPath(digest))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != content {
		t.Errorf("blob = %q, want %q", got, content)
	}
	if ents, _ := blobs.List(t.Context(), "/registry/uploads/"+strings.TrimPrefix(loc, "/v2/team/app/blobs/uploads/")+"/"); len(ents) != 0 {
		t.Errorf("chunks left behind: %v", ents)
	}
	if res := do(http.MethodHead, "/v2/other/blobs/"+digest, "", ""); res.StatusCode != http.StatusOK || res.ContentLength != int64(len(content)) {
		t.Errorf("HEAD blob from another repository: %s, length %d", res.Status, res.ContentLength)
	}
}

// TestNotRunnable: an image the hosts cannot run (here arm64, as one
// platform of a multi-platform push) is stored and pulled like any other,
// but becomes no artifact.
func TestNotRunnable(t *testing.T) {
	host, _, arts := newRegistry(t)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.Architecture, cf.OS = "arm64", "linux"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/myapp:arm", name.Insecure)
	cred := remote.WithAuth(&authn.Basic{Username: "flynn", Password: key})
	if err := remote.Write(ref, img, cred); err != nil {
		t.Fatalf("push: %v", err)
	}
	if _, err := remote.Image(ref, cred); err != nil {
		t.Errorf("pull: %v", err)
	}
	if len(arts.list) != 0 {
		t.Errorf("artifacts made of an arm64 image: %+v", arts.list)
	}
}
