package host_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logagg"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// TestLogShipping runs a real job of an app and reads its output back from
// each of two log aggregators the agent found through discoverd.
func TestLogShipping(t *testing.T) {
	a := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	store := discoverd.NewStore(etcdtest.Client(t), time.Second)
	dsrv := httptest.NewServer(discoverd.Handler(store, httpapi.NewKeyAuth(testToken), logging.Discard()))
	defer dsrv.Close()
	disc := discoverdclient.New(dsrv.URL, testToken)
	var aggs []*logaggclient.Client
	for range 2 {
		// As the platform runs them: they take the service token, which
		// the agent derives from its cluster token.
		lsrv := httptest.NewServer(logagg.NewServer(logagg.Config{Keys: []string{api.ServiceToken(testToken)}}, logging.Discard()).Handler())
		defer lsrv.Close()
		reg, err := disc.Register(ctx, "logaggregator", strings.TrimPrefix(lsrv.URL, "http://"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Deregister(context.Background())
		aggs = append(aggs, logaggclient.New(lsrv.URL, api.ServiceToken(testToken), nil))
	}

	a.stop()
	a.args = append(a.args, "--discoverd", dsrv.URL)
	a.start()

	j := busyboxJob("ship1", "sh", "-c", "echo out-line; echo err-line >&2")
	j.Metadata = map[string]string{api.JobMetaApp: "app-1", api.JobMetaProcessType: "web"}
	a.add(j)
	// A job without an app is not shipped.
	a.add(busyboxJob("ship2", "echo", "no-app"))

	type line struct{ Job, Type, Stream, Msg string }
	// The platform's lines (stream init) come first and last: the exit
	// line follows the job's last output.
	want := []line{
		{"ship1", "web", "init", "Starting process with command `sh -c 'echo out-line; echo err-line >&2'`"},
		{"ship1", "web", "stderr", "err-line"}, {"ship1", "web", "stdout", "out-line"},
		{"ship1", "web", "init", "Process exited with status 0"},
	}
	for i, lc := range aggs {
		var got []line
		for {
			r, err := lc.Read(ctx, "app-1", logaggclient.ReadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got = got[:0]
			for {
				m, err := r.Next()
				if err != nil {
					break
				}
				if m.Timestamp.IsZero() {
					t.Errorf("line %q has no timestamp", m.Msg)
				}
				got = append(got, line{m.JobID, m.ProcessType, m.Stream, m.Msg})
			}
			r.Close()
			if len(got) >= len(want) || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		// stdout and stderr are separate pipes: their order is not fixed.
		if len(got) == len(want) && got[1].Stream == "stdout" {
			got[1], got[2] = got[2], got[1]
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("lines shipped to aggregator %d (-want +got):\n%s", i, d)
		}
	}
	// The host still has the job's log.
	l, err := a.client.JobLog(ctx, "ship1", false)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
