package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flynnrebuilt/flynn/api"
)

// Backend stores blobs. Names are slash-separated relative paths that
// ValidName accepts ("slugs/a.tgz"); the empty name is the root directory.
// Errors are *api.Error values where a client can act on them (not found,
// conflict, validation), so the HTTP layer passes them through.
//
// A blob's modification time is its version: replicas of a blob carry the
// time of the write that made it, and of two versions of a path the later
// one wins. Put and Delete order the writes to one path accordingly.
type Backend interface {
	// Put stores the bytes read from r at name. Readers of name see either
	// the previous blob or the complete new one, never a partial write.
	// When opts.SHA256 is not empty and the bytes hash differently, nothing
	// is stored and Put returns a validation error. With opts.Modified set,
	// the blob is stored with that time only when the stored blob (if any)
	// is older; otherwise nothing changes and Put returns the stored blob's
	// info with ErrStale.
	Put(ctx context.Context, name string, r io.Reader, opts PutOptions) (api.BlobInfo, error)
	// Open returns the blob at name for reading and seeking.
	Open(ctx context.Context, name string) (Object, error)
	// Stat describes the blob at name.
	Stat(ctx context.Context, name string) (api.BlobInfo, error)
	// Delete removes the blob at name and returns what it was. With
	// opts.Before set, a blob modified after it is kept and Delete returns
	// its info with ErrStale.
	Delete(ctx context.Context, name string, opts DeleteOptions) (api.BlobInfo, error)
	// List returns the entries of directory dir, sorted by name.
	List(ctx context.Context, dir string) ([]api.BlobEntry, error)
}

// PutOptions are the optional settings of Backend.Put.
type PutOptions struct {
	// SHA256 (hex), when set, is what the bytes must hash to.
	SHA256 string
	// Size, when > 0, is the number of bytes r will give (a hint).
	Size int64
	// Modified, when set, is the blob's version, given by the instance
	// that took the write (a replica). It replaces only an older blob.
	Modified time.Time
	// NotBefore, for a new write (Modified not set), is the earliest
	// modification time to give the blob: just after a known delete of
	// the path, so the new blob wins over that delete even when this
	// host's clock is behind. The blob's time is also always after the
	// blob it replaces.
	NotBefore time.Time
}

// DeleteOptions are the optional settings of Backend.Delete.
type DeleteOptions struct {
	// Before, when set, is the version of a delete done elsewhere: only a
	// blob modified at or before it is removed.
	Before time.Time
}

// ErrStale is returned (with the stored blob's info) by a Put or Delete
// that did not apply because the stored blob is newer.
var ErrStale = errors.New("a newer version of the blob is stored")

// stampTime is the modification time a new write of a path gets: now,
// but after notBefore and after the blob it replaces (cur, when not zero).
func stampTime(now, notBefore, cur time.Time) time.Time {
	t := now
	if notBefore.After(t) {
		t = notBefore
	}
	if !cur.IsZero() && !t.After(cur) {
		t = cur.Add(time.Nanosecond)
	}
	return t.UTC()
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
var reserved = map[string]bool{".well-known": true, tmpDirName: true, stateDirName: true}

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
