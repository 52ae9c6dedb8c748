package daemon

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
)

// TestRequireToken: the service token reaches discoverd only; the grid API
// (which serves the cluster CA) wants the cluster token.
func TestRequireToken(t *testing.T) {
	h := requireToken("cluster", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	svc := api.ServiceToken("cluster")
	if svc == "cluster" || svc == api.ServiceToken("other") {
		t.Fatalf("service token %q is not derived from the cluster token", svc)
	}
	for _, tt := range []struct {
		path, key string
		want      int
	}{
		{"/ping", "", 200},
		{"/services", svc, 200},
		{"/services/blobstore/instances", svc, 200},
		{"/services/blobstore/instances", "cluster", 200},
		{"/services/blobstore/instances", "", 401},
		{"/servicesx", svc, 401},
		{"/grid/ca", svc, 401},
		{"/grid/hosts", svc, 401},
		{"/grid/ca", "cluster", 200},
	} {
		r := httptest.NewRequest("GET", tt.path, nil)
		if tt.key != "" {
			r.SetBasicAuth("", tt.key)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("GET %s with %q: %d, want %d", tt.path, tt.key, w.Code, tt.want)
		}
	}
}
