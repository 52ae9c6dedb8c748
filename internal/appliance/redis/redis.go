// Package redis is the Redis appliance: the system app "redis" gives every
// database a redis-server of its own (Debian's redis-server, from the
// stack), as Flynn and Heroku give each Redis resource its own instance:
// an app may use any key, SELECT, FLUSHALL or MULTI without meeting
// another app's data.
//
// The servers listen on unix sockets inside the appliance's job only,
// each with its database's password, run as user redis, keep their data (append-only file, fsync every
// second) under DataDir/<id> on the job's volume, and are restarted when
// they exit. The job's one TCP port is a proxy (proxy.go): a client's
// AUTH (or HELLO ... AUTH) password names its database, and the rest of
// the connection goes to that database's server. The proxy's port is
// registered in discoverd as service "redis"; apps reach its leader
// through a leader-only TCP route of the routers, at PublicHost and
// PublicPort.
//
// Beside it runs the resource provider API in Flynn's protocol: POST
// /databases starts a new server and answers {id, env} with REDIS_URL,
// REDIS_HOST, REDIS_PORT and REDIS_PASSWORD; DELETE /databases?id= stops
// it and removes its data. Passwords are kept in DataDir/<id>/password
// (0600, root) and reach a server on its stdin, never on a command line.
package redis

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flynnrebuilt/flynn/internal/appliance"
)

// Config configures the appliance.
type Config struct {
	// DataDir holds the databases, one directory each (a volume).
	DataDir string
	// Port is the proxy's TCP port.
	Port int
	// APIListen is the provider API's address; APIKey the key it
	// requires as the HTTP Basic password.
	APIListen string
	APIKey    string
	// RunDir is where the servers' sockets and configs go (default a
	// dir under os.TempDir()).
	RunDir string
	// PublicHost and PublicPort are where apps reach the proxy.
	PublicHost string
	PublicPort int
	// MaxMemory is each server's maxmemory (default 64mb); a full
	// database refuses writes (noeviction) rather than lose keys.
	MaxMemory string
	// ServerBin is redis-server's path (default: found in PATH).
	ServerBin string
	// User is the user the servers run as (default redis; "-": the
	// appliance's own user, which need not be root: for tests).
	User string
	// Ready, when set, is called once the proxy and the API listen.
	Ready func()
	// ServerLog receives the servers' logs (default os.Stderr).
	ServerLog io.Writer
}

// Appliance is the Redis servers, their proxy and the provider API.
type Appliance struct {
	cfg  Config
	log  *slog.Logger
	cred *syscall.Credential // nil: run servers as ourselves

	ctx context.Context
	mu  sync.Mutex
	dbs map[string]*server
	wg  sync.WaitGroup
}

// server is one database's redis-server, kept running by run.
type server struct {
	id, password string
	stop         context.CancelFunc
	done         chan struct{}
}

// Run starts every database's server, then serves the proxy and the
// provider API until ctx ends, when it stops the servers (each writes its
// append-only file out).
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.DataDir == "" {
		return errors.New("redis: no data dir")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return fmt.Errorf("redis: port %d is not a port", cfg.Port)
	}
	if cfg.APIListen != "" && cfg.APIKey == "" {
		return errors.New("redis: the provider API needs a key")
	}
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(os.TempDir(), "flynn-redis")
	}
	if cfg.ServerLog == nil {
		cfg.ServerLog = os.Stderr
	}
	if cfg.PublicHost == "" {
		cfg.PublicHost = "leader.redis.discoverd"
	}
	if cfg.PublicPort == 0 {
		cfg.PublicPort = cfg.Port
	}
	if cfg.MaxMemory == "" {
		cfg.MaxMemory = "64mb"
	}
	if cfg.ServerBin == "" {
		p, err := exec.LookPath("redis-server")
		if err != nil {
			return errors.New("redis: no redis-server in PATH (install Debian's redis-server: the stack has it)")
		}
		cfg.ServerBin = p
	}
	if cfg.User == "" {
		cfg.User = "redis"
	}
	a := &Appliance{cfg: cfg, log: log, ctx: ctx, dbs: map[string]*server{}}
	if cfg.User != "-" {
		if os.Getuid() != 0 {
			return errors.New("redis: run as root (the servers run as user redis; their data and passwords are root's)")
		}
		u, err := user.Lookup(cfg.User)
		if err != nil {
			return fmt.Errorf("redis: user %s: %w (install Debian's redis-server: the stack has it)", cfg.User, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		a.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return a.run(ctx)
}

func (a *Appliance) dbDir(id string) string  { return filepath.Join(a.cfg.DataDir, id) }
func (a *Appliance) socket(id string) string { return filepath.Join(a.cfg.RunDir, id+".sock") }

func (a *Appliance) run(ctx context.Context) error {
	for _, d := range []string{a.cfg.DataDir, a.cfg.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
	}
	// The servers' user passes through the data dir to its databases'
	// data dirs (each its own, 0700) and owns the sockets' dir.
	if err := os.Chmod(a.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if a.cred != nil {
		if err := os.Chown(a.cfg.RunDir, int(a.cred.Uid), int(a.cred.Gid)); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
	}
	// Start every database's server; leftovers of a provisioning or a
	// deletion cut short go.
	ents, err := os.ReadDir(a.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".new") || strings.HasSuffix(name, ".deleted"):
			os.RemoveAll(filepath.Join(a.cfg.DataDir, name))
		case appliance.DatabaseID.MatchString(name) && e.IsDir():
			pass, err := os.ReadFile(filepath.Join(a.dbDir(name), "password"))
			if err != nil {
				a.log.Error("database without its password: not started", "id", name, "err", err)
				continue
			}
			if err := a.start(name, strings.TrimSpace(string(pass))); err != nil {
				a.stopAll()
				return err
			}
		}
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(a.cfg.Port))
	if err != nil {
		a.stopAll()
		return fmt.Errorf("redis: %w", err)
	}
	proxyErr := make(chan error, 1)
	go func() { proxyErr <- a.serveProxy(ln) }()
	srv := &appliance.Server{Name: "redis", APIListen: a.cfg.APIListen, APIKey: a.cfg.APIKey, Handler: a.Handler(),
		Exited: proxyErr, Port: ln.Addr().(*net.TCPAddr).Port, Ready: a.cfg.Ready, Log: a.log,
		Stop: func() error {
			ln.Close()
			a.stopAll()
			return nil
		}}
	return srv.Serve(ctx)
}

func (a *Appliance) serveProxy(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		go serveConn(c, a.dial)
	}
}

// dial finds the database pass opens and connects to its server,
// waiting a little for one that is restarting.
func (a *Appliance) dial(user, pass string) (net.Conn, bool, error) {
	a.mu.Lock()
	var s *server
	for _, d := range a.dbs {
		if subtle.ConstantTimeCompare([]byte(d.password), []byte(pass)) == 1 {
			s = d
		}
	}
	a.mu.Unlock()
	if s == nil || (user != "" && user != "default" && user != s.id) {
		return nil, false, nil
	}
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		var c net.Conn
		if c, err = net.DialTimeout("unix", a.socket(s.id), 2*time.Second); err == nil {
			return c, true, nil
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.log.Warn("database's server unreachable", "id", s.id, "err", err)
	return nil, true, fmt.Errorf("database %s is not available, try again", s.id)
}

// config is a server's configuration: no TCP, its socket, its data dir,
// append-only persistence, bounded memory, its password. It reaches the
// server on its stdin ("redis-server -"), so the password is in no file
// and on no command line, and CONFIG REWRITE has no file to write.
func (a *Appliance) config(id, password string) string {
	return strings.Join([]string{
		"requirepass " + password,
		"port 0",
		"unixsocket " + a.socket(id),
		"unixsocketperm 700",
		"dir " + filepath.Join(a.dbDir(id), "data"),
		"appendonly yes",
		"appendfsync everysec",
		"save \"\"",
		"maxmemory " + a.cfg.MaxMemory,
		"maxmemory-policy noeviction",
		"daemonize no",
		"loglevel notice",
		"logfile \"\"",
		"protected-mode no",
		// Redis 7's defaults, said out loud: no CONFIG SET of dir and
		// the like, no DEBUG, no MODULE LOAD from clients.
		"enable-protected-configs no",
		"enable-debug-command no",
		"enable-module-command no",
		"",
	}, "\n")
}

// start keeps id's server running until stopped.
func (a *Appliance) start(id, password string) error {
	if strings.ContainsAny(password, " \t\r\n\"'") || password == "" {
		return fmt.Errorf("redis: database %s: a password must be one word", id)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(a.ctx))
	s := &server{id: id, password: password, stop: cancel, done: make(chan struct{})}
	a.mu.Lock()
	a.dbs[id] = s
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(s.done)
		a.keepRunning(ctx, id, password)
	}()
	return nil
}

// keepRunning runs id's server until ctx ends, restarting it (with
// backoff) when it exits.
func (a *Appliance) keepRunning(ctx context.Context, id, password string) {
	backoff := time.Second
	for {
		started := time.Now()
		err := a.runServer(ctx, id, password)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second
		}
		a.log.Error("database's server exited; restarting", "id", id, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// runServer runs id's server once; when ctx ends it asks it to stop
// (SIGTERM: it finishes writing) and waits.
func (a *Appliance) runServer(ctx context.Context, id, password string) error {
	cmd := exec.Command(a.cfg.ServerBin, "-")
	cmd.Stdin = strings.NewReader(a.config(id, password))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"}
	cmd.Dir = a.dbDir(id)
	cmd.Stdout = prefixWriter(a.cfg.ServerLog, id)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: a.cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return err
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			return <-exited
		}
	}
}

// stopAll stops every server and waits for them.
func (a *Appliance) stopAll() {
	a.mu.Lock()
	for _, s := range a.dbs {
		s.stop()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// ping waits until id's server answers PING on its socket.
func (a *Appliance) ping(ctx context.Context, id, password string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := func() error {
			c, err := net.DialTimeout("unix", a.socket(id), time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			rc := &conn{Conn: c, br: bufio.NewReader(c)}
			if _, err := rc.do("AUTH", password); err != nil {
				return err
			}
			v, err := rc.do("PING")
			if err != nil {
				return err
			}
			if v != "PONG" {
				return fmt.Errorf("PING answered %v", v)
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server of %s did not answer within %s: %v", id, within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Database is a provisioned database as the provider API answers it.
type Database struct {
	ID  string            `json:"id"`
	Env map[string]string `json:"env"`
}

// Provision makes a database: its directory (made aside and renamed into
// place, so a crash leaves none half-made), its password and its server.
func (a *Appliance) Provision(ctx context.Context) (*Database, error) {
	id := "db_" + appliance.RandomHex(8)
	pass := appliance.RandomHex(24)
	tmp := a.dbDir(id) + ".new"
	err := func() error {
		if err := os.MkdirAll(filepath.Join(tmp, "data"), 0o700); err != nil {
			return err
		}
		if a.cred != nil {
			if err := os.Chown(filepath.Join(tmp, "data"), int(a.cred.Uid), int(a.cred.Gid)); err != nil {
				return err
			}
		}
		if err := os.Chmod(tmp, 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(tmp, "password"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(pass + "\n"); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp, a.dbDir(id)); err != nil {
			return err
		}
		appliance.SyncDir(a.cfg.DataDir)
		return nil
	}()
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("provision %s: %w", id, err)
	}
	if err := a.start(id, pass); err != nil {
		a.drop(id)
		return nil, fmt.Errorf("provision %s: %w", id, err)
	}
	if err := a.ping(ctx, id, pass, 30*time.Second); err != nil {
		a.drop(id)
		return nil, fmt.Errorf("provision %s: %w", id, err)
	}
	a.log.Info("database provisioned", "id", id)
	port := strconv.Itoa(a.cfg.PublicPort)
	u := url.URL{Scheme: "redis", User: url.UserPassword("", pass), Host: net.JoinHostPort(a.cfg.PublicHost, port)}
	return &Database{ID: id, Env: map[string]string{
		"FLYNN_REDIS":    "redis",
		"REDIS_URL":      u.String(),
		"REDIS_HOST":     a.cfg.PublicHost,
		"REDIS_PORT":     port,
		"REDIS_PASSWORD": pass,
	}}, nil
}

// drop stops id's server and removes its data (renamed away first, so a
// crash part-way leaves no half-deleted database).
func (a *Appliance) drop(id string) error {
	a.mu.Lock()
	s := a.dbs[id]
	delete(a.dbs, id)
	a.mu.Unlock()
	if s != nil {
		s.stop()
		<-s.done
	}
	os.Remove(a.socket(id))
	gone := a.dbDir(id) + ".deleted"
	if err := os.Rename(a.dbDir(id), gone); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(gone)
}

// Handler serves the provider API (appliance.Provider).
func (a *Appliance) Handler() http.Handler {
	return appliance.Provider{
		Provision: func(ctx context.Context) (any, error) { return a.Provision(ctx) },
		Deprovision: func(ctx context.Context, id string) error {
			if err := a.drop(id); err != nil {
				return fmt.Errorf("deprovision %s: %w", id, err)
			}
			a.log.Info("database deprovisioned", "id", id)
			return nil
		},
	}.Handler()
}

// prefixWriter writes each line of a server's log to w after its
// database's id.
func prefixWriter(w io.Writer, id string) io.Writer { return &lineWriter{w: w, prefix: id + ": "} }

type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 8192 { // a line that never ends
		fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf)
		l.buf = l.buf[:0]
	}
	return len(p), nil
}
