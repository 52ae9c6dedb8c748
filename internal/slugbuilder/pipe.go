package slugbuilder

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// Archives are (de)compressed on one core while files are read or written
// on another: readAhead decompresses ahead of the tar reader that writes
// files, writeBehind compresses behind the tar writer that reads them.

const pipeBuf = 256 << 10

// readAhead reads r in its own goroutine, a few buffers ahead of Read.
// Close stops the goroutine and waits for it.
type readAhead struct {
	ch   chan []byte
	err  error // the error that ended the goroutine, set before ch closes
	cur  []byte
	stop chan struct{}
	once sync.Once
}

func newReadAhead(r io.Reader) *readAhead {
	ra := &readAhead{ch: make(chan []byte, 4), stop: make(chan struct{})}
	go func() {
		defer close(ra.ch)
		for {
			buf := make([]byte, pipeBuf)
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				select {
				case ra.ch <- buf[:n]:
				case <-ra.stop:
					ra.err = errors.New("read ahead: closed")
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					err = io.EOF
				}
				ra.err = err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		buf, ok := <-ra.ch
		if !ok {
			return 0, ra.err
		}
		ra.cur = buf
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops reading ahead and waits for the goroutine to end.
func (ra *readAhead) Close() error {
	ra.once.Do(func() { close(ra.stop) })
	for range ra.ch {
	}
	return nil
}

// writeBehind writes to w in its own goroutine, in buffers of pipeBuf
// bytes. Close flushes, waits for the goroutine and returns the first
// error writing to w.
type writeBehind struct {
	buf    []byte
	ch     chan []byte
	done   chan struct{}
	err    error // set by the goroutine before done closes
	failed atomic.Bool
}

func newWriteBehind(w io.Writer) *writeBehind {
	wb := &writeBehind{buf: make([]byte, 0, pipeBuf), ch: make(chan []byte, 4), done: make(chan struct{})}
	go func() {
		defer close(wb.done)
		for b := range wb.ch {
			if wb.err != nil {
				continue
			}
			if _, err := w.Write(b); err != nil {
				wb.err = err
				wb.failed.Store(true)
			}
		}
	}()
	return wb
}

func (wb *writeBehind) Write(p []byte) (int, error) {
	if wb.failed.Load() {
		return 0, errors.New("write behind: an earlier write failed")
	}
	n := len(p)
	for len(p) > 0 {
		k := copy(wb.buf[len(wb.buf):cap(wb.buf)], p)
		wb.buf, p = wb.buf[:len(wb.buf)+k], p[k:]
		if len(wb.buf) == cap(wb.buf) {
			wb.ch <- wb.buf
			wb.buf = make([]byte, 0, pipeBuf)
		}
	}
	return n, nil
}

// Close writes what is buffered and waits for all writes to end.
func (wb *writeBehind) Close() error {
	if len(wb.buf) > 0 {
		wb.ch <- wb.buf
		wb.buf = nil
	}
	close(wb.ch)
	<-wb.done
	return wb.err
}
