// Package logagg is Flynn's log aggregator: hosts ship each job's output
// lines to it (POST /log, newline-delimited JSON), it keeps the most recent
// lines of every app in a fixed-size in-memory ring buffer, and it serves
// them (GET /log/{app}) as newline-delimited JSON or Server-Sent Events,
// in the shapes Flynn's log clients read, filtered by job, process type and
// stream, optionally following new lines live.
package logagg

import (
	"sync"

	"github.com/flynnrebuilt/flynn/api"
)

// DefaultBufferLines is how many lines each app keeps by default.
const DefaultBufferLines = 10000

// Filter selects log lines. Empty fields match everything.
type Filter struct {
	JobID       string
	ProcessType string
	// Streams, when not nil, is the set of streams to keep.
	Streams map[string]bool
}

func (f Filter) match(m *api.LogMessage) bool {
	return (f.JobID == "" || m.JobID == f.JobID) &&
		(f.ProcessType == "" || m.ProcessType == f.ProcessType) &&
		(f.Streams == nil || f.Streams[m.Stream])
}

// ring holds the last size lines of one app. Every line gets a sequence
// number; readers that follow keep a cursor (the next sequence number they
// want) and wait on a channel that is closed whenever lines are added, so
// ingestion never waits for a slow reader.
type ring struct {
	mu     sync.Mutex
	size   int
	buf    []api.LogMessage // grows up to size, then wraps
	start  int              // index of the oldest line once full
	next   uint64           // sequence number of the next line added
	notify chan struct{}
}

func newRing(size int) *ring {
	return &ring{size: size, notify: make(chan struct{})}
}

func (r *ring) add(msgs []api.LogMessage) {
	r.mu.Lock()
	for i := range msgs {
		if len(r.buf) < r.size {
			r.buf = append(r.buf, msgs[i])
		} else {
			r.buf[r.start] = msgs[i]
			r.start = (r.start + 1) % r.size
		}
	}
	r.next += uint64(len(msgs))
	close(r.notify)
	r.notify = make(chan struct{})
	r.mu.Unlock()
}

// at returns the i-th oldest line. Callers hold r.mu.
func (r *ring) at(i int) *api.LogMessage {
	return &r.buf[(r.start+i)%len(r.buf)]
}

// tail returns the last n lines matching f (all of them when n < 0), the
// cursor after them and a channel closed when more lines arrive.
func (r *ring) tail(f Filter, n int) ([]api.LogMessage, uint64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []api.LogMessage
	if n != 0 {
		// Walk back from the newest line, then reverse.
		for i := len(r.buf) - 1; i >= 0; i-- {
			if m := r.at(i); f.match(m) {
				out = append(out, *m)
				if n > 0 && len(out) == n {
					break
				}
			}
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, r.next, r.notify
}

// since returns the lines matching f from cursor on, the new cursor, a
// channel closed when more lines arrive, and how many lines the reader
// missed because they were overwritten before it read them.
func (r *ring) since(cursor uint64, f Filter) (out []api.LogMessage, next uint64, wait <-chan struct{}, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest := r.next - uint64(len(r.buf))
	if cursor < oldest {
		lost = oldest - cursor
		cursor = oldest
	}
	for i := int(cursor - oldest); i < len(r.buf); i++ {
		if m := r.at(i); f.match(m) {
			out = append(out, *m)
		}
	}
	return out, r.next, r.notify, lost
}

// Store is the set of per-app ring buffers.
type Store struct {
	size int
	mu   sync.RWMutex
	apps map[string]*ring
}

// NewStore returns a store keeping size lines per app (DefaultBufferLines
// when size <= 0).
func NewStore(size int) *Store {
	if size <= 0 {
		size = DefaultBufferLines
	}
	return &Store{size: size, apps: map[string]*ring{}}
}

// ring returns the buffer of app, creating it when create is set.
func (s *Store) ring(app string, create bool) *ring {
	s.mu.RLock()
	r := s.apps[app]
	s.mu.RUnlock()
	if r != nil || !create {
		return r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r = s.apps[app]; r == nil {
		r = newRing(s.size)
		s.apps[app] = r
	}
	return r
}

// Add stores msgs, which must be valid, in their apps' buffers.
func (s *Store) Add(msgs []api.LogMessage) {
	// Lines of one app usually come together; add runs of them at once.
	for i := 0; i < len(msgs); {
		j := i + 1
		for j < len(msgs) && msgs[j].AppID == msgs[i].AppID {
			j++
		}
		s.ring(msgs[i].AppID, true).add(msgs[i:j])
		i = j
	}
}

// Tail returns the last n lines of app matching f (all when n < 0).
func (s *Store) Tail(app string, f Filter, n int) []api.LogMessage {
	r := s.ring(app, false)
	if r == nil {
		return nil
	}
	out, _, _ := r.tail(f, n)
	return out
}
