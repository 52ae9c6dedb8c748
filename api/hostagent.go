package api

import (
	"io"
	"time"

	"github.com/flynnrebuilt/flynn/api/frame"
)

// AttachUpgrade is the protocol a POST /attach upgrades to. After the 101
// reply both sides exchange frames (WriteFrame/ReadFrame).
const AttachUpgrade = "flynn-attach/1"

// AttachRequest is the body of POST /attach.
type AttachRequest struct {
	JobID string `json:"job_id"`
	// Stdin forwards FrameStdin frames to the job (it must have been
	// created with config.stdin or config.tty).
	Stdin bool `json:"stdin,omitempty"`
	// Logs replays the job's output so far before streaming.
	Logs bool `json:"logs,omitempty"`
	// Height and Width set the TTY size of a TTY job.
	Height uint16 `json:"height,omitempty"`
	Width  uint16 `json:"width,omitempty"`
}

// Attach frame types (package frame). A frame is one type byte, a
// big-endian uint32 payload length and the payload.
const (
	// FrameStdin carries input to the job; an empty payload is EOF.
	FrameStdin = frame.Stdin
	// FrameStdout and FrameStderr carry the job's output. A TTY job's
	// output is all on FrameStdout.
	FrameStdout = frame.Stdout
	FrameStderr = frame.Stderr
	// FrameExit ends the stream; its payload is a JSON HostJobExit.
	FrameExit = frame.Exit
	// FrameError ends the stream with an error message.
	FrameError = frame.Error
	// FrameResize sets the TTY size: uint16 height, uint16 width.
	FrameResize = frame.Resize
)

// MaxFrame is the largest frame payload accepted.
const MaxFrame = frame.Max

// HostJobExit is how a job ended.
type HostJobExit struct {
	ExitStatus int  `json:"exit_status"`
	OOM        bool `json:"oom,omitempty"`
	// Error is set when the job could not run or its end was not seen.
	Error string `json:"error,omitempty"`
}

// HostLogLine is one line of a job's log: GET /host/jobs/{id}/log sends
// them as JSON lines.
type HostLogLine struct {
	Time   time.Time `json:"t"`
	Stream string    `json:"s"` // stdout, stderr or init (LogInit)
	Msg    string    `json:"m"`
}

// WriteFrame writes one attach frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error { return frame.Write(w, typ, payload) }

// ReadFrame reads one attach frame.
func ReadFrame(r io.Reader) (byte, []byte, error) { return frame.Read(r) }
