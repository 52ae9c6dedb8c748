package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// JobAttachUpgrade is the Upgrade header value that asks the controller's
// POST /apps/{app}/jobs to attach to the new one-off job. After the 101
// reply the connection carries Flynn's attach protocol in both directions
// (the frames below), as Flynn's clients speak it. (Host agents speak
// their own framing, AttachUpgrade; the controller translates.)
const JobAttachUpgrade = "flynn-attach/0"

// Frame types of Flynn's attach protocol.
const (
	// AttachError ends the stream: uint32 length, then the message.
	AttachError byte = 2
	// AttachData carries bytes of one stream: a stream byte
	// (AttachStdin, ...), a uint32 length and the bytes. A zero length
	// closes the stream (stdin EOF).
	AttachData byte = 3
	// AttachSignal (client to job) sends a signal: uint32 number.
	AttachSignal byte = 4
	// AttachExit ends the stream with the job's exit status: uint32.
	AttachExit byte = 5
	// AttachResize (client to job) sets the TTY size: uint16 height,
	// uint16 width.
	AttachResize byte = 6
)

// Streams of an AttachData frame.
const (
	AttachStdin   byte = 0
	AttachStdout  byte = 1
	AttachStderr  byte = 2
	AttachInitLog byte = 3
)

// AttachFrame is one frame of Flynn's attach protocol.
type AttachFrame struct {
	Type byte
	// Stream and Data are set for AttachData; Data is also the message
	// of AttachError.
	Stream byte
	Data   []byte
	// Value is the exit status (AttachExit) or signal (AttachSignal).
	Value int
	// Height and Width are set for AttachResize.
	Height, Width uint16
}

// WriteAttachData writes an AttachData frame (an empty p closes stream).
func WriteAttachData(w io.Writer, stream byte, p []byte) error {
	if len(p) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(p), MaxFrame)
	}
	buf := make([]byte, 6+len(p))
	buf[0], buf[1] = AttachData, stream
	binary.BigEndian.PutUint32(buf[2:6], uint32(len(p)))
	copy(buf[6:], p)
	_, err := w.Write(buf)
	return err
}

// WriteAttachValue writes an AttachExit or AttachSignal frame.
func WriteAttachValue(w io.Writer, typ byte, v int) error {
	var buf [5]byte
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:], uint32(v))
	_, err := w.Write(buf[:])
	return err
}

// WriteAttachError writes an AttachError frame.
func WriteAttachError(w io.Writer, msg string) error {
	if len(msg) > MaxFrame {
		msg = msg[:MaxFrame]
	}
	buf := make([]byte, 5+len(msg))
	buf[0] = AttachError
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(msg)))
	copy(buf[5:], msg)
	_, err := w.Write(buf)
	return err
}

// WriteAttachResize writes an AttachResize frame.
func WriteAttachResize(w io.Writer, height, width uint16) error {
	var buf [5]byte
	buf[0] = AttachResize
	binary.BigEndian.PutUint16(buf[1:3], height)
	binary.BigEndian.PutUint16(buf[3:5], width)
	_, err := w.Write(buf[:])
	return err
}

// ReadAttachFrame reads one frame of Flynn's attach protocol.
func ReadAttachFrame(r io.Reader) (*AttachFrame, error) {
	var typ [1]byte
	if _, err := io.ReadFull(r, typ[:]); err != nil {
		return nil, err
	}
	f := &AttachFrame{Type: typ[0]}
	var hdr [5]byte
	switch f.Type {
	case AttachData:
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, unexpected(err)
		}
		f.Stream = hdr[0]
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > MaxFrame {
			return nil, errors.New("attach frame too large")
		}
		f.Data = make([]byte, n)
		if _, err := io.ReadFull(r, f.Data); err != nil {
			return nil, unexpected(err)
		}
	case AttachError:
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return nil, unexpected(err)
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n > MaxFrame {
			return nil, errors.New("attach frame too large")
		}
		f.Data = make([]byte, n)
		if _, err := io.ReadFull(r, f.Data); err != nil {
			return nil, unexpected(err)
		}
	case AttachExit, AttachSignal:
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return nil, unexpected(err)
		}
		f.Value = int(binary.BigEndian.Uint32(hdr[:4]))
	case AttachResize:
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return nil, unexpected(err)
		}
		f.Height = binary.BigEndian.Uint16(hdr[0:2])
		f.Width = binary.BigEndian.Uint16(hdr[2:4])
	default:
		return nil, fmt.Errorf("unknown attach frame type %d", f.Type)
	}
	return f, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
