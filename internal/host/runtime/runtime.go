// Package runtime runs host jobs in containers: per job an overlayfs rootfs
// (image layers below, a per-job upper dir), a pinned network namespace
// attached with CNI, an OCI bundle run by runc, and a supervisor process
// (flynn-supervisor, or flynn-host supervise, in its own session; see
// package supervisor) that owns the container's
// stdio, writes its log and records its exit, so jobs outlive restarts of
// the agent. Runtime is the interface the agent uses; Runc is the real
// implementation and Fake an in-memory one for unit tests.
package runtime

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
)

// Errors a Runtime returns.
var (
	ErrNotFound   = errors.New("job not found")
	ErrExists     = errors.New("job exists")
	ErrNotRunning = errors.New("job is not running")
)

// Started describes a job that is running.
type Started struct {
	PID int
	// IP is the job's address on the bridge (empty with host network).
	IP string
	// HostPorts are the published host ports, one per Spec.Ports entry.
	HostPorts []int
	// Phases is how long each step of the start took, in order.
	Phases Phases
}

// A SpareKeeper is a Runtime that prepares for jobs ahead of demand (Runc:
// network namespaces) while the agent runs. KeepSpares returns when ctx
// ends, having removed what it prepared and no job took.
type SpareKeeper interface {
	KeepSpares(ctx context.Context, log *slog.Logger) error
}

// A Phase is one timed step of starting a job.
type Phase struct {
	Name string
	D    time.Duration
}

// Phases are the timed steps of a start.
type Phases []Phase

// Mark appends the phase name, timed from *since to now, and moves
// *since to now.
func (p *Phases) Mark(name string, since *time.Time) {
	now := time.Now()
	*p = append(*p, Phase{name, now.Sub(*since)})
	*since = now
}

// LogValue makes the phases one log group, name=duration.
func (p Phases) LogValue() slog.Value {
	attrs := make([]slog.Attr, len(p))
	for i, ph := range p {
		attrs[i] = slog.Duration(ph.Name, ph.D)
	}
	return slog.GroupValue(attrs...)
}

// AttachOptions say what an attach stream carries.
type AttachOptions struct {
	Stdin         bool
	Logs          bool
	Height, Width uint16
}

// Runtime runs jobs. Every method is safe for concurrent use.
type Runtime interface {
	// Start prepares and starts a job; on error nothing is left behind.
	Start(ctx context.Context, spec *Spec) (*Started, error)
	// Wait blocks until the job exits (or ctx ends) and returns how it
	// ended. It works for jobs started by an earlier agent process.
	Wait(ctx context.Context, id string) (*api.HostJobExit, error)
	// Signal sends sig to the job's process.
	Signal(ctx context.Context, id string, sig unix.Signal) error
	// Note adds one of the platform's lines about a running job (stream
	// api.LogInit) to its log; it does nothing once the job has exited,
	// so the exit stays the log's last line.
	Note(id, msg string) error
	// Attach opens a framed stream (api.WriteFrame/ReadFrame) to the
	// job: the caller writes stdin and resize frames and reads output
	// frames until an exit frame.
	Attach(ctx context.Context, id string, opts AttachOptions) (io.ReadWriteCloser, error)
	// Log opens the job's log (JSON lines of api.HostLogLine). With
	// follow the reader keeps returning new lines until the job has
	// exited and the log is read to its end.
	Log(ctx context.Context, id string, follow bool) (io.ReadCloser, error)
	// Cleanup frees what an exited job holds on the host (mounts,
	// network namespace, CNI state, cgroup, ports) but keeps its log.
	Cleanup(ctx context.Context, id string) error
	// Remove cleans a job up and deletes its log too.
	Remove(ctx context.Context, id string) error
}

// Total is the phases' sum.
func (p Phases) Total() time.Duration {
	var d time.Duration
	for _, ph := range p {
		d += ph.D
	}
	return d
}
