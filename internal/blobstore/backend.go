// Package blobstore is Flynn's blob store: an HTTP server that stores and
// serves files (slugs, build caches, repo archives, image layers) on any
// path with PUT, GET, HEAD and DELETE, streaming in both directions, with
// range requests, sha256 checksums and directory listings. Storage sits
// behind the Backend interface; the filesystem backend is the default.
package blobstore

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/flynnrebuilt/flynn/api"
)

// Backend stores blobs. Names are slash-separated relative paths that
// ValidName accepts ("slugs/a.tgz"); the empty name is the root directory.
// Errors are *api.Error values where a client can act on them (not found,
// conflict, validation), so the HTTP layer passes them through.
type Backend interface {
	// Put stores the bytes read from r at name. Readers of name see either
	// the previous blob or the complete new one, never a partial write.
	// When wantSHA256 is not empty and the bytes hash differently, nothing
	// is stored and Put returns a validation error.
	Put(ctx context.Context, name string, r io.Reader, wantSHA256 string) (api.BlobInfo, error)
	// Open returns the blob at name for reading and seeking.
	Open(ctx context.Context, name string) (Object, error)
	// Stat describes the blob at name.
	Stat(ctx context.Context, name string) (api.BlobInfo, error)
	// Delete removes the blob at name.
	Delete(ctx context.Context, name string) error
	// List returns the entries of directory dir, sorted by name.
	List(ctx context.Context, dir string) ([]api.BlobEntry, error)
}

// Object is an open blob. Info describes exactly the bytes being read, even
// if the blob is replaced while it is open.
type Object interface {
	io.ReadSeekCloser
	Info() api.BlobInfo
}

// Limits on names.
const (
	MaxNameBytes    = 1024
	MaxElementBytes = 255
)

// reserved are top-level names the server uses itself.
var reserved = map[string]bool{".well-known": true, tmpDirName: true}

// ValidName checks a blob path as it arrives in a request (with a leading
// slash) and returns the backend name without the leading slash, and
// whether the path names a directory (trailing slash, or the root).
func ValidName(p string) (name string, dir bool, err error) {
	if !strings.HasPrefix(p, "/") {
		return "", false, api.Validation("path", "path must start with /")
	}
	if len(p) > MaxNameBytes {
		return "", false, api.Validation("path", "path is longer than %d bytes", MaxNameBytes)
	}
	if !utf8.ValidString(p) {
		return "", false, api.Validation("path", "path is not valid UTF-8")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return "", false, api.Validation("path", "path contains a control character (%U)", r)
		}
	}
	name = p[1:]
	if name == "" {
		return "", true, nil
	}
	if strings.HasSuffix(name, "/") {
		dir = true
		name = name[:len(name)-1]
	}
	for i, el := range strings.Split(name, "/") {
		switch {
		case el == "":
			return "", false, api.Validation("path", "path %q has an empty element", p)
		case el == "." || el == "..":
			return "", false, api.Validation("path", "path %q has a %q element", p, el)
		case len(el) > MaxElementBytes:
			return "", false, api.Validation("path", "path element is longer than %d bytes", MaxElementBytes)
		case i == 0 && reserved[el]:
			return "", false, api.Validation("path", "%q is reserved by the blobstore", "/"+el)
		}
	}
	if path.Clean(name) != name {
		return "", false, api.Validation("path", "path %q is not clean", p)
	}
	return name, dir, nil
}

// ValidSHA256 checks a hex sha256 as given in a Blob-Sha256 header.
func ValidSHA256(s string) error {
	if len(s) != 64 {
		return api.Validation(api.BlobSHA256Header, "sha256 must be 64 lower-case hex digits")
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return api.Validation(api.BlobSHA256Header, "sha256 must be 64 lower-case hex digits")
		}
	}
	return nil
}

func checkSHA(got, want string) error {
	if want != "" && got != want {
		return api.Validation(api.BlobSHA256Header, "body sha256 %s does not match the expected %s", got, want)
	}
	return nil
}

func notFound(name string) error {
	return api.NotFound("blob %q not found", "/"+name)
}

func errorf(op, name string, err error) error {
	return fmt.Errorf("%s blob %q: %w", op, "/"+name, err)
}
