package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

func TestJobOutputAndExit(t *testing.T) {
	a := startAgent(t)
	a.add(busyboxJob("out", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"))
	aj := a.waitEnded("out")
	if aj.Status != api.HostJobCrashed || exitStatus(aj) != 3 {
		t.Fatalf("status %s exit %d, want crashed 3", aj.Status, exitStatus(aj))
	}
	stdout, stderr, err := a.cli("log", "-i", "out")
	if err != nil {
		t.Fatalf("flynn-host log: %v %s", err, stderr)
	}
	// The platform's lines about the job (its start, its exit) go to
	// stderr with the job's, the exit last, with -i; without, only the
	// job's output.
	if _, stderr, _ := a.cli("log", "out"); stderr != "to-stderr\n" {
		t.Fatalf("log stderr without -i %q", stderr)
	}
	if wantErr := "Starting process with command `sh -c 'echo to-stdout; echo to-stderr >&2; exit 3'`\nto-stderr\nProcess exited with status 3\n"; stdout != "to-stdout\n" || stderr != wantErr {
		t.Fatalf("log stdout %q stderr %q, want stderr %q", stdout, stderr, wantErr)
	}
	// The job ran as nobody by default.
	a.add(busyboxJob("who", "id", "-u"))
	a.waitEnded("who")
	if out, _, _ := a.cli("log", "who"); out != "65534\n" {
		t.Fatalf("job uid %q, want 65534", out)
	}
}

// TestStopReachesPlainProcess: a process with no SIGTERM handler of its
// own (which the kernel would shield as PID 1) is ended by the SIGTERM of
// stop, through the job's init, not by the SIGKILL after the grace period.
func TestStopReachesPlainProcess(t *testing.T) {
	a := startAgent(t)
	a.add(busyboxJob("plain", "sleep", "1000"))
	if _, stderr, err := a.cli("stop", "plain"); err != nil {
		t.Fatalf("stop: %v %s", err, stderr)
	}
	if aj := a.waitEnded("plain"); exitStatus(aj) != 128+15 {
		t.Fatalf("exit %d, want 143 (ended by SIGTERM)", exitStatus(aj))
	}
	// The job's log says it was stopped, before its exit.
	if _, errs, _ := a.cli("log", "-i", "plain"); !strings.HasSuffix(errs, "\nStopping process with SIGTERM\nProcess exited with status 143\n") {
		t.Fatalf("log -i stderr %q, want the stop and the exit last", errs)
	}
}

func TestStopIgnoringSIGTERM(t *testing.T) {
	a := startAgent(t)
	a.add(busyboxJob("stubborn", "sh", "-c", "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.1; done"))
	waitLog(t, a, "stubborn", "ready")
	// A follower of the log sees the job's last words and ends with it.
	followed := make(chan string, 1)
	go func() {
		out, _, _ := a.cli("log", "-f", "stubborn")
		followed <- out
	}()
	out, stderr, err := a.cli("stop", "stubborn")
	if err != nil {
		t.Fatalf("stop: %v %s", err, stderr)
	}
	if out != "stubborn done\n" {
		t.Fatalf("stop printed %q", out)
	}
	aj := a.waitEnded("stubborn")
	if exitStatus(aj) != 128+9 {
		t.Fatalf("exit %d, want 137 (killed after the grace period)", exitStatus(aj))
	}
	waitLog(t, a, "stubborn", "got TERM")
	if _, errs, _ := a.cli("log", "-i", "stubborn"); !strings.Contains(errs, "\nStopping process with SIGTERM\n") ||
		!strings.HasSuffix(errs, "\nProcess did not exit within 1s of SIGTERM: stopping it with SIGKILL\nProcess exited with status 137\n") {
		t.Errorf("log -i stderr %q, want the stop, the SIGKILL and the exit last", errs)
	}
	select {
	case out := <-followed:
		if out != "ready\ngot TERM\n" {
			t.Fatalf("log -f printed %q", out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("log -f did not end with the job")
	}
}

func TestLimitsAndConfinement(t *testing.T) {
	a := startAgent(t)
	fds, procs := int64(123), int64(77)
	j := busyboxJob("conf", "sh", "-c", `ulimit -n; cat /sys/fs/cgroup/pids/pids.max; cat /sys/fs/cgroup/memory/memory.limit_in_bytes
grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status
stat -c keys=%t,%T /proc/keys; echo shm > /dev/shm/x && cat /dev/shm/x
mount -t tmpfs none /tmp 2>&1 || echo mount refused
grep nameserver /etc/resolv.conf`)
	j.Resources = api.Resources{api.ResourceMaxFD: {Limit: &fds}, api.ResourceMaxProcs: {Limit: &procs}}
	a.add(j)
	if aj := a.waitEnded("conf"); exitStatus(aj) != 0 {
		out, errs, _ := a.cli("log", "conf")
		t.Fatalf("exit %d: %s %s", exitStatus(aj), out, errs)
	}
	out, _, _ := a.cli("log", "conf")
	for _, want := range []string{"123\n", "77\n", fmt.Sprintf("%d\n", 1<<30), "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "keys=1,3", "shm\n", "mount refused", "nameserver " + strings.TrimSuffix(a.subnet, "0/24") + "1\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("job output lacks %q:\n%s", want, out)
		}
	}
}

func TestHostNetworkJob(t *testing.T) {
	a := startAgent(t)
	j := busyboxJob("hostnet", "sh", "-c", "mkdir -p /tmp/w; echo on host port $PORT > /tmp/w/index.html; exec httpd -f -p 127.0.0.1:$PORT -h /tmp/w")
	j.Config.HostNetwork = true
	j.Config.Ports = []api.Port{{Port: 0}}
	aj := a.add(j)
	if aj.InternalIP != "" || len(aj.HostPorts) != 1 {
		t.Fatalf("host network job %+v", aj)
	}
	got := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", aj.HostPorts[0]))
	if want := fmt.Sprintf("on host port %d\n", aj.HostPorts[0]); got != want {
		t.Fatalf("GET = %q, want %q", got, want)
	}
}

// waitLog waits until the job's log contains s.
func waitLog(t *testing.T, a *agentProc, id, s string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := a.cli("log", id)
		if strings.Contains(out, s) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("log of %s never had %q; it has %q", id, s, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestHTTPJobsAndIsolation(t *testing.T) {
	a := startAgent(t)
	var jobs []*api.ActiveJob
	for _, id := range []string{"web-a", "web-b"} {
		j := busyboxJob(id, "sh", "-c", "echo $HOSTNAME-secret > /tmp/mine; echo \"$HOSTNAME on $PORT $PORT_0\" > /tmp/www-index; mkdir -p /tmp/www; mv /tmp/www-index /tmp/www/index.html; exec httpd -f -p $PORT -h /tmp/www")
		j.Config.Ports = []api.Port{{Port: 8080, Proto: "tcp"}}
		jobs = append(jobs, a.add(j))
	}
	for _, aj := range jobs {
		if len(aj.HostPorts) != 1 {
			t.Fatalf("host ports %v", aj.HostPorts)
		}
		got := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", aj.HostPorts[0]))
		if want := aj.Job.ID + " on 8080 8080\n"; got != want {
			t.Fatalf("GET job %s = %q, want %q", aj.Job.ID, got, want)
		}
	}
	// A third job sees only its own processes and files.
	a.add(busyboxJob("peek", "sh", "-c", "ps -o pid,args; ls /tmp; cat /tmp/mine 2>&1; true"))
	a.waitEnded("peek")
	out, _, _ := a.cli("log", "peek")
	if strings.Contains(out, "httpd") || strings.Contains(out, "secret") || strings.Contains(out, "www") {
		t.Fatalf("job sees another job's processes or files:\n%s", out)
	}
	if !strings.Contains(out, "ps -o pid,args") {
		t.Fatalf("job does not see its own processes:\n%s", out)
	}
}

func TestOOMKill(t *testing.T) {
	a := startAgent(t)
	j := busyboxJob("hog", "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}")
	mem := int64(32 << 20)
	j.Resources = api.Resources{api.ResourceMemory: {Limit: &mem}}
	a.add(j)
	aj := a.waitEnded("hog")
	if !aj.OOM || exitStatus(aj) != 137 {
		t.Fatalf("oom %v exit %d, want an OOM kill", aj.OOM, exitStatus(aj))
	}
	out, _, _ := a.cli("inspect", "hog")
	if !strings.Contains(out, `"oom": true`) {
		t.Fatalf("inspect does not report the OOM:\n%s", out)
	}
	// The job's log says so too, on the platform's stream (Flynn's
	// words), before the exit.
	_, errs, _ := a.cli("log", "-i", "hog")
	if want := "FATAL: a container process was killed due to lack of available memory (the job's memory limit is 32 MiB)\nProcess exited with status 137\n"; !strings.HasSuffix(errs, want) {
		t.Fatalf("log's stderr %q, want it to end with %q", errs, want)
	}
}

func TestRunTTY(t *testing.T) {
	a := startAgent(t)
	cmd := exec.Command(flynnHost, "run", "--tty", "--id", "tty1", busyboxLayer, "--", "sh")
	cmd.Env = append(os.Environ(), "FLYNN_HOST_URL="+a.url, "FLYNN_TOKEN="+testToken)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 111})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var out safeBuffer
	go func() { ioCopy(&out, ptmx) }()
	expect := func(re string) {
		t.Helper()
		r := regexp.MustCompile(re)
		deadline := time.Now().Add(30 * time.Second)
		for !r.MatchString(out.String()) {
			if time.Now().After(deadline) {
				t.Fatalf("terminal never showed %q; it shows %q", re, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	expect(`/ [#$] `)
	if strings.Contains(out.String(), "\x1b[6n") {
		ptmx.Write([]byte("\x1b[1;1R")) // answer the shell's cursor position query
	}
	ptmx.Write([]byte("stty size; echo $((6*7))x\r"))
	expect(`33 111\r?\n`)
	expect(`42x`)
	// A resize of the client's terminal reaches the job's TTY.
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 41, Cols: 122}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "41 122") {
		if time.Now().After(deadline) {
			t.Fatalf("resize never reached the job; terminal shows %q", out.String())
		}
		ptmx.Write([]byte("stty size\r"))
		time.Sleep(200 * time.Millisecond)
	}
	ptmx.Write([]byte("exit 7\r"))
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("run exited with %v, want status 7\n%s", err, out.String())
	}
}

func TestAgentRestartKeepsJobs(t *testing.T) {
	a := startAgent(t)
	a.add(busyboxJob("ticker", "sh", "-c", "trap '' TERM; trap 'echo got HUP' HUP; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"))
	waitLog(t, a, "ticker", "tick 3")
	a.stop()
	before, err := os.ReadFile(filepath.Join(a.stateDir, "containers", "jobs", "ticker", "log"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	a.start()
	jobs, err := a.client.ListJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].Job.ID != "ticker" || jobs[0].Status != api.HostJobRunning {
		t.Fatalf("after restart: %+v", jobs)
	}
	if out, _, _ := a.cli("ps"); !regexp.MustCompile(`(?m)^ticker +running`).MatchString(out) {
		t.Fatalf("ps after restart:\n%s", out)
	}
	// Signals still reach the adopted job.
	if _, stderr, err := a.cli("signal", "ticker", "HUP"); err != nil {
		t.Fatalf("signal: %v %s", err, stderr)
	}
	waitLog(t, a, "ticker", "got HUP")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := a.cli("log", "ticker")
		if len(out) > len(before) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("log stopped growing after the restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, stderr, err := a.cli("stop", "ticker"); err != nil {
		t.Fatalf("stop after restart: %v %s", err, stderr)
	}
	if aj := a.waitEnded("ticker"); exitStatus(aj) != 137 || aj.Status != api.HostJobDone {
		t.Fatalf("after stop: %s %d", aj.Status, exitStatus(aj))
	}
}

func TestInvalidJobsLeaveNothing(t *testing.T) {
	a := startAgent(t)
	ok := func(mut func(*api.HostJob)) *api.HostJob {
		j := busyboxJob("bad", "true")
		mut(j)
		return j
	}
	neg := int64(-5)
	tiny := int64(1024)
	// A layer tar that tries to write outside the rootfs.
	evil := filepath.Join(t.TempDir(), "evil.tar")
	writeEvilTar(t, evil)
	evilDigest, _ := imageDigest(evil)
	tests := []struct {
		name  string
		job   *api.HostJob
		field string
	}{
		{"missing image", ok(func(j *api.HostJob) { j.Artifacts = nil }), "artifacts"},
		{"bad port", ok(func(j *api.HostJob) { j.Config.Ports = []api.Port{{Port: 70000}} }), "config.ports[0].port"},
		{"zero port", ok(func(j *api.HostJob) { j.Config.Ports = []api.Port{{Port: 0}} }), "config.ports[0].port"},
		{"unknown layer", ok(func(j *api.HostJob) {
			j.Artifacts[0].Manifest.Rootfs[0].Layers[0].URL = ""
			j.Artifacts[0].Manifest.Rootfs[0].Layers[0].Hashes["sha256"] = strings.Repeat("a", 64)
		}), "artifacts[0].manifest.rootfs[0].layers[0]"},
		{"wrong layer digest", ok(func(j *api.HostJob) {
			j.Artifacts[0].Manifest.Rootfs[0].Layers[0].Hashes["sha256"] = strings.Repeat("b", 64)
		}), "artifacts[0].manifest.rootfs[0].layers[0]"},
		{"escaping layer", ok(func(j *api.HostJob) {
			l := j.Artifacts[0].Manifest.Rootfs[0].Layers[0]
			l.URL, l.Hashes["sha256"] = "file://"+evil, evilDigest
		}), "artifacts[0].manifest.rootfs[0].layers[0]"},
		{"negative memory", ok(func(j *api.HostJob) { j.Resources = api.Resources{"memory": {Limit: &neg}} }), "resources.memory"},
		{"tiny memory", ok(func(j *api.HostJob) { j.Resources = api.Resources{"memory": {Limit: &tiny}} }), "resources.memory"},
		{"unknown resource", ok(func(j *api.HostJob) { j.Resources = api.Resources{"gpus": {Limit: &tiny}} }), "resources.gpus"},
		{"escaping mount target", ok(func(j *api.HostJob) { j.Config.Mounts = []api.Mount{{Location: "/tmp", Target: "/data/../../etc"}} }), "config.mounts[0].target"},
		{"relative mount", ok(func(j *api.HostJob) { j.Config.Mounts = []api.Mount{{Location: "tmp/../..", Target: "/data"}} }), "config.mounts[0].location"},
		{"mount over proc", ok(func(j *api.HostJob) { j.Config.Mounts = []api.Mount{{Location: "/tmp", Target: "/proc/sys"}} }), "config.mounts[0].target"},
		{"bad id", ok(func(j *api.HostJob) { j.ID = "../x" }), "id"},
		{"no command", ok(func(j *api.HostJob) { j.Config.Args = nil }), "config.args"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.AddJob(context.Background(), tt.job)
			e, isAPI := api.AsError(err)
			if !isAPI || !errors.Is(err, api.ErrValidation) || e.Status != 400 {
				t.Fatalf("err = %v, want a 400 validation error", err)
			}
			if e.Field != tt.field {
				t.Fatalf("field %q, want %q (%s)", e.Field, tt.field, e.Message)
			}
		})
	}
	jobs, err := a.client.ListJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 0 {
		t.Fatalf("jobs listed after invalid requests: %d", len(jobs))
	}
	left, _ := os.ReadDir(filepath.Join(a.stateDir, "containers", "jobs"))
	if len(left) != 0 {
		t.Fatalf("job dirs left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(a.stateDir, "images", "layers", evilDigest)); err == nil {
		t.Fatal("escaping layer was stored")
	}
	if diff := cmp.Diff([]string(nil), escaped()); diff != "" {
		t.Fatalf("escaping layer wrote outside the rootfs: %s", diff)
	}
}

const evilName = "flt-host-escape-marker"

func escaped() []string {
	var out []string
	for _, p := range []string{"/tmp/" + evilName, "/" + evilName} {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
			os.Remove(p)
		}
	}
	return out
}

func writeEvilTar(t *testing.T, file string) {
	t.Helper()
	var buf bytes.Buffer
	tw := newTarWriter(&buf)
	tw.file("ok", "fine")
	tw.file("../../../../../../tmp/"+evilName, "escaped")
	tw.close()
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAttachReplaysLogsAndExit(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	// A running job: the replay comes first, then live output, then the exit.
	j := busyboxJob("talk", "sh", "-c", "echo one; echo two >&2; read line; echo got $line; exit 4")
	j.Config.Stdin = true
	a.add(j)
	att, err := a.client.Attach(ctx, &api.AttachRequest{JobID: "talk", Stdin: true, Logs: true})
	if err != nil {
		t.Fatal(err)
	}
	att.Write([]byte("hello\n"))
	var stdout, stderr bytes.Buffer
	exit, err := att.Receive(&stdout, &stderr)
	att.Close()
	if err != nil {
		t.Fatal(err)
	}
	if exit.ExitStatus != 4 || stdout.String() != "one\ngot hello\n" || stderr.String() != "two\n" {
		t.Fatalf("exit %+v stdout %q stderr %q", exit, stdout.String(), stderr.String())
	}
	a.waitEnded("talk")
	// An ended job: the log is replayed and the exit reported.
	att, err = a.client.Attach(ctx, &api.AttachRequest{JobID: "talk", Logs: true})
	if err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	exit, err = att.Receive(&stdout, &stderr)
	att.Close()
	if err != nil {
		t.Fatal(err)
	}
	if exit.ExitStatus != 4 || stdout.String() != "one\ngot hello\n" || stderr.String() != "two\n" {
		t.Fatalf("replay: exit %+v stdout %q stderr %q", exit, stdout.String(), stderr.String())
	}
}

func TestStartFailureIsReportedAndCleanedUp(t *testing.T) {
	a := startAgent(t)
	j := busyboxJob("nocmd", "/no/such/binary")
	j.Config.Ports = []api.Port{{Port: 80}}
	aj, err := a.client.AddJob(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	if aj.Status != api.HostJobFailed || aj.Error == nil || !strings.Contains(*aj.Error, "/no/such/binary") {
		t.Fatalf("job %s error %v", aj.Status, aj.Error)
	}
	t.Logf("start error: %s", *aj.Error)
	left, _ := os.ReadDir(filepath.Join(a.stateDir, "containers", "jobs"))
	if len(left) != 0 {
		t.Fatalf("job dirs left: %v", left)
	}
	// (The spare namespaces the agent keeps ready are not the job's.)
	for _, f := range []string{"netns", "taken"} {
		if _, err := os.Stat(filepath.Join(a.stateDir, "net", f, "nocmd")); !os.IsNotExist(err) {
			t.Errorf("the job's net/%s/nocmd is left (%v)", f, err)
		}
	}
}
