package controller

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Blobs is the blobstore as the controller uses it: to serve and store
// image layers (flynn export and import) and to delete the layers of
// deleted releases. *blobclient.Client implements it.
type Blobs interface {
	// URL is the full URL of the blob at path.
	URL(path string) string
	Get(ctx context.Context, path string) (io.ReadCloser, api.BlobInfo, error)
	Put(ctx context.Context, path string, r io.Reader, opts *blobclient.PutOptions) (api.BlobInfo, error)
	Delete(ctx context.Context, path string) error
}

func (s *Server) blobs() (Blobs, error) {
	if s.cfg.Blobs == nil {
		return nil, &api.Error{Code: api.CodeUnavailable, Message: "this controller has no blobstore configured"}
	}
	return s.cfg.Blobs, nil
}

// blobPath is the path in the blobstore of a layer URL, when the layer is
// in it.
func (s *Server) blobPath(layerURL string) (string, bool) {
	if s.cfg.Blobs == nil {
		return "", false
	}
	base := strings.TrimSuffix(s.cfg.Blobs.URL("/"), "/")
	rest, ok := strings.CutPrefix(layerURL, base+"/")
	if !ok {
		return "", false
	}
	p, err := url.PathUnescape(rest)
	if err != nil || strings.Contains("/"+p+"/", "/../") {
		return "", false
	}
	return "/" + p, true
}

// getLayer serves GET /artifacts/{id}/layers/{layer}: the blob of one
// layer of a flynn artifact, when it is in the blobstore (a stack layer
// that every host holds is not).
func (s *Server) getLayer(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.blobs(); err != nil {
		return err
	}
	a, err := s.store.GetArtifact(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	id := r.PathValue("layer")
	var layer *api.ImageLayer
	if a.Manifest != nil {
		for _, rf := range a.Manifest.Rootfs {
			for _, l := range rf.Layers {
				if l != nil && l.ID == id {
					layer = l
				}
			}
		}
	}
	if layer == nil {
		return api.NotFound("artifact %s has no layer %q", a.ID, id)
	}
	p, ok := s.blobPath(layer.URL)
	if !ok {
		return api.NotFound("layer %s of artifact %s is not in the blobstore (it is at %s)", id, a.ID, layer.URL)
	}
	rc, info, err := s.cfg.Blobs.Get(r.Context(), p)
	if err != nil {
		if errors.Is(err, api.ErrNotFound) {
			return api.NotFound("the blob of layer %s of artifact %s is gone from the blobstore", id, a.ID)
		}
		return fmt.Errorf("get layer %s: %w", id, err)
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	if layer.Hashes["sha256"] != "" {
		w.Header().Set(api.BlobSHA256Header, layer.Hashes["sha256"])
	}
	w.WriteHeader(http.StatusOK)
	io.Copy(w, rc)
	return nil
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// putLayer serves PUT /layers/{sha256}: it stores the body, a layer tar
// (gzipped or not) whose sha256 is the path's, in the blobstore at
// /layers/<sha256>.tgz and replies with the api.ImageLayer that an
// artifact's manifest lists (flynn import). The blobstore refuses a body
// with another hash.
func (s *Server) putLayer(w http.ResponseWriter, r *http.Request) error {
	blobs, err := s.blobs()
	if err != nil {
		return err
	}
	sum := r.PathValue("id")
	if !sha256Re.MatchString(sum) {
		return api.Validation("id", "the layer id must be its sha256 in lower-case hex")
	}
	if r.ContentLength == 0 {
		return api.Validation("", "the request body (the layer tar) is empty")
	}
	// A layer is streamed to the blobstore, whose own limit applies, not
	// the server's for JSON bodies.
	httpapi.SetMaxBody(r, -1)
	br := bufio.NewReader(r.Body)
	typ := api.LayerTypeTar
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		typ = api.LayerTypeTarGz
	}
	p := "/layers/" + sum + ".tgz"
	info, err := blobs.Put(r.Context(), p, br, &blobclient.PutOptions{SHA256: sum, Size: max(r.ContentLength, 0)})
	if err != nil {
		if e, ok := api.AsError(err); ok && e.HTTPStatus() < 500 {
			return api.Validation("", "the blobstore refused the layer: %s", e.Message)
		}
		return fmt.Errorf("store layer %s: %w", sum, err)
	}
	return ok(w, &api.ImageLayer{ID: sum, Type: typ, Length: info.Size, Hashes: map[string]string{"sha256": sum}, URL: blobs.URL(p)})
}

// unusedLayerBlobs returns the blobstore paths of the layers of rels'
// artifacts that no other release uses, but for the image registry's
// blobs, which its manifests still name.
func (s *Server) unusedLayerBlobs(ctx context.Context, rels []*api.Release) ([]string, error) {
	if s.cfg.Blobs == nil {
		return nil, nil
	}
	gone := map[string]bool{}
	for _, r := range rels {
		gone[r.ID] = true
	}
	all, err := s.store.ListReleases(ctx, "")
	if err != nil {
		return nil, err
	}
	inUse := map[string]bool{}
	candidates := map[string]bool{}
	var order []string
	for _, r := range all {
		for _, aid := range r.ArtifactIDs {
			a, err := s.store.GetArtifact(ctx, aid)
			if err != nil || a.Manifest == nil {
				continue
			}
			for _, rf := range a.Manifest.Rootfs {
				for _, l := range rf.Layers {
					p, ok := s.blobPath(l.URL)
					if !ok || strings.HasPrefix(p, api.RegistryBlobDir) {
						continue
					}
					if !gone[r.ID] {
						inUse[p] = true
					} else if !candidates[p] {
						candidates[p] = true
						order = append(order, p)
					}
				}
			}
		}
	}
	var out []string
	for _, p := range order {
		if !inUse[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// deleteBlobs deletes blobs after the releases using them are gone; a
// failure leaves an orphaned blob, which is logged.
func (s *Server) deleteBlobs(ctx context.Context, paths []string) {
	for _, p := range paths {
		if err := s.cfg.Blobs.Delete(ctx, p); err != nil && !errors.Is(err, api.ErrNotFound) {
			s.log.Warn("delete blob of a deleted release", "path", p, "err", err)
		}
	}
}
