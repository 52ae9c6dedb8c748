package backup

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// TestStoreSourceBlobs: every blob, depth first, but the platform's
// shared builds of Go, which a cluster makes again by itself.
func TestStoreSourceBlobs(t *testing.T) {
	srv := httptest.NewServer(blobstore.NewServer(blobstore.NewMem(), []string{"key"}, 0, logging.Discard()).Handler())
	defer srv.Close()
	blobs := blobclient.New(srv.URL, "key", nil)
	ctx := context.Background()
	for _, p := range []string{"/caches/a.tgz", "/go-std/go1.22.12.tar", "/layers/x/y.tar", "/slugs/s.tgz", "/go-stdx/kept"} {
		if _, err := blobs.Put(ctx, p, strings.NewReader("data"), nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := StoreSource{Blobstore: blobs}.Blobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, b := range got {
		paths = append(paths, b.Path)
	}
	want := []string{"/caches/a.tgz", "/go-stdx/kept", "/layers/x/y.tar", "/slugs/s.tgz"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("blobs (-want +got):\n%s", diff)
	}
}
