package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// Spares: attaching a namespace to the bridge takes CNI's plugins (bridge
// and host-local, two execs) and the kernel's veth set-up, most of a job's
// start besides runc. KeepSpares does that ahead of demand: it keeps
// Config.Spares namespaces attached, no ports, that Attach hands to jobs
// (publishing their ports, if any, then). A spare is pinned and known to
// CNI under a key longer than any job id, so no job's namespace is named
// like it; the job that takes one records its key in taken/<job id>, its
// pin moves to where the job's namespace is pinned (netns/<job id>), and
// Detach detaches that key. Spares are made (at spareNice) once no job is
// starting (see Hold and waitQuiet): the one a start took is made again
// as soon as it is done, so nearly every start finds one (50 starts back
// to back: the network phase went from 18 ms to 1-3 ms a job). Not while
// a job starts, though one core looks free then: runc uses both at times,
// and a spare made meanwhile (about 13 ms of CPU in CNI's plugins) made
// the start 1.6x bare runc's time instead of 1.35x
// (BenchmarkStartSequential). While several jobs start at once, and for
// spareQuiet after, none is made either: making one then slows the starts
// under way about as much as it saves a later one, so a burst uses the
// spares up, then has namespaces attached as it goes. A host whose starts
// never stop for spareMaxWait gets one made all the same, one each
// spareMaxWait. Spares no job took are detached when KeepSpares returns,
// and those a killed agent left behind by the next KeepSpares.

// DefaultSpares is how many spare namespaces KeepSpares keeps by default.
const DefaultSpares = 8

// spareNice is the nice value spares are made at.
const spareNice = 10

// spareQuiet is how long after starts overlapped no spare is made.
const spareQuiet = 50 * time.Millisecond

// spareMaxWait is the longest a missing spare waits for a quiet host: a
// host that always has a job starting gets its spares made all the same
// (its starts would otherwise all attach their namespace inline).
const spareMaxWait = time.Second

// spareRetry is how long KeepSpares waits after failing to make a spare.
const spareRetry = 5 * time.Second

// A spare is a namespace attached to the bridge (no ports published).
type spare struct {
	key  string       // its CNI container id and the name of its pin
	ip   string       // its address
	prev types.Result // the bridge's result, as CNI gave it
}

const spareKeyPrefix = "spare-"

// newSpareKey is a new spare's key: 70 characters, where job ids have at
// most 64.
func newSpareKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return spareKeyPrefix + hex.EncodeToString(b)
}

func isSpareKey(name string) bool {
	return strings.HasPrefix(name, spareKeyPrefix) && len(name) > 64
}

// Hold tells KeepSpares a job is starting, until release is called (see
// waitQuiet).
func (m *Manager) Hold() (release func()) {
	m.spareMu.Lock()
	m.starting++
	if m.starting > 1 {
		m.lastBusy = time.Now()
	}
	m.spareMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.spareMu.Lock()
			if m.starting > 1 {
				m.lastBusy = time.Now()
			}
			m.starting--
			if m.starting == 0 {
				select {
				case m.startsDone <- struct{}{}:
				default: // one wake-up is enough
				}
			}
			m.spareMu.Unlock()
		})
	}
}

// waitQuiet waits until a spare may be made: once no job is starting, and
// none has been starting at the same time as another for spareQuiet, or
// after m.spareMaxWait at the latest. False when ctx ended first.
func (m *Manager) waitQuiet(ctx context.Context) bool {
	giveUp := time.Now().Add(m.spareMaxWait)
	for {
		m.spareMu.Lock()
		starting := m.starting
		wait := spareQuiet - time.Since(m.lastBusy)
		m.spareMu.Unlock()
		left := time.Until(giveUp)
		var after <-chan time.Time
		switch {
		case left <= 0:
			return true
		case starting > 0: // until the last start is done
			after = time.After(left)
		case wait <= 0:
			return true
		default:
			after = time.After(min(wait, left))
		}
		select {
		case <-ctx.Done():
			return false
		case <-m.startsDone:
		case <-after:
		}
	}
}

// takenFile records which spare job id took.
func (m *Manager) takenFile(id string) string {
	return filepath.Join(m.cfg.StateDir, "taken", id)
}

// takeSpare hands job id the oldest spare and records it as the job's; nil
// when there is none ready.
func (m *Manager) takeSpare(id string) (*spare, error) {
	m.spareMu.Lock()
	var sp *spare
	if len(m.spares) > 0 {
		sp = m.spares[0]
		m.spares = m.spares[1:]
	}
	m.spareMu.Unlock()
	select {
	case m.spareWant <- struct{}{}:
	default:
	}
	if sp == nil {
		return nil, nil
	}
	// Written aside under a name no job id has (ids start with a
	// letter or digit), then renamed.
	f := m.takenFile(id)
	tmp := filepath.Join(filepath.Dir(f), "."+id)
	err := os.WriteFile(tmp, []byte(sp.key+"\n"), 0o600)
	if err == nil {
		err = os.Rename(tmp, f)
	}
	if err != nil {
		os.Remove(tmp)
		m.detachKey(context.Background(), sp.key, "", nil, nil)
		return nil, fmt.Errorf("take a spare namespace: %w", err)
	}
	return sp, nil
}

// KeepSpares keeps Config.Spares namespaces attached for Attach to hand
// out, making a new one whenever one is taken, until ctx ends; it then
// detaches those left and returns. It first detaches the spares an
// earlier process left (one that was killed). Failures to make a spare
// are logged and retried; jobs meanwhile get namespaces made for them.
// Call it once per Manager.
func (m *Manager) KeepSpares(ctx context.Context, log *slog.Logger) error {
	if m.cfg.Spares < 0 {
		return nil
	}
	// Spares are made at a lower priority than jobs start: on this
	// thread, which the CNI plugins it runs inherit, and which ends with
	// the call (it is not unlocked).
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), spareNice)
	if err := m.removeStraySpares(context.WithoutCancel(ctx)); err != nil {
		log.Error("remove spare network namespaces left behind", "err", err)
	}
	for ctx.Err() == nil {
		m.spareMu.Lock()
		n := len(m.spares)
		m.spareMu.Unlock()
		if n >= m.cfg.Spares {
			select {
			case <-ctx.Done():
			case <-m.spareWant:
			}
			continue
		}
		if !m.waitQuiet(ctx) {
			break
		}
		sp, err := m.attachBridge(ctx, newSpareKey())
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.Warn("make a spare network namespace", "err", err, "retry_in", spareRetry)
			select {
			case <-ctx.Done():
			case <-time.After(spareRetry):
			}
			continue
		}
		m.spareMu.Lock()
		m.spares = append(m.spares, sp)
		m.spareMu.Unlock()
	}
	m.spareMu.Lock()
	left := m.spares
	m.spares = nil
	m.spareMu.Unlock()
	keys := make([]string, len(left))
	for i, sp := range left {
		keys[i] = sp.key
	}
	if err := m.detachSpares(context.WithoutCancel(ctx), keys); err != nil {
		return fmt.Errorf("remove spare network namespaces: %w", err)
	}
	return nil
}

// removeStraySpares detaches the spares pinned in the state dir that no
// job took.
func (m *Manager) removeStraySpares(ctx context.Context) error {
	taken := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(m.cfg.StateDir, "taken"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		f := filepath.Join(m.cfg.StateDir, "taken", e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			os.Remove(f) // written aside, never taken
			continue
		}
		if b, err := os.ReadFile(f); err == nil {
			taken[strings.TrimSpace(string(b))] = true
		}
	}
	ents, err = os.ReadDir(filepath.Join(m.cfg.StateDir, "netns"))
	if err != nil {
		return err
	}
	var stray []string
	for _, e := range ents {
		if isSpareKey(e.Name()) && !taken[e.Name()] {
			stray = append(stray, e.Name())
		}
	}
	return m.detachSpares(ctx, stray)
}

// detachSpares detaches spares, a few at a time.
func (m *Manager) detachSpares(ctx context.Context, keys []string) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 4)
	)
	for _, key := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := m.detachKey(ctx, key, "", nil, nil); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
