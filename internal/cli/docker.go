package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

func newDockerCmd(s *state) *cobra.Command {
	docker := &cobra.Command{
		Use:     "docker",
		Short:   "Push OCI images to the cluster's registry and deploy them",
		Example: "  flynn docker push image.tar",
		Args:    cobra.NoArgs,
	}
	var tag string
	push := &cobra.Command{
		Use:   "push [--tag TAG] IMAGE",
		Short: "Push an image to the cluster (images.DOMAIN) and deploy it",
		Long: `Push IMAGE to the cluster's registry as APP:TAG, then create a release of it
and deploy that. IMAGE is a file of docker save, a directory in the OCI image
layout, or a reference to pull from a registry (docker://REF or REF).

The release keeps the app's process types; an app's first image release gets
one, web: the image's own entrypoint and cmd serving HTTP on $PORT, scaled to
1. Processes run with the image's env, working dir and user (not root: nobody
instead).

The registry at images.DOMAIN takes pushes from docker, podman and crane
too: log in with any user name and the cluster key as the password (flynn
cluster show). Every image pushed becomes an artifact; flynn docker push is
what deploys one.`,
		Example: `  docker save myimage:v1 -o image.tar && flynn docker push image.tar
  flynn -a web docker push --tag v2 ./oci-layout
  flynn docker push ghcr.io/example/web:v1`,
		Args: exactArgs(1, "an image file, OCI layout directory or reference"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.dockerPush(cmd.Context(), cmd, args[0], tag)
		},
	}
	push.Flags().StringVarP(&tag, "tag", "t", "latest", "tag to push the image as")
	docker.AddCommand(push)
	return docker
}

// loadImage opens IMAGE: a docker save file, an OCI layout directory, or
// a registry reference.
func loadImage(ctx context.Context, src string) (v1.Image, error) {
	if fi, err := os.Stat(src); err == nil {
		if fi.IsDir() {
			return layoutImage(src)
		}
		img, err := tarball.ImageFromPath(src, nil)
		if err != nil {
			return nil, fmt.Errorf("read %s as a docker save file: %v", src, err)
		}
		return img, nil
	}
	if strings.HasPrefix(src, ".") || filepath.IsAbs(src) {
		return nil, fmt.Errorf("%s: no such file or directory", src)
	}
	ref, err := name.ParseReference(imageRef(src))
	if err != nil {
		return nil, fmt.Errorf("%s is not a file, a directory or an image reference", src)
	}
	return remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
}

// layoutImage is the linux/amd64 image (or the only image) of an OCI
// layout directory.
func layoutImage(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s as an OCI layout: %v", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read %s as an OCI layout: %v", dir, err)
	}
	var imgs []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() && (d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == "amd64")) {
			imgs = append(imgs, d)
		}
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("OCI layout %s holds %d linux/amd64 images: keep one", dir, len(imgs))
	}
	return idx.Image(imgs[0].Digest)
}

// imagesHost is the host[:port] of the cluster's registry: images.DOMAIN
// next to git.DOMAIN.
func imagesHost(cl *Cluster) (string, error) {
	u, err := url.Parse(cl.GitURL)
	if err != nil || !strings.HasPrefix(u.Host, "git.") {
		return "", fmt.Errorf("cluster %q has no git.DOMAIN URL to find images.DOMAIN by: re-add it with flynn cluster add", cl.Name)
	}
	return "images." + strings.TrimPrefix(u.Host, "git."), nil
}

func (s *state) dockerPush(ctx context.Context, cmd *cobra.Command, src, tag string) error {
	out := cmd.OutOrStdout()
	c, app, err := s.appClient(ctx)
	if err != nil {
		return err
	}
	cl, err := s.cluster()
	if err != nil {
		return err
	}
	host, err := imagesHost(cl)
	if err != nil {
		return err
	}
	img, err := loadImage(ctx, src)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read the config of %s: %v", src, err)
	}
	if (cf.OS != "" && cf.OS != "linux") || (cf.Architecture != "" && cf.Architecture != "amd64") {
		return fmt.Errorf("image %s is for %s/%s: the cluster runs linux/amd64 images", src, cf.OS, cf.Architecture)
	}
	// The release: the current process types, or web for a first one.
	var procs map[string]*api.ProcessType
	if app.ReleaseID != "" {
		cur, err := c.GetRelease(ctx, app.ReleaseID)
		if err != nil {
			return explain(err)
		}
		procs = cur.Processes
	}
	defaultWeb := procs == nil
	if defaultWeb {
		procs = map[string]*api.ProcessType{"web": webProcess(app.Name)}
	}
	if len(cf.Config.Entrypoint) == 0 && len(cf.Config.Cmd) == 0 {
		for _, pt := range procs {
			if len(pt.Args) == 0 {
				return fmt.Errorf("image %s has no command (no Entrypoint or Cmd): build it with one", src)
			}
		}
	}

	ref, err := name.ParseReference(host + "/" + app.Name + ":" + tag)
	if err != nil {
		return fmt.Errorf("invalid tag %q: %v", tag, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Pushing %s to %s\n", src, ref)
	err = remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(cl.HTTPClient().Transport),
		remote.WithAuth(&authn.Basic{Username: "flynn", Password: cl.Key}))
	if err != nil {
		return fmt.Errorf("push to %s: %v", ref, firstLine(err.Error()))
	}
	art, err := pushedArtifact(ctx, c, app.Name, digest.String())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Pushed %s@%s (artifact %s)\n", app.Name, digest, art.ID)
	var created *api.Release
	err = newRelease(ctx, cmd, c, app, func(r *api.Release) error {
		created = r
		r.ArtifactIDs = []string{art.ID}
		// r is the current release once any deployment under way
		// ended: its process types, unless it has none.
		if len(r.Processes) == 0 {
			r.Processes = procs
		}
		return nil
	})
	if err != nil || !defaultWeb {
		return err
	}
	return s.scaleFirstWeb(ctx, out, c, app, created)
}

// pushedArtifact is the newest artifact the registry made of repo@digest.
func pushedArtifact(ctx context.Context, c *controllerclient.Client, repo, digest string) (*api.Artifact, error) {
	arts, err := c.ListArtifacts(ctx)
	if err != nil {
		return nil, explain(err)
	}
	var found *api.Artifact
	for _, a := range arts {
		if a.Meta[api.MetaRegistryRepository] == repo && a.Meta[api.MetaRegistryDigest] == digest &&
			(found == nil || a.CreatedAt.After(found.CreatedAt)) {
			found = a
		}
	}
	if found == nil {
		return nil, errors.New("the cluster's registry made no artifact of the image: its layers must be tar or tar+gzip (see flynn -a gitreceive log)")
	}
	return found, nil
}
