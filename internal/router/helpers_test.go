package router

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// harness is a running router with its etcd and in-memory discoverd.
type harness struct {
	t *testing.T
	// https makes client() use the HTTPS listener with HTTP/1.1, which
	// takes the net/http path; plain HTTP takes the fast path.
	https bool
	r     *Router
	etcd  *etcdkv.Client
	disc  *MemDiscoverer
	addrs Addrs
	api   *httpclient.Client
}

func startRouter(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	etcd := etcdtest.KV(t)
	disc := NewMemDiscoverer()
	cfg := Config{
		HTTPAddr:   "127.0.0.1:0",
		HTTPSAddr:  "127.0.0.1:0",
		APIAddr:    "127.0.0.1:0",
		TCPIP:      "127.0.0.1",
		Etcd:       etcd,
		Discoverer: disc,
		CookieKey:  []byte(strings.Repeat("k", 32)),
		Token:      "secret",
	}
	cfg.DefaultCert = keyPair(t, "*.test")
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("router did not stop")
		}
	})
	a := r.Addrs()
	return &harness{t: t, r: r, etcd: etcd, disc: disc, addrs: a,
		api: &httpclient.Client{URL: "http://" + a.API, Key: "secret"}}
}

func (h *harness) putRoute(rt api.Route) {
	h.t.Helper()
	if rt.Type == "" {
		rt.Type = api.RouteHTTP
	}
	b, err := json.Marshal(rt)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.etcd.Put(context.Background(), api.KeyRoutes+rt.ID, string(b)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) deleteRoute(id string) {
	h.t.Helper()
	if _, err := h.etcd.Delete(context.Background(), api.KeyRoutes+id); err != nil {
		h.t.Fatal(err)
	}
}

// waitFor polls f until it returns nil, failing the test after a generous
// deadline.
func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testBackend is an HTTP backend that names itself in X-Backend and counts
// its requests.
type testBackend struct {
	name string
	srv  *httptest.Server
	hits atomic.Int64
	last atomic.Pointer[http.Request]
}

func newBackend(t *testing.T, name string, h http.HandlerFunc) *testBackend {
	t.Helper()
	return newBackendOn(t, "127.0.0.1", name, h)
}

// newBackendOn is newBackend listening on ip (another loopback address
// stands for another host).
func newBackendOn(t *testing.T, ip, name string, h http.HandlerFunc) *testBackend {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{name: name}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.last.Store(r)
		w.Header().Set("X-Backend", name)
		if h != nil {
			h(w, r)
			return
		}
		io.WriteString(w, name)
	}))
	b.srv.Listener.Close()
	b.srv.Listener = ln
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *testBackend) addr() string { return b.srv.Listener.Addr().String() }

// client returns an HTTP client that sends every request to the router's
// HTTP listener, whatever the URL's host.
func (h *harness) client() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", h.addrs.HTTP)
		},
	}
	if h.https {
		tr.DialContext = nil
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			d := &tls.Dialer{Config: &tls.Config{ServerName: host, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}}
			return d.DialContext(ctx, "tcp", h.addrs.HTTPS)
		}
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

type reply struct {
	status  int
	backend string
	body    string
	header  http.Header
}

// modes runs f over the fast path (plain HTTP, and HTTPS with HTTP/1.1)
// and over the net/http path (HTTPS with HTTP/1.1, connections handed to
// net/http after the handshake, as h2 ones are).
func (h *harness) modes(t *testing.T, f func(t *testing.T, scheme string)) {
	for _, m := range []struct {
		name           string
		https, netHTTP bool
	}{
		{"http", false, false},
		{"https", true, false},
		{"https-nethttp", true, true},
	} {
		scheme := "http"
		if m.https {
			scheme = "https"
		}
		t.Run(m.name, func(t *testing.T) {
			h.https = m.https
			h.r.tlsNetHTTP.Store(m.netHTTP)
			defer func() {
				h.https = false
				h.r.tlsNetHTTP.Store(false)
			}()
			f(t, scheme)
		})
	}
}

func (h *harness) get(url string, hdr map[string]string) (reply, error) {
	if h.https {
		url = strings.Replace(url, "http://", "https://", 1)
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return reply{}, err
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := h.client().Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: res.StatusCode, backend: res.Header.Get("X-Backend"), body: string(b), header: res.Header}, nil
}

// expectBackend waits until a GET of url is answered by want.
func (h *harness) expectBackend(url, want string) {
	h.t.Helper()
	waitFor(h.t, "GET "+url+" answered by "+want, func() error {
		r, err := h.get(url, nil)
		if err != nil {
			return err
		}
		if r.backend != want {
			return fmt.Errorf("status %d backend %q body %q", r.status, r.backend, r.body)
		}
		return nil
	})
}

// routeTo routes name.test to the backend at addr (service name-web, route
// name) and waits until a GET there is answered by the backend named name.
func (h *harness) routeTo(name, addr string) {
	h.t.Helper()
	h.disc.Register(name+"-web", addr)
	h.putRoute(api.Route{ID: name, Domain: name + ".test", Service: name + "-web"})
	h.expectBackend("http://"+name+".test/", name)
}

// selfSigned makes a certificate for names, in PEM.
func selfSigned(t testing.TB, names ...string) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
}

func keyPair(t testing.TB, names ...string) *tls.Certificate {
	c, k := selfSigned(t, names...)
	cert, err := tls.X509KeyPair([]byte(c), []byte(k))
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}
