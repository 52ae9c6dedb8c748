package blobclient

import (
	"net/http"
)

// KeyTransport sends Key as the HTTP Basic password with the requests for
// one host, the blobstore's (e.g. blobstore.discoverd), and with no
// others: a host agent fetches layers from wherever their URLs say, and
// its key must reach the blobstore only.
type KeyTransport struct {
	Host string
	Key  string
	// Base makes the requests (http.DefaultTransport when nil).
	Base http.RoundTripper
}

// RoundTrip adds the key to a request for t.Host that carries no
// credentials of its own.
func (t *KeyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if t.Key != "" && req.URL.Host == t.Host && req.Header.Get("Authorization") == "" && req.URL.User == nil {
		req = req.Clone(req.Context())
		req.SetBasicAuth("", t.Key)
	}
	return base.RoundTrip(req)
}
