package logagg

import (
	"slices"
	"strings"
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

// MaxShippers bounds the shippers a store remembers the last line of.
// Beyond it the one that sent least recently is forgotten; should it ever
// send again, it is asked for every line it still holds, which this
// instance may then hold twice.
const MaxShippers = 4096

// Store is the set of per-app ring buffers, and for every shipper the
// number of the last line stored from it (its mark).
type Store struct {
	size int

	// wmu serializes writers and snapshots, so that a snapshot's marks
	// match its lines and a line is checked against its shipper's mark
	// and stored in one step.
	wmu   sync.Mutex
	marks map[string]*mark
	clock uint64 // orders marks by last use

	mu   sync.RWMutex
	apps map[string]*ring
}

// mark is the last line stored from one shipper.
type mark struct {
	last uint64
	used uint64 // Store.clock at the last use
}

// NewStore returns a store keeping size lines per app (DefaultBufferLines
// when size <= 0).
func NewStore(size int) *Store {
	if size <= 0 {
		size = DefaultBufferLines
	}
	return &Store{size: size, apps: map[string]*ring{}, marks: map[string]*mark{}}
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
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.addLocked(msgs)
}

// addLocked is Add; the caller holds s.wmu.
func (s *Store) addLocked(msgs []api.LogMessage) {
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

// AddShipped stores lines, which must be valid, numbered by shipper, in
// the shipper's order, each once:
//   - a line at or below the shipper's mark is held already and skipped;
//   - the line after the mark is stored;
//   - a line further on leaves a gap, which is taken only when the shipper
//     no longer holds the lines in between (they are below oldest, the
//     oldest line it holds); otherwise AddShipped stops there, so that the
//     shipper sends them first.
//
// Lines without a number (0), and every line when shipper is empty, are
// stored as they come. AddShipped returns how many of lines it went
// through (stored or skipped) and the number of the line it wants next
// from the shipper.
func (s *Store) AddShipped(shipper string, oldest uint64, lines []api.LogShipped) (done int, next uint64) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var mk *mark
	if shipper != "" {
		mk = s.markLocked(shipper, len(lines) > 0)
	}
	keep := make([]api.LogMessage, 0, len(lines))
	for ; done < len(lines); done++ {
		l := &lines[done]
		if mk != nil && l.Seq != 0 {
			switch {
			case l.Seq <= mk.last:
				continue // held already
			case l.Seq == mk.last+1, l.Seq <= oldest:
				mk.last = l.Seq
			default:
				s.addLocked(keep)
				return done, mk.last + 1
			}
		}
		keep = append(keep, l.LogMessage)
	}
	s.addLocked(keep)
	if mk == nil {
		return done, 1
	}
	return done, mk.last + 1
}

// markLocked returns shipper's mark, created (forgetting the least recently
// used one beyond MaxShippers) when create is set; a missing mark is a
// zero one. The caller holds s.wmu.
func (s *Store) markLocked(shipper string, create bool) *mark {
	s.clock++
	mk := s.marks[shipper]
	if mk == nil {
		if !create {
			return &mark{}
		}
		if len(s.marks) >= MaxShippers {
			var oldest string
			for id, m := range s.marks {
				if oldest == "" || m.used < s.marks[oldest].used {
					oldest = id
				}
			}
			delete(s.marks, oldest)
		}
		mk = &mark{}
		s.marks[shipper] = mk
	}
	mk.used = s.clock
	return mk
}

// appLines are one app's buffered lines, oldest first.
type appLines struct {
	app   string
	lines []api.LogMessage
}

// snapshot returns the shippers' marks and every app's lines, oldest
// first, apps by name, taken together: the lines hold every line up to
// each mark that is still buffered, and no later one.
func (s *Store) snapshot() (map[string]uint64, []appLines) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	marks := make(map[string]uint64, len(s.marks))
	for id, mk := range s.marks {
		marks[id] = mk.last
	}
	s.mu.RLock()
	apps := make([]appLines, 0, len(s.apps))
	for app, r := range s.apps {
		r.mu.Lock()
		lines := make([]api.LogMessage, len(r.buf))
		for i := range lines {
			lines[i] = *r.at(i)
		}
		r.mu.Unlock()
		if len(lines) > 0 {
			apps = append(apps, appLines{app, lines})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(apps, func(a, b appLines) int { return strings.Compare(a.app, b.app) })
	return marks, apps
}

// setMarks sets the shippers' marks (after the lines of a snapshot were
// added).
func (s *Store) setMarks(marks map[string]uint64) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for id, last := range marks {
		if api.ValidLogShipperID(id) {
			s.markLocked(id, true).last = last
		}
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
