package discoverdclient_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

// TestHTTPClientFollowsService: a URL naming SERVICE.discoverd reaches a
// live instance, the next live one once it is gone, and fails with the
// service's name when none is left.
func TestHTTPClientFollowsService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := discoverd.NewStore(etcdtest.Client(t), 2*time.Second)
	c := discoverdclient.New(server(t, store).URL, token)
	backend := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
		t.Cleanup(s.Close)
		return s
	}
	a, b := backend("a"), backend("b")
	regA, err := c.Register(ctx, "api", a.Listener.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	regB, err := c.Register(ctx, "api", b.Listener.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := c.HTTPClient()
	get := func() (string, error) {
		res, err := hc.Get("http://api.discoverd/")
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		return string(body), err
	}
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		hc.CloseIdleConnections() // a new dial picks an instance again
		got, err := get()
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("requests reached %v, want both instances", seen)
	}

	regA.Deregister(ctx)
	a.Close()
	for i := 0; i < 5; i++ {
		hc.CloseIdleConnections()
		if got, err := get(); err != nil || got != "b" {
			t.Fatalf("with a gone: %q, %v", got, err)
		}
	}
	regB.Deregister(ctx)
	hc.CloseIdleConnections()
	if _, err := get(); err == nil || !strings.Contains(err.Error(), "service api has no live instance") {
		t.Errorf("with no instance: %v", err)
	}
	// Other hosts are dialled as usual.
	res, err := hc.Get(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
}
