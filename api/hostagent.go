package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
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

// Attach frame types. A frame is one type byte, a big-endian uint32
// payload length and the payload.
const (
	// FrameStdin carries input to the job; an empty payload is EOF.
	FrameStdin byte = 0
	// FrameStdout and FrameStderr carry the job's output. A TTY job's
	// output is all on FrameStdout.
	FrameStdout byte = 1
	FrameStderr byte = 2
	// FrameExit ends the stream; its payload is a JSON HostJobExit.
	FrameExit byte = 3
	// FrameError ends the stream with an error message.
	FrameError byte = 4
	// FrameResize sets the TTY size: uint16 height, uint16 width.
	FrameResize byte = 5
)

// MaxFrame is the largest frame payload accepted.
const MaxFrame = 1 << 20

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
	Stream string    `json:"s"` // stdout or stderr
	Msg    string    `json:"m"`
}

// WriteFrame writes one attach frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one attach frame.
func ReadFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, errors.New("attach frame too large")
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return hdr[0], p, nil
}
