// Package mysql is the MySQL appliance: the system app "mysql" runs one
// MariaDB server (Debian's packages, from the stack) with its data on a
// persistent volume, and beside it the resource provider API in Flynn's
// protocol: POST /databases makes a database and a user of its own with a
// random password and answers {id, env}; DELETE /databases?id= drops
// them. A provision or deprovision cut short (the job killed midway) is
// undone when the server next starts (sweepUnfinished); grants made
// before they escaped the _ are rewritten then too (escapeGrants).
//
// As with the postgres appliance (internal/appliance/postgres), the API
// runs in the server's job and reaches the server as root through its
// unix socket (MariaDB's unix_socket authentication); every TCP
// connection needs a password. A user is granted its own database only.
// Passwords travel only on the client's stdin and in the env the
// controller gives to apps; the general and slow query logs are off.
// The job's port is registered in discoverd as service "mysql"; apps
// reach its leader through a leader-only TCP route of the routers.
package mysql

import (
	"context"
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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flynnrebuilt/flynn/internal/appliance"
)

// Config configures the appliance.
type Config struct {
	// DataDir holds the server's files (a volume; the data goes to
	// DataDir/mysql).
	DataDir string
	// Port is the server's TCP port.
	Port int
	// APIListen is the provider API's address; APIKey the key it
	// requires as the HTTP Basic password.
	APIListen string
	APIKey    string
	// SocketDir is where the server's unix socket goes (default a dir
	// under os.TempDir()).
	SocketDir string
	// PublicHost and PublicPort are where apps reach the server.
	PublicHost string
	PublicPort int
	// Ready, when set, is called once the server and the API answer.
	Ready func()
	// ServerLog receives the server's log (default os.Stderr).
	ServerLog io.Writer
}

// Appliance is one MariaDB server with its provider API.
type Appliance struct {
	cfg      Config
	log      *slog.Logger
	uid, gid int
}

// Run initialises the data dir on first start, runs the server and the
// provider API until ctx ends, then stops the server cleanly.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.DataDir == "" {
		return errors.New("mysql: no data dir")
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return fmt.Errorf("mysql: port %d is not a port", cfg.Port)
	}
	if cfg.APIListen != "" && cfg.APIKey == "" {
		return errors.New("mysql: the provider API needs a key")
	}
	if os.Getuid() != 0 {
		return errors.New("mysql: run as root (the server drops to user mysql; the API logs in as root through the socket)")
	}
	if cfg.SocketDir == "" {
		cfg.SocketDir = filepath.Join(os.TempDir(), "flynn-mysql")
	}
	if cfg.ServerLog == nil {
		cfg.ServerLog = os.Stderr
	}
	if cfg.PublicHost == "" {
		cfg.PublicHost = "leader.mysql.discoverd"
	}
	if cfg.PublicPort == 0 {
		cfg.PublicPort = cfg.Port
	}
	u, err := user.Lookup("mysql")
	if err != nil {
		return fmt.Errorf("mysql: user mysql: %w (install Debian's mariadb-server: the stack has it)", err)
	}
	a := &Appliance{cfg: cfg, log: log}
	a.uid, _ = strconv.Atoi(u.Uid)
	a.gid, _ = strconv.Atoi(u.Gid)
	return a.run(ctx)
}

func (a *Appliance) datadir() string { return filepath.Join(a.cfg.DataDir, "mysql") }
func (a *Appliance) socket() string  { return filepath.Join(a.cfg.SocketDir, "mysqld.sock") }

func (a *Appliance) chownTree(path string) error {
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, a.uid, a.gid)
	})
}

func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "HOME=/root"}
	return cmd
}

func (a *Appliance) install(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return err
	}
	if err := a.chownTree(a.cfg.DataDir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(a.datadir(), "mysql")); err == nil {
		return nil
	}
	a.log.Info("initialising the database server", "dir", a.datadir())
	tmp := a.datadir() + ".init"
	os.RemoveAll(tmp)
	cmd := command(ctx, "mariadb-install-db", "--no-defaults", "--datadir="+tmp, "--user=mysql",
		"--auth-root-authentication-method=socket", "--skip-test-db")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb-install-db: %w: %s", err, appliance.LastLines(out, 5))
	}
	if err := a.chownTree(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, a.datadir())
}

func (a *Appliance) run(ctx context.Context) error {
	if err := a.install(ctx); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	if err := os.MkdirAll(a.cfg.SocketDir, 0o755); err != nil {
		return err
	}
	if err := a.chownTree(a.cfg.SocketDir); err != nil {
		return err
	}
	srv := command(context.WithoutCancel(ctx), "mariadbd", "--no-defaults", "--datadir="+a.datadir(), "--user=mysql",
		"--port="+strconv.Itoa(a.cfg.Port), "--bind-address=0.0.0.0", "--socket="+a.socket(),
		"--pid-file="+filepath.Join(a.cfg.SocketDir, "mysqld.pid"), "--skip-name-resolve",
		"--general-log=0", "--slow-query-log=0", "--innodb-buffer-pool-size=64M", "--character-set-server=utf8mb4",
		// io_uring and native AIO are refused by some container seccomp
		// profiles; synchronous I/O works everywhere.
		"--innodb-use-native-aio=0")
	srv.Stdout, srv.Stderr = a.cfg.ServerLog, a.cfg.ServerLog
	if err := srv.Start(); err != nil {
		return fmt.Errorf("mysql: start the server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	stop := func() error {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) && !ee.Exited() {
				return nil
			}
			return err
		case <-time.After(60 * time.Second):
			srv.Process.Kill()
			return errors.New("mysql: the server did not stop within 60s; killed")
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := a.sql(ctx, "SELECT 1"); err == nil {
			break
		} else if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("mysql: the server did not answer within 2 minutes: %v", err)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("mysql: the server exited while starting: %v", err)
		case <-ctx.Done():
			stop()
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := a.sweepUnfinished(ctx); err != nil {
		// Leftovers cost a little disk, not service: serve anyway.
		a.log.Warn("could not drop what unfinished provisions left", "err", err)
	}
	if err := a.escapeGrants(ctx); err != nil {
		a.log.Warn("could not escape the _ of grants made before it was", "err", err)
	}
	api := &appliance.Server{Name: "mysql", APIListen: a.cfg.APIListen, APIKey: a.cfg.APIKey, Handler: a.Handler(),
		Exited: exited, Stop: stop, Port: a.cfg.Port, Ready: a.cfg.Ready, Log: a.log}
	return api.Serve(ctx)
}

// sql runs SQL as root through the socket; the SQL goes on stdin.
func (a *Appliance) sql(ctx context.Context, sql string) (string, error) {
	cmd := command(ctx, "mariadb", "--no-defaults", "--protocol=socket", "--socket="+a.socket(), "-u", "root", "-N", "-B")
	cmd.Stdin = strings.NewReader(sql)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("mariadb: %v: %s", err, strings.TrimSpace(errOut.String()))
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
	id := "db_" + appliance.RandomHex(8)
	pass := appliance.RandomHex(24)
	// Each statement commits on its own: the user is made locked and
	// unlocked last, so a provision cut short (the job killed) leaves a
	// locked db_ user, which sweepUnfinished drops with its database
	// when the server next starts.
	// In a grant's database name _ matches any character unless escaped:
	// unescaped, the user could also make databases db?<its id>.
	sql := fmt.Sprintf("CREATE USER '%[1]s'@'%%' IDENTIFIED BY '%[2]s' ACCOUNT LOCK;\n"+
		"CREATE DATABASE `%[1]s` CHARACTER SET utf8mb4;\n"+
		"GRANT ALL PRIVILEGES ON `%[3]s`.* TO '%[1]s'@'%%';\n"+
		"ALTER USER '%[1]s'@'%%' ACCOUNT UNLOCK;\n", id, pass, strings.ReplaceAll(id, "_", `\_`))
	if _, err := a.sql(ctx, sql); err != nil {
		a.drop(ctx, id)
		return nil, fmt.Errorf("provision %s: %w", id, err)
	}
	a.log.Info("database provisioned", "id", id)
	hostPort := net.JoinHostPort(a.cfg.PublicHost, strconv.Itoa(a.cfg.PublicPort))
	u := url.URL{Scheme: "mysql", User: url.UserPassword(id, pass), Host: hostPort, Path: "/" + id}
	return &Database{ID: id, Env: map[string]string{
		"FLYNN_MYSQL":    "mysql",
		"DATABASE_URL":   u.String(),
		"MYSQL_HOST":     a.cfg.PublicHost,
		"MYSQL_PORT":     strconv.Itoa(a.cfg.PublicPort),
		"MYSQL_USER":     id,
		"MYSQL_PWD":      pass,
		"MYSQL_DATABASE": id,
	}}, nil
}

// drop drops a provisioned database and its user, the user first: one
// cut short between the two leaves a db_ database without its user, which
// sweepUnfinished drops.
func (a *Appliance) drop(ctx context.Context, id string) error {
	_, err := a.sql(ctx, fmt.Sprintf("DROP USER IF EXISTS '%[1]s'@'%%';\nDROP DATABASE IF EXISTS `%[1]s`;\n", id))
	return err
}

// sweepUnfinished drops what a provision or deprovision cut short left:
// a db_ user still locked (with its database, if made) and a db_ database
// without its user. A tenant can bring about neither: it cannot lock,
// drop or create users, and its own database keeps its user. Names not of
// Provision's form are left alone.
func (a *Appliance) sweepUnfinished(ctx context.Context) error {
	out, err := a.sql(ctx, "SELECT User FROM mysql.global_priv WHERE User LIKE 'db\\_%' AND JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true');\n"+
		"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'db\\_%' AND SCHEMA_NAME NOT IN (SELECT User FROM mysql.global_priv);\n")
	if err != nil {
		return err
	}
	var ids []string
	for _, id := range strings.Fields(out) {
		if appliance.DatabaseID.MatchString(id) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		if err := a.drop(ctx, id); err != nil {
			return err
		}
	}
	if len(ids) > 0 {
		a.log.Info("dropped what an unfinished provision or deprovision left", "ids", ids)
	}
	return nil
}

// escapeGrants mends the grants of databases provisioned before Provision
// escaped the _ in them: such a grant, on `db_<id>`.*, also lets its user
// make and use databases db?<id>. Each becomes the grant on
// `db\_<id>`.*, the new one made before the old one goes, so a kill in
// between leaves both and the next start finishes. What a user already
// made through the wildcard stays, out of its reach.
func (a *Appliance) escapeGrants(ctx context.Context) error {
	out, err := a.sql(ctx, "SELECT User FROM mysql.db WHERE Host = '%' AND User LIKE 'db\\_%' AND Db = User;\n")
	if err != nil {
		return err
	}
	var ids []string
	for _, id := range strings.Fields(out) {
		if !appliance.DatabaseID.MatchString(id) || slices.Contains(ids, id) {
			continue
		}
		ids = append(ids, id)
		sql := fmt.Sprintf("GRANT ALL PRIVILEGES ON `%[2]s`.* TO '%[1]s'@'%%';\n"+
			"REVOKE ALL PRIVILEGES ON `%[1]s`.* FROM '%[1]s'@'%%';\n", id, strings.ReplaceAll(id, "_", `\_`))
		if _, err := a.sql(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
	}
	if len(ids) > 0 {
		a.log.Info("escaped the _ in grants made before it was", "ids", ids)
	}
	return nil
}

// Handler serves the provider API (appliance.Provider).
func (a *Appliance) Handler() http.Handler {
	return appliance.Provider{
		Provision: func(ctx context.Context) (any, error) { return a.Provision(ctx) },
		Deprovision: func(ctx context.Context, id string) error {
			if err := a.drop(ctx, id); err != nil {
				return fmt.Errorf("deprovision %s: %w", id, err)
			}
			a.log.Info("database deprovisioned", "id", id)
			return nil
		},
		Ping: func(ctx context.Context) error {
			_, err := a.sql(ctx, "SELECT 1")
			return err
		},
	}.Handler()
}
