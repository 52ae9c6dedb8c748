package host

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
)

// LogAggregatorService is the discoverd service hosts ship job output to.
const LogAggregatorService = "logaggregator"

// logShipper follows the log of every job that belongs to an app and
// ships its lines to the log aggregator, found through discoverd. The
// job's own log on the host stays the source of truth: when the
// aggregator is down, lines queue (bounded) and GET /host/jobs/{id}/log
// still has them.
type logShipper struct {
	a       *Agent
	shipper *logaggclient.Shipper
	// since is when the shipper was created: lines of adopted jobs
	// older than this were shipped (or lost) by the previous agent.
	since time.Time
}

func newLogShipper(a *Agent, disc *discoverdclient.Client, key string) *logShipper {
	rt := &discoveredTransport{disc: disc, service: LogAggregatorService, next: http.DefaultTransport}
	c := logaggclient.New("http://"+LogAggregatorService+".discoverd", key, &http.Client{Transport: rt})
	return &logShipper{
		a:       a,
		shipper: logaggclient.NewShipper(c, logaggclient.ShipperConfig{}, a.log.With("part", "logship")),
		since:   time.Now(),
	}
}

// run sends queued lines until ctx ends.
func (s *logShipper) run(ctx context.Context) {
	if err := s.shipper.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		s.a.log.Error("log shipper stopped", "err", err)
	}
}

// follow ships job id's lines until its log ends (the job exited) or the
// agent stops. Jobs without an app (ad-hoc host jobs) are not shipped.
func (s *logShipper) follow(id string, hj *api.HostJob, created time.Time) {
	app := hj.Metadata[api.JobMetaApp]
	if app == "" || !api.ValidLogAppID(app) || hj.Config.DisableLog {
		return
	}
	since := time.Time{}
	if created.Before(s.since) {
		since = s.since
	}
	typ := hj.Metadata[api.JobMetaProcessType]
	s.a.wg.Add(1)
	go func() {
		defer s.a.wg.Done()
		ctx := s.a.runCtx
		// The job's log appears once the runtime has started it; retry
		// briefly until it does.
		var r interface {
			Read([]byte) (int, error)
			Close() error
		}
		for attempt := 0; ; attempt++ {
			rc, err := s.a.rt.Log(ctx, id, true)
			if err == nil {
				r = rc
				break
			}
			if attempt >= 50 || ctx.Err() != nil {
				if ctx.Err() == nil {
					s.a.log.Warn("cannot follow job log for shipping", "job", id, "err", err)
				}
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), api.LogMaxMsgBytes*4)
		for sc.Scan() {
			var l api.HostLogLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				continue
			}
			if !since.IsZero() && l.Time.Before(since) {
				continue
			}
			stream := l.Stream
			if !api.ValidLogStream(stream) {
				stream = api.LogStdout
			}
			s.shipper.Log(api.LogMessage{
				AppID: app, JobID: id, ProcessType: typ,
				Stream: stream, Timestamp: l.Time, Msg: l.Msg,
			})
		}
	}()
}

// discoveredTransport sends each request to an instance of a discoverd
// service, whatever host the URL names. Instances are cached briefly.
type discoveredTransport struct {
	disc    *discoverdclient.Client
	service string
	next    http.RoundTripper

	mu      sync.Mutex
	addrs   []string
	fetched time.Time
	n       int
}

func (t *discoveredTransport) pick(ctx context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.addrs) == 0 || time.Since(t.fetched) > 5*time.Second {
		insts, err := t.disc.Instances(ctx, t.service)
		if err != nil {
			return "", fmt.Errorf("find %s in discoverd: %w", t.service, err)
		}
		t.addrs = t.addrs[:0]
		for _, in := range insts {
			t.addrs = append(t.addrs, in.Addr)
		}
		t.fetched = time.Now()
	}
	if len(t.addrs) == 0 {
		return "", fmt.Errorf("no %s instance is registered in discoverd", t.service)
	}
	t.n++
	return t.addrs[t.n%len(t.addrs)], nil
}

func (t *discoveredTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	addr, err := t.pick(req.Context())
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	r := req.Clone(req.Context())
	r.URL.Host = addr
	r.Host = addr
	res, err := t.next.RoundTrip(r)
	if err != nil {
		t.mu.Lock()
		t.fetched = time.Time{} // look again next time
		t.mu.Unlock()
	}
	return res, err
}
