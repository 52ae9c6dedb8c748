package test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// serveRegistry runs an OCI registry (go-containerregistry's) on a port
// of the test's slot and returns its host:port.
func serveRegistry(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", testslot.Port(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("registry: %v", err)
		}
	})
	return ln.Addr().String()
}

// busyboxImage assembles an image of the machine's static busybox with
// cfg as its config, and pushes it as ref.
func busyboxImage(t *testing.T, ref string, cfg v1.Config) {
	t.Helper()
	img := newBusyboxImage(t, cfg)
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// newBusyboxImage assembles an image of the machine's static busybox (with
// /srv owned by 4242) with cfg as its config.
func newBusyboxImage(t *testing.T, cfg v1.Config) v1.Image {
	t.Helper()
	bin, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))},
		{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777},
		{Typeflag: tar.TypeDir, Name: "srv/", Mode: 0o755, Uid: 4242, Gid: 4242},
		{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777},
	} {
		tw.WriteHeader(h)
		if h.Name == "bin/busybox" {
			tw.Write(data)
		}
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestReleaseAddImage deploys an image assembled in the test (static
// busybox, its own entrypoint, cmd, env, working dir and user) from a
// registry in the test with flynn release add docker://REF: without a
// Procfile it runs as web and serves through the router. An image with
// no command is refused with a one-line error before anything is made.
func TestReleaseAddImage(t *testing.T) {
	c := startE2ECluster(t, nil)
	reg := serveRegistry(t)
	ref := reg + "/imgapp:v1"
	busyboxImage(t, ref, v1.Config{
		Entrypoint: []string{"/bin/busybox", "sh", "-c"},
		Cmd:        []string{`busybox mkdir -p www && echo "hello from $GREETING as $(busybox id -u) in $(pwd)" > www/index.html && exec busybox httpd -f -p "$PORT" -h www`},
		Env:        []string{"PATH=/bin", "GREETING=the image"},
		WorkingDir: "/srv",
		User:       "4242",
	})
	busyboxImage(t, reg+"/nocmd:v1", v1.Config{Env: []string{"PATH=/bin"}})

	dir := t.TempDir()
	flynn := func(args ...string) (string, string, error) {
		cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
		cmd.Dir = dir
		cmd.Env = c.env()
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	c.flynn(dir, "create", "imgapp")
	out, errOut, err := flynn("-a", "imgapp", "release", "add", "docker://"+ref)
	if err != nil {
		t.Fatalf("release add: %v\n%s%s\n%s", err, out, errOut, c.watch())
	}
	if !strings.Contains(out, "web=1") {
		t.Errorf("release add did not scale web=1:\n%s", out)
	}
	want := "hello from the image as 4242 in /srv"
	waitFor(t, within(t, 2*time.Minute), "imgapp to answer", c.watch(), func() (bool, error) {
		status, body := c.curl("imgapp."+c.domain, "/")
		return status == 200 && strings.Contains(body, want), fmt.Errorf("%d %s", status, body)
	})

	c.flynn(dir, "create", "nocmd")
	_, errOut, err = flynn("-a", "nocmd", "release", "add", "docker://"+reg+"/nocmd:v1")
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "has no command") {
		t.Errorf("release add of an image with no command: err=%v, want a one-line error, got:\n%s", err, errOut)
	}
	if out := strings.TrimSpace(c.flynn(dir, "-a", "nocmd", "release", "-q")); out != "" {
		t.Errorf("a release was made of the image with no command:\n%s", out)
	}
}
