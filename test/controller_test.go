package test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// startController runs `flynn-host component controller` against the
// daemon's etcd and discoverd and waits until it answers.
func startController(t *testing.T, d *testDaemon, key string) string {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t))
	ctl := startBg(t, "controller", filepath.Join(testslot.Dir(t), "controller.log"), "component", "controller",
		"--listen", strings.TrimPrefix(url, "http://"), "--etcd", d.etcd, "--etcd-tls", d.etcdTLS, "--auth-key", key,
		"--cluster-domain", "e2e.localhost", "--discoverd", d.disc, "--token", d.token)
	cc := controllerclient.New(url, key)
	ctx := within(t, time.Minute)
	waitFor(t, ctx, "the controller to answer", watching(ctl, d.proc), func() (bool, error) {
		err := cc.Ping(ctx)
		return err == nil, err
	})
	return url
}

// TestOneOffJobThroughController runs the controller as a component on a
// real host, checks it registered in discoverd, and runs one-off jobs on
// the host with `flynn run`, as a user would.
func TestOneOffJobThroughController(t *testing.T) {
	d := startDaemon(t)
	url := startController(t, d, "ctrlkey")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	insts, err := discoverdclient.New(d.disc, d.token).Instances(ctx, "controller")
	if err != nil || len(insts) != 1 || "http://"+insts[0].Addr != url {
		t.Fatalf("controller in discoverd = %v, %v; want one instance at %s", insts, err, url)
	}

	cc := controllerclient.New(url, "ctrlkey")
	app := &api.App{Name: "oneoff"}
	if err := cc.CreateApp(ctx, app); err != nil {
		t.Fatal(err)
	}
	art := busyboxArtifact(t)
	if err := cc.CreateArtifact(ctx, art); err != nil {
		t.Fatal(err)
	}
	rel := &api.Release{ArtifactIDs: []string{art.ID}, Env: map[string]string{"GREETING": "hello"}}
	if err := cc.CreateRelease(ctx, rel); err != nil {
		t.Fatal(err)
	}
	if err := cc.SetAppRelease(ctx, app.ID, rel.ID); err != nil {
		t.Fatal(err)
	}

	home := t.TempDir()
	flynn := func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
		cmd.Env = append(os.Environ(), "HOME="+home, "FLYNNRC="+filepath.Join(home, ".flynnrc"))
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), code
	}
	if out, errOut, code := flynn("cluster", "add", "--controller-url", url, "e2e", "e2e.localhost", "ctrlkey"); code != 0 {
		t.Fatalf("cluster add: %s %s", out, errOut)
	}
	out, errOut, code := flynn("-a", "oneoff", "run", "sh", "-c", "echo $GREETING from $FLYNN_APP_NAME")
	if code != 0 || !strings.Contains(out, "hello from oneoff") {
		t.Fatalf("flynn run: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	_, _, code = flynn("-a", "oneoff", "run", "sh", "-c", "exit 3")
	if code != 3 {
		t.Fatalf("flynn run exit 3: got exit %d", code)
	}
	out, errOut, code = flynn("-a", "oneoff", "run", "-d", "sleep", "1")
	if code != 0 {
		t.Fatalf("flynn run -d: exit %d %q %q", code, out, errOut)
	}
	// Interactive, with a terminal: typed input runs, the window size
	// reaches the job, the exit status comes back.
	cmd := exec.Command(filepath.Join(binDir, "flynn"), "-a", "oneoff", "run", "sh")
	cmd.Env = append(os.Environ(), "HOME="+home, "FLYNNRC="+filepath.Join(home, ".flynnrc"), "TERM=xterm")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 111})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var screen strings.Builder
	readDone := make(chan struct{})
	go func() { io.Copy(&screen, tty); close(readDone) }()
	io.WriteString(tty, "stty size; echo typed-$((6*7)); exit 5\r")
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 5 {
			t.Fatalf("flynn run with a TTY: %v, want exit status 5; screen:\n%s", err, screen.String())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("flynn run with a TTY did not end; screen:\n%s", screen.String())
	}
	tty.Close()
	<-readDone
	if out := screen.String(); !strings.Contains(out, "33 111") || !strings.Contains(out, "typed-42") {
		t.Fatalf("TTY screen lacks the window size or the command's output:\n%s", out)
	}

	jobs, err := cc.JobList(ctx, app.ID)
	if err != nil || len(jobs) == 0 {
		t.Fatalf("controller lists no jobs of the app: %v, %v", jobs, err)
	}
}
