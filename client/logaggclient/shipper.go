package logaggclient

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/flynnrebuilt/flynn/api"
)

// ShipperConfig tunes a Shipper. Zero values take the defaults.
type ShipperConfig struct {
	// BatchSize is the most lines sent in one request (default 1000).
	BatchSize int
	// QueueSize is the most lines held while the aggregator is slow or
	// unreachable (default 10000); beyond it the oldest are dropped.
	QueueSize int
	// MinBackoff and MaxBackoff bound the wait between failed attempts
	// (defaults 100 ms and 5 s).
	MinBackoff, MaxBackoff time.Duration
}

// Shipper sends log lines to the aggregator in the background. Log never
// blocks: lines wait in a bounded queue, are sent in batches, and are
// retried with backoff while the aggregator is unreachable; when the queue
// is full the oldest lines are dropped, so a slow aggregator never stalls
// the job writing them.
type Shipper struct {
	c   *Client
	cfg ShipperConfig
	log *slog.Logger

	wake chan struct{}

	mu       sync.Mutex
	queue    []api.LogMessage // ring of QueueSize
	head, n  int
	logged   uint64 // lines given to Log
	settled  uint64 // lines sent, dropped or refused
	dropped  uint64
	refused  uint64
	progress chan struct{} // closed when settled grows
}

// NewShipper returns a shipper sending to c. Start it with Run.
func NewShipper(c *Client, cfg ShipperConfig, log *slog.Logger) *Shipper {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 10000
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	return &Shipper{
		c: c, cfg: cfg, log: log,
		wake:     make(chan struct{}, 1),
		queue:    make([]api.LogMessage, cfg.QueueSize),
		progress: make(chan struct{}),
	}
}

// Log queues m for sending. A zero timestamp is set to now and a message
// over api.LogMaxMsgBytes is truncated. It never blocks. A line that is
// invalid otherwise (see api.LogMessage.Validate) is counted as refused
// and not sent.
func (s *Shipper) Log(m api.LogMessage) {
	if m.Timestamp.IsZero() {
		m.Timestamp = time.Now().UTC()
	}
	if len(m.Msg) > api.LogMaxMsgBytes {
		cut := api.LogMaxMsgBytes
		for cut > 0 && !utf8.RuneStart(m.Msg[cut]) {
			cut--
		}
		m.Msg = m.Msg[:cut]
	}
	s.mu.Lock()
	s.logged++
	if err := m.Validate(); err != nil {
		s.refused++
		s.settleLocked(1)
		s.mu.Unlock()
		return
	}
	if s.n == len(s.queue) {
		s.queue[s.head] = api.LogMessage{}
		s.head = (s.head + 1) % len(s.queue)
		s.n--
		s.dropped++
		s.settleLocked(1)
	}
	s.queue[(s.head+s.n)%len(s.queue)] = m
	s.n++
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Shipper) settleLocked(k int) {
	s.settled += uint64(k)
	close(s.progress)
	s.progress = make(chan struct{})
}

// take removes up to BatchSize lines from the queue.
func (s *Shipper) take() []api.LogMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(s.n, s.cfg.BatchSize)
	if k == 0 {
		return nil
	}
	batch := make([]api.LogMessage, k)
	for i := range batch {
		j := (s.head + i) % len(s.queue)
		batch[i] = s.queue[j]
		s.queue[j] = api.LogMessage{}
	}
	s.head = (s.head + k) % len(s.queue)
	s.n -= k
	return batch
}

// Run sends queued lines until ctx is done. Lines still queued then are
// not sent; call Flush first to wait for them.
func (s *Shipper) Run(ctx context.Context) error {
	for {
		batch := s.take()
		if batch == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-s.wake:
				continue
			}
		}
		if err := s.send(ctx, batch); err != nil {
			return nil // ctx done
		}
	}
}

// send delivers one batch, retrying with backoff until it is stored or
// refused, or ctx is done.
func (s *Shipper) send(ctx context.Context, batch []api.LogMessage) error {
	backoff := s.cfg.MinBackoff
	for {
		_, err := s.c.Send(ctx, batch)
		if err == nil {
			s.mu.Lock()
			s.settleLocked(len(batch))
			s.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, api.ErrValidation) || errors.Is(err, api.ErrTooLarge) {
			// Lines are validated before they are queued, so this is a
			// version mismatch; retrying would fail the same way.
			s.log.Warn("log aggregator refused a batch", "err", err, "lines", len(batch))
			s.mu.Lock()
			s.refused += uint64(len(batch))
			s.settleLocked(len(batch))
			s.mu.Unlock()
			return nil
		}
		s.log.Debug("log aggregator unreachable, will retry", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// Flush waits until every line given to Log before the call has been sent
// (or dropped), or ctx is done.
func (s *Shipper) Flush(ctx context.Context) error {
	s.mu.Lock()
	target := s.logged
	for s.settled < target {
		wait := s.progress
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait:
		}
		s.mu.Lock()
	}
	s.mu.Unlock()
	return nil
}

// Stats reports how many lines were dropped because the queue was full and
// how many were refused as invalid (by Log or by the aggregator).
func (s *Shipper) Stats() (dropped, refused uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped, s.refused
}
