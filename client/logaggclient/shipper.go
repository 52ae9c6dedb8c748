package logaggclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/flynnrebuilt/flynn/api"
)

// ShipperConfig tunes a Shipper. Zero values take the defaults.
type ShipperConfig struct {
	// ID names the shipper to the aggregators, which remember per shipper
	// the last line they stored from it. Random when empty; two shippers
	// must never share one.
	ID string
	// BatchSize is the most lines sent in one request (default 1000).
	BatchSize int
	// QueueSize and QueueBytes bound the lines held (default 10000 lines
	// and 16 MiB of messages). The newest lines are held even once sent,
	// so that an aggregator that restarts or appears gets those it lacks;
	// beyond the bounds the oldest are dropped.
	QueueSize  int
	QueueBytes int
	// MinBackoff and MaxBackoff bound the wait between failed attempts
	// (defaults 100 ms and 5 s).
	MinBackoff, MaxBackoff time.Duration
}

// Shipper sends log lines to every log aggregator instance in the
// background. Log never blocks: lines wait in a bounded queue, numbered in
// the shipper's own sequence, and each destination (SetDestinations) gets
// them in order, in batches, retried with backoff while it is
// unreachable; when the queue is full the oldest lines are dropped, so a
// slow aggregator never stalls the job writing them.
//
// Every request names the shipper and numbers its lines, and every reply
// says which line the aggregator wants next, so an aggregator stores each
// line once however often it is sent, and one that restarted, or copied
// its buffers from a peer, is sent exactly what it lacks while the queue
// still holds it.
type Shipper struct {
	cfg     ShipperConfig
	log     *slog.Logger
	changed chan struct{} // destinations changed; Run starts their senders

	mu      sync.Mutex
	ring    []entry // line n is at ring[n%len(ring)]
	first   uint64  // the held lines are first..next-1 (numbers from 1)
	next    uint64
	bytes   int
	dests   map[string]*dest
	logged  uint64
	refused uint64 // invalid at Log
	// goneDropped and goneRefused count for removed destinations.
	goneDropped, goneRefused uint64
	flushers                 int
	progress                 chan struct{} // closed when a destination advances
}

type entry struct {
	m    api.LogMessage
	size int
}

// dest is one aggregator and how far it got.
type dest struct {
	name string
	c    *Client
	wake chan struct{} // a line was logged

	// cancel stops the sender; nil until Run starts it.
	cancel  context.CancelFunc
	removed bool
	// cursor is the next line to send; 0 until the aggregator said
	// which it wants.
	cursor uint64
	// sending is the end of the batch in flight, 0 when none.
	sending uint64
	// floor: lines below it are not sent to this aggregator again (it
	// refused them).
	floor            uint64
	dropped, refused uint64
}

// NewShipper returns a shipper with no destination yet. Start it with Run
// and tell it where to send with SetDestinations (or Follow).
func NewShipper(cfg ShipperConfig, log *slog.Logger) *Shipper {
	if cfg.ID == "" {
		var b [16]byte
		rand.Read(b[:])
		cfg.ID = hex.EncodeToString(b[:])
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 10000
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 16 << 20
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	return &Shipper{
		cfg: cfg, log: log,
		changed:  make(chan struct{}, 1),
		ring:     make([]entry, cfg.QueueSize),
		first:    1,
		next:     1,
		dests:    map[string]*dest{},
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
	err := m.Validate()
	size := 128 + len(m.Msg) + len(m.AppID) + len(m.JobID) + len(m.ProcessType) + len(m.HostID) + len(m.Source)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logged++
	if err != nil {
		s.refused++
		return
	}
	for s.next-s.first == uint64(len(s.ring)) || (s.next > s.first && s.bytes+size > s.cfg.QueueBytes) {
		e := &s.ring[s.first%uint64(len(s.ring))]
		s.bytes -= e.size
		*e = entry{}
		s.first++
	}
	s.ring[s.next%uint64(len(s.ring))] = entry{m: m, size: size}
	s.bytes += size
	s.next++
	for _, d := range s.dests {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	if s.flushers > 0 {
		s.progressLocked()
	}
}

func (s *Shipper) progressLocked() {
	close(s.progress)
	s.progress = make(chan struct{})
}

// SetDestinations makes dests, keyed by a name such as the instance's
// address, the aggregators lines are sent to. A new one is first asked
// which line it wants, then sent every held line from there; one no longer
// named stops at once.
func (s *Shipper) SetDestinations(dests map[string]*Client) {
	s.mu.Lock()
	for name, d := range s.dests {
		if _, ok := dests[name]; ok {
			continue
		}
		d.removed = true
		if d.cancel != nil {
			d.cancel()
		}
		s.goneDropped += d.dropped + d.pendingDrops(s.first)
		s.goneRefused += d.refused
		delete(s.dests, name)
	}
	for name, c := range dests {
		if s.dests[name] == nil {
			s.dests[name] = &dest{name: name, c: c, wake: make(chan struct{}, 1)}
		}
	}
	s.progressLocked()
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Destinations returns the names of the destinations, sorted.
func (s *Shipper) Destinations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.dests))
}

// pendingDrops is how many lines d lacks that the shipper dropped already
// (counted into d.dropped when d moves past them).
func (d *dest) pendingDrops(first uint64) uint64 {
	pos := max(d.cursor, d.sending, d.floor)
	if d.cursor == 0 || pos >= first {
		return 0
	}
	return first - pos
}

// Run sends queued lines to the destinations until ctx is done, and
// returns once every sender it started has stopped. Lines still queued
// then are not sent; call Flush first to wait for them. Call Run once.
func (s *Shipper) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s.mu.Lock()
		for _, d := range s.dests {
			if d.cancel != nil {
				continue
			}
			dctx, cancel := context.WithCancel(ctx)
			d.cancel = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cancel()
				s.send(dctx, d)
			}()
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		}
	}
}

// send delivers lines to d until ctx is done.
func (s *Shipper) send(ctx context.Context, d *dest) {
	log := s.log.With("aggregator", d.name)
	backoff := s.cfg.MinBackoff
	for {
		batch, from, oldest, ok := s.take(ctx, d)
		if !ok {
			return
		}
		res, err := d.c.ship(ctx, s.cfg.ID, oldest, batch)
		if err == nil {
			backoff = s.cfg.MinBackoff
			s.ack(d, from, len(batch), res.Next, log)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if len(batch) > 0 && (errors.Is(err, api.ErrValidation) || errors.Is(err, api.ErrTooLarge)) {
			// Lines are validated before they are queued, so this is a
			// version mismatch; sending them again would fail the same
			// way.
			log.Warn("log aggregator refused a batch", "err", err, "lines", len(batch))
			s.refuse(d, from, len(batch))
			continue
		}
		if errors.Is(err, api.ErrUnauthorized) {
			log.Warn("log aggregator refused the key, will retry", "err", err, "backoff", backoff)
		} else {
			log.Debug("log aggregator unreachable, will retry", "err", err, "backoff", backoff)
		}
		s.mu.Lock()
		d.sending = 0
		s.mu.Unlock()
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// take returns the next batch for d, from line from on, and the oldest
// line d can still be sent, waiting for lines when d has them all. An
// empty batch asks d which line it wants. ok is false when d's sender
// should stop.
func (s *Shipper) take(ctx context.Context, d *dest) (batch []api.LogShipped, from, oldest uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if d.removed || ctx.Err() != nil {
			return nil, 0, 0, false
		}
		oldest = max(s.first, d.floor)
		if d.cursor == 0 {
			return nil, 0, oldest, true
		}
		if d.cursor < oldest {
			d.dropped += d.pendingDrops(s.first)
			d.cursor = oldest
		}
		if d.cursor < s.next {
			end := min(s.next, d.cursor+uint64(s.cfg.BatchSize))
			batch = make([]api.LogShipped, 0, end-d.cursor)
			for n := d.cursor; n < end; n++ {
				batch = append(batch, api.LogShipped{LogMessage: s.ring[n%uint64(len(s.ring))].m, Seq: n})
			}
			d.sending = end
			return batch, d.cursor, oldest, true
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-d.wake:
		}
		s.mu.Lock()
	}
}

// ack records d's reply to a batch of n lines from line from (an empty
// batch asked which line it wants): next is the line it wants now.
func (s *Shipper) ack(d *dest, from uint64, n int, next uint64, log *slog.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.sending = 0
	switch {
	case next == 0:
		// An aggregator that does not number lines: send on.
		if from == 0 {
			from = s.first
		}
		d.cursor = from + uint64(n)
	case next > s.next:
		log.Warn("log aggregator holds lines this shipper never sent; is the shipper id shared?", "id", s.cfg.ID, "next", next, "logged", s.next-1)
		d.cursor = s.next
	default:
		d.cursor = next
	}
	if low := max(s.first, d.floor); d.cursor < low {
		// It lacks lines the shipper dropped (or it refused).
		if d.cursor < s.first {
			d.dropped += s.first - d.cursor
		}
		d.cursor = low
	}
	s.progressLocked()
}

// refuse gives up the n lines from line from for d, which refused them.
func (s *Shipper) refuse(d *dest, from uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.sending = 0
	d.refused += uint64(n)
	d.floor = max(d.floor, from+uint64(n))
	d.cursor = d.floor
	s.progressLocked()
}

// Flush waits until every line given to Log before the call has reached
// every destination (or was dropped before it could), or ctx is done.
// With no destination it waits for one.
func (s *Shipper) Flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	target := s.next - 1
	s.flushers++
	defer func() { s.flushers-- }()
	for !s.flushedLocked(target) {
		wait := s.progress
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		case <-wait:
		}
		s.mu.Lock()
	}
	return nil
}

// flushedLocked reports whether every destination has line target or
// cannot get it any more.
func (s *Shipper) flushedLocked(target uint64) bool {
	if target == 0 {
		return true
	}
	if len(s.dests) == 0 {
		return false
	}
	for _, d := range s.dests {
		switch {
		case d.cursor == 0:
			return false
		case d.cursor > target:
		case d.sending == 0 && max(s.first, d.floor) > target:
		default:
			return false
		}
	}
	return true
}

// Stats reports how many lines were dropped before a destination got
// them (the queue was full; counted once per destination) and how many
// were refused as invalid (by Log, or by an aggregator).
func (s *Shipper) Stats() (dropped, refused uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped, refused = s.goneDropped, s.refused+s.goneRefused
	for _, d := range s.dests {
		dropped += d.dropped + d.pendingDrops(s.first)
		refused += d.refused
	}
	return dropped, refused
}

// Finder lists a discoverd service's live instances;
// *discoverdclient.Client is one.
type Finder interface {
	Instances(ctx context.Context, service string) ([]*api.Instance, error)
}

// Follow keeps the shipper's destinations to the live instances of
// service, looked up with f every interval, until ctx is done. newClient
// makes the client of an instance from its address. A failed lookup
// leaves the destinations as they are.
func (s *Shipper) Follow(ctx context.Context, f Finder, service string, interval time.Duration, newClient func(addr string) *Client) {
	clients := map[string]*Client{}
	for {
		insts, err := f.Instances(ctx, service)
		switch {
		case err == nil:
			next := make(map[string]*Client, len(insts))
			for _, in := range insts {
				c := clients[in.Addr]
				if c == nil {
					c = newClient(in.Addr)
				}
				next[in.Addr] = c
			}
			clients = next
			s.SetDestinations(clients)
		case errors.Is(err, api.ErrNotFound):
			// No aggregator was ever registered.
			clients = map[string]*Client{}
			s.SetDestinations(clients)
		case ctx.Err() == nil:
			s.log.Debug("cannot look up the log aggregators", "service", service, "err", err)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ship sends lines numbered by shipper id (an empty batch asks which line
// the aggregator wants); oldest is the oldest line the shipper holds.
func (c *Client) ship(ctx context.Context, id string, oldest uint64, lines []api.LogShipped) (api.LogIngestResult, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range lines {
		if err := enc.Encode(&lines[i]); err != nil {
			return api.LogIngestResult{}, fmt.Errorf("encode log line: %w", err)
		}
	}
	req, err := c.hc.NewRequest(ctx, http.MethodPost, "/log", &buf)
	if err != nil {
		return api.LogIngestResult{}, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set(api.LogShipperHeader, id)
	req.Header.Set(api.LogOldestHeader, strconv.FormatUint(oldest, 10))
	res, err := c.hc.Send(req)
	if err != nil {
		return api.LogIngestResult{}, fmt.Errorf("ship %d log lines: %w", len(lines), err)
	}
	defer res.Body.Close()
	var out api.LogIngestResult
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return api.LogIngestResult{}, fmt.Errorf("ship log lines: decode reply: %w", err)
	}
	return out, nil
}
