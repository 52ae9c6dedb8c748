package hostcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestLogaggCmdFillsFromPeer: a second `component logaggregator`, given
// discoverd by flags or by its job environment, starts with the logs of
// the first.
func TestLogaggCmdFillsFromPeer(t *testing.T) {
	const token, key = "disc-token", "log-key"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := discoverd.NewStore(etcdtest.Client(t), 2*time.Second)
	dsrv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(token), logging.Discard()))
	defer dsrv.Close()
	disc := discoverdclient.New(dsrv.URL, token)

	// A by flags.
	addrA := fmt.Sprintf("127.0.0.1:%d", testslot.Port(t))
	stopA := logaggRunCmd(t, nil, "component", "logaggregator", "--listen", addrA,
		"--auth-key", key, "--discoverd", dsrv.URL, "--discoverd-token", token)
	defer stopA()
	a := logaggclient.New("http://"+addrA, key, nil)
	lines := []api.LogMessage{
		{AppID: "app", JobID: "j", Stream: api.LogStdout, Msg: "one"},
		{AppID: "app", JobID: "j", Stream: api.LogStderr, Msg: "two"},
	}
	logaggWaitUp(t, "aggregator A to take lines", func() error { _, err := a.Send(ctx, lines); return err })
	regA, err := disc.Register(ctx, "logaggregator", addrA, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer regA.Deregister(context.Background())

	// B by the environment its host gives a job.
	portB := testslot.Port(t)
	env := map[string]string{
		"PORT": fmt.Sprint(portB), "EXTERNAL_IP": "127.0.0.1",
		"DISCOVERD": dsrv.URL, "FLYNN_CLUSTER_TOKEN": token, "FLYNN_AUTH_KEY": key,
	}
	stopB := logaggRunCmd(t, env, "component", "logaggregator")
	defer stopB()
	b := logaggclient.New(fmt.Sprintf("http://127.0.0.1:%d", portB), key, nil)
	var got []string
	logaggWaitUp(t, "aggregator B to answer", func() error {
		r, err := b.Read(ctx, "app", logaggclient.ReadOptions{})
		if err != nil {
			return err
		}
		defer r.Close()
		got = got[:0]
		for {
			m, err := r.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			got = append(got, m.Msg)
		}
	})
	if strings.Join(got, ",") != "one,two" {
		t.Fatalf("B holds %q, want A's lines [one two]", got)
	}
	if code := stopB(); code != 0 {
		t.Fatalf("B exit code %d", code)
	}
}

// logaggRunCmd starts flynn-host with args and env and returns a function
// that stops it (once) and returns its exit code.
func logaggRunCmd(t *testing.T, env map[string]string, args ...string) func() int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- Run(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr, Getenv: func(k string) string { return env[k] }})
	}()
	exit := -1
	stopped := false
	return func() int {
		if stopped {
			return exit
		}
		stopped = true
		cancel()
		select {
		case exit = <-code:
			if exit != 0 {
				t.Logf("stderr: %s", stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("flynn-host %s did not stop within 20s; stderr: %s", strings.Join(args, " "), stderr.String())
		}
		return exit
	}
}

// logaggWaitUp retries op until it succeeds, while a server starts.
func logaggWaitUp(t *testing.T, what string, op func() error) {
	t.Helper()
	end := time.Now().Add(20 * time.Second)
	for {
		err := op()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waited 20s for %s; saw last: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
