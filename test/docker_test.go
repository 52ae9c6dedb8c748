package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flynnrebuilt/flynn/api"
)

// TestDockerPush pushes an image assembled in the test (static busybox,
// its own command, env, working dir and user) as crane does, with
// go-containerregistry's remote.Write, to https://images.DOMAIN through
// the router with the cluster key; pulls it back; then deploys it from a
// docker save file with flynn docker push, and the app serves through the
// router, and a second version from an OCI layout directory. A wrong key gets 401; an image with no command is refused with
// a one-line error and no release.
func TestDockerPush(t *testing.T) {
	c := startE2ECluster(t, nil)
	key, _ := clusterKey(t, c)
	img := newBusyboxImage(t, v1.Config{
		Entrypoint: []string{"/bin/busybox", "sh", "-c"},
		Cmd:        []string{`busybox mkdir -p www && echo "hello from $GREETING as $(busybox id -u) in $(pwd)" > www/index.html && exec busybox httpd -f -p "$PORT" -h www`},
		Env:        []string{"PATH=/bin", "GREETING=the pushed image"},
		WorkingDir: "/srv",
		User:       "4242",
	})

	// Through the router's TLS port, whatever the name resolves to. The
	// cluster's certificate is not the point here.
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", c.httpsPort))
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	ref, err := name.ParseReference(fmt.Sprintf("images.%s:%d/dockerapp:v1", c.domain, c.httpsPort))
	if err != nil {
		t.Fatal(err)
	}
	ctx := within(t, 2*time.Minute)
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr),
		remote.WithAuth(&authn.Basic{Username: "crane", Password: "wrong"})); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("push with a wrong key: %v, want 401", err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr),
		remote.WithAuth(&authn.Basic{Username: "crane", Password: key})); err != nil {
		t.Fatalf("push to images.%s: %v\n%s", c.domain, err, c.watch())
	}
	pulled, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(tr),
		remote.WithAuth(&authn.Basic{Username: "crane", Password: key}))
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	want, _ := img.Digest()
	if got, err := pulled.Digest(); err != nil || got != want {
		t.Errorf("pulled %s (%v), pushed %s", got, err, want)
	}

	dir := t.TempDir()
	// Layers of any size go through the router.
	var routes []api.Route
	if err := json.Unmarshal([]byte(c.flynn(dir, "-a", "gitreceive", "route", "--json")), &routes); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r api.Route) bool {
		return r.Domain == "images."+c.domain && r.MaxBodyBytes == -1
	}) {
		t.Errorf("no images.%s route without a body limit: %+v", c.domain, routes)
	}

	flynn := func(args ...string) (string, string, error) {
		cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
		cmd.Dir = dir
		cmd.Env = c.env()
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	saved := filepath.Join(dir, "image.tar")
	tag, _ := name.NewTag("dockerapp:v1")
	if err := tarball.WriteToFile(saved, tag, img); err != nil {
		t.Fatal(err)
	}
	c.flynn(dir, "create", "dockerapp")
	out, errOut, err := flynn("-a", "dockerapp", "docker", "push", saved)
	if err != nil {
		t.Fatalf("docker push: %v\n%s%s\n%s", err, out, errOut, c.watch())
	}
	if !strings.Contains(out, "web=1") {
		t.Errorf("docker push did not scale web=1:\n%s", out)
	}
	body := "hello from the pushed image as 4242 in /srv"
	waitFor(t, within(t, 2*time.Minute), "dockerapp to answer", c.watch(), func() (bool, error) {
		status, b := c.curl("dockerapp."+c.domain, "/")
		return status == 200 && strings.Contains(b, body), fmt.Errorf("%d %s", status, b)
	})

	// A new version from an OCI layout directory: the release keeps the
	// process types and the new image serves.
	img2 := newBusyboxImage(t, v1.Config{
		Entrypoint: []string{"/bin/busybox", "sh", "-c"},
		Cmd:        []string{`busybox mkdir -p www && echo "version two" > www/index.html && exec busybox httpd -f -p "$PORT" -h www`},
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/srv",
		User:       "4242",
	})
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img2); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = flynn("-a", "dockerapp", "docker", "push", "--tag", "v2", filepath.Join(dir, "layout"))
	if err != nil {
		t.Fatalf("docker push of an OCI layout: %v\n%s%s\n%s", err, out, errOut, c.watch())
	}
	waitFor(t, within(t, 2*time.Minute), "dockerapp to serve version two", c.watch(), func() (bool, error) {
		status, b := c.curl("dockerapp."+c.domain, "/")
		return status == 200 && strings.Contains(b, "version two"), fmt.Errorf("%d %s", status, b)
	})

	nocmd := filepath.Join(dir, "nocmd.tar")
	if err := tarball.WriteToFile(nocmd, tag, newBusyboxImage(t, v1.Config{Env: []string{"PATH=/bin"}})); err != nil {
		t.Fatal(err)
	}
	c.flynn(dir, "create", "nocmd")
	_, errOut, err = flynn("-a", "nocmd", "docker", "push", nocmd)
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "has no command") {
		t.Errorf("docker push of an image with no command: err=%v, want a one-line error, got:\n%s", err, errOut)
	}
	if out := strings.TrimSpace(c.flynn(dir, "-a", "nocmd", "release", "-q")); out != "" {
		t.Errorf("a release was made of the image with no command:\n%s", out)
	}
}

func isStatus(err error, status int) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == status
}
