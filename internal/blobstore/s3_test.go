package blobstore_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestS3 covers what the shared backend tests do not: a large upload of
// unknown length (sent in parts), keys under a prefix, objects put in the
// bucket by other means (no checksum in their metadata), and the
// temporary uploads never showing in listings. (The fake S3 server does
// not decode streaming-signed parts, hence unsigned payloads.)
func TestS3(t *testing.T) {
	b, u := newS3(t, func(c *blobstore.S3Config) { c.Prefix = "flynn/"; c.UnsignedPayload = true })
	c, _ := serve(t, b, nil, 0)
	ctx := context.Background()

	data := blob(30, 9<<20)
	info, err := c.Put(ctx, "/big/blob", io.MultiReader(bytes.NewReader(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(len(data)) || info.SHA256 != sum(data) {
		t.Fatalf("put info %+v", info)
	}
	got, ginfo := getAll(t, c, "/big/blob")
	if !bytes.Equal(got, data) || !ginfo.Modified.Equal(info.Modified) {
		t.Fatalf("get: %d bytes, info %+v; want %d bytes, modified %s", len(got), ginfo, len(data), info.Modified)
	}

	mc, err := minio.New(strings.TrimPrefix(u, "http://"), &minio.Options{Creds: credentials.NewStaticV4("access", "secret", "")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mc.StatObject(ctx, "blobs", "flynn/big/blob", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("the blob is not at its prefixed key: %v", err)
	}
	foreign := []byte("put by someone else")
	if _, err := mc.PutObject(ctx, "blobs", "flynn/foreign", bytes.NewReader(foreign), int64(len(foreign)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	hinfo, err := c.Head(ctx, "/foreign")
	if err != nil || hinfo.SHA256 != sum(foreign) || hinfo.Size != int64(len(foreign)) {
		t.Fatalf("head of a foreign object = %+v, %v", hinfo, err)
	}

	entries, err := c.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	want := []api.BlobEntry{{Name: "big", Dir: true}, {Name: "foreign", Size: int64(len(foreign))}}
	if diff := cmp.Diff(want, entries, cmpopts.IgnoreFields(api.BlobEntry{}, "Modified")); diff != "" {
		t.Fatalf("list / (-want +got):\n%s", diff)
	}
	var keys []string
	for o := range mc.ListObjects(ctx, "blobs", minio.ListObjectsOptions{Recursive: true}) {
		keys = append(keys, o.Key)
	}
	if diff := cmp.Diff([]string{"flynn/big/blob", "flynn/foreign"}, keys); diff != "" {
		t.Fatalf("bucket keys (-want +got), no temporary upload left:\n%s", diff)
	}
}

// TestRunS3: the server runs on the S3 backend, and does not replicate
// even when told where discoverd is (the instances share the bucket).
func TestRunS3(t *testing.T) {
	_, u := newS3(t, nil)
	addr := fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- blobstore.Run(ctx, blobstore.Config{
			Listen: addr, Backend: blobstore.BackendS3, Keys: []string{"k"},
			S3:        blobstore.S3Config{Endpoint: u, Bucket: "blobs", Region: "us-east-1", AccessKey: "access", SecretKey: "secret"},
			Discoverd: "http://127.0.0.1:1", // never asked
		}, logging.Discard())
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	c := blobclient.New("http://"+addr, "k", nil)
	waitFor(t, "the S3-backed blobstore to answer", func() (bool, string) {
		res, err := http.Get("http://" + addr + "/.well-known/status")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == 200, res.Status
	})
	info, err := c.Put(context.Background(), "/a", strings.NewReader("on s3"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Copies != 0 {
		t.Fatalf("copies = %d, want 0 (no replication on S3)", info.Copies)
	}
	if got, _ := getAll(t, c, "/a"); string(got) != "on s3" {
		t.Fatalf("get = %q", got)
	}

	// A bucket that does not exist is reported at start.
	err = blobstore.Run(context.Background(), blobstore.Config{
		Listen: addr, Backend: blobstore.BackendS3,
		S3: blobstore.S3Config{Endpoint: u, Bucket: "nope", Region: "us-east-1"},
	}, logging.Discard())
	if err == nil || !strings.Contains(err.Error(), `bucket "nope" does not exist`) {
		t.Fatalf("Run with a missing bucket: %v", err)
	}
}
