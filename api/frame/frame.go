// Package frame is the attach stream's framing: one type byte, a
// big-endian uint32 payload length and the payload. It depends on nothing
// heavier than encoding/binary, so that the job supervisor (one small
// process per job) shares it with the api package rather than copy it.
package frame

import (
	"encoding/binary"
	"errors"
	"io"
	"strconv"
)

// Frame types.
const (
	// Stdin carries input to the job; an empty payload is EOF.
	Stdin byte = 0
	// Stdout and Stderr carry the job's output. A TTY job's output is all
	// on Stdout.
	Stdout byte = 1
	Stderr byte = 2
	// Exit ends the stream; its payload is a JSON api.HostJobExit.
	Exit byte = 3
	// Error ends the stream with an error message.
	Error byte = 4
	// Resize sets the TTY size: uint16 height, uint16 width.
	Resize byte = 5
)

// Max is the largest payload accepted.
const Max = 1 << 20

// Write writes one frame.
func Write(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > Max {
		return errors.New("frame of " + strconv.Itoa(len(payload)) + " bytes exceeds " + strconv.Itoa(Max))
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// Read reads one frame.
func Read(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > Max {
		return 0, nil, errors.New("attach frame too large")
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return hdr[0], p, nil
}
