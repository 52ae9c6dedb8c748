package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// imageRef is the OCI reference of a docker artifact URI
// (docker://REF or REF).
func imageRef(uri string) string { return strings.TrimPrefix(uri, "docker://") }

// imageConfig reads an image's config from its registry (with the
// credentials of docker login, when there are some).
func imageConfig(ctx context.Context, uri string) (*v1.Config, error) {
	r, err := name.ParseReference(imageRef(uri))
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %v", imageRef(uri), err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	return &cf.Config, nil
}

// webProcess is the process type of an image without a Procfile: the
// image's own command serving HTTP on $PORT (8080), registered as
// APP-web with a TCP health check, as a pushed app's web type is.
func webProcess(app string) *api.ProcessType {
	return &api.ProcessType{Ports: []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{
		Name: app + "-web", Create: true, Check: &api.HealthCheck{Type: "tcp"},
	}}}}
}

// checkImageCommand makes sure every process type of rel has a command:
// its own args or the image's entrypoint and cmd. An image the CLI cannot
// read is left to the hosts, with a note.
func checkImageCommand(ctx context.Context, out io.Writer, uri string, rel *api.Release) error {
	need := false
	for _, pt := range rel.Processes {
		if len(pt.Args) == 0 {
			need = true
		}
	}
	if !need {
		return nil
	}
	if _, err := name.ParseReference(imageRef(uri)); err != nil {
		return fmt.Errorf("invalid image reference %q: %v", imageRef(uri), err)
	}
	cfg, err := imageConfig(ctx, uri)
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return fmt.Errorf("image %s is not in its registry: push it first", imageRef(uri))
	}
	if err != nil {
		fmt.Fprintf(out, "note: cannot read the image from here (%v); the hosts will\n", firstLine(err.Error()))
		return nil
	}
	if len(cfg.Entrypoint) == 0 && len(cfg.Cmd) == 0 {
		return fmt.Errorf("image %s has no command (no Entrypoint or Cmd): build it with one, or give the process types' args with -f", imageRef(uri))
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// scaleFirstWeb scales web=1 when rel has a web type and its formation
// runs none (an app's first release), and waits until it serves.
func (s *state) scaleFirstWeb(ctx context.Context, out io.Writer, c *controllerclient.Client, app *api.App, rel *api.Release) error {
	if rel.Processes["web"] == nil {
		return nil
	}
	f, err := c.GetFormation(ctx, app.ID, rel.ID)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	if f != nil && f.Processes["web"] > 0 {
		return nil
	}
	stream, err := c.StreamEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeJob, api.EventTypeScaleRequest}})
	if err != nil {
		return err
	}
	defer stream.Close()
	fmt.Fprintln(out, "Scaling the first release to web=1")
	req, err := c.ScaleAppRelease(ctx, app.ID, rel.ID, map[string]int{"web": 1}, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	go func() { <-ctx.Done(); stream.Close() }()
	lastLines := func(typ, job string) []string {
		return s.lastLogLines(context.WithoutCancel(ctx), app.ID, typ, job, 10)
	}
	return waitScaleRequest(ctx, out, stream, req, lastLines)
}
