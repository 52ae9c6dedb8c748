package ociregistry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
)

// maxConfig bounds an image config's size.
const maxConfig = 1 << 20

// imageConfig is the part of an OCI image config a job runs with.
type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
		User       string   `json:"User"`
	} `json:"config"`
}

// Artifact turns the image manifest b (digest, pushed to repo) into a Flynn
// artifact: its layers are the registry's blobs in the blobstore, which
// hosts fetch by digest like slug layers, and its default entrypoint is
// the image config's command, env, working dir and user. An image the
// hosts cannot run (not linux/amd64, no layers, layers neither tar nor
// tar+gzip) is a *notRunnableError.
func (g *Registry) Artifact(ctx context.Context, repo, digest string, b []byte) (*api.Artifact, error) {
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, newErr(http.StatusBadRequest, "MANIFEST_INVALID", "manifest is not JSON: %v", err)
	}
	rc, _, err := g.blobs.Get(ctx, BlobPath(m.Config.Digest))
	if err != nil {
		return nil, fmt.Errorf("read image config %s: %w", m.Config.Digest, err)
	}
	defer rc.Close()
	cb, err := io.ReadAll(io.LimitReader(rc, maxConfig))
	if err != nil {
		return nil, fmt.Errorf("read image config %s: %w", m.Config.Digest, err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, newErr(http.StatusBadRequest, "MANIFEST_INVALID", "image config %s is not JSON: %v", m.Config.Digest, err)
	}
	if (cfg.OS != "" && cfg.OS != "linux") || (cfg.Architecture != "" && cfg.Architecture != "amd64") {
		return nil, &notRunnableError{fmt.Sprintf("image is for %s/%s: the cluster runs linux/amd64 images", cfg.OS, cfg.Architecture)}
	}
	rootfs := &api.ImageRootfs{Platform: &api.ImagePlatform{Architecture: "amd64", OS: "linux"}}
	var size int64
	for _, l := range m.Layers {
		typ, err := layerType(l.MediaType)
		if err != nil {
			return nil, err
		}
		hex := strings.TrimPrefix(l.Digest, "sha256:")
		rootfs.Layers = append(rootfs.Layers, &api.ImageLayer{
			ID: hex, Type: typ, Length: l.Size,
			Hashes: map[string]string{"sha256": hex},
			URL:    g.blobs.URL(BlobPath(l.Digest)),
		})
		size += l.Size
	}
	if len(rootfs.Layers) == 0 {
		return nil, &notRunnableError{"image has no layers"}
	}
	ep := &api.Entrypoint{
		Args:       append(append([]string(nil), cfg.Config.Entrypoint...), cfg.Config.Cmd...),
		WorkingDir: cfg.Config.WorkingDir,
		User:       cfg.Config.User,
	}
	for _, kv := range cfg.Config.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if ep.Env == nil {
				ep.Env = map[string]string{}
			}
			ep.Env[k] = v
		}
	}
	return &api.Artifact{
		Type: api.ArtifactTypeFlynn,
		URI:  g.blobs.URL(manifestPath(digest)),
		Meta: map[string]string{api.MetaRegistryRepository: repo, api.MetaRegistryDigest: digest},
		Manifest: &api.ImageManifest{
			Type:        api.ManifestType,
			Entrypoints: map[string]*api.Entrypoint{"_default": ep},
			Rootfs:      []*api.ImageRootfs{rootfs},
		},
		Size: size,
	}, nil
}

// layerType maps an OCI or Docker layer media type to a Flynn one: the
// hosts extract tar and gzipped tar.
func layerType(mt string) (string, error) {
	switch mt {
	case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip":
		return api.LayerTypeTarGz, nil
	case "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar":
		return api.LayerTypeTar, nil
	}
	return "", &notRunnableError{fmt.Sprintf("layer type %q is not supported: the hosts extract tar and tar+gzip", mt)}
}

// notRunnableError says why an image the registry stores is no artifact.
type notRunnableError struct{ reason string }

func (e *notRunnableError) Error() string { return e.reason }
