package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// serveGit serves the bare repositories under root over git's smart HTTP
// (the real git http-backend) on a port of the test's slot, and returns
// its URL.
func serveGit(t *testing.T, root string) string {
	t.Helper()
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", testslot.Port(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &cgi.Handler{Path: gitBin, Args: []string{"http-backend"},
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("git server: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// TestDeployFromGitURL deploys the procfile sample app from a repository
// served by a git server in the test, with flynn create --git and then
// flynn deploy --git of a branch and of a commit, each with the build's
// live output, each serving through the router; an unreachable URL gets a
// one-line error and the app keeps serving.
func TestDeployFromGitURL(t *testing.T) {
	c := startE2ECluster(t, nil)
	work := filepath.Join(t.TempDir(), "work")
	copyDir(t, "apps/procfile", work)
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = work
		cmd.Env = c.env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q", "-b", "main")
	git("add", ".")
	git("commit", "-q", "-m", "app")
	mainRev := git("rev-parse", "HEAD")
	git("checkout", "-q", "-b", "v2")
	os.WriteFile(filepath.Join(work, "www", "index.html"), []byte("<p>hello from taffy v2</p>\n"), 0o644)
	git("commit", "-q", "-am", "v2")
	git("checkout", "-q", "main")
	root := t.TempDir()
	git("clone", "-q", "--bare", work, filepath.Join(root, "app.git"))
	url := serveGit(t, root) + "/app.git"

	flynn := func(args ...string) (stdout, stderr string, err error) {
		cmd := exec.Command(filepath.Join(binDir, "flynn"), args...)
		cmd.Dir = t.TempDir()
		cmd.Env = c.env()
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	serves := func(want string) {
		t.Helper()
		waitFor(t, within(t, 2*time.Minute), "taffy to answer "+want, c.watch(), func() (bool, error) {
			status, body := c.curl("taffy."+c.domain, "/")
			return status == 200 && strings.Contains(body, want), fmt.Errorf("%d %s", status, body)
		})
	}
	deploys := func(wantRev string, args ...string) {
		t.Helper()
		out, errOut, err := flynn(args...)
		if err != nil {
			t.Fatalf("flynn %v: %v\n%s%s", args, err, out, errOut)
		}
		for _, want := range []string{"-----> Fetching " + url, "-----> Deploying " + wantRev, "-----> Building taffy", "=====> Application deployed"} {
			if !strings.Contains(out, want) {
				t.Errorf("flynn %v: output lacks %q:\n%s", args, want, out)
			}
		}
	}

	deploys(mainRev, "create", "--git", url, "taffy")
	serves("hello from the procfile app")
	deploys(git("rev-parse", "v2"), "-a", "taffy", "deploy", "--git", url, "--branch", "v2")
	serves("hello from taffy v2")
	deploys(mainRev, "-a", "taffy", "deploy", "--git", url, "--rev", mainRev[:12])
	serves("hello from the procfile app")

	_, errOut, err := flynn("-a", "taffy", "deploy", "--git", "http://127.0.0.1:1/app.git")
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "unable to access") {
		t.Errorf("deploy from an unreachable URL: err=%v, want a one-line error, got:\n%s", err, errOut)
	}
	if status, body := c.curl("taffy."+c.domain, "/"); status != 200 || !strings.Contains(body, "hello from the procfile app") {
		t.Errorf("after the failed deploy the app stopped serving: %d %s", status, body)
	}
}
