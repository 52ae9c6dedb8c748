package host

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
// ships its lines to every log aggregator instance, found through
// discoverd, each line numbered so that every instance stores it once and
// in order (see logaggclient.Shipper). The job's own log on the host stays
// the source of truth: when an aggregator is down, lines queue (bounded)
// and GET /host/jobs/{id}/log still has them.
type logShipper struct {
	a       *Agent
	disc    *discoverdclient.Client
	key     string
	shipper *logaggclient.Shipper
	// since is when the shipper was created: lines of adopted jobs
	// older than this were shipped (or lost) by the previous agent.
	since time.Time
}

const (
	// logAggLookup is how often the shipper looks the aggregators up.
	logAggLookup = 2 * time.Second
	// logAggTimeout bounds one request to an aggregator, so that one
	// that stopped answering (its host cut off) is tried again.
	logAggTimeout = time.Minute
)

func newLogShipper(a *Agent, disc *discoverdclient.Client, key string) *logShipper {
	return &logShipper{
		a: a, disc: disc, key: key,
		shipper: logaggclient.NewShipper(logaggclient.ShipperConfig{}, a.log.With("part", "logship")),
		since:   time.Now(),
	}
}

// run sends queued lines to the aggregators discoverd lists until ctx
// ends.
func (s *logShipper) run(ctx context.Context) {
	hc := &http.Client{Timeout: logAggTimeout}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.shipper.Follow(ctx, s.disc, LogAggregatorService, logAggLookup, func(addr string) *logaggclient.Client {
			return logaggclient.New("http://"+addr, s.key, hc)
		})
	}()
	if err := s.shipper.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		s.a.log.Error("log shipper stopped", "err", err)
	}
	wg.Wait()
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
