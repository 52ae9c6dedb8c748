package blobstore

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Tombstone records that the blob at Path was deleted, and the version of
// that delete: a copy of the blob modified at or before Deleted is dead,
// wherever it turns up (an instance that was down when the delete
// happened), and must not be served or copied again.
type Tombstone struct {
	Path    string    `json:"path"`
	Deleted time.Time `json:"deleted"`
}

// tombstoneFile is the name of the tombstone log in the state directory.
const tombstoneFile = "tombstones.jsonl"

// tombstones is an instance's record of deletes, kept for ttl. With a
// directory it is an append-only log of JSON lines there, compacted when
// it opens and when it has grown to twice its live entries.
type tombstones struct {
	ttl    time.Duration
	noSync bool

	mu    sync.Mutex
	m     map[string]time.Time // name (no leading slash) → delete version
	path  string               // log file; "" keeps them in memory only
	f     *os.File
	lines int // lines in the log
}

// openTombstones loads the tombstones kept in dir ("" for memory only),
// dropping those older than ttl.
func openTombstones(dir string, ttl time.Duration, noSync bool) (*tombstones, error) {
	t := &tombstones{ttl: ttl, noSync: noSync, m: map[string]time.Time{}}
	if dir == "" {
		return t, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create blobstore state dir: %w", err)
	}
	t.path = filepath.Join(dir, tombstoneFile)
	f, err := os.Open(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open tombstones: %w", err)
	default:
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			var ts Tombstone
			// A line cut short by a crash is skipped.
			if json.Unmarshal(sc.Bytes(), &ts) != nil || ts.Path == "" {
				continue
			}
			if ts.Deleted.After(t.m[ts.Path]) {
				t.m[ts.Path] = ts.Deleted
			}
		}
		err := sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read tombstones: %w", err)
		}
	}
	t.expireLocked(time.Now())
	if err := t.compactLocked(); err != nil {
		return nil, err
	}
	return t, nil
}

// get returns the version of the delete of name, if one is recorded.
func (t *tombstones) get(name string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.m[name]
	return at, ok
}

// dead reports whether a copy of name modified at mod was deleted.
func (t *tombstones) dead(name string, mod time.Time) bool {
	at, ok := t.get(name)
	return ok && !mod.After(at)
}

// add records a delete of name at version at (keeping the later of two).
func (t *tombstones) add(name string, at time.Time) error {
	at = at.UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.m[name]; ok && !at.After(old) {
		return nil
	}
	t.m[name] = at
	if t.f == nil {
		return nil
	}
	b, _ := json.Marshal(Tombstone{Path: name, Deleted: at})
	if _, err := t.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("record delete of %q: %w", "/"+name, err)
	}
	if !t.noSync {
		if err := t.f.Sync(); err != nil {
			return fmt.Errorf("record delete of %q: %w", "/"+name, err)
		}
	}
	t.lines++
	if t.lines > 2*len(t.m)+1000 {
		return t.compactLocked()
	}
	return nil
}

// list returns the live tombstones, sorted by path.
func (t *tombstones) list() []Tombstone {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Tombstone, 0, len(t.m))
	for name, at := range t.m {
		out = append(out, Tombstone{Path: "/" + name, Deleted: at})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// expire forgets the tombstones older than the ttl.
func (t *tombstones) expire(now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.expireLocked(now) == 0 {
		return nil
	}
	return t.compactLocked()
}

func (t *tombstones) expireLocked(now time.Time) int {
	n := 0
	for name, at := range t.m {
		if now.Sub(at) > t.ttl {
			delete(t.m, name)
			n++
		}
	}
	return n
}

// compactLocked rewrites the log with the live tombstones only, and
// reopens it for appending.
func (t *tombstones) compactLocked() error {
	if t.path == "" {
		return nil
	}
	tmp := t.path + ".new"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("compact tombstones: %w", err)
	}
	w := bufio.NewWriter(f)
	for name, at := range t.m {
		b, _ := json.Marshal(Tombstone{Path: name, Deleted: at})
		w.Write(append(b, '\n'))
	}
	err = w.Flush()
	if err == nil && !t.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, t.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact tombstones: %w", err)
	}
	if t.f != nil {
		t.f.Close()
	}
	t.f, err = os.OpenFile(t.path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.f = nil
		return fmt.Errorf("open tombstones: %w", err)
	}
	t.lines = len(t.m)
	return nil
}

// close closes the log.
func (t *tombstones) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}
