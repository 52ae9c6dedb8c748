package slugbuilder

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
	"testing/iotest"
)

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after -= len(p); f.after < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestPipes(t *testing.T) {
	data := make([]byte, 3*pipeBuf+123)
	rand.New(rand.NewSource(1)).Read(data)

	t.Run("read ahead", func(t *testing.T) {
		ra := newReadAhead(iotest.HalfReader(bytes.NewReader(data)))
		got, err := io.ReadAll(ra)
		ra.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(data))
		}
	})
	t.Run("read ahead error", func(t *testing.T) {
		ra := newReadAhead(io.MultiReader(bytes.NewReader(data[:1000]), iotest.ErrReader(errors.New("broken"))))
		got, err := io.ReadAll(ra)
		ra.Close()
		if len(got) != 1000 || err == nil || err.Error() != "broken" {
			t.Fatalf("read %d bytes, err %v; want 1000 and broken", len(got), err)
		}
	})
	t.Run("read ahead closed early", func(t *testing.T) {
		ra := newReadAhead(bytes.NewReader(data))
		buf := make([]byte, 10)
		if _, err := ra.Read(buf); err != nil {
			t.Fatal(err)
		}
		ra.Close() // must not hang with the goroutine blocked on a full channel
	})
	t.Run("write behind", func(t *testing.T) {
		var out bytes.Buffer
		wb := newWriteBehind(&out)
		for p := data; len(p) > 0; p = p[min(len(p), 1000):] {
			wb.Write(p[:min(len(p), 1000)])
		}
		if err := wb.Close(); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("wrote %d bytes, err %v; want %d", out.Len(), err, len(data))
		}
	})
	t.Run("write behind error", func(t *testing.T) {
		wb := newWriteBehind(&failWriter{after: pipeBuf})
		wb.Write(data)
		if err := wb.Close(); err == nil || err.Error() != "disk full" {
			t.Fatalf("Close = %v, want disk full", err)
		}
	})
}
