package gitreceive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the pre-receive hook.
	if os.Getenv("FLYNN_TEST_HOOK") == "1" {
		os.Exit(HookMain(os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	}
	// And as the SSH client of git deploys.
	if os.Getenv("FLYNN_TEST_GIT_SSH") == "1" {
		os.Exit(GitSSHMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

// fakeReceiver records pushes and "builds" by listing the pushed files.
type fakeReceiver struct {
	mu     sync.Mutex
	pushes []Push
	fail   string
	// gate, when set, holds the build after its first line until closed
	// (30s at most): the pusher must see that line meanwhile.
	gate chan struct{}
}

func (f *fakeReceiver) Authorize(ctx context.Context, app string) error {
	if app == "missing" {
		return api.NotFound("app %q not found: create it with flynn create", app)
	}
	return nil
}

func (f *fakeReceiver) Receive(ctx context.Context, p Push, out io.Writer) error {
	f.mu.Lock()
	f.pushes = append(f.pushes, p)
	fail := f.fail
	f.mu.Unlock()
	files, err := p.Git(ctx, "ls-tree", "--name-only", p.NewRev).Output()
	if err != nil {
		return fmt.Errorf("ls-tree: %w", err)
	}
	fmt.Fprintf(out, "-----> Building %s at %s\n", p.App, p.NewRev[:7])
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-time.After(30 * time.Second):
			return errors.New("the pusher did not see the build output live")
		}
	}
	fmt.Fprintf(out, "       files: %s\n", strings.Join(strings.Fields(string(files)), ","))
	if fail != "" {
		return errors.New(fail)
	}
	var tarBuf bytes.Buffer
	if err := p.Archive(ctx, &tarBuf); err != nil || tarBuf.Len() == 0 {
		return fmt.Errorf("archive: %v", err)
	}
	fmt.Fprintln(out, "-----> Done")
	return nil
}

type keyList struct{ keys []ssh.PublicKey }

func (k keyList) Allowed(ctx context.Context, key ssh.PublicKey) (bool, error) {
	for _, want := range k.keys {
		if bytes.Equal(want.Marshal(), key.Marshal()) {
			return true, nil
		}
	}
	return false, nil
}

type env struct {
	recv     *fakeReceiver
	sshAddr  string
	httpURL  string
	keyFile  string
	badKey   string
	workRepo string
}

func writeKey(t *testing.T, dir, name string) (ssh.PublicKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	spub, _ := ssh.NewPublicKey(pub)
	return spub, p
}

func setup(t *testing.T) *env {
	t.Helper()
	for _, bin := range []string{"git", "ssh", "git-receive-pack"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (make deps installs it): %v", bin, err)
		}
	}
	dir := t.TempDir()
	self, _ := os.Executable()
	hook := filepath.Join(dir, "hook.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\nFLYNN_TEST_HOOK=1 exec "+self+"\n"), 0o755)
	gitSSH := filepath.Join(dir, "git-ssh.sh")
	os.WriteFile(gitSSH, []byte("#!/bin/sh\nFLYNN_TEST_GIT_SSH=1 exec "+self+" \"$@\"\n"), 0o755)
	recv := &fakeReceiver{}
	s, err := New(Config{RepoDir: filepath.Join(dir, "repos"), HookBin: hook, SSHCommand: []string{gitSSH}, Receiver: recv}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); s.Run(ctx) }()

	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, _ := ssh.NewSignerFromKey(hostPriv)
	userPub, keyFile := writeKey(t, dir, "id_user")
	_, badKey := writeKey(t, dir, "id_bad")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.ServeSSH(ctx, ln, hostKey, keyList{[]ssh.PublicKey{userPub}}) }()
	hs := httptest.NewServer(s.Handler(httpapi.NewKeyAuth("clusterkey")))
	t.Cleanup(hs.Close)

	repo := filepath.Join(dir, "work")
	gitIn(t, "", "init", "-q", "-b", "main", repo)
	os.WriteFile(filepath.Join(repo, "Procfile"), []byte("web: ./server\n"), 0o644)
	gitIn(t, repo, "add", ".")
	gitIn(t, repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
	return &env{recv: recv, sshAddr: ln.Addr().String(), httpURL: hs.URL, keyFile: keyFile, badKey: badKey, workRepo: repo}
}

func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// push runs git push and returns its combined output and whether it worked.
func (e *env) push(t *testing.T, viaSSH bool, key, app string, refspec ...string) (string, bool) {
	t.Helper()
	return e.pushTo(t, viaSSH, key, app, nil, refspec...)
}

// pushTo is push with git's stderr (its progress and the remote's
// output) going to stderr as it comes, when stderr is not nil.
func (e *env) pushTo(t *testing.T, viaSSH bool, key, app string, stderr io.Writer, refspec ...string) (string, bool) {
	t.Helper()
	var remote string
	cmd := exec.Command("git")
	cmd.Dir = e.workRepo
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	if viaSSH {
		_, port, _ := net.SplitHostPort(e.sshAddr)
		remote = fmt.Sprintf("ssh://git@127.0.0.1:%s/%s.git", port, app)
		cmd.Env = append(cmd.Env, "GIT_SSH_COMMAND=ssh -i "+key+" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes")
	} else {
		remote = strings.Replace(e.httpURL, "http://", "http://user:"+key+"@", 1) + "/" + app + ".git"
	}
	cmd.Args = append([]string{"git", "push", remote}, refspec...)
	if stderr != nil {
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, stderr
		err := cmd.Run()
		return out.String(), err == nil
	}
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

func TestPush(t *testing.T) {
	for _, viaSSH := range []bool{true, false} {
		name := map[bool]string{true: "ssh", false: "http"}[viaSSH]
		t.Run(name, func(t *testing.T) {
			e := setup(t)
			key := e.keyFile
			if !viaSSH {
				key = "clusterkey"
			}
			out, ok := e.push(t, viaSSH, key, "myapp", "main")
			if !ok {
				t.Fatalf("push failed:\n%s", out)
			}
			for _, want := range []string{"remote: -----> Building myapp", "remote:        files: Procfile", "remote: -----> Done"} {
				if !strings.Contains(out, want) {
					t.Errorf("push output lacks %q:\n%s", want, out)
				}
			}
			head := strings.TrimSpace(gitIn(t, e.workRepo, "rev-parse", "HEAD"))
			if len(e.recv.pushes) != 1 || e.recv.pushes[0].NewRev != head || e.recv.pushes[0].Ref != "refs/heads/main" {
				t.Fatalf("pushes = %+v, want one of %s", e.recv.pushes, head)
			}

			// A failed build rejects the push with the reason.
			os.WriteFile(filepath.Join(e.workRepo, "extra"), []byte("x"), 0o644)
			gitIn(t, e.workRepo, "add", ".")
			gitIn(t, e.workRepo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "second")
			e.recv.fail = "compile failed: missing go.mod"
			out, ok = e.push(t, viaSSH, key, "myapp", "main")
			if ok || !strings.Contains(out, "Push rejected: compile failed: missing go.mod") || !strings.Contains(out, "files: Procfile,extra") {
				t.Fatalf("failing build: ok=%v\n%s", ok, out)
			}

			// Other branches are refused without a build.
			e.recv.fail = ""
			n := len(e.recv.pushes)
			out, ok = e.push(t, viaSSH, key, "myapp", "main:feature")
			if ok || !strings.Contains(out, "only a push to main or master deploys") || len(e.recv.pushes) != n {
				t.Fatalf("branch push: ok=%v pushes=%d\n%s", ok, len(e.recv.pushes), out)
			}

			// Unknown app.
			out, ok = e.push(t, viaSSH, key, "missing", "main")
			if ok || !strings.Contains(out, `app "missing" not found`) {
				t.Fatalf("unknown app: ok=%v\n%s", ok, out)
			}

			// The second push sends only new objects.
			out, ok = e.push(t, viaSSH, key, "myapp", "main")
			if !ok {
				t.Fatalf("second push: %s", out)
			}
		})
	}
}

// TestLiveOutput: build output reaches the pusher while the build runs,
// over SSH and over HTTP.
func TestLiveOutput(t *testing.T) {
	for _, viaSSH := range []bool{true, false} {
		t.Run(map[bool]string{true: "ssh", false: "http"}[viaSSH], func(t *testing.T) {
			e := setup(t)
			key := e.keyFile
			if !viaSSH {
				key = "clusterkey"
			}
			gate := make(chan struct{})
			e.recv.gate = gate
			r, w := io.Pipe()
			done := make(chan string)
			go func() {
				var all strings.Builder
				sc := bufio.NewScanner(r)
				sc.Split(scanLinesOrCR)
				for sc.Scan() {
					all.WriteString(sc.Text() + "\n")
					if strings.Contains(sc.Text(), "remote: -----> Building myapp") {
						close(gate)
					}
				}
				done <- all.String()
			}()
			out, ok := e.pushTo(t, viaSSH, key, "myapp", w, "main")
			w.Close()
			all := <-done
			if !ok || strings.Contains(all, "did not see the build output live") {
				t.Fatalf("push ok=%v:\n%s%s", ok, out, all)
			}
		})
	}
}

// scanLinesOrCR splits git's output at newlines and carriage returns.
func scanLinesOrCR(data []byte, atEOF bool) (int, []byte, error) {
	for i, b := range data {
		if b == '\n' || b == '\r' {
			return i + 1, data[:i], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func TestRefused(t *testing.T) {
	e := setup(t)
	out, ok := e.push(t, true, e.badKey, "myapp", "main")
	if ok || !strings.Contains(out, "Permission denied") {
		t.Fatalf("unknown key: ok=%v\n%s", ok, out)
	}
	out, ok = e.push(t, false, "wrong", "myapp", "main")
	if ok || !strings.Contains(out, "401") && !strings.Contains(out, "Authentication failed") {
		t.Fatalf("wrong cluster key: ok=%v\n%s", ok, out)
	}
	if len(e.recv.pushes) != 0 {
		t.Fatalf("refused pushes reached the receiver: %+v", e.recv.pushes)
	}
}

func TestAppFromPath(t *testing.T) {
	for in, want := range map[string]string{"/myapp.git": "myapp", "'my-app.git'": "my-app", "myapp": "myapp", "../x.git": "", "/a/b.git": "", "/UP.git": ""} {
		got, err := appFromPath(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("appFromPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
