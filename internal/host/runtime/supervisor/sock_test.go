package supervisor

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestUnixSocket(t *testing.T) {
	addr := "@flynn-supervisor-test-" + strconv.Itoa(os.Getpid())
	l, err := listenUnix(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := listenUnix(addr); err == nil || err.Error() != "listen unix "+addr+": bind: address already in use" {
		t.Errorf("second listen: %v", err)
	}

	// A connection: data both ways, a read deadline, the peer's credentials.
	nc, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fd, err := accept(l)
	if err != nil {
		t.Fatal(err)
	}
	if cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err != nil || int(cred.Pid) != os.Getpid() {
		t.Errorf("peer credentials %+v, %v", cred, err)
	}
	c := os.NewFile(uintptr(fd), "client")
	defer c.Close()
	nc.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("read %q, %v", buf, err)
	}
	c.Write([]byte("pong"))
	if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "pong" {
		t.Errorf("client read %q, %v", buf, err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	nc.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read after the client closed: %d, %v", n, err)
	}

	// Accept waits for the deadline, or until the listener is closed.
	l.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := accept(l); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("accept past the deadline: %v", err)
	}
	l.SetDeadline(time.Time{})
	done := make(chan error)
	go func() {
		_, err := accept(l)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("accept on a closed listener succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("accept still waits after the listener was closed")
	}
}

func TestRecvFD(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sent := make(chan struct{})
	defer func() { <-sent }()
	rights := unix.UnixRights(int(f.Fd()))
	go func() {
		// As runc sends the pty master.
		defer close(sent)
		nc, err := net.Dial("unix", sock)
		if err != nil {
			return
		}
		defer nc.Close()
		nc.(*net.UnixConn).WriteMsgUnix([]byte("pty"), rights, nil)
	}()
	l.SetDeadline(time.Now().Add(10 * time.Second))
	cfd, err := accept(l)
	if err != nil {
		t.Fatal(err)
	}
	c := os.NewFile(uintptr(cfd), "console")
	defer c.Close()
	fd, err := recvFD(c)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var got, want unix.Stat_t
	unix.Fstat(fd, &got)
	unix.Fstat(int(f.Fd()), &want)
	if got.Rdev != want.Rdev || got.Ino != want.Ino {
		t.Error("received fd is not the one sent")
	}
	if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Error("received fd is not close-on-exec")
	}
}
