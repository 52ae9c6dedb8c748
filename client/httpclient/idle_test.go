package httpclient

import (
	"errors"
	"io"
	"testing"
	"time"
)

// TestEventReaderIdleTimeout: a stream that goes quiet, keep-alives
// included, ends with ErrStreamIdle; one that keeps sending comments does
// not.
func TestEventReaderIdleTimeout(t *testing.T) {
	pr, pw := io.Pipe()
	er := NewEventReader(pr).WithIdleTimeout(300 * time.Millisecond)
	go func() {
		for range 5 {
			pw.Write([]byte(": keep-alive\n"))
			time.Sleep(100 * time.Millisecond)
		}
		pw.Write([]byte("data: one\n\n"))
		// Then nothing, and no close: a vanished server.
	}()
	ev, err := er.Next()
	if err != nil || string(ev.Data) != "one" {
		t.Fatalf("first event after keep-alives longer than the timeout in all: %v %v", ev, err)
	}
	if _, err := er.Next(); !errors.Is(err, ErrStreamIdle) {
		t.Fatalf("quiet stream: %v, want ErrStreamIdle", err)
	}
	er.Close()
}
