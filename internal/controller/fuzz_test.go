package controller

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
)

// decoders are the request decoders and validators, each run on the
// fuzzer's body. Errors are fine; panics are not.
var decoders = []func(body []byte) error{
	func(b []byte) error { _, err := decodeApp(req(b)); return err },
	func(b []byte) error { _, err := decodeAppUpdate(req(b)); return err },
	func(b []byte) error { _, err := decodeIDBody(req(b)); return err },
	func(b []byte) error { _, err := decodeArtifact(req(b)); return err },
	func(b []byte) error { _, err := decodeRelease(req(b)); return err },
	func(b []byte) error { _, err := decodeFormation(req(b)); return err },
	func(b []byte) error { _, err := decodeScaleRequest(req(b)); return err },
	func(b []byte) error { _, err := decodeDeploymentUpdate(req(b)); return err },
	func(b []byte) error { _, err := decodeJob(req(b)); return err },
	func(b []byte) error { _, err := decodeNewJob(req(b)); return err },
	func(b []byte) error { _, err := decodeRoute(req(b)); return err },
	func(b []byte) error { _, err := decodeProvider(req(b)); return err },
	func(b []byte) error { _, err := decodeResourceRequest(req(b)); return err },
	func(b []byte) error { _, err := decodeKey(req(b)); return err },
	func(b []byte) error {
		r := httptest.NewRequest("GET", "/events", nil)
		r.URL.RawQuery = string(b)
		r.Header.Set("Last-Event-ID", string(b))
		_, err := parseEventQuery(r)
		return err
	},
}

func req(b []byte) *http.Request {
	return httptest.NewRequest("POST", "/", bytes.NewReader(b))
}

func FuzzDecoders(f *testing.F) {
	for _, s := range []string{
		`{"name":"my-app","meta":{"a":"b"},"strategy":"one-by-one","deploy_timeout":30}`,
		`{"type":"docker","uri":"docker://busybox","manifest":{"rootfs":[{"layers":[{"id":"a","length":1}]}],"entrypoints":{"_default":{"env":{"A":"1"}}}}}`,
		`{"app_id":"x","artifacts":["a"],"env":{"A":"1"},"processes":{"web":{"args":["a"],"ports":[{"port":80,"proto":"tcp","service":{"name":"s"}}],"resources":{"memory":{"limit":1}},"volumes":[{"path":"/data"}]}}}`,
		`{"processes":{"web":1},"tags":{"web":{"a":"b"}}}`,
		`{"id":"x","state":"complete","new_processes":{"web":-1}}`,
		`{"type":"http","domain":"*.example.com","path":"/x","certificate":{"cert":"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----","key":"k"}}`,
		`{"type":"tcp","port":3000,"leader":true}`,
		`{"id":"h-1","state":"up","args":["a"],"type":"web"}`,
		`{"release":"r","args":["sh"],"env":{"X":"y"},"tty":true,"tty_columns":80,"resources":{"cpu":{"request":2,"limit":1}}}`,
		`{"key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me"}`,
		`{"name":"pg","url":"http://x/databases"}`,
		`{"apps":["a"],"config":{"x":1}}`,
		`{"status":"failed","error":"x"}`,
		`app_id=x&object_types=app,job&since_id=5&count=3`,
		`{"id":`, `null`, `[]`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, d := range decoders {
			if err := d(b); err != nil {
				if _, ok := api.AsError(err); !ok {
					t.Fatalf("decoder returned a non-API error %T: %v", err, err)
				}
			}
		}
	})
}
