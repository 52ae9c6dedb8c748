package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/blobstore"
	"github.com/flynnrebuilt/flynn/internal/controller"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/gitreceive"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/pki"
	"github.com/flynnrebuilt/flynn/internal/stack"
	"github.com/flynnrebuilt/flynn/internal/stack/stacktest"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// The build pipeline end to end, short of the scheduler: a real daemon
// (host agent on runc), an in-process controller and blobstore, and
// gitreceive with the real BuildReceiver. git push over HTTP builds the
// app in a slugbuilder job on the host, and the test plays the scheduler
// to run the release's web process from the slug and fetch its page.

const pipelineKey = "pipeline-key"

type pipeline struct {
	ctrl    *controllerclient.Client
	hc      *hostclient.Client
	gitURL  string
	dumpLog func() string

	token, ctrlURL, blobURL, etcdURL, etcdTLS string
}

// startPipelineDaemon starts flynn-host init + daemon on loopback and
// returns the host token, agent URL, etcd client and a log dumper.
func startPipelineDaemon(t *testing.T) (*testDaemon, *etcdkv.Client) {
	t.Helper()
	d := startDaemon(t)
	tc, err := pki.TLSConfig(d.etcdTLS, pki.ComponentCert, pki.ComponentKey)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdkv.New(etcdkv.Config{Endpoints: []string{d.etcd}, DialTimeout: 5 * time.Second, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	// Wait for the host's registration, which the runner picks hosts from.
	ctx := within(t, 2*time.Minute)
	waitFor(t, ctx, "the host to register in etcd", d.watch(), func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		res, err := cli.Get(cctx, api.KeyHosts, etcdkv.WithPrefix())
		if err == nil && len(res.Kvs) == 0 {
			err = errors.New("no host registered")
		}
		return err == nil, err
	})
	return d, cli
}

// stackLayer writes the stack in rootfs as a layer tar and returns it as
// an image layer with a file URL.
func stackLayer(t *testing.T, rootfs, dst string) *api.ImageLayer {
	t.Helper()
	if out, err := exec.Command("tar", "--numeric-owner", "-C", rootfs, "-cf", dst, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar stack: %v: %s", err, out)
	}
	digest, err := image.FileDigest(dst)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dst)
	return &api.ImageLayer{ID: digest, Type: api.LayerTypeTar, Length: fi.Size(), URL: "file://" + dst, Hashes: map[string]string{"sha256": digest}}
}

// startPipeline starts the cluster pieces and, unless component is set,
// an in-process gitreceive; with component the caller runs `flynn-host
// component gitreceive` against p's controller, blobstore and host.
func startPipeline(t *testing.T, layer *api.ImageLayer, component bool) *pipeline {
	t.Helper()
	d, etcd := startPipelineDaemon(t)
	token, hostURL, dumpLog := d.token, d.hostURL, d.watch().String
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	// The releases mount the flynn-host binary by path (there is no
	// bootstrap to name it flynn-host:bin).
	cs, err := controller.New(controller.Config{Etcd: etcd, AuthKeys: []string{pipelineKey}, TenantMounts: []string{filepath.Join(binDir, "flynn-host")}}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctrlSrv := httptest.NewServer(cs)
	t.Cleanup(ctrlSrv.Close)
	ctrl := controllerclient.New(ctrlSrv.URL, pipelineKey)

	backend, err := blobstore.NewFS(t.TempDir(), blobstore.FSOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	// Without keys: the host agent here fetches layers from this
	// blobstore's own address, which it sends no key to (a cluster's
	// agents send theirs to blobstore.discoverd). The blobstore's auth
	// is tested in internal/blobstore and TestTenantIsolation.
	blobSrv := httptest.NewServer(blobstore.NewServer(backend, nil, 0, logging.Discard()).Handler())
	t.Cleanup(blobSrv.Close)
	blobs := blobclient.New(blobSrv.URL, pipelineKey, nil)

	p := &pipeline{ctrl: ctrl, hc: hostclient.New(hostURL, token), dumpLog: dumpLog,
		token: token, ctrlURL: ctrlSrv.URL, blobURL: blobSrv.URL, etcdURL: etcd.Endpoints()[0], etcdTLS: d.etcdTLS}
	wg.Add(1)
	go func() { defer wg.Done(); p.playScheduler(ctx, t) }()
	if component {
		return p
	}

	flynnHost := filepath.Join(binDir, "flynn-host")
	recv, err := gitreceive.NewReceiver(gitreceive.ReceiverConfig{
		Controller: ctrl, Blobs: blobs, BlobKey: pipelineKey,
		Jobs:       &gitreceive.HostJobRunner{Etcd: etcd, Token: token},
		StackLayer: layer, FlynnHostBin: flynnHost, CABundle: caBundle(),
		DeployTimeout: 2 * time.Minute, GoStdQuiet: time.Second,
	}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gitreceive.New(gitreceive.Config{
		RepoDir: filepath.Join(t.TempDir(), "repos"), HookBin: flynnHost, HookArgs: []string{"gitreceive-hook"},
		Receiver: recv, Cache: &gitreceive.BlobRepoCache{Blobs: blobs},
	}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); srv.Run(ctx) }()
	gitSrv := httptest.NewServer(srv.Handler(httpapi.NewKeyAuth(pipelineKey)))
	t.Cleanup(gitSrv.Close)
	p.gitURL = gitSrv.URL
	return p
}

func caBundle() string {
	if _, err := os.Stat(gitreceive.DefaultCABundle); err == nil {
		return gitreceive.DefaultCABundle
	}
	return ""
}

// playScheduler stands in for the scheduler: for each formation scaled to
// web=1 it runs the release's web process on the host, as the scheduler
// would, and reports the job up (or down) to the controller.
func (p *pipeline) playScheduler(ctx context.Context, t *testing.T) {
	started := map[string]bool{}
	for ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		apps, err := p.ctrl.ListApps(ctx)
		if err != nil {
			continue
		}
		for _, app := range apps {
			fs, _ := p.ctrl.FormationList(ctx, app.ID)
			for _, f := range fs {
				if f.Processes["web"] == 0 || started[f.ReleaseID] {
					continue
				}
				started[f.ReleaseID] = true
				p.runWeb(ctx, t, app, f.ReleaseID)
			}
		}
	}
}

func (p *pipeline) runWeb(ctx context.Context, t *testing.T, app *api.App, releaseID string) {
	rel, err := p.ctrl.GetRelease(ctx, releaseID)
	if err != nil {
		t.Errorf("scheduler: %v", err)
		return
	}
	art, err := p.ctrl.GetArtifact(ctx, rel.ArtifactIDs[0])
	if err != nil {
		t.Errorf("scheduler: %v", err)
		return
	}
	pt := rel.Processes["web"]
	uid := uint32(stack.AppUID)
	id := "pipeline-web-" + releaseID[:8]
	job := &api.HostJob{
		ID: id, Artifacts: []*api.Artifact{art},
		Metadata: map[string]string{api.JobMetaApp: app.ID, api.JobMetaAppName: app.Name, api.JobMetaRelease: rel.ID, api.JobMetaProcessType: "web"},
		Config: api.HostJobConfig{Args: pt.Args, Env: rel.Env, Ports: []api.Port{{Port: 8080, Proto: "tcp"}}, Mounts: pt.Mounts,
			WorkingDir: "/app", Uid: &uid, Gid: &uid},
	}
	state := api.JobStateDown
	if _, err := p.hc.AddJob(ctx, job); err != nil {
		t.Logf("scheduler: add job: %v", err)
	} else {
		for ctx.Err() == nil {
			aj, err := p.hc.GetJob(ctx, id)
			if err != nil || aj.Status != api.HostJobStarting {
				if err == nil && aj.Status == api.HostJobRunning {
					state = api.JobStateUp
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Cleanup(func() { p.hc.StopJob(context.Background(), id) })
	}
	j := &api.Job{ID: "host1-" + strings.TrimPrefix(id, "pipeline-web-") + "-0000-4000-8000-000000000000", AppID: app.ID, ReleaseID: rel.ID, Type: "web", State: state}
	if err := p.ctrl.PutJob(ctx, j); err != nil {
		t.Errorf("scheduler: put job: %v", err)
	}
}

// gitRepo copies src into a new git repository with one commit on main.
func gitRepo(t *testing.T, src string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", src, dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "."}, {"-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "app"}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	return dir
}

func (p *pipeline) push(t *testing.T, repo, app string) (string, bool) {
	t.Helper()
	remote := strings.Replace(p.gitURL, "http://", "http://user:"+pipelineKey+"@", 1) + "/" + app + ".git"
	cmd := exec.Command("git", "push", remote, "main")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// webURL is the address of the release's web job on the host bridge.
func (p *pipeline) webURL(t *testing.T, releaseID string) string {
	t.Helper()
	aj, err := p.hc.GetJob(context.Background(), "pipeline-web-"+releaseID[:8])
	if err != nil {
		t.Fatalf("web job: %v\n%s", err, p.dumpLog())
	}
	return "http://" + aj.InternalIP + ":8080"
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	var body string
	waitFor(t, within(t, time.Minute), "200 from GET "+url, watch{}, func() (bool, error) {
		res, err := http.Get(url)
		if err != nil {
			return false, err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		body = string(b)
		if res.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", res.Status, b)
		}
		return true, nil
	})
	return body
}

func requirePipeline(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not installed (make deps installs it): %v", err)
	}
}

func TestGitPushBuildsAndDeploys(t *testing.T) {
	requirePipeline(t)
	rootfs := t.TempDir()
	if err := stack.BuildBusybox(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	p := startPipeline(t, stackLayer(t, rootfs, filepath.Join(t.TempDir(), "busybox-stack.tar")), false)
	ctx := context.Background()

	app := &api.App{Name: "procapp"}
	if err := p.ctrl.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	repo := gitRepo(t, "apps/procfile")
	out, ok := p.push(t, repo, "procapp")
	if !ok {
		t.Fatalf("push failed:\n%s\ndaemon log:\n%s", out, p.dumpLog())
	}
	t.Logf("push output:\n%s", out)
	for _, want := range []string{
		"remote: -----> Building procapp...",
		"remote: -----> Procfile app detected", // from the slugbuilder job
		"remote: -----> Discovering process types",
		"remote: -----> Creating release...",
		"remote: -----> Deploying...",
		"remote: =====> web job started",
		"remote: =====> Application deployed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	rel, err := p.ctrl.GetAppRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	flynnHost := filepath.Join(binDir, "flynn-host")
	want := map[string]*api.ProcessType{"web": {
		Args:   []string{gitreceive.FlynnHostPath, "slugrunner", "start", "web"},
		Mounts: []api.Mount{{Location: flynnHost, Target: gitreceive.FlynnHostPath}},
		Ports:  []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "procapp-web", Create: true, Check: &api.HealthCheck{Type: "tcp"}}}},
	}}
	if diff := cmp.Diff(want, rel.Processes); diff != "" {
		t.Errorf("release processes (-want +got):\n%s", diff)
	}
	// The web process runs from the slug layer.
	if body := getBody(t, p.webURL(t, rel.ID)+"/"); !strings.Contains(body, "hello from the procfile app") {
		t.Errorf("web page = %q", body)
	}

	// A build that fails rejects the push and makes no release.
	bad := &api.App{Name: "badapp"}
	if err := p.ctrl.CreateApp(ctx, bad); err != nil {
		t.Fatal(err)
	}
	badRepo := gitRepo(t, "apps/procfile/docs") // no Procfile: no buildpack applies
	out, ok = p.push(t, badRepo, "badapp")
	if ok || !strings.Contains(out, "remote:  !     Build failed") || !strings.Contains(out, "build failed (slugbuilder exited with status 1)") {
		t.Errorf("failing build (ok=%v):\n%s", ok, out)
	}
	if _, err := p.ctrl.GetAppRelease(ctx, bad.ID); err == nil {
		t.Error("a failed build made a release")
	}

	// Pushing to an app that does not exist is refused before git runs.
	out, ok = p.push(t, repo, "nosuchapp")
	if ok || !strings.Contains(out, `app "nosuchapp" does not exist`) {
		t.Errorf("push to a missing app (ok=%v):\n%s", ok, out)
	}
}

// TestGitreceiveComponent runs `flynn-host component gitreceive` and
// pushes over SSH with a key registered in the controller.
func TestGitreceiveComponent(t *testing.T) {
	requirePipeline(t)
	rootfs := t.TempDir()
	if err := stack.BuildBusybox(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	layer := stackLayer(t, rootfs, filepath.Join(t.TempDir(), "busybox-stack.tar"))
	p := startPipeline(t, layer, true)
	ctx := context.Background()
	dir := t.TempDir()

	keyFile := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ctrl.CreateKey(ctx, strings.TrimSpace(string(pub))); err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(dir, "id_other")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", otherKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}

	sshPort, httpPort := testslot.Port(t), testslot.Port(t)
	gr := startBg(t, "gitreceive", filepath.Join(dir, "gitreceive.log"), "component", "gitreceive",
		"--ssh-addr", fmt.Sprintf("127.0.0.1:%d", sshPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--controller", p.ctrlURL, "--controller-key", pipelineKey, "--blobstore", p.blobURL,
		"--etcd", p.etcdURL, "--etcd-tls", p.etcdTLS, "--token", p.token, "--host-key", filepath.Join(dir, "hostkey"),
		"--repo-dir", filepath.Join(dir, "repos"), "--stack-url", layer.URL, "--stack-sha256", layer.Hashes["sha256"],
		"--flynn-host-bin", filepath.Join(binDir, "flynn-host"), "--ca-bundle", caBundle(), "--deploy-timeout", "2m")

	app := &api.App{Name: "sshapp"}
	if err := p.ctrl.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	repo := gitRepo(t, "apps/procfile")
	push := func(key string) (string, bool) {
		deadline := time.Now().Add(time.Minute)
		for {
			c := exec.Command("git", "push", fmt.Sprintf("ssh://git@127.0.0.1:%d/sshapp.git", sshPort), "main")
			c.Dir = repo
			c.Env = append(os.Environ(), "GIT_SSH_COMMAND=ssh -i "+key+" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes")
			out, err := c.CombinedOutput()
			// Retry only while the component is still starting.
			if err != nil && strings.Contains(string(out), "Connection refused") && time.Now().Before(deadline) && gr.alive() {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return string(out), err == nil
		}
	}
	if out, ok := push(otherKey); ok || !strings.Contains(out, "Permission denied") {
		t.Fatalf("push with an unregistered key (ok=%v):\n%s", ok, out)
	}
	out, ok := push(keyFile)
	if !ok || !strings.Contains(out, "remote: -----> Procfile app detected") || !strings.Contains(out, "remote: =====> Application deployed") {
		t.Fatalf("push (ok=%v):\n%s\n%s", ok, out, watching(gr))
	}
	rel, err := p.ctrl.GetAppRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	if body := getBody(t, p.webURL(t, rel.ID)+"/"); !strings.Contains(body, "hello from the procfile app") {
		t.Errorf("web page = %q", body)
	}
}

// TestGitPushGoApp pushes the Go sample app onto the debootstrap stack:
// the Go buildpack fetches its toolchain and modules through the app's
// GOPROXY, set with a release before the first push.
func TestGitPushGoApp(t *testing.T) {
	requirePipeline(t)
	stacktest.DefaultStack(t) // skips under -short; builds and caches the stack
	res, err := stack.Build(context.Background(), stack.Config{Dir: stacktest.CacheDir, Tar: true})
	if err != nil {
		t.Fatal(err)
	}
	digest, err := image.FileDigest(res.Layer)
	if err != nil {
		t.Fatal(err)
	}
	layer := &api.ImageLayer{ID: digest, Type: api.LayerTypeTar, URL: "file://" + res.Layer, Hashes: map[string]string{"sha256": digest}}
	p := startPipeline(t, layer, false)
	ctx := context.Background()

	app := &api.App{Name: "goapp"}
	if err := p.ctrl.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	proxy, err := exec.Command("go", "env", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	envRel := &api.Release{Env: map[string]string{"GOPROXY": strings.TrimSpace(string(proxy))}}
	if err := p.ctrl.CreateRelease(ctx, envRel); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ctrl.CreateDeployment(ctx, app.ID, envRel.ID); err != nil {
		t.Fatal(err)
	}
	out, ok := p.push(t, gitRepo(t, "apps/go"), "goapp")
	if !ok {
		t.Fatalf("push failed:\n%s\ndaemon log:\n%s", out, p.dumpLog())
	}
	t.Logf("push output:\n%s", out)
	for _, want := range []string{"remote: -----> Go app detected", "remote: =====> Scaling initial release to web=1", "remote: =====> Application deployed"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q", want)
		}
	}
	rel, err := p.ctrl.GetAppRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Env["GOPROXY"] == "" {
		t.Errorf("release env lost GOPROXY: %v", rel.Env)
	}
	if body := getBody(t, p.webURL(t, rel.ID)+"/"); !strings.Contains(body, "hello from the go app") {
		t.Errorf("web page = %q", body)
	}

	// The push made the platform's build of Go 1.22.12 and its standard
	// library, in the background: another app's first push restores it.
	blobs := blobclient.New(p.blobURL, pipelineKey, nil)
	wctx := within(t, 5*time.Minute)
	for {
		if _, err := blobs.Head(wctx, "/go-std/2/go1.22.12.tar"); err == nil {
			break
		}
		select {
		case <-wctx.Done():
			t.Fatalf("no shared build of the standard library in the blobstore\ndaemon log:\n%s", p.dumpLog())
		case <-time.After(500 * time.Millisecond):
		}
	}
	app2 := &api.App{Name: "goapp2"}
	if err := p.ctrl.CreateApp(ctx, app2); err != nil {
		t.Fatal(err)
	}
	envRel2 := &api.Release{Env: envRel.Env}
	if err := p.ctrl.CreateRelease(ctx, envRel2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ctrl.CreateDeployment(ctx, app2.ID, envRel2.ID); err != nil {
		t.Fatal(err)
	}
	out, ok = p.push(t, gitRepo(t, "apps/go"), "goapp2")
	if !ok {
		t.Fatalf("second app's push failed:\n%s\ndaemon log:\n%s", out, p.dumpLog())
	}
	t.Logf("second app's push output:\n%s", out)
	if want := "Restoring Go 1.22.12 and its standard library, built by the platform"; !strings.Contains(out, want) {
		t.Errorf("second app's push output lacks %q", want)
	}
	rel2, err := p.ctrl.GetAppRelease(ctx, app2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if body := getBody(t, p.webURL(t, rel2.ID)+"/"); !strings.Contains(body, "hello from the go app") {
		t.Errorf("second app's web page = %q", body)
	}
}
