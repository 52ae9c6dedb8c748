package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
)

// Fake is an in-memory Runtime for unit tests. A job "runs" until it is
// signalled (it then exits with 128+signal) or Exit is called. A job whose
// first argument is "fail" fails to start.
type Fake struct {
	mu   sync.Mutex
	jobs map[string]*fakeJob
	pid  int
	// Starts counts successful and failed Start calls.
	Starts int
	// FirstPort is the host port a job's first port is published on, the
	// next ports follow it (default 40000).
	FirstPort int
}

type fakeJob struct {
	spec *Spec
	exit *api.HostJobExit
	done chan struct{}
}

// NewFake returns an empty fake runtime.
func NewFake() *Fake { return &Fake{jobs: map[string]*fakeJob{}, pid: 1000} }

// Jobs returns the ids of the jobs the fake holds (not removed).
func (f *Fake) Jobs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.jobs {
		ids = append(ids, id)
	}
	return ids
}

// Exit ends a running job with the given result.
func (f *Fake) Exit(id string, e *api.HostJobExit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if j, ok := f.jobs[id]; ok && j.exit == nil {
		j.exit = e
		close(j.done)
	}
}

// Start implements Runtime.
func (f *Fake) Start(ctx context.Context, spec *Spec) (*Started, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Starts++
	if _, ok := f.jobs[spec.ID]; ok {
		return nil, ErrExists
	}
	if len(spec.Args) > 0 && spec.Args[0] == "fail" {
		return nil, fmt.Errorf("start job: exec %q: not found", spec.Args[0])
	}
	f.pid++
	f.jobs[spec.ID] = &fakeJob{spec: spec, done: make(chan struct{})}
	ports := make([]int, len(spec.Ports))
	for i := range ports {
		first := f.FirstPort
		if first == 0 {
			first = 40000
		}
		ports[i] = first + i
	}
	return &Started{PID: f.pid, IP: "100.64.0.2", HostPorts: ports}, nil
}

func (f *Fake) job(id string) (*fakeJob, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, ErrNotFound
	}
	return j, nil
}

// Wait implements Runtime.
func (f *Fake) Wait(ctx context.Context, id string) (*api.HostJobExit, error) {
	j, err := f.job(id)
	if err != nil {
		return nil, err
	}
	select {
	case <-j.done:
		return j.exit, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Signal implements Runtime.
func (f *Fake) Signal(ctx context.Context, id string, sig unix.Signal) error {
	j, err := f.job(id)
	if err != nil {
		return err
	}
	select {
	case <-j.done:
		return ErrNotRunning
	default:
	}
	f.Exit(id, &api.HostJobExit{ExitStatus: 128 + int(sig)})
	return nil
}

// Note implements Runtime: the fake keeps no log.
func (f *Fake) Note(id, msg string) error { return nil }

// Attach implements Runtime: the stream carries only the exit frame.
func (f *Fake) Attach(ctx context.Context, id string, o AttachOptions) (io.ReadWriteCloser, error) {
	j, err := f.job(id)
	if err != nil {
		return nil, err
	}
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		go io.Copy(io.Discard, b)
		<-j.done
		p, _ := json.Marshal(j.exit)
		api.WriteFrame(b, api.FrameExit, p)
	}()
	return a, nil
}

// Log implements Runtime: fake jobs log nothing.
func (f *Fake) Log(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	if _, err := f.job(id); err != nil {
		return nil, err
	}
	return io.NopCloser(strings.NewReader("")), nil
}

// Cleanup implements Runtime.
func (f *Fake) Cleanup(ctx context.Context, id string) error {
	_, err := f.job(id)
	return err
}

// Remove implements Runtime.
func (f *Fake) Remove(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.jobs[id]; !ok {
		return ErrNotFound
	}
	delete(f.jobs, id)
	return nil
}

var (
	_ Runtime = (*Fake)(nil)
	_ Runtime = (*Runc)(nil)
)

// Spec returns the spec a job was started with.
func (f *Fake) Spec(id string) (*Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, false
	}
	return j.spec, true
}
