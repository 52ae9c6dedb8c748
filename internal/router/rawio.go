package router

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a TCP connection with raw system calls, in the
// callbacks of its syscall.RawConn, instead of net.Conn's Read and Write.
//
// Why: net.Conn's Read and Write tell the Go scheduler they enter a system
// call. When one takes longer than sysmon's tick (20 µs and up), and other
// goroutines are waiting, sysmon hands the P to another thread, which is
// woken for it; the first one then finds its P taken and sleeps. A proxy
// that shares its CPU with the backends it writes to is often preempted
// inside such a write (the write wakes the backend), so this went on all
// the time: under bench.sh the router made 3.5 times nginx's context
// switches, and its sysmon woke about 2,000 times a second. With raw
// calls it makes about as many as nginx, and 6-9% less CPU per request
// (bench/router/README.md). The connection's
// socket is non-blocking (Go's poller owns it), so a raw read or write
// never waits in the kernel: it does what it can or fails with EAGAIN,
// and the RawConn then parks the goroutine on the poller as net.Conn
// would. Deadlines and Close work as with net.Conn, since the RawConn's
// Read and Write keep them.
type rawIO struct {
	conn net.Conn
	rc   syscall.RawConn

	// The state of the Read and of the Write under way (one of each at a
	// time: rmu, wmu), kept here so that the callbacks, method values made
	// once, allocate nothing per call.
	rmu    sync.Mutex
	rp     []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wp      []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// newRawIO is c's rawIO, or nil when c is not a TCP connection.
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{conn: c, rc: rc}
	r.readFn, r.writeFn = r.readStep, r.writeStep
	return r
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rmu.Lock()
	r.rp, r.rn, r.rerr = p, 0, 0
	err := r.rc.Read(r.readFn)
	n, errno := r.rn, r.rerr
	r.rp = nil
	r.rmu.Unlock()
	switch {
	case err != nil:
		return 0, r.opError("read", err)
	case errno != 0:
		return 0, r.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawIO) readStep(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.rp))), uintptr(len(r.rp)))
		switch e {
		case 0:
			r.rn = int(n)
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // park until readable, then again
		default:
			r.rerr = e
			return true
		}
	}
}

// Write writes all of p, waiting on the poller while the socket's buffer
// is full.
func (r *rawIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.wmu.Lock()
	r.wp, r.wn, r.werr = p, 0, 0
	err := r.rc.Write(r.writeFn)
	n, errno := r.wn, r.werr
	r.wp = nil
	r.wmu.Unlock()
	switch {
	case err != nil:
		return n, r.opError("write", err)
	case errno != 0:
		return n, r.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

func (r *rawIO) writeStep(fd uintptr) bool {
	for r.wn < len(r.wp) {
		n, e := rawWrite(fd, r.wp[r.wn:])
		switch e {
		case 0:
			if n == 0 {
				r.werr = syscall.EIO // a socket's write does not return 0
				return true
			}
			r.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // park until writable, then the rest
		default:
			r.werr = e
			return true
		}
	}
	return true
}

// rawWrite is one write(2) of p to fd, not told to the scheduler.
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// opError wraps err as net.Conn's Read and Write do.
func (r *rawIO) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: err}
}
