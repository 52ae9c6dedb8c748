// Package supervisor is the body of a job's supervisor process: it starts
// the job's container with runc, owns its stdio, writes its log, serves
// attach and wait requests on a unix socket and records the job's exit. It
// runs as the small flynn-supervisor binary (or as the hidden
// `flynn-host supervise DIR` command), one process per job, so it imports
// only x/sys/unix and the lighter parts of the standard library (not fmt,
// net, encoding/json, crypto or api: its JSON and frames are written here,
// as api's types and functions write them). The host's runtime package
// starts supervisors and talks to them with the types and files defined here.
package supervisor

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api/frame"
)

// Files in a job's directory.
const (
	// FileConfig is the supervisor's Config (JSON), written by its starter.
	FileConfig = "supervisor.json"
	// FileSupLog is where its starter sends the supervisor's stderr.
	FileSupLog = "supervisor.log"
	// FilePID holds the container's init pid (written by runc).
	FilePID = "pid"
	// FileExit holds the job's exit (JSON api.HostJobExit) once it has
	// exited.
	FileExit = "exit.json"
	// FileLog is the job's output, one JSON api.HostLogLine a line.
	FileLog = "log"
	// FileRuncLog is runc's own log (JSON lines).
	FileRuncLog = "runc.log"
)

// Config is what a job's starter tells its supervisor, in FileConfig.
type Config struct {
	ID          string `json:"id"`
	Runc        string `json:"runc"`
	RuncRoot    string `json:"runc_root"`
	TTY         bool   `json:"tty,omitempty"`
	Stdin       bool   `json:"stdin,omitempty"`
	CgroupsPath string `json:"cgroups_path"`
	DisableLog  bool   `json:"disable_log,omitempty"`
	// Command is the job's command as its log's first line names it.
	Command string `json:"command,omitempty"`
}

// Ready is what a supervisor writes on fd 3 once the container process
// exists, or when it could not start it. It starts the container when
// its starter writes a byte on fd 4, and exits without when fd 4 reaches
// its end first.
type Ready struct {
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	// RuncNanos is how long runc took to create the container.
	RuncNanos int64 `json:"runc_ns,omitempty"`
}

// Request is the first line a client writes on the supervisor socket (Addr).
type Request struct {
	// Wait asks only for the exit frame.
	Wait   bool   `json:"wait,omitempty"`
	Stdin  bool   `json:"stdin,omitempty"`
	Logs   bool   `json:"logs,omitempty"`
	Height uint16 `json:"height,omitempty"`
	Width  uint16 `json:"width,omitempty"`
}

// jobExit is api.HostJobExit.
type jobExit struct {
	ExitStatus int
	OOM        bool
	Error      string
}

// json is e as json.Marshal writes an api.HostJobExit.
func (e *jobExit) json() []byte {
	var o object
	o.int("exit_status", int64(e.ExitStatus))
	if e.OOM {
		o.bool("oom", true)
	}
	if e.Error != "" {
		o.str("error", e.Error)
	}
	return o.done()
}

// json is r as json.Marshal writes it.
func (r *Ready) json() []byte {
	var o object
	if r.PID != 0 {
		o.int("pid", int64(r.PID))
	}
	if r.Error != "" {
		o.str("error", r.Error)
	}
	if r.RuncNanos != 0 {
		o.int("runc_ns", r.RuncNanos)
	}
	return o.done()
}

// parseConfig parses a Config as json.Unmarshal does (field names as
// tagged, exactly).
func parseConfig(b []byte) (Config, error) {
	var c Config
	f, err := parseObject(b)
	if err != nil {
		return c, err
	}
	return c, errors.Join(
		f.str("id", &c.ID), f.str("runc", &c.Runc), f.str("runc_root", &c.RuncRoot),
		f.bool("tty", &c.TTY), f.bool("stdin", &c.Stdin),
		f.str("cgroups_path", &c.CgroupsPath), f.bool("disable_log", &c.DisableLog),
		f.str("command", &c.Command))
}

// parseRequest parses a Request as json.Unmarshal does (field names as
// tagged, exactly).
func parseRequest(b []byte) (Request, error) {
	var r Request
	f, err := parseObject(b)
	if err != nil {
		return r, err
	}
	return r, errors.Join(
		f.bool("wait", &r.Wait), f.bool("stdin", &r.Stdin), f.bool("logs", &r.Logs),
		f.uint16("height", &r.Height), f.uint16("width", &r.Width))
}

type outFrame struct {
	typ  byte
	data []byte
}

type subscriber struct {
	ch     chan outFrame
	output bool
}

type supervisor struct {
	dir string
	cfg Config

	mu      sync.Mutex
	logf    *os.File
	subs    map[*subscriber]bool
	exit    *jobExit
	stdin   io.WriteCloser // pipe to the job, or the pty master
	pty     *os.File
	started sync.Once
}

// Run is the body of a job's supervisor process (flynn-supervisor DIR, or
// the hidden `flynn-host supervise DIR` command). It starts the container described by
// DIR with runc, owns its stdio, writes its log, serves attach and wait
// requests on Addr(DIR), and records its exit in DIR/exit.json. It
// returns when the container has exited and been deleted.
func Run(dir string) error {
	ready := os.NewFile(3, "ready")
	start := os.NewFile(4, "start")
	unix.CloseOnExec(3)
	unix.CloseOnExec(4)
	signal.Ignore(unix.SIGHUP, unix.SIGINT, unix.SIGPIPE, unix.SIGTERM)
	b, err := os.ReadFile(filepath.Join(dir, FileConfig))
	if err != nil {
		return err
	}
	s := &supervisor{dir: dir, subs: map[*subscriber]bool{}}
	if s.cfg, err = parseConfig(b); err != nil {
		return err
	}
	fail := func(err error) error {
		s.writeExit(&jobExit{ExitStatus: -1, Error: err.Error()})
		ready.Write(append((&Ready{Error: err.Error()}).json(), '\n'))
		return err
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail(errors.New("become subreaper: " + err.Error()))
	}
	s.logf, err = os.OpenFile(filepath.Join(dir, FileLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	ln, err := listenUnix(Addr(dir))
	if err != nil {
		return fail(err)
	}
	// Set up; the starter prepares the bundle meanwhile.
	n, _ := start.Read(make([]byte, 1))
	start.Close()
	if n == 0 {
		ln.Close()
		s.logf.Close()
		return errors.New("the job's start was abandoned: nothing to run")
	}
	var pumps sync.WaitGroup
	if s.cfg.Command != "" {
		s.initLine(noteStart + s.cfg.Command + "`")
	}
	runcStart := time.Now()
	pid, err := s.startContainer(&pumps)
	if err != nil {
		s.initLine(noteFailed + err.Error())
		ln.Close()
		return fail(err)
	}
	ready.Write(append((&Ready{PID: pid, RuncNanos: int64(time.Since(runcStart))}).json(), '\n'))
	ready.Close()

	if !s.cfg.TTY && !s.cfg.Stdin {
		s.started.Do(func() {}) // runc run already started it
	}
	var conns sync.WaitGroup
	go s.serve(ln, &conns)
	status := reap(pid)
	// The pid namespace is gone with its init, so the pipes close; wait
	// a little for the last output.
	done := make(chan struct{})
	go func() { pumps.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	exit := &jobExit{ExitStatus: status}
	if status == 128+int(unix.SIGKILL) && oomKilled(s.cfg.CgroupsPath) {
		exit.OOM = true
	}
	// The platform's lines about the job, after its last output: a
	// reader of the log that sees the exit line has all of it.
	if exit.OOM {
		msg := noteOOM
		if limit := memoryLimit(s.cfg.CgroupsPath); limit > 0 {
			msg += " (the job's memory limit is " + strconv.FormatInt(limit>>20, 10) + " MiB)"
		}
		s.initLine(msg)
	}
	if status >= 0 {
		s.initLine(noteExit + strconv.Itoa(status))
	}
	out, err := exec.Command(s.cfg.Runc, "--root", s.cfg.RuncRoot, "delete", "--force", s.cfg.ID).CombinedOutput()
	if err != nil {
		os.Stderr.WriteString("runc delete: " + err.Error() + ": " + string(out) + "\n")
	}
	s.writeExit(exit)
	s.mu.Lock()
	s.exit = exit
	payload := exit.json()
	for sub := range s.subs {
		select {
		case sub.ch <- outFrame{frame.Exit, payload}:
		default:
		}
		close(sub.ch)
		delete(s.subs, sub)
	}
	s.mu.Unlock()
	ln.Close()
	// Give clients a moment to read the exit; a stuck one does not keep
	// the supervisor alive.
	connsDone := make(chan struct{})
	go func() { conns.Wait(); close(connsDone) }()
	select {
	case <-connsDone:
	case <-time.After(5 * time.Second):
	}
	s.logf.Close()
	return nil
}

func (s *supervisor) writeExit(e *jobExit) {
	b := e.json()
	tmp := filepath.Join(s.dir, FileExit+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, filepath.Join(s.dir, FileExit))
	}
}

func (s *supervisor) runc(args ...string) *exec.Cmd {
	return exec.Command(s.cfg.Runc, append([]string{"--root", s.cfg.RuncRoot, "--log", filepath.Join(s.dir, FileRuncLog), "--log-format", "json"}, args...)...)
}

// startContainer creates (and, unless the job waits for an attach, starts)
// the container, wiring its stdio to pipes or a pty it owns.
func (s *supervisor) startContainer(pumps *sync.WaitGroup) (int, error) {
	interactive := s.cfg.TTY || s.cfg.Stdin
	verb := "run"
	if interactive {
		verb = "create"
	}
	args := []string{verb}
	if verb == "run" {
		args = append(args, "--detach")
	}
	args = append(args, "--pid-file", filepath.Join(s.dir, FilePID), "--bundle", s.dir)
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	var cmd *exec.Cmd
	var consoleErr chan error
	var closeAfter []*os.File
	if s.cfg.TTY {
		// runc wants a path; keep it short whatever the state dir is.
		sockDir, err := os.MkdirTemp("", "flynn-console-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(sockDir)
		sock := filepath.Join(sockDir, "c.sock")
		cl, err := listenUnix(sock)
		if err != nil {
			return 0, err
		}
		defer cl.Close()
		consoleErr = make(chan error, 1)
		go func() { consoleErr <- s.recvConsole(cl) }()
		args = append(args, "--console-socket", sock, s.cfg.ID)
		cmd = s.runc(args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	} else {
		args = append(args, s.cfg.ID)
		cmd = s.runc(args...)
		outR, outW, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		closeAfter = append(closeAfter, outW, errW)
		cmd.Stdin = devnull
		if s.cfg.Stdin {
			inR, inW, err := os.Pipe()
			if err != nil {
				return 0, err
			}
			cmd.Stdin = inR
			closeAfter = append(closeAfter, inR)
			s.stdin = inW
		}
		pumps.Add(2)
		go func() { defer pumps.Done(); s.pump(outR, "stdout", frame.Stdout) }()
		go func() { defer pumps.Done(); s.pump(errR, "stderr", frame.Stderr) }()
	}
	err = cmd.Run()
	for _, f := range closeAfter {
		f.Close()
	}
	if err != nil {
		return 0, errors.New("runc " + verb + ": " + err.Error() + ": " + runcError(filepath.Join(s.dir, FileRuncLog)))
	}
	if consoleErr != nil {
		if err := <-consoleErr; err != nil {
			return 0, err
		}
		pumps.Add(1)
		go func() { defer pumps.Done(); s.pump(s.pty, "stdout", frame.Stdout) }()
	}
	b, err := os.ReadFile(filepath.Join(s.dir, FilePID))
	if err != nil {
		return 0, errors.New("read pid: " + err.Error())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, errors.New("read pid: " + err.Error())
	}
	return pid, nil
}

// runcError is the last error runc logged.
func runcError(logFile string) string {
	b, _ := os.ReadFile(logFile)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var level, msg string
		if f, err := parseObject(lines[i]); err == nil && f.str("level", &level) == nil && f.str("msg", &msg) == nil && (level == "error" || level == "fatal") {
			return msg
		}
	}
	return strings.TrimSpace(string(b))
}

// recvConsole accepts runc's connection on the console socket and takes
// the pty master it sends.
func (s *supervisor) recvConsole(l *os.File) error {
	l.SetDeadline(time.Now().Add(30 * time.Second))
	cfd, err := accept(l)
	if err != nil {
		return errors.New("console socket: " + err.Error())
	}
	c := os.NewFile(uintptr(cfd), "console")
	defer c.Close()
	fd, err := recvFD(c)
	if err != nil {
		return errors.New("console socket: " + err.Error())
	}
	s.pty = os.NewFile(uintptr(fd), "pty")
	s.stdin = s.pty
	return nil
}

// pump copies one output stream to the log and to attached clients.
func (s *supervisor) pump(r io.Reader, stream string, typ byte) {
	buf := make([]byte, 32<<10)
	var partial []byte
	for {
		n, err := r.Read(buf)
		if n > 0 {
			s.mu.Lock()
			data := append([]byte(nil), buf[:n]...)
			for sub := range s.subs {
				if !sub.output {
					continue
				}
				select {
				case sub.ch <- outFrame{typ, data}:
				default: // too slow: cut it off
					close(sub.ch)
					delete(s.subs, sub)
				}
			}
			partial = append(partial, data...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				s.logLine(stream, partial[:i])
				partial = partial[i+1:]
			}
			if len(partial) > 64<<10 {
				s.logLine(stream, partial)
				partial = nil
			}
			partial = append([]byte(nil), partial...)
			s.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	if len(partial) > 0 {
		s.mu.Lock()
		s.logLine(stream, partial)
		s.mu.Unlock()
	}
}

// StreamInit is the log stream of the platform's own lines about a job
// (api.LogInit): its start, its exit, an out-of-memory kill. Attach
// clients, which asked for the job's output, are never sent them.
const StreamInit = "init"

// The platform's lines, as api.LogInitStart, LogInitExit and
// LogInitFailed begin them (a test checks).
const (
	noteStart  = "Starting process with command `"
	noteExit   = "Process exited with status "
	noteFailed = "Failed to start the process: "
	noteOOM    = "FATAL: a container process was killed due to lack of available memory"
)

// initLine writes one of the platform's lines about the job to its log.
func (s *supervisor) initLine(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logLine(StreamInit, []byte(msg))
}

func (s *supervisor) logLine(stream string, line []byte) {
	if s.cfg.DisableLog {
		return
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	// As json.Marshal writes an api.HostLogLine.
	var o object
	o.time("t", time.Now().UTC())
	o.str("s", stream)
	o.str("m", string(line))
	s.logf.Write(append(o.done(), '\n'))
}

func (s *supervisor) serve(ln *os.File, conns *sync.WaitGroup) {
	for {
		fd, err := accept(ln)
		if err != nil {
			return
		}
		// The socket is reachable from every process in the host's
		// network namespace (build jobs, host network jobs): only root,
		// the host agent, may attach to the job or wait for it. The
		// credentials are the client's when it connected.
		if cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err != nil || cred.Uid != 0 {
			if err == nil {
				os.Stderr.WriteString("refused a connection from uid " + strconv.FormatUint(uint64(cred.Uid), 10) + " (pid " + strconv.Itoa(int(cred.Pid)) + "): only root may use the supervisor\n")
			}
			unix.Close(fd)
			continue
		}
		c := os.NewFile(uintptr(fd), "client")
		conns.Add(1)
		go func() {
			defer conns.Done()
			s.handle(c)
		}()
	}
}

func (s *supervisor) handle(c *os.File) {
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := br.ReadBytes('\n')
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	req, err := parseRequest(line)
	if err != nil {
		frame.Write(c, frame.Error, []byte("bad request"))
		return
	}
	sub := &subscriber{ch: make(chan outFrame, 1024), output: !req.Wait}
	s.mu.Lock()
	var replayUpTo int64
	if req.Logs && !req.Wait {
		if fi, err := s.logf.Stat(); err == nil {
			replayUpTo = fi.Size()
		}
	}
	exit := s.exit
	if exit == nil {
		s.subs[sub] = true
	}
	s.mu.Unlock()
	if replayUpTo > 0 {
		if err := replayLog(c, filepath.Join(s.dir, FileLog), replayUpTo); err != nil {
			return
		}
	}
	if exit != nil {
		frame.Write(c, frame.Exit, exit.json())
		return
	}
	if req.Height > 0 && req.Width > 0 {
		s.resize(req.Height, req.Width)
	}
	if !req.Wait {
		s.started.Do(func() {
			if out, err := s.runc("start", s.cfg.ID).CombinedOutput(); err != nil {
				os.Stderr.WriteString("runc start: " + err.Error() + ": " + string(out) + "\n")
			}
		})
	}
	go func() {
		s.input(br, req.Stdin)
		// The client has gone: stop sending to it.
		s.drop(sub)
	}()
	for f := range sub.ch {
		if err := frame.Write(c, f.typ, f.data); err != nil {
			s.drop(sub)
			for range sub.ch {
			}
			return
		}
	}
}

// drop unsubscribes a client.
func (s *supervisor) drop(sub *subscriber) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[sub] {
		delete(s.subs, sub)
		close(sub.ch)
	}
}

// input reads a client's frames: stdin data and resizes.
func (s *supervisor) input(r io.Reader, stdin bool) {
	for {
		typ, p, err := frame.Read(r)
		if err != nil {
			return
		}
		switch typ {
		case frame.Stdin:
			if !stdin || s.stdin == nil {
				continue
			}
			if len(p) == 0 {
				if !s.cfg.TTY {
					s.stdin.Close()
				}
				continue
			}
			s.stdin.Write(p)
		case frame.Resize:
			if len(p) == 4 {
				s.resize(binary.BigEndian.Uint16(p[0:2]), binary.BigEndian.Uint16(p[2:4]))
			}
		}
	}
}

func (s *supervisor) resize(h, w uint16) {
	if s.pty == nil {
		return
	}
	unix.IoctlSetWinsize(int(s.pty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: h, Col: w})
}

// replayLog sends the first n bytes of the log file as output frames.
func replayLog(w io.Writer, file string, n int64) error {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, n))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var stream, msg string
		f, err := parseObject(sc.Bytes())
		if err != nil || f.str("s", &stream) != nil || f.str("m", &msg) != nil || stream == StreamInit {
			continue
		}
		typ := frame.Stdout
		if stream == "stderr" {
			typ = frame.Stderr
		}
		if err := frame.Write(w, typ, []byte(msg+"\n")); err != nil {
			return err
		}
	}
	return nil
}

// reap waits for the container's init, which became our child when runc
// exited (we are a subreaper), and returns its exit status (128+signal
// when killed).
func reap(pid int) int {
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Not our child after all: watch it from outside.
			for unix.Kill(pid, 0) == nil {
				time.Sleep(100 * time.Millisecond)
			}
			return -1
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		if ws.Exited() {
			return ws.ExitStatus()
		}
	}
}

// readMemoryFile reads a file of the cgroup's memory controller: v1's
// name under the v1 hierarchy, else v2's in the unified one.
func readMemoryFile(cgroupsPath, v1, v2 string) (string, bool) {
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", cgroupsPath, v1),
		filepath.Join("/sys/fs/cgroup", cgroupsPath, v2),
	} {
		if b, err := os.ReadFile(f); err == nil {
			return string(b), true
		}
	}
	return "", false
}

// oomKilled reports whether the kernel OOM-killed a process of the cgroup.
func oomKilled(cgroupsPath string) bool {
	b, _ := readMemoryFile(cgroupsPath, "memory.oom_control", "memory.events")
	for _, line := range strings.Split(b, "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == "oom_kill" {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n > 0
		}
	}
	return false
}

// memoryLimit returns the cgroup's memory limit in bytes, or 0 when it has
// none or it cannot be read.
func memoryLimit(cgroupsPath string) int64 {
	b, _ := readMemoryFile(cgroupsPath, "memory.limit_in_bytes", "memory.max")
	n, err := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0 // "max", or v1's "unlimited" (a page-rounded 2^63-1)
	}
	return n
}

// Addr is where the supervisor of the job in dir listens: an
// abstract unix socket (in the host's network namespace) named after the
// job directory, so its length does not depend on the state dir's. Any
// process in that namespace can connect; the supervisor serves root only.
func Addr(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	const hex = "0123456789abcdef"
	sum := sum256([]byte(dir))
	name := []byte("@flynn-supervisor-")
	for _, b := range sum[:16] {
		name = append(name, hex[b>>4], hex[b&0xf])
	}
	return string(name)
}
