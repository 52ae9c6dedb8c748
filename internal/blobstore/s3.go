package blobstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/flynnrebuilt/flynn/api"
)

// S3Config configures the S3 backend.
type S3Config struct {
	// Endpoint is the S3 server: host[:port], or a URL
	// (http://host:port or https://host) whose scheme decides TLS.
	Endpoint string
	// Bucket holds the blobs; it must exist.
	Bucket string
	// Region is the bucket's region ("" lets the client find it).
	Region string
	// Prefix, when set, is put in front of every key ("flynn/").
	Prefix string
	// Insecure uses plain HTTP for an Endpoint given without a scheme.
	Insecure bool
	// UnsignedPayload sends uploads without a payload signature, for
	// servers that mishandle streaming signatures (over plain HTTP; over
	// HTTPS the payload is never signed).
	UnsignedPayload bool
	// AccessKey, SecretKey and SessionToken are the credentials (from the
	// environment, never from flags); empty means anonymous requests.
	AccessKey    string
	SecretKey    string
	SessionToken string
}

// S3 is a Backend that keeps blobs as objects in an S3-compatible bucket,
// one object per blob at key Prefix+path. A blob's checksum and version
// are kept in the object's user metadata. Uploads go to a temporary key
// first and are copied into place once their checksum is known, so a
// reader never sees a partial blob or one that failed its check.
//
// The order of writes to one path (PutOptions.Modified,
// DeleteOptions.Before) is checked, not enforced atomically: the S3
// backend is for a store all instances share, which they do not
// replicate.
type S3 struct {
	c        *minio.Client
	bucket   string
	prefix   string
	unsigned bool

	mu      sync.Mutex
	shaMemo map[string]string // key+etag → sha256, for objects written by others
}

// User metadata keys of the objects.
const (
	s3MetaSHA      = "Flynn-Sha256"
	s3MetaModified = "Flynn-Modified"
)

// s3MaxCopy is the largest object one server-side copy can make.
const s3MaxCopy = 5 << 30

// NewS3 connects to the bucket of cfg and checks that it exists.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("blobstore: the S3 backend needs an endpoint and a bucket")
	}
	host, secure := cfg.Endpoint, !cfg.Insecure
	if strings.Contains(cfg.Endpoint, "://") {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("blobstore: S3 endpoint %q: give host:port or http(s)://host:port", cfg.Endpoint)
		}
		switch u.Scheme {
		case "http":
			secure = false
		case "https":
			secure = true
		default:
			return nil, fmt.Errorf("blobstore: S3 endpoint %q: the scheme must be http or https", cfg.Endpoint)
		}
		host = u.Host
	}
	c, err := minio.New(host, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken),
		Secure: secure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("blobstore: S3 client: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := c.BucketExists(cctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("blobstore: S3 bucket %q at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("blobstore: S3 bucket %q does not exist at %s; create it first", cfg.Bucket, cfg.Endpoint)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &S3{c: c, bucket: cfg.Bucket, prefix: prefix, unsigned: cfg.UnsignedPayload, shaMemo: map[string]string{}}, nil
}

func (b *S3) key(name string) string { return b.prefix + name }

// isNoSuchKey reports whether err says the object does not exist.
func isNoSuchKey(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" || r.Code == "NotFound"
}

// exists reports whether an object is at name.
func (b *S3) exists(ctx context.Context, name string) (bool, error) {
	_, err := b.c.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if err == nil {
		return true, nil
	}
	if isNoSuchKey(err) {
		return false, nil
	}
	return false, errorf("stat", name, err)
}

// isDir reports whether objects exist under name/.
func (b *S3) isDir(ctx context.Context, name string) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range b.c.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.key(name) + "/", MaxKeys: 1}) {
		if o.Err != nil {
			return false, errorf("list", name, o.Err)
		}
		return true, nil
	}
	return false, nil
}

// Put implements Backend.
func (b *S3) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, api.Validation("path", "cannot write the root directory")
	}
	if err := b.checkPath(ctx, name); err != nil {
		return api.BlobInfo{}, err
	}
	var rnd [12]byte
	rand.Read(rnd[:])
	tmp := b.key(tmpDirName + "/put-" + hex.EncodeToString(rnd[:]))
	defer b.c.RemoveObject(context.WithoutCancel(ctx), b.bucket, tmp, minio.RemoveObjectOptions{})

	h := sha256.New()
	src := io.TeeReader(ctxReader{ctx, r}, h)
	size := opts.Size
	if size <= 0 {
		// Small uploads of unknown size go in one request; larger ones
		// stream in parts.
		buf := make([]byte, 8<<20)
		n, err := io.ReadFull(src, buf)
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			src, size = bytes.NewReader(buf[:n]), int64(n)
		case err != nil:
			return api.BlobInfo{}, uploadError(name, err)
		default:
			src, size = io.MultiReader(bytes.NewReader(buf), src), -1
		}
	}
	up, err := b.c.PutObject(ctx, b.bucket, tmp, src, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		// An empty body has nothing to sign, and some S3-compatible
		// servers refuse an empty streaming-signed upload.
		DisableContentSha256: b.unsigned || size == 0,
	})
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, io.ErrUnexpectedEOF) {
			return api.BlobInfo{}, uploadError(name, err)
		}
		return api.BlobInfo{}, errorf("put", name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := checkSHA(sum, opts.SHA256); err != nil {
		return api.BlobInfo{}, err
	}
	// What the server stored must be what was sent.
	oi, err := b.c.StatObject(ctx, b.bucket, tmp, minio.StatObjectOptions{})
	if err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	if oi.Size != up.Size {
		return api.BlobInfo{}, errorf("put", name, fmt.Errorf(
			"the S3 server stored %d bytes of the %d sent (if it mishandles streaming signatures, send unsigned payloads)", oi.Size, up.Size))
	}
	var cur time.Time
	if oi, err := b.c.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{}); err == nil {
		cur = s3Modified(oi)
	} else if !isNoSuchKey(err) {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	mod := opts.Modified.UTC()
	if opts.Modified.IsZero() {
		mod = stampTime(time.Now(), opts.NotBefore, cur)
	} else if !cur.IsZero() && !mod.After(cur) {
		info, err := b.Stat(ctx, name)
		if err != nil {
			return api.BlobInfo{}, err
		}
		return info, ErrStale
	}
	dst := minio.CopyDestOptions{
		Bucket: b.bucket, Object: b.key(name), ReplaceMetadata: true,
		UserMetadata: map[string]string{s3MetaSHA: sum, s3MetaModified: mod.Format(time.RFC3339Nano)},
		ContentType:  "application/octet-stream",
	}
	from := minio.CopySrcOptions{Bucket: b.bucket, Object: tmp}
	if up.Size > s3MaxCopy {
		_, err = b.c.ComposeObject(ctx, dst, from)
	} else {
		_, err = b.c.CopyObject(ctx, dst, from)
	}
	if err != nil {
		return api.BlobInfo{}, errorf("put", name, err)
	}
	return api.BlobInfo{Path: "/" + name, Size: up.Size, SHA256: sum, Modified: mod}, nil
}

// checkPath refuses a blob where a directory is, or under a blob, as the
// filesystem backend does.
func (b *S3) checkPath(ctx context.Context, name string) error {
	if dir, err := b.isDir(ctx, name); err != nil {
		return err
	} else if dir {
		return api.Conflict("%q is a directory", "/"+name)
	}
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if ok, err := b.exists(ctx, p); err != nil {
			return err
		} else if ok {
			return api.Conflict("a parent of %q is a blob, not a directory", "/"+name)
		}
	}
	return nil
}

// s3Meta returns the user metadata value of an object for key.
func s3Meta(oi minio.ObjectInfo, key string) string {
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

// s3Modified is an object's version: the time in its metadata, or its S3
// modification time for objects written by other means.
func s3Modified(oi minio.ObjectInfo) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, s3Meta(oi, s3MetaModified)); err == nil {
		return t.UTC()
	}
	return oi.LastModified.UTC()
}

// info describes an object from its stat.
func (b *S3) info(ctx context.Context, name string, oi minio.ObjectInfo) (api.BlobInfo, error) {
	info := api.BlobInfo{Path: "/" + name, Size: oi.Size, Modified: s3Modified(oi)}
	if v := s3Meta(oi, s3MetaSHA); ValidSHA256(v) == nil {
		info.SHA256 = v
	}
	if info.SHA256 != "" {
		return info, nil
	}
	// An object written by other means: hash it once.
	memo := oi.Key + "\x00" + oi.ETag
	b.mu.Lock()
	sum, ok := b.shaMemo[memo]
	b.mu.Unlock()
	if !ok {
		obj, err := b.c.GetObject(ctx, b.bucket, oi.Key, minio.GetObjectOptions{})
		if err != nil {
			return api.BlobInfo{}, errorf("hash", name, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, obj)
		obj.Close()
		if err != nil {
			return api.BlobInfo{}, errorf("hash", name, err)
		}
		sum = hex.EncodeToString(h.Sum(nil))
		b.mu.Lock()
		b.shaMemo[memo] = sum
		b.mu.Unlock()
	}
	info.SHA256 = sum
	return info, nil
}

// Open implements Backend.
func (b *S3) Open(ctx context.Context, name string) (Object, error) {
	if name == "" {
		return nil, notFound(name)
	}
	obj, err := b.c.GetObject(ctx, b.bucket, b.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, errorf("open", name, err)
	}
	oi, err := obj.Stat()
	if err != nil {
		obj.Close()
		if isNoSuchKey(err) {
			return nil, notFound(name)
		}
		return nil, errorf("open", name, err)
	}
	info, err := b.info(ctx, name, oi)
	if err != nil {
		obj.Close()
		return nil, err
	}
	return &s3Object{Object: obj, info: info}, nil
}

type s3Object struct {
	*minio.Object
	info api.BlobInfo
}

func (o *s3Object) Info() api.BlobInfo { return o.info }

// Stat implements Backend.
func (b *S3) Stat(ctx context.Context, name string) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, notFound(name)
	}
	oi, err := b.c.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if err != nil {
		if isNoSuchKey(err) {
			return api.BlobInfo{}, notFound(name)
		}
		return api.BlobInfo{}, errorf("stat", name, err)
	}
	return b.info(ctx, name, oi)
}

// Delete implements Backend.
func (b *S3) Delete(ctx context.Context, name string, opts DeleteOptions) (api.BlobInfo, error) {
	if name == "" {
		return api.BlobInfo{}, api.Validation("path", "cannot delete the root directory")
	}
	info, err := b.Stat(ctx, name)
	if errors.Is(err, api.ErrNotFound) {
		if dir, derr := b.isDir(ctx, name); derr == nil && dir {
			return api.BlobInfo{}, api.Conflict("%q is a directory; delete the blobs in it instead", "/"+name)
		}
	}
	if err != nil {
		return api.BlobInfo{}, err
	}
	if !opts.Before.IsZero() && info.Modified.After(opts.Before) {
		return info, ErrStale
	}
	if err := b.c.RemoveObject(ctx, b.bucket, b.key(name), minio.RemoveObjectOptions{}); err != nil {
		return api.BlobInfo{}, errorf("delete", name, err)
	}
	return info, nil
}

// List implements Backend. Entries carry the objects' S3 modification
// times.
func (b *S3) List(ctx context.Context, dir string) ([]api.BlobEntry, error) {
	prefix := b.prefix
	if dir != "" {
		prefix = b.key(dir) + "/"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := []api.BlobEntry{}
	for o := range b.c.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if o.Err != nil {
			return nil, errorf("list", dir, o.Err)
		}
		rest := strings.TrimPrefix(o.Key, prefix)
		if d, ok := strings.CutSuffix(rest, "/"); ok {
			if d == "" || strings.Contains(d, "/") || (dir == "" && reserved[d]) {
				continue
			}
			out = append(out, api.BlobEntry{Name: d, Dir: true})
			continue
		}
		if rest == "" || strings.Contains(rest, "/") {
			continue
		}
		out = append(out, api.BlobEntry{Name: rest, Size: o.Size, Modified: o.LastModified.UTC()})
	}
	if len(out) == 0 && dir != "" {
		if ok, err := b.exists(ctx, dir); err != nil {
			return nil, err
		} else if ok {
			return nil, api.Validation("path", "%q is a blob, not a directory", "/"+dir)
		}
		return nil, api.NotFound("directory %q not found", "/"+dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
