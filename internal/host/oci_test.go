package host_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// pushBusybox pushes the busybox layer as an OCI image to an in-process
// registry and returns its reference.
func pushBusybox(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)
	layer, err := tarball.LayerFromFile(busyboxLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.Config.Env = []string{"FROM_IMAGE=yes"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/flt/busybox:latest"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestRunOCIImage(t *testing.T) {
	a := startAgent(t)
	ref := pushBusybox(t)
	out, stderr, err := a.cli("run", ref, "--", "sh", "-c", "echo from image: $FROM_IMAGE")
	if err != nil {
		t.Fatalf("run: %v %s", err, stderr)
	}
	if out != "from image: yes\n" {
		t.Fatalf("output %q", out)
	}
}
