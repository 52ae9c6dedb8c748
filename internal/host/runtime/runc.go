package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/host/runtime/supervisor"
)

// Config configures the runc runtime.
type Config struct {
	// StateDir holds one directory per job and runc's state.
	StateDir string
	// Runc is the OCI runtime binary (default "runc").
	Runc string
	// SupervisorCmd runs a job's supervisor; the job directory is
	// appended. Default: DefaultSupervisorCmd of this executable.
	SupervisorCmd []string
	// CgroupParent is the cgroup jobs are placed under (default "flynn").
	CgroupParent string
	// DNS is the nameserver written to jobs' /etc/resolv.conf (default
	// the bridge gateway, where discoverd's DNS listens).
	DNS string
	// Network attaches jobs to the bridge.
	Network *network.Manager
	// Init is a static init (tini) run as every job's PID 1, so signals
	// reach the job's process and orphans are reaped. Default
	// /usr/bin/tini-static when it exists; "none" runs jobs as PID 1.
	Init string
}

// DefaultInit is the init jobs run under when it is installed (Debian's
// tini package; make deps installs it).
const DefaultInit = "/usr/bin/tini-static"

// Runc runs jobs with runc. It implements Runtime.
type Runc struct {
	cfg Config
}

// jobState is what Start records in the job directory so any later agent
// process can clean the job up.
type jobState struct {
	Spec      *Spec  `json:"spec"`
	HostPorts []int  `json:"host_ports,omitempty"`
	Cgroups   string `json:"cgroups_path"`
}

// NewRunc returns a runc runtime. Host ports of jobs already in StateDir
// are reserved.
func NewRunc(cfg Config) (*Runc, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("runtime: StateDir is required")
	}
	if cfg.Network == nil {
		return nil, errors.New("runtime: Network is required")
	}
	if cfg.Runc == "" {
		cfg.Runc = "runc"
	}
	if _, err := exec.LookPath(cfg.Runc); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	if len(cfg.SupervisorCmd) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
		cfg.SupervisorCmd = DefaultSupervisorCmd(exe)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "flynn"
	}
	if cfg.DNS == "" {
		cfg.DNS = cfg.Network.Gateway()
	}
	// One directory per job in each: spread over the filesystem's
	// block groups (MarkTopDir).
	for _, d := range []string{"jobs", "runc"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o711); err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
		MarkTopDir(filepath.Join(cfg.StateDir, d))
	}
	// The jobs' firewall, before any job is started or adopted.
	if err := cfg.Network.EnsureFirewall(); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	r := &Runc{cfg: cfg}
	ents, _ := os.ReadDir(filepath.Join(cfg.StateDir, "jobs"))
	for _, e := range ents {
		if st, err := r.readState(e.Name()); err == nil {
			cfg.Network.Reserve(st.HostPorts)
		}
	}
	return r, nil
}

// KeepSpares implements SpareKeeper: it keeps network namespaces attached
// for jobs (see network.Manager.KeepSpares).
func (r *Runc) KeepSpares(ctx context.Context, log *slog.Logger) error {
	return r.cfg.Network.KeepSpares(ctx, log)
}

// SupervisorBinary is the name of the small binary that runs a job's
// supervisor (cmd/flynn-supervisor), installed next to flynn-host.
const SupervisorBinary = "flynn-supervisor"

// DefaultSupervisorCmd is the command that runs job supervisors for the
// flynn-host executable exe: SupervisorBinary in exe's directory when it is
// there and executable (a few MB, where exe is tens), else exe's hidden
// supervise command.
func DefaultSupervisorCmd(exe string) []string {
	p := filepath.Join(filepath.Dir(exe), SupervisorBinary)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return []string{p}
	}
	return []string{exe, "supervise"}
}

func (r *Runc) dir(id string) string { return filepath.Join(r.cfg.StateDir, "jobs", id) }

func (r *Runc) readState(id string) (*jobState, error) {
	b, err := os.ReadFile(filepath.Join(r.dir(id), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	st := &jobState{}
	return st, json.Unmarshal(b, st)
}

func netPorts(ps []Port) []network.Port {
	out := make([]network.Port, len(ps))
	for i, p := range ps {
		out[i] = network.Port{Port: p.Port, Proto: p.Proto}
	}
	return out
}

// Start implements Runtime.
func (r *Runc) Start(ctx context.Context, spec *Spec) (_ *Started, err error) {
	var phases Phases
	t := time.Now()
	// No spare network namespace is made while a job starts.
	defer r.cfg.Network.Hold()()
	dir := r.dir(spec.ID)
	if err := os.Mkdir(dir, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, ErrExists
		}
		return nil, fmt.Errorf("start job: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := r.Remove(context.WithoutCancel(ctx), spec.ID); rerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, rerr)
			}
		}
	}()
	hostPorts, err := r.cfg.Network.AllocPorts(len(spec.Ports))
	if err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	if spec.HostNetwork {
		// A host network job listens on the host: a port it names is
		// its host port.
		for i, p := range spec.Ports {
			if p.Port != 0 {
				r.cfg.Network.Release(hostPorts[i : i+1])
				hostPorts[i] = p.Port
				r.cfg.Network.Reserve(hostPorts[i : i+1])
			}
		}
	}
	st := &jobState{Spec: spec, HostPorts: hostPorts, Cgroups: "/" + r.cfg.CgroupParent + "/" + spec.ID}
	if err := writeJSON(filepath.Join(dir, "state.json"), st); err != nil {
		r.cfg.Network.Release(hostPorts)
		return nil, fmt.Errorf("start job: %w", err)
	}
	// The supervisor process starts now, on another core while this one
	// makes the job's rootfs, network and bundle; it runs the container
	// when told to.
	sup, err := r.spawnSupervisor(dir, &supervisor.Config{
		ID: spec.ID, Runc: r.cfg.Runc, RuncRoot: filepath.Join(r.cfg.StateDir, "runc"),
		TTY: spec.TTY, Stdin: spec.Stdin, CgroupsPath: st.Cgroups,
		Command: shellJoin(spec.Args),
	})
	if err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	defer func() {
		if err != nil {
			sup.abandon() // before the job dir is removed
		}
	}()

	// Root filesystem: the image layers under a per-job upper dir, on a
	// filesystem of its own when the job's temp disk is bounded.
	upperDir := dir
	if spec.TempDisk > 0 {
		if err := mountTempDisk(ctx, dir, spec.TempDisk); err != nil {
			return nil, fmt.Errorf("start job: %w", err)
		}
		upperDir = filepath.Join(dir, dirScratch)
	}
	phases.Mark("prepare", &t)
	for _, d := range []string{filepath.Join(upperDir, "upper"), filepath.Join(upperDir, "work"), filepath.Join(dir, "rootfs")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("start job: %w", err)
		}
	}
	opts, err := overlayOptions(spec.Layers, filepath.Join(upperDir, "upper"), filepath.Join(upperDir, "work"))
	if err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	if err := unix.Mount("overlay", filepath.Join(dir, "rootfs"), "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("start job: mount rootfs: %w", err)
	}

	if err := checkCommand(filepath.Join(dir, "rootfs"), spec); err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	phases.Mark("rootfs", &t)

	started := &Started{HostPorts: hostPorts}
	env := append([]string(nil), spec.Env...)
	var netns string
	if spec.HostNetwork {
		for i, hp := range hostPorts {
			env = append(env, fmt.Sprintf("PORT_%d=%d", i, hp))
		}
		if len(hostPorts) > 0 {
			env = append(env, fmt.Sprintf("PORT=%d", hostPorts[0]))
		}
	} else {
		att, err := r.cfg.Network.Attach(ctx, spec.ID, netPorts(spec.Ports), hostPorts, network.Pass{System: spec.System, TCPPorts: spec.ReachPorts})
		if err != nil {
			return nil, fmt.Errorf("start job: %w", err)
		}
		netns, started.IP = att.NetNS, att.IP
		for i, p := range spec.Ports {
			env = append(env, fmt.Sprintf("PORT_%d=%d", i, p.Port))
		}
		if len(spec.Ports) > 0 {
			env = append(env, fmt.Sprintf("PORT=%d", spec.Ports[0].Port))
		}
	}
	phases.Mark("network", &t)
	resolv := []byte(fmt.Sprintf("nameserver %s\nsearch discoverd\noptions ndots:1\n", r.cfg.DNS))
	if spec.HostNetwork {
		// On the host's network the host's resolvers are reachable (the
		// bridge address may not be); system and build jobs name the
		// cluster's services by URL.
		if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			resolv = b
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), resolv, 0o644); err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	s2 := *spec
	s2.Env = env
	s2.Init = r.init()
	if err := writeJSON(filepath.Join(dir, "config.json"), ociSpec(&s2, dir, netns, st.Cgroups)); err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	phases.Mark("bundle", &t)
	ready, err := sup.run(ctx)
	if err != nil {
		return nil, fmt.Errorf("start job: %w", err)
	}
	phases.Mark("supervisor", &t)
	// The supervisor's own step: runc.
	runcD := time.Duration(ready.RuncNanos)
	phases[len(phases)-1].D -= runcD
	phases = append(phases, Phase{"runc", runcD})
	started.PID = ready.PID
	started.Phases = phases
	return started, nil
}

// spawned is a job's supervisor process, started and waiting to be
// told to run the container (run) or to give up (abandon).
type spawned struct {
	dir    string
	cmd    *exec.Cmd
	ready  *os.File      // its fd 3: supervisor.Ready
	start  *os.File      // its fd 4: a byte runs the container
	exited chan struct{} // closed once it has exited
}

// spawnSupervisor writes the supervisor's config in dir and starts it.
func (r *Runc) spawnSupervisor(dir string, cfg *supervisor.Config) (*spawned, error) {
	if err := writeJSON(filepath.Join(dir, supervisor.FileConfig), cfg); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, supervisor.FileSupLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer wr.Close()
	startR, startW, err := os.Pipe()
	if err != nil {
		rd.Close()
		return nil, err
	}
	defer startR.Close()
	args := append(append([]string(nil), r.cfg.SupervisorCmd[1:]...), dir)
	cmd := exec.Command(r.cfg.SupervisorCmd[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{wr, startR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		rd.Close()
		startW.Close()
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	s := &spawned{dir: dir, cmd: cmd, ready: rd, start: startW, exited: make(chan struct{})}
	// Reap the supervisor when it ends. After a restart of the agent the
	// orphaned supervisors are reaped by init instead.
	go func() { cmd.Wait(); close(s.exited) }()
	return s, nil
}

// run tells the supervisor to run the container and waits until it has.
func (s *spawned) run(ctx context.Context) (*supervisor.Ready, error) {
	_, werr := s.start.Write([]byte{1})
	s.start.Close()
	type result struct {
		msg supervisor.Ready
		err error
	}
	c := make(chan result, 1)
	go func() {
		var m supervisor.Ready
		err := json.NewDecoder(s.ready).Decode(&m)
		c <- result{m, err}
	}()
	select {
	case res := <-c:
		s.ready.Close()
		if res.err != nil {
			if werr != nil {
				res.err = werr
			}
			b, _ := os.ReadFile(filepath.Join(s.dir, supervisor.FileSupLog))
			return nil, fmt.Errorf("supervisor: %v: %s", res.err, strings.TrimSpace(string(b)))
		}
		if res.msg.Error != "" {
			return nil, errors.New(res.msg.Error)
		}
		return &res.msg, nil
	case <-ctx.Done():
		s.cmd.Process.Kill()
		return nil, ctx.Err()
	}
}

// abandon tells a supervisor that has not run the container to exit
// without, and waits until it has; one that has is left to end as the
// container does. Either way its pipes are closed.
func (s *spawned) abandon() {
	s.start.Close() // EOF: nothing to run
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.ready.Close()
}

func (r *Runc) dial(id string, req *supervisor.Request) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("unix", supervisor.Addr(r.dir(id)))
	if err != nil {
		return nil, nil, err
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, bufio.NewReader(c), nil
}

func (r *Runc) readExit(id string) (*api.HostJobExit, error) {
	b, err := os.ReadFile(filepath.Join(r.dir(id), supervisor.FileExit))
	if err != nil {
		return nil, err
	}
	e := &api.HostJobExit{}
	return e, json.Unmarshal(b, e)
}

// Wait implements Runtime.
func (r *Runc) Wait(ctx context.Context, id string) (*api.HostJobExit, error) {
	if _, err := os.Stat(r.dir(id)); err != nil {
		return nil, ErrNotFound
	}
	c, br, err := r.dial(id, &supervisor.Request{Wait: true})
	if err != nil {
		// No supervisor: the job has ended (or its supervisor died).
		if e, err := r.readExit(id); err == nil {
			return e, nil
		}
		return &api.HostJobExit{ExitStatus: -1, Error: "the job's supervisor is gone; its exit status is unknown"}, nil
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		typ, p, err := api.ReadFrame(br)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if e, err := r.readExit(id); err == nil {
				return e, nil
			}
			return &api.HostJobExit{ExitStatus: -1, Error: "lost the job's supervisor; its exit status is unknown"}, nil
		}
		if typ == api.FrameExit {
			e := &api.HostJobExit{}
			return e, json.Unmarshal(p, e)
		}
	}
}

// Signal implements Runtime.
func (r *Runc) Signal(ctx context.Context, id string, sig unix.Signal) error {
	if _, err := os.Stat(r.dir(id)); err != nil {
		return ErrNotFound
	}
	if _, err := os.Stat(filepath.Join(r.dir(id), supervisor.FileExit)); err == nil {
		return ErrNotRunning
	}
	out, err := exec.CommandContext(ctx, r.cfg.Runc, "--root", filepath.Join(r.cfg.StateDir, "runc"), "kill", id, strconv.Itoa(int(sig))).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not running") || strings.Contains(string(out), "does not exist") {
			return ErrNotRunning
		}
		return fmt.Errorf("signal job %s: %v: %s", id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Note implements Runtime. The supervisor appends to the same file: each
// line is one write with O_APPEND, so lines never interleave.
func (r *Runc) Note(id, msg string) error {
	dir := r.dir(id)
	if _, err := os.Stat(filepath.Join(dir, supervisor.FileExit)); err == nil {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(dir, supervisor.FileLog), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil // no log (yet, or any more)
	}
	defer f.Close()
	b, err := json.Marshal(api.HostLogLine{Time: time.Now().UTC(), Stream: api.LogInit, Msg: msg})
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	return err
}

// Attach implements Runtime.
func (r *Runc) Attach(ctx context.Context, id string, o AttachOptions) (io.ReadWriteCloser, error) {
	if _, err := os.Stat(r.dir(id)); err != nil {
		return nil, ErrNotFound
	}
	c, br, err := r.dial(id, &supervisor.Request{Stdin: o.Stdin, Logs: o.Logs, Height: o.Height, Width: o.Width})
	if err != nil {
		return nil, ErrNotRunning
	}
	return &bufConn{Reader: br, Conn: c}, nil
}

type bufConn struct {
	io.Reader
	net.Conn
}

func (b *bufConn) Read(p []byte) (int, error) { return b.Reader.Read(p) }

// Log implements Runtime.
func (r *Runc) Log(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	dir := r.dir(id)
	if _, err := os.Stat(dir); err != nil {
		return nil, ErrNotFound
	}
	f, err := os.Open(filepath.Join(dir, supervisor.FileLog))
	if errors.Is(err, os.ErrNotExist) {
		if !follow {
			return io.NopCloser(strings.NewReader("")), nil
		}
		// The supervisor creates the log; wait for it briefly.
		for i := 0; i < 50 && errors.Is(err, os.ErrNotExist); i++ {
			time.Sleep(100 * time.Millisecond)
			f, err = os.Open(filepath.Join(dir, supervisor.FileLog))
		}
	}
	if err != nil {
		return nil, err
	}
	if !follow {
		return f, nil
	}
	return &followReader{ctx: ctx, f: f, exitFile: filepath.Join(dir, supervisor.FileExit)}, nil
}

// followReader reads a growing log file until the job has exited and the
// file is read to its end.
type followReader struct {
	ctx      context.Context
	f        *os.File
	exitFile string
}

func (fr *followReader) Read(p []byte) (int, error) {
	for {
		n, err := fr.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		if _, serr := os.Stat(fr.exitFile); serr == nil {
			// Exited: one more read catches lines written just before.
			n, err := fr.f.Read(p)
			if n > 0 {
				return n, nil
			}
			if err == nil {
				err = io.EOF
			}
			return 0, err
		}
		select {
		case <-fr.ctx.Done():
			return 0, fr.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (fr *followReader) Close() error { return fr.f.Close() }

// Cleanup implements Runtime.
func (r *Runc) Cleanup(ctx context.Context, id string) error {
	dir := r.dir(id)
	st, err := r.readState(id)
	if errors.Is(err, ErrNotFound) {
		if _, serr := os.Stat(dir); serr != nil {
			return ErrNotFound
		}
		st = &jobState{Spec: &Spec{ID: id}}
	} else if err != nil {
		return fmt.Errorf("clean up job %s: %w", id, err)
	}
	var errs []error
	// runc delete removes the container's state and cgroup; the
	// supervisor normally did it already.
	exec.CommandContext(ctx, r.cfg.Runc, "--root", filepath.Join(r.cfg.StateDir, "runc"), "delete", "--force", id).Run()
	if st.Cgroups != "" {
		removeCgroup(st.Cgroups)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := unmount(rootfs); err != nil {
		errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
	} else if err := unmount(filepath.Join(dir, dirScratch)); err != nil {
		errs = append(errs, fmt.Errorf("unmount temp disk: %w", err))
	} else {
		for _, d := range []string{"rootfs", "upper", "work", dirScratch, fileScratch} {
			if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := r.cfg.Network.Detach(ctx, id, netPorts(st.Spec.Ports), st.HostPorts); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up job %s: %w", id, err)
	}
	return nil
}

// Remove implements Runtime.
func (r *Runc) Remove(ctx context.Context, id string) error {
	if err := r.Cleanup(ctx, id); err != nil {
		return err
	}
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("remove job %s: %w", id, err)
	}
	return nil
}

// The temp disk of a job with a bounded one: an image file, sparse, with
// an ext4 filesystem of the size asked, loop-mounted on the scratch dir
// that holds the overlay's upper and work dirs. A write past it fails
// with ENOSPC in the job; the host's disk is not touched beyond it.
const (
	dirScratch  = "scratch"
	fileScratch = "scratch.img"
)

func mountTempDisk(ctx context.Context, dir string, size int64) error {
	img := filepath.Join(dir, fileScratch)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("temp disk: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("temp disk: %w", err)
	}
	// No journal, no reserved blocks, no room to grow: a scratch
	// filesystem, thrown away with the job.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode", "-E", "nodiscard", img).CombinedOutput(); err != nil {
		return fmt.Errorf("temp disk: mkfs.ext4 (e2fsprogs): %v: %s", err, strings.TrimSpace(string(out)))
	}
	scratch := filepath.Join(dir, dirScratch)
	if err := os.Mkdir(scratch, 0o700); err != nil {
		return fmt.Errorf("temp disk: %w", err)
	}
	// mount sets the loop device up to go away with the mount.
	if out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", "loop,nodev,nosuid,noatime", img, scratch).CombinedOutput(); err != nil {
		return fmt.Errorf("temp disk: mount: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unmount detaches the mount at path, if there is one.
func unmount(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// removeCgroup removes a job's cgroup directories in every hierarchy
// (runc delete normally has).
func removeCgroup(path string) {
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		os.Remove(filepath.Join("/sys/fs/cgroup", e.Name(), path))
	}
	os.Remove(filepath.Join("/sys/fs/cgroup", path))
}

func writeJSON(file string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// init is the init binary jobs run under, or "" for none.
func (r *Runc) init() string {
	switch r.cfg.Init {
	case "none":
		return ""
	case "":
		if _, err := os.Stat(DefaultInit); err == nil {
			return DefaultInit
		}
		return ""
	}
	return r.cfg.Init
}

// shellJoin writes args as a shell command line: each argument as it is
// when the shell would read it back unchanged, else in single quotes.
func shellJoin(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		plain := a != ""
		for _, c := range a {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_@%+=:,./-", c)) {
				plain = false
				break
			}
		}
		if plain {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}

// checkCommand fails when the job's command is certainly not in its
// rootfs (or a mount), so a typo is reported at start, as runc would have,
// rather than as the init's exit status 127. Anything it cannot tell for
// sure (e.g. an absolute symlink on the way) passes.
func checkCommand(rootfs string, spec *Spec) error {
	if len(spec.Args) == 0 {
		return nil
	}
	cmd := spec.Args[0]
	candidates := []string{cmd}
	if !strings.Contains(cmd, "/") {
		candidates = nil
		pathVar := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, kv := range spec.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				pathVar = v
			}
		}
		for _, d := range filepath.SplitList(pathVar) {
			if d != "" {
				candidates = append(candidates, filepath.Join(d, cmd))
			}
		}
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil
	}
	defer root.Close()
	for _, c := range candidates {
		if !filepath.IsAbs(c) {
			c = filepath.Join(spec.WorkingDir, c)
			if !filepath.IsAbs(c) {
				return nil // relative to an unknown working dir: let it run
			}
		}
		for _, m := range spec.Mounts {
			if filepath.Clean(m.Target) == filepath.Clean(c) {
				return nil
			}
		}
		if _, err := root.Stat(strings.TrimPrefix(c, "/")); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	return fmt.Errorf("exec: %q: no such file or directory in the job's image", cmd)
}
