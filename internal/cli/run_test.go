package cli

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/term"

	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

// cliEnv runs flynn in-process against a fresh harness with a configured
// cluster and app "app1" that has a release.
func cliEnv(t *testing.T) (*harness, func(string) string) {
	t.Helper()
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	h, err := newHarness(etcd.Endpoint(), "/go-test", dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	vars := map[string]string{"FLYNNRC": filepath.Join(dir, ".flynnrc"), "HOME": dir}
	getenv := func(k string) string { return vars[k] }
	for _, args := range [][]string{
		{"cluster", "add", "--controller-url", h.URL, "default", "flynn.test", testKey},
		{"create", "-r", "", "app1"}, // no git remote: the test runs inside this source repo
		{"-a", "app1", "env", "set", "GREETING=hi"},
	} {
		var out bytes.Buffer
		if code := Run(context.Background(), args, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Getenv: getenv}); code != 0 {
			t.Fatalf("flynn %v: exit %d: %s", args, code, out.String())
		}
	}
	return h, getenv
}

// TestRunTTY runs an attached job through a pseudo-terminal: the job gets
// a TTY of the terminal's size, input goes through raw (Ctrl-C reaches the
// job instead of killing flynn), the job's exit status is flynn's, and the
// terminal is restored afterwards.
func TestRunTTY(t *testing.T) {
	_, getenv := cliEnv(t)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	before, err := term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}

	codec := make(chan int, 1)
	go func() {
		codec <- Run(context.Background(), []string{"-a", "app1", "run", "sh"}, Env{Stdin: tty, Stdout: tty, Stderr: tty, Getenv: getenv})
	}()

	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(ptmx)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("terminal closed while waiting for %q", want)
				}
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("timed out waiting for %q", want)
			}
		}
	}
	expect("attached tty=true size=100x30 env=hi")
	io.WriteString(ptmx, "hello\r")
	expect("echo: hello")
	io.WriteString(ptmx, "\x03")
	expect("got ^C")
	io.WriteString(ptmx, "exit 7\r")
	select {
	case code := <-codec:
		if code != 7 {
			t.Errorf("exit code = %d, want the job's 7", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("flynn run did not return after the job exited")
	}
	after, err := term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Error("terminal state was not restored")
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogFollow checks that flynn log -f shows lines that arrive while it
// runs, and ends cleanly when interrupted.
func TestLogFollow(t *testing.T) {
	h, getenv := cliEnv(t)
	if err := h.addLog(context.Background(), "app1", "web", "stdout", "before"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	codec := make(chan int, 1)
	go func() {
		codec <- Run(ctx, []string{"-a", "app1", "log", "-f"}, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: os.Stderr, Getenv: getenv})
	}()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %q; got %q", want, out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("web[h1-job]: before")
	if err := h.addLog(context.Background(), "app1", "worker", "stdout", "after"); err != nil {
		t.Fatal(err)
	}
	waitFor("worker[h1-job]: after")
	cancel()
	select {
	case code := <-codec:
		if code != 0 {
			t.Errorf("exit code = %d after interrupt, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("flynn log -f did not stop when interrupted")
	}
}
