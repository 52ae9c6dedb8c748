package host_test

import (
	"archive/tar"
	"bytes"
	"io"
	"sync"

	"github.com/flynnrebuilt/flynn/internal/image"
)

type tarWriter struct{ tw *tar.Writer }

func newTarWriter(w io.Writer) *tarWriter { return &tarWriter{tar.NewWriter(w)} }

func (t *tarWriter) file(name, body string) {
	t.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	t.tw.Write([]byte(body))
}

func (t *tarWriter) close() { t.tw.Close() }

func imageDigest(file string) (string, error) { return image.FileDigest(file) }

// safeBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ioCopy(w io.Writer, r io.Reader) { io.Copy(w, r) }
