// Package postgres is the PostgreSQL appliance: the system app "postgres"
// runs one primary PostgreSQL server (Debian's packages, from the stack)
// with its data on a persistent volume, and beside it the resource
// provider API in Flynn's protocol: POST /databases makes a database and
// a user of its own with a random password and answers {id, env};
// DELETE /databases?id= drops them.
//
// The server starts with the first database, and from then on with the
// job: a cluster with none runs no server (an idle one holds some 50 MB
// in five processes). Until then the appliance holds the server's port
// and answers each connection as PostgreSQL would, with a FATAL error.
//
// The server and the API run in one job, so the API reaches the server as
// its superuser through a unix socket inside the container (trust
// authentication there; every TCP connection needs a password, checked
// with SCRAM). A database is reachable by its own user only: CONNECT is
// revoked from PUBLIC on every database. Passwords travel only on stdin
// to psql and in the env the controller gives to apps; the server logs no
// statement text, even of a failed statement.
//
// The job's port is registered in discoverd as service "postgres"; its
// one instance is the leader (leader.postgres.discoverd). Apps reach it
// through a leader-only TCP route of the routers, at PublicHost and
// PublicPort: a standby and failover can come later behind the same
// names.
package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flynnrebuilt/flynn/internal/appliance"
)

// Config configures the appliance.
type Config struct {
	// DataDir holds the cluster's files (a volume; the server's data
	// goes to DataDir/pgdata).
	DataDir string
	// BinDir holds initdb, postgres and psql (default: the newest
	// /usr/lib/postgresql/*/bin).
	BinDir string
	// Port is the server's TCP port; ListenAddr the address it listens
	// on (default all).
	Port       int
	ListenAddr string
	// APIListen is the provider API's address, e.g. ":5433"; APIKey the
	// key it requires (as the HTTP Basic password: the provider URL the
	// controller holds carries it).
	APIListen string
	APIKey    string
	// SocketDir is where the server's unix socket goes (default a dir
	// under os.TempDir()).
	SocketDir string
	// User is the OS user the server runs as (default "postgres"); when
	// this process is not root it runs as this process's user.
	User string
	// PublicHost and PublicPort are where apps reach the server: they go
	// into DATABASE_URL and PGHOST/PGPORT.
	PublicHost string
	PublicPort int
	// Ready, when set, is called once the server accepts connections.
	Ready func()
	// ServerLog receives the server's own log (default os.Stderr, which
	// is the job's log).
	ServerLog io.Writer
}

// Run initialises the data dir on first start, runs the server and the
// provider API until ctx ends, then stops the server cleanly.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	a, err := New(cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Appliance is one PostgreSQL server with its provider API.
type Appliance struct {
	cfg      Config
	log      *slog.Logger
	uid, gid int
	asUser   bool // start processes as uid/gid

	runCtx context.Context
	exited chan error // the server's end, once started

	mu       sync.Mutex
	srv      *exec.Cmd    // the server, once started
	startErr error        // why it did not become ready
	hold     net.Listener // the server's port until it starts
	stopped  bool
}

// New checks cfg and fills in its defaults.
func New(cfg Config, log *slog.Logger) (*Appliance, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("postgres: no data dir")
	}
	if cfg.APIListen != "" && cfg.APIKey == "" {
		return nil, errors.New("postgres: the provider API needs a key")
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("postgres: port %d is not a port", cfg.Port)
	}
	if cfg.BinDir == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) < pgVersion(dirs[j]) })
		if len(dirs) == 0 {
			return nil, errors.New("postgres: no /usr/lib/postgresql/*/bin: install Debian's postgresql package (the stack has it)")
		}
		cfg.BinDir = dirs[len(dirs)-1]
	}
	if cfg.SocketDir == "" {
		cfg.SocketDir = filepath.Join(os.TempDir(), "flynn-postgres")
	}
	if cfg.ServerLog == nil {
		cfg.ServerLog = os.Stderr
	}
	if cfg.PublicHost == "" {
		cfg.PublicHost = "leader.postgres.discoverd"
	}
	if cfg.PublicPort == 0 {
		cfg.PublicPort = cfg.Port
	}
	a := &Appliance{cfg: cfg, log: log, uid: os.Getuid(), gid: os.Getgid()}
	if os.Getuid() == 0 {
		name := cfg.User
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("postgres: user %s: %w", name, err)
		}
		a.uid, _ = strconv.Atoi(u.Uid)
		a.gid, _ = strconv.Atoi(u.Gid)
		a.asUser = true
	}
	return a, nil
}

func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// started says whether the server was started (it may have failed to
// become ready since).
func (a *Appliance) started() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.srv != nil
}

func (a *Appliance) pgdata() string { return filepath.Join(a.cfg.DataDir, "pgdata") }

// command runs a server binary as the server's user, with env only from
// extra (plus PATH): no password of this process's env leaks into it.
func (a *Appliance) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(a.cfg.BinDir, name), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", "HOME=" + a.cfg.DataDir}
	if a.asUser {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.gid)}}
	}
	return cmd
}

// chownTree gives the server's user path and everything under it.
func (a *Appliance) chownTree(path string) error {
	if !a.asUser {
		return nil
	}
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, a.uid, a.gid)
	})
}

// serverConf is appended to postgresql.conf at initialisation; settings
// given on the command line (port, socket) are not secret.
const serverConf = `
# Written by the postgres component (flynn-data postgres).
listen_addresses = '*'
password_encryption = 'scram-sha-256'
# No statement text in the log, not even of a failing statement: a
# CREATE ROLE ... PASSWORD would show the password.
log_statement = 'none'
log_min_error_statement = 'panic'
log_min_duration_statement = -1
log_connections = off
shared_buffers = 32MB
max_connections = 100
# No logical replication (nothing subscribes): without workers for it,
# its launcher process is not started either (one process fewer idle).
max_logical_replication_workers = 0
`

// hbaConf lets the superuser in through the socket (inside the job only)
// and every other connection with a password.
const hbaConf = `# Written by flynn-host component postgres.
local   all   all                 trust
host    all   all   0.0.0.0/0     scram-sha-256
host    all   all   ::/0          scram-sha-256
`

// initdb makes the cluster on first start.
func (a *Appliance) initdb(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(a.pgdata(), "PG_VERSION")); err == nil {
		return a.chownTree(a.pgdata()) // a volume made by an older job keeps its owner
	}
	a.log.Info("initialising the database cluster", "dir", a.pgdata())
	tmp := a.pgdata() + ".init"
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	if err := a.chownTree(a.cfg.DataDir); err != nil {
		return err
	}
	cmd := a.command(ctx, "initdb", "-D", tmp, "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, appliance.LastLines(out, 5))
	}
	f, err := os.OpenFile(filepath.Join(tmp, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, serverConf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return err
	}
	if err := a.chownTree(tmp); err != nil {
		return err
	}
	// A new cluster has no database of a tenant: its server waits for
	// the first (written before the cluster gets its name, so a cluster
	// that has the name and no mark may hold databases).
	if err := os.WriteFile(a.emptyMark(), nil, 0o600); err != nil {
		return err
	}
	if err := appliance.SyncDir(a.cfg.DataDir); err != nil {
		return err
	}
	// Only a complete cluster gets the real name: a job killed during
	// initdb starts over.
	return os.Rename(tmp, a.pgdata())
}

// Run runs the provider API until ctx ends, and the server from the
// first database on (see ensureServer); then stops the server cleanly.
func (a *Appliance) Run(ctx context.Context) error {
	if err := a.initdb(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := os.MkdirAll(a.cfg.SocketDir, 0o700); err != nil {
		return err
	}
	if err := a.chownTree(a.cfg.SocketDir); err != nil {
		return err
	}
	// A server killed with its job leaves its pid file; the pid in it
	// means nothing in this new container.
	os.Remove(filepath.Join(a.pgdata(), "postmaster.pid"))
	a.runCtx = ctx
	a.exited = make(chan error, 1)
	if _, err := os.Stat(a.emptyMark()); err == nil {
		// No database yet: the port answers (health checks, the
		// routers' leader route) with an error until the first one.
		ln, err := net.Listen("tcp", net.JoinHostPort(a.listenHost(), strconv.Itoa(a.cfg.Port)))
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		a.hold = ln
		go refuseAll(ln)
		a.log.Info("no database yet: the server starts with the first")
	} else if err := a.ensureServer(); err != nil {
		a.stop()
		return err
	}
	api := &appliance.Server{Name: "postgres", APIListen: a.cfg.APIListen, APIKey: a.cfg.APIKey, Handler: a.Handler(),
		Exited: a.exited, Stop: a.stop, Port: a.cfg.Port, Ready: a.cfg.Ready, Log: a.log}
	return api.Serve(ctx)
}

// emptyMark names the file that says the cluster has no database of a
// tenant yet: initdb writes it, the first Provision removes it. Without
// it (a cluster made before it existed, too) the server starts with the
// job.
func (a *Appliance) emptyMark() string { return filepath.Join(a.cfg.DataDir, "no-databases") }

func (a *Appliance) listenHost() string {
	if a.cfg.ListenAddr == "*" {
		return ""
	}
	return a.cfg.ListenAddr
}

// ensureServer starts the server unless it runs, and waits until it
// answers. Only the first call starts it; the others wait for that one.
func (a *Appliance) ensureServer() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		return a.startErr
	}
	if a.stopped {
		return errors.New("postgres: the appliance is stopping")
	}
	if a.runCtx == nil {
		return errors.New("postgres: the appliance is not running (Run starts the server)")
	}
	// From now on the server starts with the job, whatever happens to
	// this start: the mark goes before anything is made.
	if err := os.Remove(a.emptyMark()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := appliance.SyncDir(a.cfg.DataDir); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if a.hold != nil {
		a.hold.Close()
		a.hold = nil
	}
	listen := a.cfg.ListenAddr
	if listen == "" {
		listen = "*"
	}
	srv := a.command(context.WithoutCancel(a.runCtx), "postgres", "-D", a.pgdata(), "-p", strconv.Itoa(a.cfg.Port),
		"-k", a.cfg.SocketDir, "-c", "listen_addresses="+listen)
	srv.Stdout, srv.Stderr = a.cfg.ServerLog, a.cfg.ServerLog
	if err := srv.Start(); err != nil {
		// Nothing runs: the appliance ends (Exited) and its job is
		// started again.
		a.exited <- err
		return fmt.Errorf("postgres: start the server: %w", err)
	}
	a.srv = srv
	go func() { a.exited <- srv.Wait() }()
	if err := a.waitReady(a.runCtx, a.exited); err != nil {
		// The appliance ends with the server (Exited).
		srv.Process.Signal(syscall.SIGINT)
		a.startErr = err
		return err
	}
	a.log.Info("server started", "port", a.cfg.Port)
	a.sweepUnfinished(a.runCtx)
	return nil
}

// unfinishedSQL lists what provisions cut short left (the appliance was
// killed, or its drop failed): a role of ours without its database, and
// a database of ours without its grants, the last step.
const unfinishedSQL = `SELECT datname FROM pg_database WHERE datname ~ '^db_[0-9a-f]{16}$' AND datacl IS NULL
UNION
SELECT rolname FROM pg_roles r WHERE rolname ~ '^db_[0-9a-f]{16}$'
	AND NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = r.rolname)`

// sweepUnfinished drops what provisions cut short left: their
// credentials never reached anyone. It runs as the server starts, before
// any provision (ensureServer holds them off). A failure is only logged:
// the next start tries again.
func (a *Appliance) sweepUnfinished(ctx context.Context) {
	out, err := a.psql(ctx, "postgres", unfinishedSQL)
	if err != nil {
		a.log.Warn("list what unfinished provisions left", "err", err)
		return
	}
	for _, id := range strings.Fields(out) {
		if !appliance.DatabaseID.MatchString(id) {
			continue
		}
		if err := a.drop(ctx, id); err != nil {
			a.log.Warn("drop what an unfinished provision left", "id", id, "err", err)
			continue
		}
		a.log.Info("dropped what an unfinished provision left", "id", id)
	}
}

// stop stops the server, if it was started, and waits for it.
func (a *Appliance) stop() error {
	a.mu.Lock()
	a.stopped = true
	srv := a.srv
	if a.hold != nil {
		a.hold.Close()
		a.hold = nil
	}
	a.mu.Unlock()
	if srv == nil {
		return nil
	}
	// SIGINT: the fast shutdown, a clean checkpoint without waiting for
	// clients.
	srv.Process.Signal(syscall.SIGINT)
	select {
	case err := <-a.exited:
		return ignoreSignalExit(err)
	case <-time.After(30 * time.Second):
		srv.Process.Kill()
		return errors.New("postgres: the server did not stop within 30s; killed")
	}
}

// refuseAll answers every connection to ln as a server with no database
// would, until ln is closed: an SSL request gets "no", a startup message
// a FATAL error naming the reason.
func refuseAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		go refuse(c)
	}
}

func refuse(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for range 2 { // an SSL or GSS request, then the startup message
		var head [8]byte
		if _, err := io.ReadFull(c, head[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[:4]))
		code := binary.BigEndian.Uint32(head[4:])
		if n < 8 || n > 10000 {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(n-8)); err != nil {
			return
		}
		if code == 80877103 || code == 80877104 { // SSLRequest, GSSENCRequest
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		break
	}
	var body []byte
	for _, f := range [][2]string{{"S", "FATAL"}, {"V", "FATAL"}, {"C", "3D000"}, {"M", "no database has been provisioned on this server yet"}} {
		body = append(append(append(body, f[0]...), f[1]...), 0)
	}
	body = append(body, 0)
	msg := append([]byte{'E', 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(msg[1:5], uint32(4+len(body)))
	c.Write(msg)
}

func ignoreSignalExit(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && !ee.Exited() {
		return nil
	}
	return err
}

// waitReady polls the server until it answers a query.
func (a *Appliance) waitReady(ctx context.Context, exited chan error) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := a.psql(ctx, "postgres", "SELECT 1"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("postgres: the server did not answer within 2 minutes: %v", err)
		}
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("postgres: the server exited while starting: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// psql runs SQL as the superuser through the socket; the SQL goes on
// stdin, never on a command line.
func (a *Appliance) psql(ctx context.Context, db, sql string) (string, error) {
	cmd := a.command(ctx, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", a.cfg.SocketDir, "-p", strconv.Itoa(a.cfg.Port), "-U", "postgres", "-d", db)
	cmd.Stdin = strings.NewReader(sql)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("psql: %v: %s", err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// Database is a provisioned database as the provider API answers it.
type Database struct {
	ID  string            `json:"id"`
	Env map[string]string `json:"env"`
}

// Provision makes a database and its own user with a random password.
func (a *Appliance) Provision(ctx context.Context) (*Database, error) {
	if err := a.ensureServer(); err != nil {
		return nil, err
	}
	id := "db_" + appliance.RandomHex(8)
	pass := appliance.RandomHex(24)
	// One step per call: CREATE DATABASE cannot run in a transaction.
	// The password is in SQL sent on psql's stdin. The database is made
	// closed to every role but the superuser (connection limit 0) and
	// opened to its own in the last step, with its grants: until then
	// its ACL is NULL, which tells a provision cut short (see
	// sweepUnfinished), and no other tenant ever reaches it.
	for _, step := range []struct{ db, sql string }{
		// Databases made by initdb are closed to the tenants.
		{"postgres", `REVOKE CONNECT ON DATABASE postgres FROM PUBLIC; REVOKE CONNECT ON DATABASE template1 FROM PUBLIC`},
		{"postgres", fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, id, pass)},
		{"postgres", fmt.Sprintf(`CREATE DATABASE %s OWNER %s CONNECTION LIMIT 0`, id, id)},
		// The new database's public schema belongs to the tenant (as
		// in PostgreSQL 15, PUBLIC cannot create there by default).
		{id, fmt.Sprintf(`ALTER SCHEMA public OWNER TO %s`, id)},
		{"postgres", fmt.Sprintf(`BEGIN; REVOKE ALL ON DATABASE %s FROM PUBLIC; GRANT ALL ON DATABASE %s TO %s; ALTER DATABASE %s CONNECTION LIMIT -1; COMMIT`, id, id, id, id)},
	} {
		if _, err := a.psql(ctx, step.db, step.sql); err != nil {
			a.drop(ctx, id)
			return nil, fmt.Errorf("provision %s: %w", id, err)
		}
	}
	a.log.Info("database provisioned", "id", id)
	hostPort := net.JoinHostPort(a.cfg.PublicHost, strconv.Itoa(a.cfg.PublicPort))
	u := url.URL{Scheme: "postgres", User: url.UserPassword(id, pass), Host: hostPort, Path: "/" + id}
	return &Database{ID: id, Env: map[string]string{
		"FLYNN_POSTGRES": "postgres",
		"DATABASE_URL":   u.String(),
		"PGHOST":         a.cfg.PublicHost,
		"PGPORT":         strconv.Itoa(a.cfg.PublicPort),
		"PGUSER":         id,
		"PGPASSWORD":     pass,
		"PGDATABASE":     id,
	}}, nil
}

// Deprovision drops a database (closing its connections) and its user.
// An id that does not exist is not an error: deletion is idempotent.
func (a *Appliance) Deprovision(ctx context.Context, id string) error {
	if !appliance.DatabaseID.MatchString(id) {
		return fmt.Errorf("database id %q is not one this provider made", id)
	}
	if !a.started() {
		return nil // no database was ever made here
	}
	if err := a.drop(ctx, id); err != nil {
		return err
	}
	a.log.Info("database deprovisioned", "id", id)
	return nil
}

func (a *Appliance) drop(ctx context.Context, id string) error {
	if _, err := a.psql(ctx, "postgres", fmt.Sprintf(`DROP DATABASE IF EXISTS %s WITH (FORCE)`, id)); err != nil {
		return fmt.Errorf("drop database %s: %w", id, err)
	}
	if _, err := a.psql(ctx, "postgres", fmt.Sprintf(`DROP ROLE IF EXISTS %s`, id)); err != nil {
		return fmt.Errorf("drop role %s: %w", id, err)
	}
	return nil
}

// Handler serves the provider API (appliance.Provider).
func (a *Appliance) Handler() http.Handler {
	return appliance.Provider{
		Provision:   func(ctx context.Context) (any, error) { return a.Provision(ctx) },
		Deprovision: a.Deprovision,
		Ping: func(ctx context.Context) error {
			if !a.started() {
				return nil // it starts with the first database
			}
			_, err := a.psql(ctx, "postgres", "SELECT 1")
			return err
		},
	}.Handler()
}
