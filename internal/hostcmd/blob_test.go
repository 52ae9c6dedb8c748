package hostcmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func blobFreeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))
}

// blobRunCmd starts flynn-host with args and returns a function that
// stops it and returns its exit code.
func blobRunCmd(t *testing.T, args ...string) func() int {
	t.Helper()
	return blobRunCmdEnv(t, nil, args...)
}

// blobRunCmdEnv is blobRunCmd with environment variables.
func blobRunCmdEnv(t *testing.T, envVars map[string]string, args ...string) func() int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- Run(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr, Getenv: func(k string) string { return envVars[k] }})
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

// TestBlobstoreCmdFlags: bad backend settings are refused before the
// server starts, with a message that says what to give.
func TestBlobstoreCmdFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--backend", "nfs"}, `--backend "nfs": use fs or s3`},
		{[]string{"--backend", "s3"}, "--backend s3 needs --s3-endpoint and --s3-bucket"},
		{[]string{"--backend", "s3", "--s3-endpoint", "ftp://x:1", "--s3-bucket", "b"}, "the scheme must be http or https"},
		{[]string{"--min-copies", "0"}, "--min-copies 0: give 1 or more"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		args := append([]string{"component", "blobstore", "--listen", blobFreeAddr(t), "--dir", t.TempDir()}, tt.args...)
		code := Run(context.Background(), args, Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr, Getenv: func(string) string { return "" }})
		if code == 0 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want it to say %q", tt.args, code, stderr.String(), tt.want)
		}
	}
}

// TestBlobstoreCmdReplicates: two blobstore components given a discoverd
// (as their environment names it) in which they are registered replicate
// a PUT.
func TestBlobstoreCmdReplicates(t *testing.T) {
	store := discoverd.NewStore(etcdtest.Client(t), 10*time.Second)
	dsrv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth("tok"), logging.Discard()))
	defer dsrv.Close()
	dc := discoverdclient.New(dsrv.URL, "tok")
	ctx := context.Background()
	var clients []*blobclient.Client
	var dirs []string
	for range 2 {
		addr := blobFreeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		dir := testslot.Dir(t)
		env := map[string]string{"DISCOVERD": dsrv.URL, "FLYNN_CLUSTER_TOKEN": "tok", "EXTERNAL_IP": "127.0.0.1", "PORT": port, "FLYNN_AUTH_KEY": "k", "BLOBSTORE_DIR": dir}
		stop := blobRunCmdEnv(t, env, "component", "blobstore", "--no-sync")
		defer func() {
			if code := stop(); code != 0 {
				t.Errorf("exit code %d", code)
			}
		}()
		c := blobclient.New("http://"+addr, "k", nil)
		blobWaitUp(t, func() error { _, err := c.List(ctx, "/"); return err })
		reg, err := dc.Register(ctx, "blobstore", addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Deregister(ctx)
		clients = append(clients, c)
		dirs = append(dirs, dir)
	}
	info, err := clients[0].Put(ctx, "/slug", strings.NewReader("slug"), nil)
	if err != nil || info.Copies != 2 {
		t.Fatalf("put = %+v, %v; want 2 copies", info, err)
	}
	if b, err := os.ReadFile(filepath.Join(dirs[1], "slug")); err != nil || string(b) != "slug" {
		t.Fatalf("second instance's disk: %q, %v", b, err)
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
