package image

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Image is a pulled OCI image: its layers in the store, bottom first, and
// the process defaults from its config.
type Image struct {
	Ref        string
	Layers     []string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Pull fetches the OCI image ref (e.g. "docker.io/library/busybox:latest"
// or "127.0.0.1:5000/app@sha256:...", with or without "docker://") for linux/amd64 and imports each
// layer not yet in the store. Registries on loopback are spoken to over
// plain HTTP.
func (s *Store) Pull(ctx context.Context, ref string) (*Image, error) {
	ref = strings.TrimPrefix(ref, "docker://")
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("pull %q: %w", ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("pull %s: config: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("pull %s: layers: %w", ref, err)
	}
	out := &Image{
		Ref:        ref,
		Entrypoint: cfg.Config.Entrypoint,
		Cmd:        cfg.Config.Cmd,
		Env:        cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir,
		User:       cfg.Config.User,
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		if d.Algorithm != "sha256" {
			return nil, fmt.Errorf("pull %s: layer digest %s is not sha256", ref, d)
		}
		if err := s.pullLayer(d.Hex, l); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		out.Layers = append(out.Layers, d.Hex)
	}
	return out, nil
}

func (s *Store) pullLayer(digest string, l v1.Layer) error {
	unlock := s.lock(digest)
	defer unlock()
	if s.Has(digest) {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	return s.extract(digest, teeReader(rc, h), true, h)
}
