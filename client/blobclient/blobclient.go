// Package blobclient is the Go client of the Flynn blobstore: it streams
// blobs up (Put from an io.Reader) and down (Get returns an io.ReadCloser,
// which checks the blob's sha256 when it reaches the end), reads byte
// ranges, and lists, describes and deletes blobs.
package blobclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// Client talks to one blobstore.
type Client struct {
	hc httpclient.Client
}

// New returns a client for the blobstore at baseURL (e.g.
// http://blobstore.discoverd). key, when not empty, is sent as the cluster
// key, which every request needs when the blobstore enforces auth. httpClient may
// be nil for http.DefaultClient.
func New(baseURL, key string, httpClient *http.Client) *Client {
	return &Client{hc: httpclient.Client{URL: strings.TrimSuffix(baseURL, "/"), Key: key, HTTP: httpClient}}
}

// URL returns the full URL of the blob at path, for handing to tools such
// as curl or a build job.
func (c *Client) URL(path string) string {
	return c.hc.URL + escape(path)
}

// escape URL-escapes each element of a slash-separated path and makes sure
// it starts with a slash.
func escape(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// PutOptions are optional settings for Put.
type PutOptions struct {
	// SHA256, when set (hex), makes the blobstore refuse the upload unless
	// the body hashes to it.
	SHA256 string
	// Size, when known and > 0, is sent as Content-Length; otherwise the
	// body is sent chunked (unless r is a *bytes.Reader, *strings.Reader or
	// *bytes.Buffer, whose length Go finds itself).
	Size int64
}

// Put streams r to the blob at path, replacing any blob there, and returns
// what was stored.
func (c *Client) Put(ctx context.Context, path string, r io.Reader, opts *PutOptions) (api.BlobInfo, error) {
	req, err := c.hc.NewRequest(ctx, http.MethodPut, escape(path), r)
	if err != nil {
		return api.BlobInfo{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if opts != nil {
		if opts.SHA256 != "" {
			req.Header.Set(api.BlobSHA256Header, opts.SHA256)
		}
		if opts.Size > 0 {
			req.ContentLength = opts.Size
		}
	}
	return c.doInfo(req, path)
}

// Copy makes the blob at dst a copy of the blob at src, on the server.
func (c *Client) Copy(ctx context.Context, dst, src string) (api.BlobInfo, error) {
	req, err := c.hc.NewRequest(ctx, http.MethodPut, escape(dst), nil)
	if err != nil {
		return api.BlobInfo{}, err
	}
	req.Header.Set(api.BlobCopyFromHeader, escape(src))
	return c.doInfo(req, dst)
}

func (c *Client) doInfo(req *http.Request, path string) (api.BlobInfo, error) {
	res, err := c.hc.Send(req)
	if err != nil {
		return api.BlobInfo{}, fmt.Errorf("put blob %s: %w", path, err)
	}
	defer res.Body.Close()
	var info api.BlobInfo
	if err := json.NewDecoder(res.Body).Decode(&info); err != nil {
		return api.BlobInfo{}, fmt.Errorf("put blob %s: decode reply: %w", path, err)
	}
	return info, nil
}

// Get opens the blob at path for streaming. The caller closes the reader.
// Reading to the end fails when the content does not match the checksum
// the blobstore announced.
func (c *Client) Get(ctx context.Context, path string) (io.ReadCloser, api.BlobInfo, error) {
	return c.get(ctx, path, "")
}

// GetRange opens length bytes of the blob at path starting at offset; a
// negative length reads to the end. It fails with a validation error when
// the range is outside the blob.
func (c *Client) GetRange(ctx context.Context, path string, offset, length int64) (io.ReadCloser, api.BlobInfo, error) {
	if offset < 0 || length == 0 {
		return nil, api.BlobInfo{}, api.Validation("range", "offset must be >= 0 and length must not be 0")
	}
	rng := fmt.Sprintf("bytes=%d-", offset)
	if length > 0 {
		rng += strconv.FormatInt(offset+length-1, 10)
	}
	return c.get(ctx, path, rng)
}

func (c *Client) get(ctx context.Context, path, rng string) (io.ReadCloser, api.BlobInfo, error) {
	req, err := c.hc.NewRequest(ctx, http.MethodGet, escape(path), nil)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	req.Header.Del("Accept")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	res, err := c.send(req)
	if err != nil {
		return nil, api.BlobInfo{}, fmt.Errorf("get blob %s: %w", path, err)
	}
	info := infoFromHeader(path, res)
	if rng != "" && res.StatusCode != http.StatusPartialContent {
		res.Body.Close()
		return nil, api.BlobInfo{}, fmt.Errorf("get blob %s: server ignored the range request (status %d)", path, res.StatusCode)
	}
	if rng == "" && info.SHA256 != "" {
		return &verifier{ReadCloser: res.Body, h: sha256.New(), want: info.SHA256, path: path}, info, nil
	}
	return res.Body, info, nil
}

// verifier checks, at the end of a whole blob, that it hashes to the
// checksum the blobstore announced.
type verifier struct {
	io.ReadCloser
	h    hash.Hash
	want string
	path string
	err  error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.ReadCloser.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			v.err = fmt.Errorf("get blob %s: the content's sha256 is %s, not the %s announced; read it again", v.path, got, v.want)
			return n, v.err
		}
	}
	return n, err
}

// send is httpclient's Send with one addition: a 416 (range not
// satisfiable, which ServeContent sends as plain text) becomes a
// validation error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	res, err := c.hc.Send(req)
	if e, ok := api.AsError(err); ok && e.Status == http.StatusRequestedRangeNotSatisfiable {
		e.Code = api.CodeValidation
		e.Field = "range"
	}
	return res, err
}

// Head describes the blob at path without reading it.
func (c *Client) Head(ctx context.Context, path string) (api.BlobInfo, error) {
	req, err := c.hc.NewRequest(ctx, http.MethodHead, escape(path), nil)
	if err != nil {
		return api.BlobInfo{}, err
	}
	res, err := c.hc.Send(req)
	if err != nil {
		return api.BlobInfo{}, fmt.Errorf("head blob %s: %w", path, err)
	}
	res.Body.Close()
	return infoFromHeader(path, res), nil
}

func infoFromHeader(path string, res *http.Response) api.BlobInfo {
	info := api.BlobInfo{Path: "/" + strings.TrimPrefix(path, "/"), SHA256: res.Header.Get(api.BlobSHA256Header)}
	if res.StatusCode == http.StatusPartialContent {
		// Content-Range: bytes a-b/size
		if _, total, ok := strings.Cut(res.Header.Get("Content-Range"), "/"); ok {
			info.Size, _ = strconv.ParseInt(total, 10, 64)
		}
	} else {
		info.Size = res.ContentLength
	}
	if t, err := time.Parse(time.RFC3339Nano, res.Header.Get(api.BlobModifiedHeader)); err == nil {
		info.Modified = t.UTC()
	} else if t, err := http.ParseTime(res.Header.Get("Last-Modified")); err == nil {
		info.Modified = t.UTC()
	}
	return info
}

// Delete removes the blob at path.
func (c *Client) Delete(ctx context.Context, path string) error {
	if err := c.hc.Do(ctx, http.MethodDelete, escape(path), nil, nil); err != nil {
		return fmt.Errorf("delete blob %s: %w", path, err)
	}
	return nil
}

// List returns the entries of the directory at dir ("/" for the root).
func (c *Client) List(ctx context.Context, dir string) ([]api.BlobEntry, error) {
	p := escape(dir)
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	var out []api.BlobEntry
	if err := c.hc.Do(ctx, http.MethodGet, p, nil, &out); err != nil {
		return nil, fmt.Errorf("list blobs %s: %w", dir, err)
	}
	return out, nil
}
