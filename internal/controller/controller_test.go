package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

const testKey = "test-key"

// testSystemKey is the test controller's system key (see Config.SystemKeys).
const testSystemKey = "test-system-key"

// fakeRunner records jobs instead of starting them; Attach returns one end
// of a pipe whose other end speaks the host agent's frames: it greets,
// echoes stdin lines and resizes, and exits 3 at stdin EOF.
type fakeRunner struct {
	mu       sync.Mutex
	added    []*api.HostJob
	stopped  []string
	signaled []string
	// addErr, when set, is what AddJob returns.
	addErr error
	// etcd holds the registered hosts Place picks from.
	etcd *etcdkv.Client
}

// Place picks among the hosts registered in etcd, by the scheduler's rules.
func (f *fakeRunner) Place(ctx context.Context, req scheduler.Request) (*api.Host, error) {
	hosts, err := (&scheduler.EtcdHosts{Client: f.etcd}).ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	return scheduler.PlaceOne(&scheduler.Snapshot{Hosts: hosts}, req)
}

func (f *fakeRunner) SignalJob(ctx context.Context, h *api.Host, id string, sig int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signaled = append(f.signaled, fmt.Sprintf("%s:%d", id, sig))
	return nil
}

func (f *fakeRunner) AddJob(ctx context.Context, h *api.Host, j *api.HostJob) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addErr != nil {
		return f.addErr
	}
	f.added = append(f.added, j)
	return nil
}

func (f *fakeRunner) StopJob(ctx context.Context, h *api.Host, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = append(f.stopped, h.ID+":"+id)
	return nil
}

func (f *fakeRunner) Attach(ctx context.Context, h *api.Host, req AttachRequest) (io.ReadWriteCloser, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		api.WriteFrame(b, api.FrameStdout, []byte("attached "+req.JobID+"\n"))
		for {
			typ, p, err := api.ReadFrame(b)
			if err != nil {
				return
			}
			switch {
			case typ == api.FrameStdin && len(p) == 0:
				api.WriteFrame(b, api.FrameStderr, []byte("bye\n"))
				api.WriteFrame(b, api.FrameExit, []byte(`{"exit_status":3}`))
				return
			case typ == api.FrameStdin:
				api.WriteFrame(b, api.FrameStdout, []byte("echo "+string(p)))
			case typ == api.FrameResize && len(p) == 4:
				api.WriteFrame(b, api.FrameStdout, []byte(fmt.Sprintf("resize %dx%d\n", binary.BigEndian.Uint16(p[2:]), binary.BigEndian.Uint16(p[:2]))))
			}
		}
	}()
	return a, nil
}

type env struct {
	etcd   *etcdkv.Client
	c      *controllerclient.Client
	url    string
	runner *fakeRunner
	cfg    Config
}

func newServer(t testing.TB, cfg Config) (*controllerclient.Client, string) {
	t.Helper()
	s, err := New(cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return controllerclient.New(srv.URL, testKey), srv.URL
}

func setup(t testing.TB) *env {
	t.Helper()
	cli := etcdtest.KV(t)
	runner := &fakeRunner{etcd: cli}
	cfg := Config{Etcd: cli, AuthKeys: []string{"old-key", testKey}, SystemKeys: []string{testSystemKey}, ClusterDomain: "example.test", Runner: runner}
	c, u := newServer(t, cfg)
	return &env{etcd: cli, c: c, url: u, runner: runner, cfg: cfg}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantErr(t *testing.T, err, want error, field string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	e, _ := api.AsError(err)
	if e.Field != field {
		t.Fatalf("field = %q, want %q (%v)", e.Field, field, err)
	}
}

// release makes an artifact and a release of app with a web type.
func release(t *testing.T, e *env, appID string, envVars map[string]string) *api.Release {
	t.Helper()
	a := &api.Artifact{Type: api.ArtifactTypeDocker, URI: "docker://busybox"}
	if err := e.c.CreateArtifact(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	r := &api.Release{AppID: appID, ArtifactIDs: []string{a.ID}, Env: envVars,
		Processes: map[string]*api.ProcessType{"web": {Args: []string{"httpd"}}, "worker": {Args: []string{"work"}}}}
	if err := e.c.CreateRelease(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestApps(t *testing.T) {
	e := setup(t)
	c := ctx(t)

	gen := &api.App{}
	if err := e.c.CreateApp(c, gen); err != nil {
		t.Fatal(err)
	}
	if !appNameRe.MatchString(gen.Name) || gen.ID == "" || gen.Strategy != api.StrategyAllAtOnce || gen.DeployTimeout != api.DefaultDeployTimeout {
		t.Fatalf("generated app = %+v", gen)
	}
	app := &api.App{Name: "my-app", Meta: map[string]string{"owner": "ops"}}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{app.ID, app.Name} {
		got, err := e.c.GetApp(c, key)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(app, got); diff != "" {
			t.Fatalf("get %s (-want +got):\n%s", key, diff)
		}
	}
	wantErr(t, e.c.CreateApp(c, &api.App{Name: "my-app"}), api.ErrObjectExists, "")

	// The default route: my-app.example.test → my-app-web, where the router reads it.
	routes, err := e.c.RouteList(c, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Domain != "my-app.example.test" || routes[0].Service != "my-app-web" || routes[0].ParentRef != "controller/apps/"+app.ID {
		t.Fatalf("default routes = %+v", routes)
	}
	res, err := e.etcd.Get(c, api.KeyRoutes+routes[0].ID)
	if err != nil || len(res.Kvs) != 1 {
		t.Fatalf("route not at %s: %v", api.KeyRoutes+routes[0].ID, err)
	}
	var stored api.Route
	if err := json.Unmarshal(res.Kvs[0].Value, &stored); err != nil || stored.Domain != "my-app.example.test" {
		t.Fatalf("stored route = %s (%v)", res.Kvs[0].Value, err)
	}

	upd := &api.App{ID: app.ID, Strategy: api.StrategyOneByOne, DeployTimeout: 300, Meta: map[string]string{"a": "b"}}
	if err := e.c.UpdateApp(c, upd); err != nil {
		t.Fatal(err)
	}
	if upd.Strategy != api.StrategyOneByOne || upd.DeployTimeout != 300 || upd.Meta["a"] != "b" || upd.Name != "my-app" {
		t.Fatalf("updated = %+v", upd)
	}
	if got, err := e.c.UpdateAppMeta(c, "my-app", map[string]string{"x": "y"}); err != nil || got.Meta["x"] != "y" || got.Strategy != api.StrategyOneByOne {
		t.Fatalf("meta update = %+v, %v", got, err)
	}
	apps, err := e.c.ListApps(c)
	if err != nil || len(apps) != 2 {
		t.Fatalf("list = %d apps, %v", len(apps), err)
	}

	invalid := []struct {
		name  string
		app   *api.App
		field string
	}{
		{"upper", &api.App{Name: "MyApp"}, "name"},
		{"double dash", &api.App{Name: "a--b"}, "name"},
		{"trailing dash", &api.App{Name: "a-"}, "name"},
		{"too long", &api.App{Name: strings.Repeat("a", 101)}, "name"},
		{"strategy", &api.App{Name: "ok", Strategy: "yolo"}, "strategy"},
		{"timeout", &api.App{Name: "ok", DeployTimeout: -1}, "deploy_timeout"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, e.c.CreateApp(c, tt.app), api.ErrValidation, tt.field)
		})
	}
	if err := controllerclient.New(e.url, testSystemKey).CreateApp(c, &api.App{Name: strings.Repeat("a", 100), Meta: map[string]string{api.MetaSystemApp: "true"}}); err != nil {
		t.Fatalf("100-char name: %v", err)
	}
	wantErr(t, e.c.UpdateApp(c, &api.App{ID: app.ID, Strategy: "nope"}), api.ErrValidation, "strategy")
	_, err = e.c.GetApp(c, "nope")
	wantErr(t, err, api.ErrNotFound, "")

	// Delete: formations, routes and releases go with the app.
	rel := release(t, e, app.ID, nil)
	if err := e.c.PutFormation(c, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 2}}); err != nil {
		t.Fatal(err)
	}
	del, err := e.c.DeleteApp(c, "my-app")
	if err != nil {
		t.Fatal(err)
	}
	if del.AppID != app.ID || len(del.DeletedReleases) != 1 || del.DeletedReleases[0].ID != rel.ID || len(del.DeletedRoutes) != 1 {
		t.Fatalf("app deletion = %+v", del)
	}
	_, err = e.c.GetApp(c, app.ID)
	wantErr(t, err, api.ErrNotFound, "")
	_, err = e.c.GetRelease(c, rel.ID)
	wantErr(t, err, api.ErrNotFound, "")
	if res, _ := e.etcd.Get(c, api.KeyRoutes, etcdkv.WithPrefix()); len(res.Kvs) != 1 { // gen's route remains
		t.Fatalf("routes left after delete: %d", len(res.Kvs))
	}
	active, err := e.c.FormationListActive(c)
	if err != nil || len(active) != 0 {
		t.Fatalf("active formations after delete = %v, %v", active, err)
	}
	// The name is free again.
	if err := e.c.CreateApp(c, &api.App{Name: "my-app"}); err != nil {
		t.Fatal(err)
	}
}

func TestReleasesAndFormations(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "web"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel := release(t, e, app.ID, map[string]string{"A": "1"})
	got, err := e.c.GetRelease(c, rel.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rel, got); diff != "" {
		t.Fatalf("release (-want +got):\n%s", diff)
	}
	art, err := e.c.GetArtifact(c, rel.ArtifactIDs[0])
	if err != nil || art.URI != "docker://busybox" {
		t.Fatalf("artifact = %+v, %v", art, err)
	}
	if as, err := e.c.ListArtifacts(c); err != nil || len(as) != 1 {
		t.Fatalf("artifacts = %v, %v", as, err)
	}
	if rs, err := e.c.ListReleases(c); err != nil || len(rs) != 1 {
		t.Fatalf("releases = %v, %v", rs, err)
	}
	if rs, err := e.c.AppReleaseList(c, app.Name); err != nil || len(rs) != 1 {
		t.Fatalf("app releases = %v, %v", rs, err)
	}
	// Immutable: the same id again is refused.
	dup := *rel
	wantErr(t, e.c.CreateRelease(c, &dup), api.ErrObjectExists, "")
	wantErr(t, e.c.CreateRelease(c, &api.Release{ArtifactIDs: []string{"missing"}}), api.ErrValidation, "artifacts[0]")
	wantErr(t, e.c.CreateRelease(c, &api.Release{Env: map[string]string{"1BAD": "x"}}), api.ErrValidation, "env")
	wantErr(t, e.c.CreateRelease(c, &api.Release{Env: map[string]string{"A-B": "x"}}), api.ErrValidation, "env")
	wantErr(t, e.c.CreateArtifact(c, &api.Artifact{Type: "zip", URI: "x"}), api.ErrValidation, "type")
	wantErr(t, e.c.CreateArtifact(c, &api.Artifact{Type: "docker"}), api.ErrValidation, "uri")

	_, err = e.c.GetAppRelease(c, app.ID)
	wantErr(t, err, api.ErrNotFound, "")
	if err := e.c.SetAppRelease(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	if cur, err := e.c.GetAppRelease(c, app.Name); err != nil || cur.ID != rel.ID {
		t.Fatalf("app release = %+v, %v", cur, err)
	}
	wantErr(t, e.c.SetAppRelease(c, app.ID, "nope"), api.ErrValidation, "id")
	_, err = e.c.DeleteRelease(c, app.ID, rel.ID)
	wantErr(t, err, api.ErrValidation, "id")

	f := &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 2, "worker": 1},
		Tags: map[string]map[string]string{"web": {"disk": "ssd"}}}
	if err := e.c.PutFormation(c, f); err != nil {
		t.Fatal(err)
	}
	gf, err := e.c.GetFormation(c, app.ID, rel.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f, gf); diff != "" {
		t.Fatalf("formation (-want +got):\n%s", diff)
	}
	ef, err := e.c.GetExpandedFormation(c, app.Name, rel.ID)
	if err != nil || ef.App.ID != app.ID || ef.Release.ID != rel.ID || len(ef.Artifacts) != 1 || ef.Processes["web"] != 2 {
		t.Fatalf("expanded = %+v, %v", ef, err)
	}
	if fs, err := e.c.FormationList(c, app.ID); err != nil || len(fs) != 1 {
		t.Fatalf("formations = %v, %v", fs, err)
	}
	active, err := e.c.FormationListActive(c)
	if err != nil || len(active) != 1 || active[0].Release.ID != rel.ID {
		t.Fatalf("active = %v, %v", active, err)
	}
	for _, tt := range []struct {
		name  string
		procs map[string]int
	}{
		{"negative", map[string]int{"web": -1}},
		{"huge", map[string]int{"web": 1 << 30}},
		{"bad type", map[string]int{"we b": 1}},
		{"unknown type", map[string]int{"db": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := e.c.PutFormation(c, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: tt.procs})
			wantErr(t, err, api.ErrValidation, "processes")
		})
	}

	sr, err := e.c.ScaleAppRelease(c, app.ID, rel.ID, map[string]int{"web": 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sr.State != api.ScaleRequestPending || sr.OldProcesses["web"] != 2 || (*sr.NewProcesses)["web"] != 3 {
		t.Fatalf("scale request = %+v", sr)
	}
	if gf, _ := e.c.GetFormation(c, app.ID, rel.ID); gf.Processes["web"] != 3 || gf.Tags["web"]["disk"] != "ssd" {
		t.Fatalf("formation after scale = %+v", gf)
	}
	done, err := e.c.UpdateScaleRequest(c, app.ID, rel.ID, sr.ID, api.ScaleRequestComplete)
	if err != nil || done.State != api.ScaleRequestComplete {
		t.Fatalf("complete scale = %+v, %v", done, err)
	}
	if srs, err := e.c.ScaleRequestList(c, app.ID); err != nil || len(srs) != 1 {
		t.Fatalf("scale requests = %v, %v", srs, err)
	}
	_, err = e.c.ScaleAppRelease(c, app.ID, rel.ID, map[string]int{"web": -3}, nil)
	wantErr(t, err, api.ErrValidation, "new_processes")

	if err := e.c.DeleteFormation(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.GetFormation(c, app.ID, rel.ID)
	wantErr(t, err, api.ErrNotFound, "")

	rel2 := release(t, e, app.ID, nil)
	if rd, err := e.c.DeleteRelease(c, app.ID, rel2.ID); err != nil || rd.ReleaseID != rel2.ID || rd.AppID != app.ID {
		t.Fatalf("release deletion = %+v, %v", rd, err)
	}
	_, err = e.c.GetRelease(c, rel2.ID)
	wantErr(t, err, api.ErrNotFound, "")
}

func testCert(t *testing.T, host string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
}

func TestRoutes(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "shop"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	cert, key := testCert(t, "shop.example.com")
	_, otherKey := testCert(t, "other")
	r := &api.Route{Type: api.RouteHTTP, Domain: "shop.example.com", Path: "/api/", Sticky: true, DrainBackends: true,
		Certificate: &api.Certificate{Cert: cert, Key: key}}
	if err := e.c.CreateRoute(c, app.ID, r); err != nil {
		t.Fatal(err)
	}
	if r.ID == "" || r.Service != "shop-web" || r.ParentRef != "controller/apps/"+app.ID {
		t.Fatalf("route = %+v", r)
	}
	got, err := e.c.GetRoute(c, app.Name, api.RouteHTTP, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Fatalf("route (-want +got):\n%s", diff)
	}
	_, err = e.c.GetRoute(c, app.Name, api.RouteTCP, r.ID)
	wantErr(t, err, api.ErrNotFound, "")
	wantErr(t, e.c.CreateRoute(c, app.ID, &api.Route{Type: api.RouteHTTP, Domain: "shop.example.com", Path: "/api/"}), api.ErrObjectExists, "")

	tcp := &api.Route{Type: api.RouteTCP, Leader: true}
	if err := e.c.CreateRoute(c, app.ID, tcp); err != nil {
		t.Fatal(err)
	}
	if tcp.Port < 3000 || tcp.Port > 3500 {
		t.Fatalf("tcp port = %d", tcp.Port)
	}
	wantErr(t, e.c.CreateRoute(c, app.ID, &api.Route{Type: api.RouteTCP, Port: tcp.Port}), api.ErrObjectExists, "")

	for _, tt := range []struct {
		name  string
		r     *api.Route
		field string
	}{
		{"no type", &api.Route{Domain: "a.com"}, "type"},
		{"bad type", &api.Route{Type: "udp"}, "type"},
		{"no domain", &api.Route{Type: "http"}, "domain"},
		{"bad domain", &api.Route{Type: "http", Domain: "a..com"}, "domain"},
		{"upper domain", &api.Route{Type: "http", Domain: "A.com"}, "domain"},
		{"space domain", &api.Route{Type: "http", Domain: "a b.com"}, "domain"},
		{"bad path", &api.Route{Type: "http", Domain: "a.com", Path: "api"}, "path"},
		{"bad port", &api.Route{Type: "tcp", Port: 70000}, "port"},
		{"garbage cert", &api.Route{Type: "http", Domain: "a.com", Certificate: &api.Certificate{Cert: "nope", Key: key}}, "certificate.cert"},
		{"no key", &api.Route{Type: "http", Domain: "a.com", Certificate: &api.Certificate{Cert: cert}}, "certificate.key"},
		{"wrong key", &api.Route{Type: "http", Domain: "a.com", Certificate: &api.Certificate{Cert: cert, Key: otherKey}}, "certificate.key"},
		{"tcp with domain", &api.Route{Type: "tcp", Domain: "a.com"}, "type"},
		{"bad service", &api.Route{Type: "http", Domain: "a.com", Service: "Bad Service"}, "service"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, e.c.CreateRoute(c, app.ID, tt.r), api.ErrValidation, tt.field)
		})
	}
	if err := e.c.CreateRoute(c, app.ID, &api.Route{Type: "http", Domain: "*.wild.example.com"}); err != nil {
		t.Fatalf("wildcard: %v", err)
	}

	r.Domain = "shop2.example.com"
	r.Certificate = nil
	r.Sticky = false
	if err := e.c.UpdateRoute(c, app.ID, r); err != nil {
		t.Fatal(err)
	}
	// The old domain is free again, the new one taken.
	if err := e.c.CreateRoute(c, app.ID, &api.Route{Type: "http", Domain: "shop.example.com", Path: "/api/"}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.c.CreateRoute(c, app.ID, &api.Route{Type: "http", Domain: "shop2.example.com", Path: "/api/"}), api.ErrObjectExists, "")

	list, err := e.c.RouteList(c, app.ID)
	if err != nil || len(list) != 5 { // default, updated, tcp, wildcard, re-created
		t.Fatalf("routes = %d, %v", len(list), err)
	}
	all, err := e.c.ListAllRoutes(c)
	if err != nil || len(all) != 5 {
		t.Fatalf("all routes = %d, %v", len(all), err)
	}
	if err := e.c.DeleteRoute(c, app.ID, api.RouteTCP, tcp.ID); err != nil {
		t.Fatal(err)
	}
	if res, _ := e.etcd.Get(c, api.KeyRoutes+tcp.ID); len(res.Kvs) != 0 {
		t.Fatal("deleted route still in etcd")
	}
	wantErr(t, e.c.DeleteRoute(c, app.ID, api.RouteTCP, tcp.ID), api.ErrNotFound, "")
}

func TestJobs(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "jobs"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel := release(t, e, app.ID, map[string]string{"SECRET": "x"})
	if err := e.c.SetAppRelease(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}

	// No hosts registered: 503.
	_, err := e.c.RunJob(c, app.ID, &api.NewJob{Args: []string{"true"}})
	if !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("run without hosts: %v", err)
	}
	host := api.Host{ID: "host1", URL: "http://127.0.0.1:1"}
	hb, _ := json.Marshal(host)
	if _, err := e.etcd.Put(c, api.KeyHosts+host.ID, string(hb)); err != nil {
		t.Fatal(err)
	}

	j, err := e.c.RunJob(c, app.Name, &api.NewJob{Args: []string{"echo", "hi"}, ReleaseEnv: true, Env: map[string]string{"X": "1"}, Meta: map[string]string{"test.mark": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(j.ID, "host1-") || j.HostID != "host1" || j.State != api.JobStateStarting || j.ReleaseID != rel.ID {
		t.Fatalf("job = %+v", j)
	}
	hj := e.runner.added[0]
	if hj.ID != j.ID || hj.Config.Env["SECRET"] != "x" || hj.Config.Env["X"] != "1" || hj.Config.Env["FLYNN_APP_NAME"] != "jobs" ||
		hj.Metadata[api.JobMetaApp] != app.ID || len(hj.Artifacts) != 1 {
		t.Fatalf("host job = %+v", hj)
	}
	wantErr(t, func() error {
		_, err := e.c.RunJob(c, app.ID, &api.NewJob{Env: map[string]string{"=": "x"}})
		return err
	}(), api.ErrValidation, "env")
	wantErr(t, func() error { _, err := e.c.RunJob(c, app.ID, &api.NewJob{ReleaseID: "nope"}); return err }(), api.ErrValidation, "release")

	// A state report of the one-off job (the scheduler's: no command, no
	// meta) keeps what the run recorded.
	if err := e.c.PutJob(c, &api.Job{ID: j.ID, UUID: j.UUID, AppID: app.ID, State: api.JobStateUp}); err != nil {
		t.Fatal(err)
	}
	if got, err := e.c.GetJob(c, app.ID, j.ID); err != nil || got.State != api.JobStateUp || !slices.Equal(got.Args, []string{"echo", "hi"}) ||
		got.Meta["test.mark"] != "1" || got.ReleaseID != rel.ID || got.HostID != "host1" {
		t.Fatalf("one-off job after a state report = %+v, %v", got, err)
	}

	// The scheduler reports jobs.
	sj := &api.Job{ID: "host1-abc", AppID: app.ID, ReleaseID: rel.ID, Type: "web", State: api.JobStateUp, HostID: "host1"}
	if err := e.c.PutJob(c, sj); err != nil {
		t.Fatal(err)
	}
	bad := &api.Job{ID: "host1-abc", AppID: app.ID, State: "exploded"}
	wantErr(t, e.c.PutJob(c, bad), api.ErrValidation, "state")
	got, err := e.c.GetJob(c, app.ID, "host1-abc")
	if err != nil || got.State != api.JobStateUp || got.Type != "web" {
		t.Fatalf("job = %+v, %v", got, err)
	}
	jobs, err := e.c.JobList(c, app.ID)
	if err != nil || len(jobs) != 2 {
		t.Fatalf("jobs = %v, %v", jobs, err)
	}
	if err := e.c.DeleteJob(c, app.ID, "host1-abc"); err != nil {
		t.Fatal(err)
	}
	if len(e.runner.stopped) != 1 || e.runner.stopped[0] != "host1:host1-abc" {
		t.Fatalf("stopped = %v", e.runner.stopped)
	}
	sj.State = api.JobStateDown
	if err := e.c.PutJob(c, sj); err != nil {
		t.Fatal(err)
	}
	active, err := e.c.ActiveJobs(c)
	if err != nil || len(active) != 1 || active[0].ID != j.ID {
		t.Fatalf("active = %v, %v", active, err)
	}
	_, err = e.c.GetJob(c, app.ID, "nope")
	wantErr(t, err, api.ErrNotFound, "")

	// Attached: the stream speaks Flynn's attach protocol both ways; the
	// host agent's frames are translated, signals go through its API.
	rwc, jobID, err := e.c.RunJobAttached(c, app.ID, &api.NewJob{Args: []string{"sh"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rwc.Close()
	next := func() *api.AttachFrame {
		t.Helper()
		f, err := api.ReadAttachFrame(rwc)
		if err != nil {
			t.Fatalf("read attach frame: %v", err)
		}
		return f
	}
	if f := next(); f.Type != api.AttachData || f.Stream != api.AttachStdout || !strings.HasPrefix(string(f.Data), "attached host1-") {
		t.Fatalf("first frame = %+v", f)
	}
	api.WriteAttachData(rwc, api.AttachStdin, []byte("hello\n"))
	if f := next(); f.Type != api.AttachData || string(f.Data) != "echo hello\n" {
		t.Fatalf("echo frame = %+v", f)
	}
	api.WriteAttachResize(rwc, 24, 80)
	if f := next(); string(f.Data) != "resize 80x24\n" {
		t.Fatalf("resize frame = %+v", f)
	}
	api.WriteAttachValue(rwc, api.AttachSignal, 2)
	api.WriteAttachData(rwc, api.AttachStdin, nil) // EOF
	if f := next(); f.Type != api.AttachData || f.Stream != api.AttachStderr || string(f.Data) != "bye\n" {
		t.Fatalf("stderr frame = %+v", f)
	}
	if f := next(); f.Type != api.AttachExit || f.Value != 3 {
		t.Fatalf("exit frame = %+v", f)
	}
	e.runner.mu.Lock()
	signaled := e.runner.signaled
	e.runner.mu.Unlock()
	if len(signaled) != 1 || !strings.HasPrefix(jobID, "host1-") || signaled[0] != jobID+":2" {
		t.Fatalf("signaled = %v, want the attached job %q's signal 2", signaled, jobID)
	}

	// A command the host cannot find is the caller's mistake: a 4xx.
	e.runner.mu.Lock()
	e.runner.addErr = api.Validation("args", "the job's command does not exist: exec: \"nope\": no such file or directory in the job's image")
	e.runner.mu.Unlock()
	_, err = e.c.RunJob(c, app.ID, &api.NewJob{Args: []string{"nope"}})
	wantErr(t, err, api.ErrValidation, "args")
	_, _, err = e.c.RunJobAttached(c, app.ID, &api.NewJob{Args: []string{"nope"}})
	wantErr(t, err, api.ErrValidation, "args")
}

func TestDeployments(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "dep"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel1 := release(t, e, app.ID, nil)
	// No processes: completes at once.
	d1, err := e.c.CreateDeployment(c, app.ID, rel1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d1.Status != api.DeploymentComplete || d1.FinishedAt == nil {
		t.Fatalf("first deployment = %+v", d1)
	}
	if a, _ := e.c.GetApp(c, app.ID); a.ReleaseID != rel1.ID {
		t.Fatalf("release after deploy = %q", a.ReleaseID)
	}
	if _, err := e.c.ScaleAppRelease(c, app.ID, rel1.ID, map[string]int{"web": 2}, nil); err != nil {
		t.Fatal(err)
	}
	rel2 := release(t, e, app.ID, nil)

	// Concurrent deploys: exactly one wins, the others get a conflict.
	const n = 5
	var wg sync.WaitGroup
	results := make([]error, n)
	deps := make([]*api.Deployment, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deps[i], results[i] = e.c.CreateDeployment(c, app.ID, rel2.ID)
		}()
	}
	wg.Wait()
	var d2 *api.Deployment
	for i, err := range results {
		if err == nil {
			if d2 != nil {
				t.Fatal("two deployments started")
			}
			d2 = deps[i]
		} else if !errors.Is(err, api.ErrConflict) {
			t.Fatalf("deploy %d: %v", i, err)
		}
	}
	if d2 == nil || d2.Status != api.DeploymentPending || d2.OldReleaseID != rel1.ID || d2.Processes["web"] != 2 {
		t.Fatalf("deployment = %+v", d2)
	}
	pending, err := e.c.ListDeployments(c, api.DeploymentPending)
	if err != nil || len(pending) != 1 || pending[0].ID != d2.ID {
		t.Fatalf("pending = %v, %v", pending, err)
	}
	if _, err := e.c.UpdateDeployment(c, d2.ID, api.DeploymentRunning, ""); err != nil {
		t.Fatal(err)
	}
	if err := e.c.AddDeploymentEvent(c, d2.ID, &api.DeploymentEvent{JobType: "web", JobState: api.JobStateUp}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.UpdateDeployment(c, d2.ID, "bogus", "")
	wantErr(t, err, api.ErrValidation, "status")
	done, err := e.c.UpdateDeployment(c, d2.ID, api.DeploymentComplete, "")
	if err != nil || done.Status != api.DeploymentComplete || done.FinishedAt == nil {
		t.Fatalf("complete = %+v, %v", done, err)
	}
	_, err = e.c.UpdateDeployment(c, d2.ID, api.DeploymentRunning, "")
	wantErr(t, err, api.ErrValidation, "status")
	if a, _ := e.c.GetApp(c, app.ID); a.ReleaseID != rel2.ID {
		t.Fatalf("release after complete = %q", a.ReleaseID)
	}
	got, err := e.c.GetDeployment(c, d2.ID)
	if err != nil || got.Status != api.DeploymentComplete {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if ds, err := e.c.DeploymentList(c, app.Name); err != nil || len(ds) != 2 {
		t.Fatalf("list = %v, %v", ds, err)
	}
	evs, err := e.c.ListEvents(c, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeDeployment}, ObjectID: d2.ID})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, ev := range evs {
		var de api.DeploymentEvent
		json.Unmarshal(ev.Data, &de)
		states = append(states, de.Status+"/"+de.JobState)
	}
	if diff := cmp.Diff([]string{"pending/", "running/", "running/up", "complete/"}, states); diff != "" {
		t.Fatalf("deployment events (-want +got):\n%s", diff)
	}

	// After it finished, a new deployment may start; a failed one releases the lock too.
	if _, err := e.c.ScaleAppRelease(c, app.ID, rel2.ID, map[string]int{"web": 1}, nil); err != nil {
		t.Fatal(err)
	}
	rel3 := release(t, e, app.ID, nil)
	d3, err := e.c.CreateDeployment(c, app.ID, rel3.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.UpdateDeployment(c, d3.ID, api.DeploymentFailed, "timed out"); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.c.GetApp(c, app.ID); a.ReleaseID != rel2.ID {
		t.Fatalf("failed deploy changed the release to %q", a.ReleaseID)
	}
	if _, err := e.c.CreateDeployment(c, app.ID, rel3.ID); err != nil {
		t.Fatalf("deploy after failure: %v", err)
	}
	_, err = e.c.CreateDeployment(c, app.ID, "nope")
	wantErr(t, err, api.ErrValidation, "id")
}

// A release with a release command is deployed through the deployer,
// which runs the command, unless the deployment names the job that ran it
// (a push's): that job must be a release command of the release.
func TestDeploymentReleasePhase(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "relphase"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	withRelease := func() *api.Release {
		r := release(t, e, app.ID, nil)
		r.ID, r.CreatedAt = "", time.Time{}
		r.Processes[api.ProcessTypeRelease] = &api.ProcessType{Args: []string{"migrate"}}
		if err := e.c.CreateRelease(c, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	rel1 := withRelease()
	// Nothing scaled, but a release command to run: pending, for the
	// deployer.
	d1, err := e.c.CreateDeployment(c, app.ID, rel1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d1.Status != api.DeploymentPending || d1.ReleasePhaseJob != "" {
		t.Fatalf("deployment of a release with a release command = %+v, want pending", d1)
	}
	if _, err := e.c.UpdateDeployment(c, d1.ID, api.DeploymentFailed, "test"); err != nil {
		t.Fatal(err)
	}

	host := api.Host{ID: "host1", URL: "http://127.0.0.1:1"}
	hb, _ := json.Marshal(host)
	if _, err := e.etcd.Put(c, api.KeyHosts+host.ID, string(hb)); err != nil {
		t.Fatal(err)
	}
	phase, err := e.c.RunJob(c, app.ID, api.ReleasePhaseJob(rel1, nil))
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.c.RunJob(c, app.ID, &api.NewJob{ReleaseID: rel1.ID, Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	rel2 := withRelease()
	for _, tt := range []struct{ job, why string }{
		{"nope", "no such job"},
		{other.ID, "not a release command"},
		{phase.ID, "another release's"},
		{"a b", "not an id"},
	} {
		rel := rel1
		if tt.job == phase.ID {
			rel = rel2
		}
		_, err := e.c.CreateDeploymentAfterReleasePhase(c, app.ID, rel.ID, tt.job)
		if !errors.Is(err, api.ErrValidation) {
			t.Fatalf("deploy after release phase job %q (%s): %v, want a validation error", tt.job, tt.why, err)
		}
	}
	d2, err := e.c.CreateDeploymentAfterReleasePhase(c, app.ID, rel1.ID, phase.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Status != api.DeploymentComplete || d2.ReleasePhaseJob != phase.ID {
		t.Fatalf("deployment after the release command = %+v, want complete at once", d2)
	}
}

func TestEventsResumeAndReplicas(t *testing.T) {
	srv := etcdtest.Start(t)
	cfg := Config{Etcd: etcdtest.KVOf(t, srv), AuthKeys: []string{testKey}}
	c1, _ := newServer(t, cfg)
	// The second replica has its own etcd client, as a second process would.
	cli2, err := etcdkv.New(etcdkv.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	cfg2 := cfg
	cfg2.Etcd = cli2
	c2, _ := newServer(t, cfg2)
	c := ctx(t)

	sctx, cancel := context.WithCancel(c)
	stream, err := c2.StreamEvents(sctx, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeApp}})
	if err != nil {
		t.Fatal(err)
	}
	// Creates on replica 1 are seen by a follower of replica 2.
	var created []string
	for i := range 3 {
		app := &api.App{Name: fmt.Sprintf("app-%d", i)}
		if err := c1.CreateApp(c, app); err != nil {
			t.Fatal(err)
		}
		created = append(created, app.ID)
	}
	var seen []string
	var lastID int64
	for range 2 {
		ev, err := stream.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID <= lastID {
			t.Fatalf("event id %d after %d", ev.ID, lastID)
		}
		lastID = ev.ID
		seen = append(seen, ev.ObjectID)
	}
	cancel()
	stream.Close()
	// While disconnected, more changes happen on both replicas.
	for i := 3; i < 6; i++ {
		cl := c1
		if i%2 == 0 {
			cl = c2
		}
		app := &api.App{Name: fmt.Sprintf("app-%d", i)}
		if err := cl.CreateApp(c, app); err != nil {
			t.Fatal(err)
		}
		created = append(created, app.ID)
	}
	stream, err = c1.StreamEvents(c, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeApp}, SinceID: lastID})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for len(seen) < len(created) {
		ev, err := stream.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID <= lastID {
			t.Fatalf("event id %d after %d", ev.ID, lastID)
		}
		lastID = ev.ID
		seen = append(seen, ev.ObjectID)
	}
	if diff := cmp.Diff(created, seen); diff != "" {
		t.Fatalf("events seen (-want +got):\n%s", diff)
	}
	// Both replicas serve the same state, and so does a restarted one.
	c3, _ := newServer(t, cfg)
	for _, cl := range []*controllerclient.Client{c1, c2, c3} {
		apps, err := cl.ListApps(c)
		if err != nil || len(apps) != len(created) {
			t.Fatalf("apps = %d, %v", len(apps), err)
		}
	}
	// JSON list with filters and paging.
	all, err := c3.ListEvents(c, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeApp}})
	if err != nil || len(all) != 6 {
		t.Fatalf("events = %d, %v", len(all), err)
	}
	last2, err := c3.ListEvents(c, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeApp}, Count: 2})
	if err != nil || len(last2) != 2 || last2[1].ID != all[5].ID {
		t.Fatalf("count=2 = %v, %v", last2, err)
	}
	before, err := c3.ListEvents(c, controllerclient.EventOptions{BeforeID: all[1].ID, ObjectTypes: []string{api.EventTypeApp}})
	if err != nil || len(before) != 1 || before[0].ID != all[0].ID {
		t.Fatalf("before = %v, %v", before, err)
	}
	byApp, err := c3.ListEvents(c, controllerclient.EventOptions{AppID: "app-4"})
	if err != nil || len(byApp) != 1 || byApp[0].ObjectID != created[4] {
		t.Fatalf("by app = %v, %v", byApp, err)
	}
	one, err := c3.GetEvent(c, all[2].ID)
	if err != nil || one.ObjectID != created[2] {
		t.Fatalf("get event = %+v, %v", one, err)
	}
	_, err = c3.GetEvent(c, 1)
	if !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get missing event: %v", err)
	}
}

func TestFormationStream(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "fs"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel := release(t, e, app.ID, nil)
	if err := e.c.PutFormation(c, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 1}}); err != nil {
		t.Fatal(err)
	}
	stream, err := e.c.StreamFormations(c, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	next := func() *api.ExpandedFormation {
		t.Helper()
		f, err := stream.Next()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := next(); f.App == nil || f.App.ID != app.ID || f.Processes["web"] != 1 || len(f.Artifacts) != 1 {
		t.Fatalf("initial = %+v", f)
	}
	if f := next(); f.App != nil {
		t.Fatalf("want the up-to-date marker, got %+v", f)
	}
	if _, err := e.c.ScaleAppRelease(c, app.ID, rel.ID, map[string]int{"web": 4}, nil); err != nil {
		t.Fatal(err)
	}
	if f := next(); f.Processes["web"] != 4 || f.Release.ID != rel.ID {
		t.Fatalf("update = %+v", f)
	}
	if err := e.c.DeleteFormation(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	if f := next(); !f.Deleted || f.Release.ID != rel.ID || f.App.ID != app.ID {
		t.Fatalf("deletion = %+v", f)
	}
	// since filters the initial list.
	s2, err := e.c.StreamFormations(c, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if f, err := s2.Next(); err != nil || f.App != nil {
		t.Fatalf("future since: %+v, %v", f, err)
	}
}

func TestAuth(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	cert := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"), 0o644)
	e.cfg.CACertFile = cert
	_, u := newServer(t, e.cfg)
	for _, key := range []string{"", "wrong", testKey + "x"} {
		cl := controllerclient.New(u, key)
		if _, err := cl.ListApps(c); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("key %q: %v, want unauthorized", key, err)
		}
		if err := cl.Ping(c); err != nil {
			t.Errorf("ping with key %q: %v", key, err)
		}
		pem, err := cl.CACert(c)
		if err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
			t.Errorf("ca-cert with key %q: %q, %v", key, pem, err)
		}
	}
	for _, key := range []string{"old-key", testKey} {
		if _, err := controllerclient.New(u, key).ListApps(c); err != nil {
			t.Errorf("key %q: %v", key, err)
		}
	}
	// Unknown paths are JSON 404s, bad JSON is a 400.
	res, err := http.Get(e.url + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated unknown path: %d", res.StatusCode)
	}
	req, _ := http.NewRequest("POST", e.url+"/apps", strings.NewReader(`{"name":`))
	req.SetBasicAuth("", testKey)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body api.Error
	json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if res.StatusCode != 400 || body.Code != api.CodeValidation {
		t.Fatalf("bad JSON: %d %+v", res.StatusCode, body)
	}
	_, err = e.c.GetApp(c, "ghost")
	if e, _ := api.AsError(err); e == nil || e.Status != 404 || e.Code != api.CodeNotFound {
		t.Fatalf("unknown app: %v", err)
	}
}

func TestResourcesAndKeys(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	var deleted []string
	var mu sync.Mutex
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "POST":
			json.NewEncoder(w).Encode(map[string]any{"id": "db1", "env": map[string]string{"DATABASE_URL": "postgres://db1"}})
		case "DELETE":
			mu.Lock()
			deleted = append(deleted, r.URL.Query().Get("id"))
			mu.Unlock()
		}
	}))
	defer provider.Close()
	pr := &api.Provider{Name: "postgres", URL: provider.URL + "/databases"}
	if err := e.c.CreateProvider(c, pr); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.c.CreateProvider(c, &api.Provider{Name: "postgres", URL: provider.URL}), api.ErrObjectExists, "")
	wantErr(t, e.c.CreateProvider(c, &api.Provider{Name: "x", URL: "ftp://x"}), api.ErrValidation, "url")
	if got, err := e.c.GetProvider(c, "postgres"); err != nil || got.ID != pr.ID {
		t.Fatalf("get provider = %+v, %v", got, err)
	}
	if ps, err := e.c.ProviderList(c); err != nil || len(ps) != 1 {
		t.Fatalf("providers = %v, %v", ps, err)
	}
	app := &api.App{Name: "db-app"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel := release(t, e, app.ID, map[string]string{"KEEP": "1"})
	if err := e.c.SetAppRelease(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}
	res, err := e.c.ProvisionResource(c, pr.ID, []string{app.Name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExternalID != "db1" || res.Env["DATABASE_URL"] != "postgres://db1" || len(res.Apps) != 1 || res.Apps[0] != app.ID {
		t.Fatalf("resource = %+v", res)
	}
	cur, err := e.c.GetAppRelease(c, app.ID)
	if err != nil || cur.ID == rel.ID || cur.Env["KEEP"] != "1" || cur.Env["DATABASE_URL"] != "postgres://db1" || len(cur.Processes) != 2 {
		t.Fatalf("release after provision = %+v, %v", cur, err)
	}
	for name, list := range map[string]func() ([]*api.Resource, error){
		"provider": func() ([]*api.Resource, error) { return e.c.ResourceListProvider(c, "postgres") },
		"all":      func() ([]*api.Resource, error) { return e.c.ResourceList(c) },
		"app":      func() ([]*api.Resource, error) { return e.c.AppResourceList(c, app.ID) },
	} {
		if rs, err := list(); err != nil || len(rs) != 1 {
			t.Fatalf("%s resources = %v, %v", name, rs, err)
		}
	}
	if got, err := e.c.GetResource(c, pr.ID, res.ID); err != nil || got.ExternalID != "db1" {
		t.Fatalf("get resource = %+v, %v", got, err)
	}
	if r2, err := e.c.DeleteResourceApp(c, pr.ID, res.ID, app.ID); err != nil || len(r2.Apps) != 0 {
		t.Fatalf("detach = %+v, %v", r2, err)
	}
	if r2, err := e.c.AddResourceApp(c, pr.ID, res.ID, app.ID); err != nil || len(r2.Apps) != 1 {
		t.Fatalf("attach = %+v, %v", r2, err)
	}
	imp := &api.Resource{ID: "imported", ProviderID: pr.ID, ExternalID: "db2", Env: map[string]string{"X": "y"}}
	if err := e.c.PutResource(c, imp); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.c.PutResource(c, &api.Resource{ID: "bad", ProviderID: pr.ID, Env: map[string]string{"0X": "y"}}), api.ErrValidation, "env")
	if err := e.c.DeleteResource(c, pr.ID, res.ID); err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 1 || deleted[0] != "db1" {
		t.Fatalf("provider deletions = %v", deleted)
	}
	_, err = e.c.GetResource(c, pr.ID, res.ID)
	wantErr(t, err, api.ErrNotFound, "")
	// Adding and removing the resource each deployed a release: the
	// running jobs got the env, then lost it.
	after, err := e.c.GetAppRelease(c, app.ID)
	if err != nil || after.ID == cur.ID || after.Env["KEEP"] != "1" || after.Env["DATABASE_URL"] != "" {
		t.Fatalf("release after deprovision = %+v, %v", after, err)
	}
	ds, err := e.c.DeploymentList(c, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	var deployed []string
	for _, d := range ds {
		deployed = append(deployed, d.NewReleaseID)
	}
	slices.Sort(deployed)
	want := []string{cur.ID, after.ID}
	slices.Sort(want)
	if diff := cmp.Diff(want, deployed); diff != "" {
		t.Fatalf("deployments (-want +got):\n%s", diff)
	}

	const pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
	k, err := e.c.CreateKey(c, pub)
	if err != nil {
		t.Fatal(err)
	}
	if k.Comment != "me@laptop" || !strings.HasPrefix(k.Fingerprint, "SHA256:") || k.ID == "" {
		t.Fatalf("key = %+v", k)
	}
	_, err = e.c.CreateKey(c, pub)
	wantErr(t, err, api.ErrObjectExists, "")
	_, err = e.c.CreateKey(c, "ssh-rsa garbage")
	wantErr(t, err, api.ErrValidation, "key")
	if ks, err := e.c.KeyList(c); err != nil || len(ks) != 1 {
		t.Fatalf("keys = %v, %v", ks, err)
	}
	if err := e.c.DeleteKey(c, k.ID); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.c.DeleteKey(c, k.ID), api.ErrNotFound, "")
}

// TestProvisionNotRecorded: what a provider made that the controller
// cannot record is deleted at the provider again, so no database is left
// whose credentials no one holds: here the provider's env is invalid, and
// then the client hangs up while the provider works (the provision goes
// on, and is recorded or deleted, never left half-way).
func TestProvisionNotRecorded(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	var mu sync.Mutex
	var posts int
	var deleted []string
	posted, answer := make(chan struct{}, 1), make(chan struct{})
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.Method {
		case "POST":
			posts++
			if posts == 1 {
				json.NewEncoder(w).Encode(map[string]any{"id": "db-bad-env", "env": map[string]string{"0BAD": "x"}})
				return
			}
			posted <- struct{}{}
			mu.Unlock()
			<-answer
			mu.Lock()
			json.NewEncoder(w).Encode(map[string]any{"id": "db-late", "env": map[string]string{"DATABASE_URL": "postgres://late"}})
		case "DELETE":
			deleted = append(deleted, r.URL.Query().Get("id"))
		}
	}))
	defer provider.Close()
	pr := &api.Provider{Name: "pg", URL: provider.URL + "/databases"}
	if err := e.c.CreateProvider(c, pr); err != nil {
		t.Fatal(err)
	}
	app := &api.App{Name: "undo-app"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	rel := release(t, e, app.ID, nil)
	if err := e.c.SetAppRelease(c, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}

	_, err := e.c.ProvisionResource(c, pr.ID, []string{app.Name}, nil)
	wantErr(t, err, api.ErrValidation, "env")
	mu.Lock()
	if !slices.Equal(deleted, []string{"db-bad-env"}) {
		t.Fatalf("deleted at the provider after an invalid env: %v", deleted)
	}
	mu.Unlock()

	cctx, cancel := context.WithCancel(c)
	errc := make(chan error, 1)
	go func() {
		_, err := e.c.ProvisionResource(cctx, pr.ID, []string{app.Name}, nil)
		errc <- err
	}()
	<-posted
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("a provision whose client hung up answered")
	}
	close(answer)
	// Recorded (with the app's env) or deleted: one or the other.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rs, err := e.c.ResourceListProvider(c, pr.Name)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		del := slices.Clone(deleted)
		mu.Unlock()
		gone := slices.Contains(del, "db-late")
		if gone && len(rs) == 0 {
			t.Log("deleted at the provider")
			break
		}
		if !gone && len(rs) == 1 && rs[0].ExternalID == "db-late" {
			cur, err := e.c.GetAppRelease(c, app.ID)
			if err == nil && cur.Env["DATABASE_URL"] == "postgres://late" {
				t.Log("recorded")
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the client hung up: resources %v, deleted at the provider %v", rs, del)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAppLog(t *testing.T) {
	e := setup(t)
	c := ctx(t)
	app := &api.App{Name: "logs"}
	if err := e.c.CreateApp(c, app); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.GetAppLog(c, app.ID, controllerclient.LogOptions{})
	if ae, _ := api.AsError(err); ae == nil || ae.Status != 503 || ae.Code != api.CodeUnavailable {
		t.Fatalf("no aggregator: %v", err)
	}
	var gotPath, gotKey string
	agg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.Path + "?" + r.URL.RawQuery
		_, gotKey, _ = r.BasicAuth()
		io.WriteString(w, "line 1\nline 2\n")
	}))
	defer agg.Close()
	e.cfg.LogAggregatorURL = agg.URL
	e.cfg.LogAggregatorKey = "log-key"
	cl, _ := newServer(t, e.cfg)
	rc, err := cl.GetAppLog(c, app.Name, controllerclient.LogOptions{Lines: 10, JobID: "j1"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "line 1\nline 2\n" || gotPath != "/log/"+app.ID+"?job_id=j1&lines=10" {
		t.Fatalf("log = %q from %q", b, gotPath)
	}
	if gotKey != "log-key" {
		t.Fatalf("the log aggregator was sent key %q, want its own", gotKey)
	}
}

// TestJSONFieldNames pins the wire names of every resource type to Flynn's.
func TestJSONFieldNames(t *testing.T) {
	one := int32(1)
	ts := time.Unix(1, 0).UTC()
	procs := map[string]int{"web": 1}
	tags := map[string]map[string]string{"web": {"a": "b"}}
	hostErr := "e"
	for _, tt := range []struct {
		v    any
		want []string
	}{
		{&api.App{ID: "x", Name: "x", Meta: map[string]string{"a": "b"}, Strategy: "s", ReleaseID: "r", DeployTimeout: 1, CreatedAt: ts, UpdatedAt: ts},
			[]string{"created_at", "deploy_timeout", "id", "meta", "name", "release", "strategy", "updated_at"}},
		{&api.Artifact{ID: "x", Type: "t", URI: "u", Meta: map[string]string{"a": "b"}, Manifest: &api.ImageManifest{}, Hashes: map[string]string{"a": "b"}, Size: 1, CreatedAt: ts},
			[]string{"created_at", "hashes", "id", "manifest", "meta", "size", "type", "uri"}},
		{&api.Release{ID: "x", AppID: "a", ArtifactIDs: []string{"a"}, Env: map[string]string{"a": "b"}, Meta: map[string]string{"a": "b"}, Processes: map[string]*api.ProcessType{"web": {}}, CreatedAt: ts},
			[]string{"app_id", "artifacts", "created_at", "env", "id", "meta", "processes"}},
		{&api.Formation{AppID: "a", ReleaseID: "r", Processes: procs, Tags: tags, CreatedAt: ts, UpdatedAt: ts},
			[]string{"app", "created_at", "processes", "release", "tags", "updated_at"}},
		{&api.ExpandedFormation{App: &api.App{}, Release: &api.Release{}, Artifacts: []*api.Artifact{{}}, Processes: procs, Tags: tags, Deleted: true, UpdatedAt: ts},
			[]string{"app", "artifacts", "deleted", "processes", "release", "tags", "updated_at"}},
		{&api.ScaleRequest{ID: "x", AppID: "a", ReleaseID: "r", State: "s", OldProcesses: procs, NewProcesses: &procs, OldTags: tags, NewTags: &tags, CreatedAt: ts, UpdatedAt: ts},
			[]string{"app", "created_at", "id", "new_processes", "new_tags", "old_processes", "old_tags", "release", "state", "updated_at"}},
		{&api.Job{ID: "x", UUID: "u", HostID: "h", AppID: "a", ReleaseID: "r", Type: "t", State: "s", Args: []string{"a"}, Meta: map[string]string{"a": "b"}, ExitStatus: &one, HostError: &hostErr, RunAt: &ts, Restarts: &one, CreatedAt: ts, UpdatedAt: ts},
			[]string{"app", "args", "created_at", "exit_status", "host_error", "host_id", "id", "meta", "release", "restarts", "run_at", "state", "type", "updated_at", "uuid"}},
		{&api.Deployment{ID: "x", AppID: "a", OldReleaseID: "o", NewReleaseID: "n", Strategy: "s", Status: "s", Processes: procs, Tags: tags, DeployTimeout: 1, ReleasePhaseJob: "j", CreatedAt: ts, FinishedAt: &ts},
			[]string{"app", "created_at", "deploy_timeout", "finished_at", "id", "new_release", "old_release", "processes", "release_phase_job", "status", "strategy", "tags"}},
		{&api.DeploymentEvent{AppID: "a", DeploymentID: "d", ReleaseID: "r", Status: "s", JobType: "t", JobState: "s", JobID: "j", Error: "e"},
			[]string{"app", "deployment", "error", "job_id", "job_state", "job_type", "release", "status"}},
		{&api.Provider{ID: "x", URL: "u", Name: "n", CreatedAt: ts}, []string{"created_at", "id", "name", "url"}},
		{&api.Resource{ID: "x", ProviderID: "p", ExternalID: "e", Env: map[string]string{"a": "b"}, Apps: []string{"a"}, CreatedAt: ts},
			[]string{"apps", "created_at", "env", "external_id", "id", "provider"}},
		{&api.Route{Type: "http", ID: "x", ParentRef: "p", Service: "s", Port: 1, Leader: true, Domain: "d", Certificate: &api.Certificate{}, Sticky: true, Path: "/", DrainBackends: true, DisableKeepAlives: true, CreatedAt: ts, UpdatedAt: ts},
			[]string{"certificate", "created_at", "disable_keep_alives", "domain", "drain_backends", "id", "leader", "parent_ref", "path", "port", "service", "sticky", "type", "updated_at"}},
		{&api.Event{ID: 1, AppID: "a", ObjectType: "t", ObjectID: "o", Data: json.RawMessage(`{}`), CreatedAt: ts},
			[]string{"app", "created_at", "data", "id", "object_id", "object_type"}},
		{&api.Key{ID: "x", Key: "k", Fingerprint: "f", Comment: "c", CreatedAt: ts}, []string{"comment", "created_at", "fingerprint", "id", "key"}},
		{&api.Error{Code: "c", Message: "m", Field: "f"}, []string{"code", "field", "message"}},
	} {
		b, _ := json.Marshal(tt.v)
		var m map[string]json.RawMessage
		json.Unmarshal(b, &m)
		var got []string
		for k := range m {
			got = append(got, k)
		}
		if diff := cmp.Diff(tt.want, got, cmpSort); diff != "" {
			t.Errorf("%T fields (-want +got):\n%s", tt.v, diff)
		}
	}
}

var cmpSort = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// volumeRunner is a fakeRunner that also lists and deletes volumes.
type volumeRunner struct {
	*fakeRunner
	vols    []*api.Volume
	deleted []string // host/id
}

func (v *volumeRunner) ListVolumes(ctx context.Context) ([]*api.Volume, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.vols), nil
}

func (v *volumeRunner) DeleteVolume(ctx context.Context, hostID, id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.deleted = append(v.deleted, hostID+"/"+id)
	return nil
}

// TestDeleteAppBuildCacheVolumes: deleting an app deletes its build cache
// volumes on every host, and no other volume.
func TestDeleteAppBuildCacheVolumes(t *testing.T) {
	cli := etcdtest.KV(t)
	vr := &volumeRunner{fakeRunner: &fakeRunner{etcd: cli}}
	cl, _ := newServer(t, Config{Etcd: cli, AuthKeys: []string{testKey}, SystemKeys: []string{testSystemKey}, ClusterDomain: "example.test", Runner: vr})
	c := ctx(t)
	app, other := &api.App{Name: "gone"}, &api.App{Name: "stays"}
	for _, a := range []*api.App{app, other} {
		if err := cl.CreateApp(c, a); err != nil {
			t.Fatal(err)
		}
	}
	vr.vols = []*api.Volume{
		{ID: api.BuildCacheVolumeID(app.ID), HostID: "h1"},
		{ID: api.BuildCacheVolumeID(app.ID), HostID: "h2"},
		{ID: api.BuildCacheVolumeID(other.ID), HostID: "h1"},
		{ID: app.ID + "-db-0", HostID: "h1", AppID: app.ID},
	}
	if _, err := cl.DeleteApp(c, "gone"); err != nil {
		t.Fatal(err)
	}
	want := []string{"h1/" + api.BuildCacheVolumeID(app.ID), "h2/" + api.BuildCacheVolumeID(app.ID)}
	if diff := cmp.Diff(want, vr.deleted); diff != "" {
		t.Errorf("deleted volumes (-want +got):\n%s", diff)
	}
}
