package router

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestRawIO: rawIO reads and writes as net.Conn does: data both ways at
// once, a write bigger than the socket buffers (it waits for the peer to
// read), EOF, a read deadline (a timeout error), a read cut short by
// Close (net.ErrClosed), and a write to a reset connection.
func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawIO(a)
	if ra == nil {
		t.Fatal("no rawIO for a TCP connection")
	}
	if newRawIO(struct{ net.Conn }{a}) != nil {
		t.Fatal("a rawIO for a connection that is not *net.TCPConn")
	}

	// 8 MiB each way at once: both writes fill the buffers and wait.
	big := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	got := make(chan []byte, 2)
	go func() {
		b2, _ := io.ReadAll(io.LimitReader(b, int64(len(big))))
		got <- b2
	}()
	go func() {
		b2, _ := io.ReadAll(io.LimitReader(ra, int64(len(big))))
		got <- b2
	}()
	werr := make(chan error, 1)
	go func() {
		_, err := b.Write(big)
		werr <- err
	}()
	if n, err := ra.Write(big); err != nil || n != len(big) {
		t.Fatalf("rawIO write: %d, %v", n, err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if g := <-got; !bytes.Equal(g, big) {
			t.Fatalf("read %d bytes, want the %d written", len(g), len(big))
		}
	}
	if n, err := ra.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty write: %d, %v", n, err)
	}
	if n, err := ra.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}

	// A read deadline ends a read with a timeout, as net.Conn's does.
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var buf [16]byte
	_, err := ra.Read(buf[:])
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v", err)
	}
	a.SetReadDeadline(time.Time{})

	// The peer's close is EOF, after what it sent.
	b.Write([]byte("bye"))
	b.(*net.TCPConn).CloseWrite()
	if r, err := io.ReadAll(ra); err != nil || string(r) != "bye" {
		t.Fatalf("read to EOF: %q, %v", r, err)
	}
	if n, err := ra.Read(buf[:]); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF: %d, %v", n, err)
	}

	// Close ends a read under way.
	c, _ := tcpPair(t)
	rc := newRawIO(c)
	rerr := make(chan error, 1)
	go func() {
		_, err := rc.Read(buf[:])
		rerr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-rerr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read ended by Close: %v", err)
	}
	if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}

	// Writing to a connection the peer reset fails, as an *net.OpError.
	e, f := tcpPair(t)
	f.(*net.TCPConn).SetLinger(0)
	f.Close()
	re := newRawIO(e)
	var oe *net.OpError
	for i := 0; ; i++ {
		_, err := re.Write([]byte("x"))
		if err != nil {
			if !errors.As(err, &oe) || oe.Op != "write" {
				t.Fatalf("write to a reset connection: %T %v", err, err)
			}
			break
		}
		if i == 100 {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
