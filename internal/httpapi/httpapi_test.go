package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

type thing struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func testServer(t *testing.T) *httpclient.Client {
	t.Helper()
	auth := NewKeyAuth("old-key", "new-key")
	mux := http.NewServeMux()
	mux.Handle("POST /things", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		var in thing
		if err := DecodeJSONStrict(r, &in); err != nil {
			return err
		}
		if in.Name == "" {
			return api.Validation("name", "name is required")
		}
		if in.Name == "dup" {
			return api.Exists("thing %q exists", in.Name)
		}
		return WriteJSON(w, http.StatusCreated, in)
	}))
	mux.Handle("GET /things/{name}", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return api.NotFound("thing %q not found", r.PathValue("name"))
	}))
	mux.Handle("GET /boom", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		panic("boom")
	}))
	mux.Handle("GET /internal", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return errors.New("secret database detail")
	}))
	mux.Handle("GET /ping", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	}))
	mux.Handle("GET /stream", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		s, err := NewSSE(w)
		if err != nil {
			return err
		}
		s.Comment("hello")
		for i := range 3 {
			if err := s.Send("n", fmt.Sprint(i), thing{Name: "t", Count: i}); err != nil {
				return nil
			}
		}
		return nil
	}))
	open := func(r *http.Request) bool { return r.URL.Path == "/ping" }
	srv := httptest.NewServer(Wrap(logging.Discard(), auth.Require(open, mux)))
	t.Cleanup(srv.Close)
	return &httpclient.Client{URL: srv.URL, Key: "new-key"}
}

func TestErrors(t *testing.T) {
	c := testServer(t)
	ctx := context.Background()
	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		want       error
		wantField  string
		wantStatus int
	}{
		{"created", "POST", "/things", thing{Name: "a", Count: 1}, nil, "", 0},
		{"missing field", "POST", "/things", thing{}, api.ErrValidation, "name", 400},
		{"exists", "POST", "/things", thing{Name: "dup"}, api.ErrObjectExists, "", 409},
		{"not found", "GET", "/things/x", nil, api.ErrNotFound, "", 404},
		{"malformed", "POST", "/things", strings.NewReader(`{"name":`), api.ErrValidation, "", 400},
		{"wrong type", "POST", "/things", strings.NewReader(`{"name":"a","count":"x"}`), api.ErrValidation, "count", 400},
		{"unknown field", "POST", "/things", strings.NewReader(`{"name":"a","nope":1}`), api.ErrValidation, "nope", 400},
		{"trailing", "POST", "/things", strings.NewReader(`{"name":"a"} {}`), api.ErrValidation, "", 400},
		{"empty", "POST", "/things", strings.NewReader(``), api.ErrValidation, "", 400},
		{"panic", "GET", "/boom", nil, api.ErrUnknown, "", 500},
		{"internal", "GET", "/internal", nil, api.ErrUnknown, "", 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out thing
			err := c.Do(ctx, tt.method, tt.path, tt.body, &out)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if diff := cmp.Diff(thing{Name: "a", Count: 1}, out); diff != "" {
					t.Fatalf("reply (-want +got):\n%s", diff)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			e, _ := api.AsError(err)
			if e.Field != tt.wantField || e.Status != tt.wantStatus {
				t.Fatalf("field %q status %d, want %q %d", e.Field, e.Status, tt.wantField, tt.wantStatus)
			}
			if strings.Contains(e.Message, "secret") {
				t.Fatalf("internal error leaked: %q", e.Message)
			}
		})
	}
}

// TestTypeErrorMessages: a value of the wrong JSON type is named in
// JSON's terms, not Go's.
func TestTypeErrorMessages(t *testing.T) {
	c := testServer(t)
	for body, want := range map[string]string{
		`{"name":"a","count":"x"}`: `field "count" must be a whole number, not string`,
		`{"name":7}`:               `field "name" must be a string, not number`,
		`[]`:                       `the request body must be an object, not array`,
		`"thing"`:                  `the request body must be an object, not string`,
	} {
		err := c.Do(context.Background(), "POST", "/things", strings.NewReader(body), nil)
		e, _ := api.AsError(err)
		if e == nil || e.Message != want {
			t.Errorf("POST %s: %v, want the message %q", body, err, want)
		}
	}
}

func TestBodyTooLarge(t *testing.T) {
	c := testServer(t)
	big := `{"name":"` + strings.Repeat("x", MaxBodyBytes+10) + `"}`
	err := c.Do(context.Background(), "POST", "/things", strings.NewReader(big), nil)
	if !errors.Is(err, api.ErrTooLarge) {
		t.Fatalf("err = %v, want too large", err)
	}
}

func TestAuth(t *testing.T) {
	c := testServer(t)
	ctx := context.Background()
	for _, key := range []string{"", "wrong", "new-key-x"} {
		bad := *c
		bad.Key = key
		err := bad.Do(ctx, "GET", "/things/x", nil, nil)
		if !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("key %q: err = %v, want unauthorized", key, err)
		}
	}
	for _, key := range []string{"old-key", "new-key"} {
		good := *c
		good.Key = key
		if err := good.Do(ctx, "GET", "/things/x", nil, nil); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("key %q: err = %v, want not found (authorised)", key, err)
		}
	}
	open := *c
	open.Key = ""
	if err := open.Do(ctx, "GET", "/ping", nil, nil); err != nil {
		t.Errorf("open path: %v", err)
	}
}

func TestSSE(t *testing.T) {
	c := testServer(t)
	er, err := c.Stream(context.Background(), "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer er.Close()
	for i := range 3 {
		ev, err := er.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		want := fmt.Sprintf(`{"name":"t","count":%d}`, i)
		if ev.Event != "n" || ev.ID != fmt.Sprint(i) || string(ev.Data) != want {
			t.Fatalf("event %d = %+v (%s)", i, ev, ev.Data)
		}
	}
	if _, err := er.Next(); err != io.EOF {
		t.Fatalf("after last event: %v, want EOF", err)
	}
}

func TestServeShutsDownGracefully(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, ln, h, logging.Discard()) }()
	resc := make(chan string, 1)
	go func() {
		res, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			resc <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		resc <- string(b)
	}()
	<-started
	cancel()
	if got := <-resc; got != "done" {
		t.Fatalf("in-flight request got %q, want done", got)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Serve = %v", err)
	}
}
