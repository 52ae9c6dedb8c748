// Package ociregistry serves the OCI distribution API (the push and pull half
// of the registry protocol docker, podman and crane speak) on the
// blobstore, so the cluster is an image registry at images.DOMAIN. Every
// piece of state lives in the blobstore and nothing in memory, so any
// instance serves any request of a push and nothing is lost on restart:
//
//	/registry/blobs/sha256/<hex>              layers and configs, by digest
//	/registry/manifests/sha256/<hex>          manifests, by digest
//	/registry/tags/<repository>/<tag>         the digest a tag names
//	/registry/uploads/<id>/<offset>           chunks of an unfinished upload
//
// Blobs are content-addressed and shared by all repositories. A blob's
// layer is the same stream a Flynn artifact's layer is (a tar or tar.gz
// whose sha256 is its digest), so hosts fetch pushed layers from the
// blobstore by digest, once each.
package ociregistry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Blobs is the blobstore as the registry uses it (*blobclient.Client).
type Blobs interface {
	Put(ctx context.Context, path string, r io.Reader, opts *blobclient.PutOptions) (api.BlobInfo, error)
	Get(ctx context.Context, path string) (io.ReadCloser, api.BlobInfo, error)
	Head(ctx context.Context, path string) (api.BlobInfo, error)
	Delete(ctx context.Context, path string) error
	List(ctx context.Context, dir string) ([]api.BlobEntry, error)
	// URL is the address of the blob at path for the hosts.
	URL(path string) string
}

// Artifacts records images as artifacts (*controllerclient.Client).
type Artifacts interface {
	CreateArtifact(ctx context.Context, a *api.Artifact) error
}

// Config configures a Registry.
type Config struct {
	Blobs Blobs
	// Auth checks the cluster key, the password of HTTP Basic auth (any
	// user name).
	Auth *httpapi.KeyAuth
	// Artifacts, when set, gets an artifact for every image manifest
	// pushed (see Artifact).
	Artifacts Artifacts
}

// Media types of manifests.
const (
	MediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex       = "application/vnd.oci.image.index.v1+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// maxManifest bounds a manifest's size, as other registries do.
const maxManifest = 4 << 20

// Registry is an http.Handler for /v2/.
type Registry struct {
	blobs     Blobs
	auth      *httpapi.KeyAuth
	artifacts Artifacts
	log       *slog.Logger
}

// New returns a registry.
func New(cfg Config, log *slog.Logger) *Registry {
	return &Registry{blobs: cfg.Blobs, auth: cfg.Auth, artifacts: cfg.Artifacts, log: log}
}

// BlobPath is the blobstore path of the blob with digest "sha256:<hex>".
func BlobPath(digest string) string {
	return "/registry/blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

func manifestPath(digest string) string {
	return "/registry/manifests/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

func tagPath(repo, tag string) string { return "/registry/tags/" + repo + "/" + tag }

func uploadDir(id string) string { return "/registry/uploads/" + id + "/" }

var (
	repoName = regexp.MustCompile(`^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$`)
	tagName  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	digestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	uploadID = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// regError is an error in the distribution API's format.
type regError struct {
	status  int
	code    string
	message string
}

func (e *regError) Error() string { return e.message }

func newErr(status int, code, format string, args ...any) error {
	return &regError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// ServeHTTP serves the distribution API.
func (g *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !g.auth.Check(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="flynn"`)
		writeErr(w, &regError{status: http.StatusUnauthorized, code: "UNAUTHORIZED", message: "invalid key: log in with the cluster key as the password (any user name)"})
		return
	}
	if err := g.serve(w, r); err != nil {
		var re *regError
		if !errors.As(err, &re) {
			g.log.Error("registry request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			re = &regError{status: http.StatusInternalServerError, code: "UNKNOWN", message: err.Error()}
		}
		writeErr(w, re)
	}
}

func writeErr(w http.ResponseWriter, e *regError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": e.code, "message": e.message}}})
}

// serve routes by the path's last known element, since repository names
// hold slashes.
func (g *Registry) serve(w http.ResponseWriter, r *http.Request) error {
	p := strings.TrimPrefix(r.URL.Path, "/v2")
	if p == "/" || p == "" {
		return nil // API version check
	}
	p = strings.TrimPrefix(p, "/")
	ctx := r.Context()
	for _, sep := range []string{"/blobs/uploads/", "/blobs/uploads", "/manifests/", "/blobs/", "/tags/list"} {
		i := strings.LastIndex(p, sep)
		if i <= 0 {
			continue
		}
		repo, rest := p[:i], p[i+len(sep):]
		if !repoName.MatchString(repo) {
			return newErr(http.StatusBadRequest, "NAME_INVALID", "invalid repository name %q", repo)
		}
		switch sep {
		case "/blobs/uploads/", "/blobs/uploads":
			if rest == "" && r.Method == http.MethodPost {
				return g.startUpload(ctx, w, r, repo)
			}
			if !uploadID.MatchString(rest) {
				return newErr(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "unknown upload %q", rest)
			}
			switch r.Method {
			case http.MethodPatch:
				return g.patchUpload(ctx, w, r, repo, rest)
			case http.MethodPut:
				return g.finishUpload(ctx, w, r, repo, rest)
			case http.MethodGet:
				return g.uploadStatus(ctx, w, repo, rest)
			case http.MethodDelete:
				g.deleteUpload(ctx, rest)
				w.WriteHeader(http.StatusNoContent)
				return nil
			}
		case "/blobs/":
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				return g.getBlob(ctx, w, r, rest)
			}
		case "/manifests/":
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				return g.getManifest(ctx, w, r, repo, rest)
			case http.MethodPut:
				return g.putManifest(ctx, w, r, repo, rest)
			}
		case "/tags/list":
			if rest == "" && r.Method == http.MethodGet {
				return g.listTags(ctx, w, repo)
			}
		}
		return newErr(http.StatusMethodNotAllowed, "UNSUPPORTED", "%s is not supported on %s", r.Method, r.URL.Path)
	}
	return newErr(http.StatusNotFound, "NOT_FOUND", "no registry endpoint at %s", r.URL.Path)
}

func checkDigest(d string) error {
	if !digestRe.MatchString(d) {
		return newErr(http.StatusBadRequest, "DIGEST_INVALID", "digest %q is not sha256:<64 hex digits>", d)
	}
	return nil
}

func (g *Registry) getBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, digest string) error {
	if err := checkDigest(digest); err != nil {
		return err
	}
	unknown := newErr(http.StatusNotFound, "BLOB_UNKNOWN", "blob %s is not in the registry", digest)
	if r.Method == http.MethodHead {
		info, err := g.blobs.Head(ctx, BlobPath(digest))
		if errors.Is(err, api.ErrNotFound) {
			return unknown
		} else if err != nil {
			return err
		}
		blobHeaders(w, digest, info.Size, "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	rc, info, err := g.blobs.Get(ctx, BlobPath(digest))
	if errors.Is(err, api.ErrNotFound) {
		return unknown
	} else if err != nil {
		return err
	}
	defer rc.Close()
	blobHeaders(w, digest, info.Size, "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		g.log.Warn("registry blob download ended early", "digest", digest, "err", err)
	}
	return nil
}

func blobHeaders(w http.ResponseWriter, digest string, size int64, typ string) {
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Content-Type", typ)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
}

// startUpload begins an upload, or stores a blob sent whole
// (?digest=), or mounts one the registry has (?mount=: every blob is in
// every repository).
func (g *Registry) startUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, repo string) error {
	q := r.URL.Query()
	if d := q.Get("mount"); d != "" {
		if checkDigest(d) == nil {
			if _, err := g.blobs.Head(ctx, BlobPath(d)); err == nil {
				return created(w, repo, d)
			}
		}
	}
	if d := q.Get("digest"); d != "" {
		if err := checkDigest(d); err != nil {
			return err
		}
		httpapi.SetMaxBody(r, -1)
		if err := g.putBlob(ctx, d, r.Body); err != nil {
			return err
		}
		return created(w, repo, d)
	}
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return accepted(w, repo, id, 0)
}

func created(w http.ResponseWriter, repo, digest string) error {
	w.Header().Set("Location", "/v2/"+repo+"/blobs/"+digest)
	w.Header().Set("Docker-Content-Digest", digest)
	w.WriteHeader(http.StatusCreated)
	return nil
}

func accepted(w http.ResponseWriter, repo, id string, size int64) error {
	w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/"+id)
	w.Header().Set("Docker-Upload-UUID", id)
	end := size - 1
	if end < 0 {
		end = 0
	}
	w.Header().Set("Range", fmt.Sprintf("0-%d", end))
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// putBlob stores r as the blob digest; the blobstore refuses it when its
// sha256 differs.
func (g *Registry) putBlob(ctx context.Context, digest string, r io.Reader) error {
	hexd := strings.TrimPrefix(digest, "sha256:")
	if _, err := g.blobs.Put(ctx, BlobPath(digest), r, &blobclient.PutOptions{SHA256: hexd}); err != nil {
		if errors.Is(err, api.ErrValidation) {
			return newErr(http.StatusBadRequest, "DIGEST_INVALID", "the content does not match digest %s", digest)
		}
		return fmt.Errorf("store blob %s: %w", digest, err)
	}
	return nil
}

// chunks lists an upload's chunks in order and its size so far.
func (g *Registry) chunks(ctx context.Context, id string) ([]string, int64, error) {
	ents, err := g.blobs.List(ctx, uploadDir(id))
	if errors.Is(err, api.ErrNotFound) {
		return nil, 0, nil
	} else if err != nil {
		return nil, 0, err
	}
	var names []string
	var size int64
	for _, e := range ents {
		if !e.Dir {
			names = append(names, e.Name)
			size += e.Size
		}
	}
	slices.Sort(names) // zero-padded offsets
	return names, size, nil
}

// appendChunk stores body as the upload's next chunk, named by its offset.
func (g *Registry) appendChunk(ctx context.Context, r *http.Request, id string) (int64, error) {
	_, size, err := g.chunks(ctx, id)
	if err != nil {
		return 0, err
	}
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, _, _ := strings.Cut(cr, "-")
		if n, err := strconv.ParseInt(start, 10, 64); err != nil || n != size {
			return 0, newErr(http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID", "chunk starts at %s, the upload has %d bytes", start, size)
		}
	}
	httpapi.SetMaxBody(r, -1)
	info, err := g.blobs.Put(ctx, uploadDir(id)+fmt.Sprintf("%020d", size), r.Body, nil)
	if err != nil {
		return 0, fmt.Errorf("store upload chunk: %w", err)
	}
	return size + info.Size, nil
}

func (g *Registry) patchUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, repo, id string) error {
	size, err := g.appendChunk(ctx, r, id)
	if err != nil {
		return err
	}
	return accepted(w, repo, id, size)
}

func (g *Registry) uploadStatus(ctx context.Context, w http.ResponseWriter, repo, id string) error {
	_, size, err := g.chunks(ctx, id)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	return accepted(w, repo, id, size)
}

// finishUpload appends the last chunk (if any), then stores the chunks as
// one blob, checked against ?digest=.
func (g *Registry) finishUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, repo, id string) error {
	digest := r.URL.Query().Get("digest")
	if err := checkDigest(digest); err != nil {
		return err
	}
	if r.ContentLength != 0 {
		if _, err := g.appendChunk(ctx, r, id); err != nil {
			return err
		}
	}
	names, _, err := g.chunks(ctx, id)
	if err != nil {
		return err
	}
	defer g.deleteUpload(context.WithoutCancel(ctx), id)
	pr, pw := io.Pipe()
	go func() {
		for _, n := range names {
			rc, _, err := g.blobs.Get(ctx, uploadDir(id)+n)
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			_, err = io.Copy(pw, rc)
			rc.Close()
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	err = g.putBlob(ctx, digest, pr)
	pr.CloseWithError(errors.New("upload ended"))
	if err != nil {
		return err
	}
	return created(w, repo, digest)
}

func (g *Registry) deleteUpload(ctx context.Context, id string) {
	names, _, err := g.chunks(ctx, id)
	if err != nil {
		return
	}
	for _, n := range names {
		g.blobs.Delete(ctx, uploadDir(id)+n)
	}
}

// resolve returns the digest ref names in repo: a digest, or a tag.
func (g *Registry) resolve(ctx context.Context, repo, ref string) (string, error) {
	if strings.HasPrefix(ref, "sha256:") {
		return ref, checkDigest(ref)
	}
	if !tagName.MatchString(ref) {
		return "", newErr(http.StatusBadRequest, "TAG_INVALID", "invalid tag %q", ref)
	}
	rc, _, err := g.blobs.Get(ctx, tagPath(repo, ref))
	if errors.Is(err, api.ErrNotFound) {
		return "", newErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "%s:%s is not in the registry", repo, ref)
	} else if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 128))
	if err != nil {
		return "", err
	}
	d := strings.TrimSpace(string(b))
	if checkDigest(d) != nil {
		return "", fmt.Errorf("tag %s:%s holds %q, not a digest", repo, ref, d)
	}
	return d, nil
}

// Manifest returns the raw manifest ref (a tag or digest) names in repo,
// its digest and media type.
func (g *Registry) Manifest(ctx context.Context, repo, ref string) ([]byte, string, string, error) {
	digest, err := g.resolve(ctx, repo, ref)
	if err != nil {
		return nil, "", "", err
	}
	rc, _, err := g.blobs.Get(ctx, manifestPath(digest))
	if errors.Is(err, api.ErrNotFound) {
		return nil, "", "", newErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s is not in the registry", digest)
	} else if err != nil {
		return nil, "", "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, "", "", err
	}
	return b, digest, mediaType(b), nil
}

func (g *Registry) getManifest(ctx context.Context, w http.ResponseWriter, r *http.Request, repo, ref string) error {
	b, digest, typ, err := g.Manifest(ctx, repo, ref)
	if err != nil {
		return err
	}
	blobHeaders(w, digest, int64(len(b)), typ)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(b)
	}
	return nil
}

// mediaType is the manifest's own mediaType, or the OCI type its shape
// says when it names none.
func mediaType(b []byte) string {
	var m struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	json.Unmarshal(b, &m)
	switch {
	case m.MediaType != "":
		return m.MediaType
	case m.Manifests != nil:
		return MediaTypeOCIIndex
	default:
		return MediaTypeOCIManifest
	}
}

// putManifest stores a manifest by digest after checking that the blobs
// it refers to are here, and points the tag at it.
func (g *Registry) putManifest(ctx context.Context, w http.ResponseWriter, r *http.Request, repo, ref string) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxManifest+1))
	if err != nil {
		return err
	}
	if len(b) > maxManifest {
		return newErr(http.StatusRequestEntityTooLarge, "SIZE_INVALID", "manifest is larger than %d bytes", maxManifest)
	}
	sum := sha256.Sum256(b)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if strings.HasPrefix(ref, "sha256:") {
		if ref != digest {
			return newErr(http.StatusBadRequest, "DIGEST_INVALID", "manifest digest is %s, not %s", digest, ref)
		}
	} else if !tagName.MatchString(ref) {
		return newErr(http.StatusBadRequest, "TAG_INVALID", "invalid tag %q", ref)
	}
	var m struct {
		Config    *descriptor  `json:"config"`
		Layers    []descriptor `json:"layers"`
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return newErr(http.StatusBadRequest, "MANIFEST_INVALID", "manifest is not JSON: %v", err)
	}
	refs := m.Layers
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	for _, d := range refs {
		if err := checkDigest(d.Digest); err != nil {
			return err
		}
		if _, err := g.blobs.Head(ctx, BlobPath(d.Digest)); err != nil {
			return newErr(http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "blob %s is not in the registry: push it first", d.Digest)
		}
	}
	for _, d := range m.Manifests {
		if err := checkDigest(d.Digest); err != nil {
			return err
		}
		if _, err := g.blobs.Head(ctx, manifestPath(d.Digest)); err != nil {
			return newErr(http.StatusBadRequest, "MANIFEST_UNKNOWN", "manifest %s is not in the registry: push it first", d.Digest)
		}
	}
	// The image as an artifact, made before anything is stored so a bad
	// config refuses the push. An image the cluster cannot run (another
	// platform, say, of a multi-platform push) is stored without one.
	var art *api.Artifact
	if g.artifacts != nil && m.Config != nil {
		art, err = g.Artifact(ctx, repo, digest, b)
		var nr *notRunnableError
		if errors.As(err, &nr) {
			g.log.Info("image stored without an artifact", "repository", repo, "digest", digest, "reason", nr.reason)
		} else if err != nil {
			return err
		}
	}
	if _, err := g.blobs.Put(ctx, manifestPath(digest), bytes.NewReader(b), &blobclient.PutOptions{SHA256: hex.EncodeToString(sum[:])}); err != nil {
		return fmt.Errorf("store manifest: %w", err)
	}
	// The tag last: a push that failed before it is sent again whole
	// (clients skip a manifest whose tag is there), artifact and all.
	if art != nil {
		if err := g.artifacts.CreateArtifact(ctx, art); err != nil {
			return fmt.Errorf("record %s@%s as an artifact: %w", repo, digest, err)
		}
	}
	if !strings.HasPrefix(ref, "sha256:") {
		if _, err := g.blobs.Put(ctx, tagPath(repo, ref), strings.NewReader(digest), nil); err != nil {
			return fmt.Errorf("store tag %s: %w", ref, err)
		}
	}
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+digest)
	w.Header().Set("Docker-Content-Digest", digest)
	w.WriteHeader(http.StatusCreated)
	return nil
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

func (g *Registry) listTags(ctx context.Context, w http.ResponseWriter, repo string) error {
	ents, err := g.blobs.List(ctx, "/registry/tags/"+repo+"/")
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	tags := []string{}
	for _, e := range ents {
		if !e.Dir {
			tags = append(tags, e.Name)
		}
	}
	slices.Sort(tags)
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": tags})
}
