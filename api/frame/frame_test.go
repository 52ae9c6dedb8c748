package frame

import (
	"bytes"
	"io"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	Write(&buf, Stdout, []byte("out"))
	Write(&buf, Resize, []byte{0, 24, 0, 80})
	Write(&buf, Stdin, nil)
	if !bytes.Equal(buf.Bytes()[:8], []byte{Stdout, 0, 0, 0, 3, 'o', 'u', 't'}) {
		t.Fatalf("wire bytes % x", buf.Bytes()[:8])
	}
	for _, want := range []struct {
		typ byte
		p   []byte
	}{{Stdout, []byte("out")}, {Resize, []byte{0, 24, 0, 80}}, {Stdin, []byte{}}} {
		typ, p, err := Read(&buf)
		if err != nil || typ != want.typ || !bytes.Equal(p, want.p) {
			t.Fatalf("read %d %q %v, want %d %q", typ, p, err, want.typ, want.p)
		}
	}
	if _, _, err := Read(&buf); err != io.EOF {
		t.Fatalf("read past the end: %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	if err := Write(io.Discard, Stdout, make([]byte, Max+1)); err == nil {
		t.Fatal("a payload over Max written")
	}
	// A header announcing more than Max is refused before reading it.
	if _, _, err := Read(bytes.NewReader([]byte{Stdout, 0, 0x10, 0, 1})); err == nil {
		t.Fatal("a frame over Max read")
	}
	if _, _, err := Read(bytes.NewReader([]byte{Stdout, 0, 0, 0, 9, 'x'})); err != io.ErrUnexpectedEOF {
		t.Fatalf("a cut frame: %v", err)
	}
}
