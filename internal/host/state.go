package host

import (
	"sync"

	bolt "go.etcd.io/bbolt"
)

// stateWriter writes job records to the state database in groups: a
// record queued while a commit is under way goes in the next commit,
// with every record queued by then, so concurrent starts share one
// fsync instead of queueing for one each. A record queued for a job
// replaces any of the job's not yet written (nil deletes it), so queueing
// in order under the agent's lock writes the job's latest state.
type stateWriter struct {
	db *bolt.DB

	mu      sync.Mutex
	cond    *sync.Cond
	pending map[string][]byte
	waiters []chan error
	busy    bool // a commit is under way
}

func newStateWriter(db *bolt.DB) *stateWriter {
	w := &stateWriter{db: db, pending: map[string][]byte{}}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// queue queues job id's record (nil: its deletion) and returns a function
// that waits until it is written and returns the commit's error.
func (w *stateWriter) queue(id string, b []byte) (wait func() error) {
	done := make(chan error, 1)
	w.mu.Lock()
	w.pending[id] = b
	w.waiters = append(w.waiters, done)
	w.mu.Unlock()
	return func() error { return w.wait(done) }
}

// wait commits the queued records unless another caller is doing so, and
// returns once done has its result.
func (w *stateWriter) wait(done chan error) error {
	w.mu.Lock()
	for {
		select {
		case err := <-done:
			w.mu.Unlock()
			return err
		default:
		}
		if w.busy {
			w.cond.Wait()
			continue
		}
		w.busy = true
		batch, waiters := w.pending, w.waiters
		w.pending, w.waiters = map[string][]byte{}, nil
		w.mu.Unlock()
		err := w.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketJobs)
			for id, rec := range batch {
				var err error
				if rec == nil {
					err = b.Delete([]byte(id))
				} else {
					err = b.Put([]byte(id), rec)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		for _, c := range waiters {
			c <- err
		}
		w.mu.Lock()
		w.busy = false
		w.cond.Broadcast()
	}
}
