package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// gridHost is one real flynn-host daemon of a test grid.
type gridHost struct {
	name, ip, state, bridge, subnet, cgroup string
	hostPort, discPort, etcdPort, peerPort  int
	portRange                               string
	logPath                                 string
	proc                                    *bgProc
	hc                                      *hostclient.Client
}

func (h *gridHost) start(t *testing.T, token string) *bgProc {
	t.Helper()
	h.proc = startBg(t, "host "+h.name, h.logPath, "daemon", "--state-dir", h.state, "--listen-ip", h.ip,
		"--etcd-client-port", fmt.Sprint(h.etcdPort), "--etcd-peer-port", fmt.Sprint(h.peerPort),
		"--discoverd-port", fmt.Sprint(h.discPort), "--dns-port", "-1", "--host-port", fmt.Sprint(h.hostPort),
		"--ttl", "3s", "--etcd-fast", "--bridge", h.bridge, "--subnet", h.subnet, "--cgroup-parent", h.cgroup,
		"--port-range", h.portRange, "--stop-grace", "1s")
	h.hc = hostclient.New(fmt.Sprintf("http://%s:%d", h.ip, h.hostPort), token)
	return h.proc
}

// runningJobs returns the ids of a host's running jobs of app.
func runningJobs(ctx context.Context, hc *hostclient.Client, appID string) ([]string, error) {
	jobs, err := hc.ListJobs(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, j := range jobs {
		if j.Job.Metadata[api.JobMetaApp] == appID && (j.Status == api.HostJobRunning || j.Status == api.HostJobStarting) {
			ids = append(ids, j.Job.ID)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// cluster is two real hosts (the first the only etcd member), a
// controller and the scheduler component.
type cluster struct {
	a, b  *gridHost
	ctl   *bgProc
	sched *bgProc
	token string
	cc    *controllerclient.Client
}

// watch reports the controller's and scheduler's logs, and ends a wait
// when either exits; the hosts' logs are in the report too, but tests
// kill and restart hosts on purpose.
func (c *cluster) watch() watch {
	return watch{procs: []*bgProc{c.ctl, c.sched}, dump: func() string {
		return watching(c.a.proc, c.b.proc).String()
	}}
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not installed (make deps installs it): %v", err)
	}
	dir := testslot.Dir(t)
	c := &cluster{}
	mk := func(name, ip string) *gridHost {
		return &gridHost{name: name, ip: ip, state: filepath.Join(dir, name),
			bridge: testslot.Name(t, "sch"), subnet: testslot.Subnet(t), cgroup: testslot.Name(t, "schcg"),
			hostPort: testslot.Port(t), discPort: testslot.Port(t), etcdPort: testslot.Port(t), peerPort: testslot.Port(t),
			portRange: testslot.PortRange(t, 40), logPath: filepath.Join(dir, name+".log")}
	}
	c.a = mk("a", "127.0.0.2")
	c.b = mk("b", "127.0.0.3")

	out, _, code := run(t, "flynn-host", "init", "--state-dir", c.a.state, "--max-etcd-members", "1")
	if code != 0 {
		t.Fatalf("init: %s", out)
	}
	m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("init printed no token: %s", out)
	}
	c.token = m[1]
	// Cleanups run last-registered first: this one runs after the jobs
	// are stopped and the processes are gone.
	t.Cleanup(func() {
		for _, h := range []*gridHost{c.a, c.b} {
			exec.Command("ip", "link", "del", h.bridge).Run()
			testslot.RemoveIptables(strings.TrimSuffix(h.subnet, "0/24"), h.bridge)
			testslot.RemoveCgroups(h.cgroup)
		}
	})
	ctx := within(t, 2*time.Minute)
	c.a.start(t, c.token)
	waitFor(t, ctx, "host a's agent", watching(c.a.proc), func() (bool, error) { _, err := c.a.hc.Status(ctx); return err == nil, err })

	out, errOut, code := run(t, "flynn-host", "join", "--state-dir", c.b.state, "--peer", fmt.Sprintf("%s:%d", c.a.ip, c.a.discPort), "--token", c.token)
	if code != 0 {
		t.Fatalf("join: %s%s", out, errOut)
	}
	c.b.start(t, c.token)
	waitFor(t, ctx, "host b's agent", watching(c.a.proc, c.b.proc), func() (bool, error) { _, err := c.b.hc.Status(ctx); return err == nil, err })

	etcd := fmt.Sprintf("https://%s:%d", c.a.ip, c.a.etcdPort)
	etcdTLS := filepath.Join(c.a.state, "pki")
	ctlPort := testslot.Port(t)
	const key = "test-controller-key"
	c.ctl = startBg(t, "controller", filepath.Join(dir, "controller.log"), "component", "controller",
		"--listen", fmt.Sprintf("127.0.0.1:%d", ctlPort), "--etcd", etcd, "--etcd-tls", etcdTLS, "--auth-key", key)
	c.cc = controllerclient.New(fmt.Sprintf("http://127.0.0.1:%d", ctlPort), key)
	waitFor(t, ctx, "the controller to answer", watching(c.ctl), func() (bool, error) { err := c.cc.Ping(ctx); return err == nil, err })

	c.sched = startBg(t, "scheduler", filepath.Join(dir, "scheduler.log"), "component", "scheduler",
		"--etcd", etcd, "--etcd-tls", etcdTLS, "--controller", fmt.Sprintf("http://127.0.0.1:%d", ctlPort),
		"--controller-key", key, "--token", c.token, "--discoverd", fmt.Sprintf("http://%s:%d", c.a.ip, c.a.discPort),
		"--id", "sched-test", "--election-ttl", "2s", "--resync", "5s", "--log-level", "debug")
	return c
}

// stopAppJobs stops every job of app on the hosts that answer, through
// their agents.
func (c *cluster) stopAppJobs(appID string) {
	c.sched.stop() // else it replaces the jobs stopped here
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, h := range []*gridHost{c.a, c.b} {
		ids, _ := runningJobs(ctx, h.hc, appID)
		for _, id := range ids {
			h.hc.StopJob(ctx, id)
		}
	}
}

// createApp creates an app with a release of busybox processes and
// returns them.
func createApp(t *testing.T, ctx context.Context, cc *controllerclient.Client, art *api.Artifact, name string, procs map[string]*api.ProcessType) (*api.App, *api.Release) {
	t.Helper()
	app := &api.App{Name: name}
	if err := cc.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	if art.ID == "" {
		if err := cc.CreateArtifact(ctx, art); err != nil {
			t.Fatal(err)
		}
	}
	rel := &api.Release{AppID: app.ID, ArtifactIDs: []string{art.ID}, Env: map[string]string{"GREETING": "hi"}, Processes: procs}
	if err := cc.CreateRelease(ctx, rel); err != nil {
		t.Fatal(err)
	}
	return app, rel
}

// TestSchedulerSpreadsAndMovesJobs runs the scheduler component against
// two real hosts and a real controller: web=4 spreads 2+2, and the jobs
// of a host that dies (SIGKILL; its lease expires) move to the other.
func TestSchedulerSpreadsAndMovesJobs(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	art := busyboxArtifact(t)
	app, rel := createApp(t, ctx, c.cc, art, "spread", map[string]*api.ProcessType{
		"web": {Args: []string{"sh", "-c", "echo $GREETING $FLYNN_APP_NAME $FLYNN_PROCESS_TYPE; exec sleep 3600"}},
	})
	t.Cleanup(func() { c.stopAppJobs(app.ID) }) // runs before the processes stop
	if err := c.cc.PutFormation(ctx, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 4}}); err != nil {
		t.Fatal(err)
	}

	var onA, onB []string
	waitFor(t, ctx, "web=4 spread 2+2", c.watch(), func() (bool, error) {
		var err error
		if onA, err = runningJobs(ctx, c.a.hc, app.ID); err != nil {
			return false, err
		}
		if onB, err = runningJobs(ctx, c.b.hc, app.ID); err != nil {
			return false, err
		}
		return len(onA) == 2 && len(onB) == 2, nil
	})
	// The controller records them up.
	waitFor(t, ctx, "4 jobs up in the controller", c.watch(), func() (bool, error) {
		jobs, err := c.cc.JobList(ctx, app.ID)
		up := 0
		for _, j := range jobs {
			if j.State == api.JobStateUp && j.Type == "web" && j.ReleaseID == rel.ID {
				up++
			}
		}
		return up == 4, err
	})
	// The job got the release and process env.
	lg, err := c.a.hc.JobLog(ctx, onA[0], false)
	if err != nil {
		t.Fatal(err)
	}
	line, err := lg.Next()
	for err == nil && line.Stream == api.LogInit { // the platform's start line
		line, err = lg.Next()
	}
	lg.Close()
	if err != nil || strings.TrimSpace(line.Msg) != "hi spread web" {
		t.Fatalf("first log line of %s = %+v, %v; want %q", onA[0], line, err, "hi spread web")
	}

	// Host b dies.
	killed := time.Now()
	c.b.proc.kill()
	mctx, mcancel := context.WithTimeout(ctx, 90*time.Second)
	waitFor(t, mctx, "b's jobs to move to a", c.watch(), func() (bool, error) {
		var err error
		onA, err = runningJobs(ctx, c.a.hc, app.ID)
		return len(onA) == 4, err
	})
	mcancel()
	t.Logf("host loss: 4 jobs running on the surviving host %s after the kill", time.Since(killed).Round(100*time.Millisecond))

	// b comes back with its two orphaned jobs (they kept running): the
	// scheduler adopts them and stops two jobs, so web stays at 4.
	c.b.start(t, c.token)
	waitFor(t, ctx, "web back at 4 with b back", c.watch(), func() (bool, error) {
		a, err := runningJobs(ctx, c.a.hc, app.ID)
		if err != nil {
			return false, err
		}
		b, err := runningJobs(ctx, c.b.hc, app.ID)
		if err != nil {
			return false, err
		}
		return len(a)+len(b) == 4, nil
	})

	// Scale to zero: every job stops.
	if err := c.cc.PutFormation(ctx, &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": 0}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "web=0", c.watch(), func() (bool, error) {
		a, err := runningJobs(ctx, c.a.hc, app.ID)
		if err != nil {
			return false, err
		}
		b, err := runningJobs(ctx, c.b.hc, app.ID)
		return len(a)+len(b) == 0, err
	})
}

// jobsByRelease counts running jobs of app on the cluster's hosts per
// release.
func (c *cluster) jobsByRelease(ctx context.Context, appID string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, h := range []*gridHost{c.a, c.b} {
		jobs, err := h.hc.ListJobs(ctx)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			if j.Job.Metadata[api.JobMetaApp] == appID && (j.Status == api.HostJobRunning || j.Status == api.HostJobStarting) {
				rel := j.Job.Metadata[api.JobMetaRelease]
				out[rel] = append(out[rel], j.Job.ID)
			}
		}
	}
	for _, ids := range out {
		sort.Strings(ids)
	}
	return out, nil
}

// TestDeployCrashingReleaseRollsBack deploys a release whose web process
// crashes through the real controller, scheduler and deployer: the
// deployment fails and the old release keeps running untouched.
func TestDeployCrashingReleaseRollsBack(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	art := busyboxArtifact(t)
	// web serves on 8080 and registers in discoverd once a TCP check
	// passes; the deployer counts new jobs only once registered.
	check := &api.HealthCheck{Type: "tcp", Interval: api.Duration(200 * time.Millisecond), Threshold: 1}
	ports := []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "rollback-web", Create: true, Check: check}}}
	app, r1 := createApp(t, ctx, c.cc, art, "rollback", map[string]*api.ProcessType{
		"web": {Args: []string{"httpd", "-f", "-p", "8080", "-h", "/"}, Ports: ports},
	})
	t.Cleanup(func() { c.stopAppJobs(app.ID) })
	if err := c.cc.PutFormation(ctx, &api.Formation{AppID: app.ID, ReleaseID: r1.ID, Processes: map[string]int{"web": 2}}); err != nil {
		t.Fatal(err)
	}
	if err := c.cc.SetAppRelease(ctx, app.ID, r1.ID); err != nil {
		t.Fatal(err)
	}
	var before map[string][]string
	waitFor(t, ctx, "release 1 running web=2", c.watch(), func() (bool, error) {
		var err error
		before, err = c.jobsByRelease(ctx, app.ID)
		return len(before[r1.ID]) == 2, err
	})
	dc := discoverdclient.New(fmt.Sprintf("http://%s:%d", c.a.ip, c.a.discPort), c.token)
	registered := func() ([]string, error) {
		insts, err := dc.Instances(ctx, "rollback-web")
		var ids []string
		for _, in := range insts {
			ids = append(ids, in.Meta[host.InstanceMetaJobID])
		}
		sort.Strings(ids)
		return ids, err
	}
	waitFor(t, ctx, "release 1's jobs registered in discoverd", c.watch(), func() (bool, error) {
		ids, err := registered()
		return cmp.Equal(ids, before[r1.ID]), err
	})
	// Each instance names its host, as its job's ID does ("<host>-<uuid>"):
	// routers pass over a vanished host's backends by it.
	insts, err := dc.Instances(ctx, "rollback-web")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		if h := in.Meta[host.InstanceMetaHostID]; h == "" || !strings.HasPrefix(in.Meta[host.InstanceMetaJobID], h+"-") {
			t.Errorf("instance %s of job %s has host ID %q", in.Addr, in.Meta[host.InstanceMetaJobID], h)
		}
	}

	r2 := &api.Release{AppID: app.ID, ArtifactIDs: []string{art.ID}, Processes: map[string]*api.ProcessType{
		"web": {Args: []string{"sh", "-c", "echo crashing; exit 3"}, Ports: ports},
	}}
	if err := c.cc.CreateRelease(ctx, r2); err != nil {
		t.Fatal(err)
	}
	dep, err := c.cc.CreateDeployment(ctx, app.ID, r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the deployment to fail", c.watch(), func() (bool, error) {
		d, err := c.cc.GetDeployment(ctx, dep.ID)
		if err != nil {
			return false, err
		}
		if d.Status == api.DeploymentComplete {
			t.Fatalf("deployment of a crashing release completed: %+v", d)
		}
		return d.Status == api.DeploymentFailed, nil
	})
	cur, err := c.cc.GetAppRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cur.ID != r1.ID {
		t.Fatalf("app release after the failed deploy = %s, want the old %s", cur.ID, r1.ID)
	}
	f, err := c.cc.GetFormation(ctx, app.ID, r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if f.Processes["web"] != 0 {
		t.Fatalf("new release's formation after rollback = %v, want web=0", f.Processes)
	}
	// The new release's jobs go away; the old ones are the same jobs.
	waitFor(t, ctx, "no job of the new release", c.watch(), func() (bool, error) {
		now, err := c.jobsByRelease(ctx, app.ID)
		return err == nil && len(now[r2.ID]) == 0, err
	})
	after, err := c.jobsByRelease(ctx, app.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before[r1.ID], after[r1.ID]); diff != "" {
		t.Fatalf("old release's jobs changed (-before +after):\n%s\n%s", diff, c.watch())
	}
	if ids, err := registered(); err != nil || !cmp.Equal(ids, before[r1.ID]) {
		t.Fatalf("registered instances after the failed deploy = %v, %v; want the old jobs %v", ids, err, before[r1.ID])
	}
	var failed bool
	evs, err := c.cc.ListEvents(ctx, controllerclient.EventOptions{AppID: app.ID, ObjectTypes: []string{api.EventTypeDeployment}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if strings.Contains(string(e.Data), "exited with status 3") {
			failed = true
		}
	}
	if !failed {
		t.Fatalf("no deployment event says the job exited with status 3: %d events", len(evs))
	}
}
