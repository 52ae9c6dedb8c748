package blobstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// newFS returns a filesystem backend in a temp dir and the dir.
func newFS(t testing.TB) (*blobstore.FS, string) {
	t.Helper()
	dir := t.TempDir()
	b, err := blobstore.NewFS(dir, blobstore.FSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b, dir
}

func serve(t testing.TB, b blobstore.Backend, keys []string, maxSize int64) (*blobclient.Client, string) {
	t.Helper()
	srv := httptest.NewServer(blobstore.NewServer(b, keys, maxSize, logging.Discard()).Handler())
	t.Cleanup(srv.Close)
	key := ""
	if len(keys) > 0 {
		key = keys[0]
	}
	return blobclient.New(srv.URL, key, srv.Client()), srv.URL
}

func backends(t *testing.T) map[string]func(t *testing.T) blobstore.Backend {
	return map[string]func(t *testing.T) blobstore.Backend{
		"fs":  func(t *testing.T) blobstore.Backend { b, _ := newFS(t); return b },
		"mem": func(t *testing.T) blobstore.Backend { return blobstore.NewMem() },
		"s3":  func(t *testing.T) blobstore.Backend { b, _ := newS3(t, nil); return b },
	}
}

// newS3 returns an S3 backend on an in-process fake S3 server (gofakes3),
// with the config mod makes, and the server's URL. The bucket is "blobs".
func newS3(t testing.TB, mod func(*blobstore.S3Config)) (*blobstore.S3, string) {
	t.Helper()
	mem := s3mem.New()
	if err := mem.CreateBucket("blobs"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(mem, gofakes3.WithLogger(gofakes3.DiscardLog())).Server())
	t.Cleanup(srv.Close)
	cfg := blobstore.S3Config{Endpoint: srv.URL, Bucket: "blobs", Region: "us-east-1", AccessKey: "access", SecretKey: "secret"}
	if mod != nil {
		mod(&cfg)
	}
	b, err := blobstore.NewS3(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, srv.URL
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func getAll(t *testing.T, c *blobclient.Client, path string) ([]byte, api.BlobInfo) {
	t.Helper()
	rc, info, err := c.Get(context.Background(), path)
	if err != nil {
		t.Fatalf("get %s: %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b, info
}

func TestPutGetHeadDelete(t *testing.T) {
	for bname, mk := range backends(t) {
		t.Run(bname, func(t *testing.T) {
			c, _ := serve(t, mk(t), nil, 0)
			ctx := context.Background()
			tests := []struct {
				path string
				body string
			}{
				{"/a.txt", "hello"},
				{"/slugs/app/1.tgz", strings.Repeat("slug", 1000)},
				{"/empty", ""},
				{"/with space/and?query#hash", "odd names are escaped"},
				{"/ünï/cødé", "utf-8"},
			}
			for _, tt := range tests {
				info, err := c.Put(ctx, tt.path, strings.NewReader(tt.body), nil)
				if err != nil {
					t.Fatalf("put %s: %v", tt.path, err)
				}
				want := api.BlobInfo{Path: tt.path, Size: int64(len(tt.body)), SHA256: sum([]byte(tt.body))}
				if diff := cmp.Diff(want, info, cmpopts.IgnoreFields(api.BlobInfo{}, "Modified")); diff != "" {
					t.Errorf("put %s info (-want +got):\n%s", tt.path, diff)
				}
				got, ginfo := getAll(t, c, tt.path)
				if string(got) != tt.body {
					t.Errorf("get %s = %q, want %q", tt.path, got, tt.body)
				}
				hinfo, err := c.Head(ctx, tt.path)
				if err != nil {
					t.Fatalf("head %s: %v", tt.path, err)
				}
				for name, i := range map[string]api.BlobInfo{"get": ginfo, "head": hinfo} {
					if diff := cmp.Diff(want, i, cmpopts.IgnoreFields(api.BlobInfo{}, "Modified")); diff != "" {
						t.Errorf("%s %s info (-want +got):\n%s", name, tt.path, diff)
					}
					if i.Modified.IsZero() {
						t.Errorf("%s %s: no modification time", name, tt.path)
					}
				}
			}
			// Overwrite, then delete.
			if _, err := c.Put(ctx, "/a.txt", strings.NewReader("bye"), nil); err != nil {
				t.Fatal(err)
			}
			if got, _ := getAll(t, c, "/a.txt"); string(got) != "bye" {
				t.Fatalf("after overwrite got %q", got)
			}
			for _, tt := range tests {
				if err := c.Delete(ctx, tt.path); err != nil {
					t.Fatalf("delete %s: %v", tt.path, err)
				}
				if _, err := c.Head(ctx, tt.path); !errors.Is(err, api.ErrNotFound) {
					t.Fatalf("head after delete %s: err = %v, want not found", tt.path, err)
				}
			}
			entries, err := c.List(ctx, "/")
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Fatalf("root after deleting everything = %+v, want empty (empty parents removed)", entries)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	for bname, mk := range backends(t) {
		t.Run(bname, func(t *testing.T) {
			c, _ := serve(t, mk(t), nil, 0)
			testErrors(t, c)
		})
	}
}

// testErrors checks the errors of bad requests to the blobstore of c.
func testErrors(t *testing.T, c *blobclient.Client) {
	ctx := context.Background()
	if _, err := c.Put(ctx, "/dir/file", strings.NewReader("x"), nil); err != nil {
		t.Fatal(err)
	}
	put := func(p string) func() error {
		return func() error { _, err := c.Put(ctx, p, strings.NewReader("x"), nil); return err }
	}
	get := func(p string) func() error {
		return func() error {
			rc, _, err := c.Get(ctx, p)
			if err == nil {
				rc.Close()
			}
			return err
		}
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"dotdot", put("/a/../b"), api.ErrValidation},
		{"dotdot escape", get("/../etc/passwd"), api.ErrValidation},
		{"dot", put("/a/./b"), api.ErrValidation},
		{"empty element", put("/a//b"), api.ErrValidation},
		{"nul", put("/a\x00b"), api.ErrValidation},
		{"control char", get("/a\nb"), api.ErrValidation},
		{"long element", put("/" + strings.Repeat("x", 256)), api.ErrValidation},
		{"long path", put(strings.Repeat("/abcdefgh", 200)), api.ErrValidation},
		{"reserved tmp", put("/.blobstore-tmp/x"), api.ErrValidation},
		{"reserved well-known", put("/.well-known/x"), api.ErrValidation},
		{"put dir path", put("/dir/"), api.ErrValidation},
		{"put root", put("/"), api.ErrValidation},
		{"bad sha header", func() error {
			_, err := c.Put(ctx, "/x", strings.NewReader("x"), &blobclient.PutOptions{SHA256: "abc"})
			return err
		}, api.ErrValidation},
		{"sha mismatch", func() error {
			_, err := c.Put(ctx, "/x", strings.NewReader("x"), &blobclient.PutOptions{SHA256: sum([]byte("y"))})
			return err
		}, api.ErrValidation},
		{"get missing", get("/nope"), api.ErrNotFound},
		{"get missing under blob", get("/dir/file/x"), api.ErrNotFound},
		{"get dir without slash", get("/dir"), api.ErrNotFound},
		{"head missing", func() error { _, err := c.Head(ctx, "/nope"); return err }, api.ErrNotFound},
		{"delete missing", func() error { return c.Delete(ctx, "/nope") }, api.ErrNotFound},
		{"list missing", func() error { _, err := c.List(ctx, "/nope"); return err }, api.ErrNotFound},
		{"list a blob", func() error { _, err := c.List(ctx, "/dir/file"); return err }, api.ErrValidation},
		{"put over dir", put("/dir"), api.ErrConflict},
		{"put under blob", put("/dir/file/x"), api.ErrConflict},
		{"range past end", func() error { _, _, err := c.GetRange(ctx, "/dir/file", 10, 5); return err }, api.ErrValidation},
		{"copy missing", func() error { _, err := c.Copy(ctx, "/y", "/nope"); return err }, api.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// A rejected upload stored nothing.
	if _, err := c.Head(ctx, "/x"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("blob stored despite sha mismatch: %v", err)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	_, u := serve(t, blobstore.NewMem(), nil, 0)
	req, _ := http.NewRequest(http.MethodPost, u+"/x", strings.NewReader("x"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST status = %d, want 405", res.StatusCode)
	}
}

func TestList(t *testing.T) {
	for bname, mk := range backends(t) {
		t.Run(bname, func(t *testing.T) {
			c, u := serve(t, mk(t), nil, 0)
			ctx := context.Background()
			for _, p := range []string{"/a/x", "/a/yy", "/a/sub/z", "/b"} {
				if _, err := c.Put(ctx, p, strings.NewReader(p), nil); err != nil {
					t.Fatal(err)
				}
			}
			tests := []struct {
				dir  string
				want []api.BlobEntry
			}{
				{"/", []api.BlobEntry{{Name: "a", Dir: true}, {Name: "b", Size: 2}}},
				{"/a", []api.BlobEntry{{Name: "sub", Dir: true}, {Name: "x", Size: 4}, {Name: "yy", Size: 5}}},
				{"/a/sub/", []api.BlobEntry{{Name: "z", Size: 8}}},
			}
			for _, tt := range tests {
				got, err := c.List(ctx, tt.dir)
				if err != nil {
					t.Fatalf("list %s: %v", tt.dir, err)
				}
				if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(api.BlobEntry{}, "Modified")); diff != "" {
					t.Errorf("list %s (-want +got):\n%s", tt.dir, diff)
				}
			}
			// ?dir=true lists without a trailing slash.
			res, err := http.Get(u + "/a/sub?dir=true")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != 200 || !strings.Contains(string(body), `"name":"z"`) {
				t.Fatalf("?dir=true: %d %s", res.StatusCode, body)
			}
		})
	}
}

func TestRange(t *testing.T) {
	for bname, mk := range backends(t) {
		t.Run(bname, func(t *testing.T) {
			c, u := serve(t, mk(t), nil, 0)
			ctx := context.Background()
			data := make([]byte, 100000)
			io.ReadFull(newPattern(1), data)
			info, err := c.Put(ctx, "/r", bytes.NewReader(data), nil)
			if err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				off, n int64
				want   []byte
			}{
				{0, 10, data[:10]},
				{500, 1000, data[500:1500]},
				{99990, -1, data[99990:]},
				{99990, 100, data[99990:]}, // clipped at the end
				{0, -1, data},
			}
			for _, tt := range tests {
				rc, ri, err := c.GetRange(ctx, "/r", tt.off, tt.n)
				if err != nil {
					t.Fatalf("range %d+%d: %v", tt.off, tt.n, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tt.want) {
					t.Errorf("range %d+%d: got %d bytes, want %d (content differs: %v)", tt.off, tt.n, len(got), len(tt.want), len(got) == len(tt.want))
				}
				if ri.Size != int64(len(data)) || ri.SHA256 != info.SHA256 {
					t.Errorf("range %d+%d: info %+v, want size %d sha %s", tt.off, tt.n, ri, len(data), info.SHA256)
				}
			}
			// Conditional GET with the ETag.
			req, _ := http.NewRequest("GET", u+"/r", nil)
			req.Header.Set("If-None-Match", `"`+info.SHA256+`"`)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusNotModified {
				t.Fatalf("If-None-Match status = %d, want 304", res.StatusCode)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	c, u := serve(t, blobstore.NewMem(), []string{"k1", "k2"}, 0)
	ctx := context.Background()
	if _, err := c.Put(ctx, "/x", strings.NewReader("x"), nil); err != nil {
		t.Fatalf("put with key: %v", err)
	}
	anon := blobclient.New(u, "", nil)
	wrong := blobclient.New(u, "k3", nil)
	for name, cl := range map[string]*blobclient.Client{"anonymous": anon, "wrong key": wrong} {
		if _, err := cl.Put(ctx, "/y", strings.NewReader("y"), nil); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%s put: err = %v, want unauthorized", name, err)
		}
		if err := cl.Delete(ctx, "/x"); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%s delete: err = %v, want unauthorized", name, err)
		}
		if _, _, err := cl.Get(ctx, "/x"); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%s get: err = %v, want unauthorized", name, err)
		}
		if _, err := cl.Head(ctx, "/x"); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%s head: err = %v, want unauthorized", name, err)
		}
		if _, err := cl.List(ctx, "/"); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%s list: err = %v, want unauthorized", name, err)
		}
	}
	if got, _ := getAll(t, c, "/x"); string(got) != "x" {
		t.Errorf("get with key = %q", got)
	}
	res, err := http.Get(u + "/.well-known/status")
	if err != nil || res.StatusCode != 200 {
		t.Errorf("status without a key: %v %v", res.Status, err)
	}
}

// TestSignedURLs: a URL signed with a key grants what it says, to its path,
// until it expires, and nothing else; a read key only reads.
func TestSignedURLs(t *testing.T) {
	s, err := blobstore.New(blobstore.ServerConfig{Backend: blobstore.NewMem(), Keys: []string{"k1", "k2"}, ReadKeys: []string{"rk"}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	u := srv.URL
	c := blobclient.New(u, "k1", nil)
	ctx := context.Background()
	for _, p := range []string{"/a/src", "/b/src"} {
		if _, err := c.Put(ctx, p, strings.NewReader("source"), nil); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(time.Hour)
	do := func(method, url string, hdr ...string) int {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader("body"))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	read := api.SignBlobURL(u, "k2", api.BlobRead, "/a/src", later)
	write := api.SignBlobURL(u, "k1", api.BlobWrite, "/a/slug", later)
	rw := api.SignBlobURL(u, "k1", api.BlobReadWrite, "/a/cache", later)
	for _, tt := range []struct {
		name, method, url string
		hdr               []string
		want              int
	}{
		{"read", "GET", read, nil, 200},
		{"head", "HEAD", read, nil, 200},
		{"write with a read URL", "PUT", read, nil, 401},
		{"another path", "GET", strings.Replace(read, "/a/src", "/b/src", 1), nil, 401},
		{"another access", "PUT", strings.Replace(read, "flynn-access=r", "flynn-access=rw", 1), nil, 401},
		{"later expiry", "GET", strings.Replace(read, "flynn-expires=", "flynn-expires=9", 1), nil, 401},
		{"expired", "GET", api.SignBlobURL(u, "k1", api.BlobRead, "/a/src", time.Now().Add(-time.Second)), nil, 401},
		{"unknown key", "GET", api.SignBlobURL(u, "k3", api.BlobRead, "/a/src", later), nil, 401},
		{"write", "PUT", write, nil, 201},
		{"read with a write URL", "GET", write, nil, 401},
		{"delete", "DELETE", write, nil, 401},
		{"copy another blob", "PUT", write, []string{api.BlobCopyFromHeader, "/b/src"}, 401},
		{"cache write", "PUT", rw, nil, 201},
		{"cache read", "GET", rw, nil, 200},
		{"read key", "GET", u + "/b/src", []string{"Authorization", "Bearer rk"}, 200},
		{"read key writes", "PUT", u + "/b/src", []string{"Authorization", "Bearer rk"}, 401},
		{"read key lists every blob", "GET", u + "/.well-known/blobstore/tree", []string{"Authorization", "Bearer rk"}, 401},
	} {
		if got := do(tt.method, tt.url, tt.hdr...); got != tt.want {
			t.Errorf("%s: %s %s: %d, want %d", tt.name, tt.method, tt.url, got, tt.want)
		}
	}
}

func TestCopyAndLimit(t *testing.T) {
	c, _ := serve(t, blobstore.NewMem(), nil, 10)
	ctx := context.Background()
	if _, err := c.Put(ctx, "/src", strings.NewReader("0123456789"), nil); err != nil {
		t.Fatal(err)
	}
	info, err := c.Copy(ctx, "/copies/dst", "/src")
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != sum([]byte("0123456789")) {
		t.Fatalf("copy info %+v", info)
	}
	if got, _ := getAll(t, c, "/copies/dst"); string(got) != "0123456789" {
		t.Fatalf("copy content %q", got)
	}
	// Over the limit, with and without a Content-Length.
	if _, err := c.Put(ctx, "/big", strings.NewReader("0123456789a"), nil); !errors.Is(err, api.ErrTooLarge) {
		t.Fatalf("sized put over limit: err = %v", err)
	}
	if _, err := c.Put(ctx, "/big", io.MultiReader(strings.NewReader("0123456789a")), nil); !errors.Is(err, api.ErrTooLarge) {
		t.Fatalf("chunked put over limit: err = %v", err)
	}
}

// TestFSHashesForeignFiles: a file put in the directory by other means has
// no stored checksum; the backend computes it.
func TestFSHashesForeignFiles(t *testing.T) {
	b, dir := newFS(t)
	c, _ := serve(t, b, nil, 0)
	if err := os.WriteFile(filepath.Join(dir, "manual"), []byte("by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := c.Head(context.Background(), "/manual")
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != sum([]byte("by hand")) || info.Size != 7 {
		t.Fatalf("info = %+v", info)
	}
}

// TestFSCleansTemp: uploads left half-written by a crash are removed on
// start and never listed.
func TestFSCleansTemp(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".blobstore-tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".blobstore-tmp", "put-123")
	if err := os.WriteFile(stale, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := blobstore.NewFS(dir, blobstore.FSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale upload still there: %v", err)
	}
	entries, err := b.List(context.Background(), "")
	if err != nil || len(entries) != 0 {
		t.Fatalf("list = %+v, %v; want empty", entries, err)
	}
}

// TestConcurrentWriters: writers race to replace one path while readers
// read it; every read sees one writer's complete blob, with the matching
// checksum, never a mix or a partial file.
func TestConcurrentWriters(t *testing.T) {
	b, _ := newFS(t)
	c, _ := serve(t, b, nil, 0)
	ctx := context.Background()
	const size = 1 << 20
	const writers, rounds = 6, 5
	blobs := make([][]byte, writers)
	for i := range blobs {
		blobs[i] = bytes.Repeat([]byte{byte('A' + i)}, size)
	}
	if _, err := c.Put(ctx, "/race", bytes.NewReader(blobs[0]), nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	done := make(chan struct{})
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				// A reader without a known length goes chunked, in small
				// pieces, so uploads overlap in time.
				if _, err := c.Put(ctx, "/race", io.MultiReader(bytes.NewReader(blobs[i])), nil); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var rwg sync.WaitGroup
	reads := make([]int, 3)
	for r := range reads {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				rc, info, err := c.Get(ctx, "/race")
				if err != nil {
					errc <- err
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					errc <- err
					return
				}
				if len(got) != size || !bytes.Equal(got, bytes.Repeat(got[:1], size)) {
					errc <- fmt.Errorf("read a mixed or partial blob of %d bytes", len(got))
					return
				}
				if sum(got) != info.SHA256 {
					errc <- fmt.Errorf("checksum header %s does not match the content %s", info.SHA256, sum(got))
					return
				}
				reads[r]++
			}
		}()
	}
	wg.Wait()
	close(done)
	rwg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if reads[0]+reads[1]+reads[2] == 0 {
		t.Fatal("no reads completed")
	}
}

// TestLargeStream streams 200 MB up and down without holding it in memory.
func TestLargeStream(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 200 MB")
	}
	b, _ := newFS(t)
	c, _ := serve(t, b, nil, 0)
	ctx := context.Background()
	const size = 200 << 20

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	h := sha256.New()
	info, err := c.Put(ctx, "/large/blob", io.TeeReader(io.LimitReader(newPattern(42), size), h), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if info.Size != size || info.SHA256 != want {
		t.Fatalf("put info %+v, want size %d sha %s", info, size, want)
	}
	rc, ginfo, err := c.Get(ctx, "/large/blob")
	if err != nil {
		t.Fatal(err)
	}
	h.Reset()
	n, err := io.Copy(h, rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want || ginfo.SHA256 != want {
		t.Fatalf("get: %d bytes sha %s (header %s), want %d bytes sha %s", n, got, ginfo.SHA256, size, want)
	}
	runtime.ReadMemStats(&after)
	// Client and server share this process: everything they allocated for
	// 400 MB of traffic stays far below the blob's size.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Fatalf("allocated %d MB while streaming a %d MB blob both ways; something buffers it", alloc>>20, size>>20)
	}
}

// pattern is a deterministic, incompressible byte stream (xorshift64).
type pattern struct{ x uint64 }

func newPattern(seed uint64) *pattern { return &pattern{x: seed*2654435761 + 1} }

func (p *pattern) Read(b []byte) (int, error) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		binary.LittleEndian.PutUint64(b[i:], p.x)
	}
	for ; i < len(b); i++ {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		b[i] = byte(p.x)
	}
	return len(b), nil
}

func benchBlob(b *testing.B) (*blobclient.Client, []byte) {
	be, _ := newFS(b)
	c, _ := serve(b, be, nil, 0)
	data := make([]byte, 64<<20)
	io.ReadFull(newPattern(7), data)
	return c, data
}

// BenchmarkPut64MB measures upload throughput (MB/s) of a 64 MB blob to the
// filesystem backend over loopback HTTP, including sha256 and fsync.
func BenchmarkPut64MB(b *testing.B) {
	c, data := benchBlob(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Put(context.Background(), "/bench", bytes.NewReader(data), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet64MB measures download throughput of a 64 MB blob.
func BenchmarkGet64MB(b *testing.B) {
	c, data := benchBlob(b)
	if _, err := c.Put(context.Background(), "/bench", bytes.NewReader(data), nil); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rc, _, err := c.Get(context.Background(), "/bench")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
}

// TestInterruptedUpload: a client that disconnects mid-upload leaves no
// blob and no temporary file behind, and the old blob stays readable.
func TestInterruptedUpload(t *testing.T) {
	b, dir := newFS(t)
	h := blobstore.NewServer(b, nil, 0, logging.Discard()).Handler()
	finished := make(chan int, 10) // statuses of finished PUTs
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if r.Method == http.MethodPut {
			finished <- rec.status
		}
	}))
	defer srv.Close()
	c, u := blobclient.New(srv.URL, "", nil), srv.URL
	ctx := context.Background()
	if _, err := c.Put(ctx, "/keep", strings.NewReader("old"), nil); err != nil {
		t.Fatal(err)
	}
	<-finished
	for _, p := range []string{"/keep", "/new"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(u, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial", p)
		conn.Close()
	}
	// Wait until the server has finished both uploads.
	for range 2 {
		select {
		case status := <-finished:
			if status != http.StatusBadRequest {
				t.Fatalf("interrupted upload finished with status %d, want 400", status)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("server did not finish the interrupted uploads")
		}
	}
	if des, err := os.ReadDir(filepath.Join(dir, ".blobstore-tmp")); err != nil || len(des) != 0 {
		t.Fatalf("temporary files left behind: %v %v", des, err)
	}
	if got, _ := getAll(t, c, "/keep"); string(got) != "old" {
		t.Fatalf("/keep = %q, want the old blob", got)
	}
	if _, err := c.Head(ctx, "/new"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("/new: err = %v, want not found", err)
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
