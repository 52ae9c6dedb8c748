package supervisor

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// The supervisor's unix sockets are os.Files on non-blocking sockets made
// with x/sys/unix rather than net's, which would add about 0.5 MB to its
// binary: an os.File of a non-blocking fd is served by the runtime's
// poller, so reads, writes, deadlines and Close work as on a net.Conn.

// listenUnix listens on the stream unix socket addr (abstract if it
// starts with @).
func listenUnix(addr string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, errors.New("listen unix " + addr + ": " + os.NewSyscallError("socket", err).Error())
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return nil, errors.New("listen unix " + addr + ": " + os.NewSyscallError("bind", err).Error())
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		unix.Close(fd)
		return nil, errors.New("listen unix " + addr + ": " + os.NewSyscallError("listen", err).Error())
	}
	return os.NewFile(uintptr(fd), addr), nil
}

// accept waits for a connection on l (until l's deadline, or until l is
// closed) and returns its fd, non-blocking and close-on-exec.
func accept(l *os.File) (int, error) {
	rc, err := l.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR && aerr != unix.ECONNABORTED {
				return aerr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return -1, err
	}
	if aerr != nil {
		return -1, os.NewSyscallError("accept4", aerr)
	}
	return nfd, nil
}

// recvFD reads a message with one fd (SCM_RIGHTS) from the socket c.
func recvFD(c *os.File) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	var oobn int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	if err == nil && rerr != nil {
		err = os.NewSyscallError("recvmsg", rerr)
	}
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, errors.New("no control message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, errors.New("no pty fd")
	}
	return fds[0], nil
}
