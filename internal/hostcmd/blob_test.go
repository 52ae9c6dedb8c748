package hostcmd

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
)

func blobFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// blobRunCmd starts flynn-host with args and returns a function that
// stops it and returns its exit code.
func blobRunCmd(t *testing.T, args ...string) func() int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- Run(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr, Getenv: func(string) string { return "" }})
	}()
	return func() int {
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				t.Logf("stderr: %s", stderr.String())
			}
			return c
		case <-time.After(20 * time.Second):
			t.Fatal("command did not stop")
			return -1
		}
	}
}

// blobWaitUp retries op until it succeeds, while the server starts.
func blobWaitUp(t *testing.T, op func() error) {
	t.Helper()
	end := time.Now().Add(20 * time.Second)
	for {
		err := op()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("server did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBlobstoreCmd(t *testing.T) {
	addr := blobFreeAddr(t)
	stop := blobRunCmd(t, "component", "blobstore", "--listen", addr, "--dir", t.TempDir(), "--auth-key", "k")
	c := blobclient.New("http://"+addr, "k", nil)
	ctx := context.Background()
	blobWaitUp(t, func() error { _, err := c.Put(ctx, "/x", strings.NewReader("hi"), nil); return err })
	if info, err := c.Head(ctx, "/x"); err != nil || info.Size != 2 {
		t.Fatalf("head = %+v, %v", info, err)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestLogaggCmd(t *testing.T) {
	addr := blobFreeAddr(t)
	stop := blobRunCmd(t, "component", "logaggregator", "--listen", addr, "--buffer-lines", "2")
	c := logaggclient.New("http://"+addr, "", nil)
	ctx := context.Background()
	lines := []api.LogMessage{
		{AppID: "a", Stream: api.LogStdout, Msg: "1"},
		{AppID: "a", Stream: api.LogStdout, Msg: "2"},
		{AppID: "a", Stream: api.LogStdout, Msg: "3"},
	}
	blobWaitUp(t, func() error { _, err := c.Send(ctx, lines); return err })
	r, err := c.Read(ctx, "a", logaggclient.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := r.Next()
		if err != nil {
			break
		}
		got = append(got, m.Msg)
	}
	r.Close()
	if strings.Join(got, ",") != "2,3" {
		t.Fatalf("buffer of 2 holds %v, want [2 3]", got)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
