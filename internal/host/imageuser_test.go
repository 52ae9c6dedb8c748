package host_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
)

// TestDockerArtifactUser runs images whose config names a user: by name
// (from the image's /etc/passwd), by number, with a group; root and no
// user run as nobody; a user the image does not know is refused.
func TestDockerArtifactUser(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	passwd := "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n"
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd))})
	tw.Write([]byte(passwd))
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	c, fake, _ := fakeAgent(t)
	for i, tt := range []struct {
		user     string
		uid, gid uint32
		wantErr  string
	}{
		{"web", 1000, 1001, ""},
		{"4242:7", 4242, 7, ""},
		{"1000", 1000, 1001, ""},
		{"", runtime.NobodyID, runtime.NobodyID, ""},
		{"root", runtime.NobodyID, runtime.NobodyID, ""},
		{"4242:0", runtime.NobodyID, runtime.NobodyID, ""},
		{"ghost", 0, 0, `user "ghost": not in the image's passwd`},
	} {
		t.Run(tt.user, func(t *testing.T) {
			img, _ := mutate.AppendLayers(empty.Image, layer)
			cf, _ := img.ConfigFile()
			cf.Config.Cmd = []string{"/server"}
			cf.Config.User = tt.user
			img, _ = mutate.ConfigFile(img, cf)
			ref := strings.TrimPrefix(srv.URL, "http://") + "/flt/user:" + string(rune('a'+i))
			r, _ := name.ParseReference(ref)
			if err := remote.Write(r, img); err != nil {
				t.Fatal(err)
			}
			id := "user" + string(rune('a'+i))
			_, err := c.AddJob(context.Background(), &api.HostJob{ID: id, Artifacts: []*api.Artifact{{Type: api.ArtifactTypeDocker, URI: ref}}})
			if tt.wantErr != "" {
				if !errors.Is(err, api.ErrValidation) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a validation error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			spec, _ := fake.Spec(id)
			if spec.UID != tt.uid || spec.GID != tt.gid {
				t.Errorf("runs as %d:%d, want %d:%d", spec.UID, spec.GID, tt.uid, tt.gid)
			}
		})
	}
}
