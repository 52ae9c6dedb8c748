package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/appliance/postgres"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs the appliance until the test ends or stop is called.
func start(t *testing.T, cfg postgres.Config) (stop func()) {
	t.Helper()
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- postgres.Run(ctx, cfg, logging.Discard()) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("appliance stopped while starting: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("appliance not ready within 2 minutes")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("appliance: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// sql runs SQL with psql as a tenant would: over TCP with its env.
func sql(env map[string]string, query string) (string, error) {
	cmd := exec.Command("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(query)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func provision(t *testing.T, api, key string) map[string]string {
	t.Helper()
	req, _ := http.NewRequest("POST", api+"/databases", strings.NewReader("{}"))
	req.SetBasicAuth("", key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var db postgres.Database
	if res.StatusCode != 200 || json.NewDecoder(res.Body).Decode(&db) != nil {
		t.Fatalf("provision: %s", res.Status)
	}
	for _, k := range []string{"DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"} {
		if db.Env[k] == "" {
			t.Fatalf("provision: no %s in %v", k, db.Env)
		}
	}
	if db.Env["PGDATABASE"] != db.ID {
		t.Fatalf("database %s, id %s", db.Env["PGDATABASE"], db.ID)
	}
	return db.Env
}

func deprovision(t *testing.T, api, key, id string) int {
	t.Helper()
	req, _ := http.NewRequest("DELETE", api+"/databases?id="+id, nil)
	req.SetBasicAuth("", key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestApplianceProvisionsAndKeepsData runs the appliance on this machine's
// PostgreSQL: its server starts with the first database (and from then on
// with the appliance); databases are made through the provider API, each reached by
// its own user only, their rows survive a restart of the server, the
// server's log holds no password, and deprovisioning drops them.
func TestApplianceProvisionsAndKeepsData(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("needs PostgreSQL (Debian's postgresql package)")
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(dirs) == 0 {
		t.Skip("needs PostgreSQL's server (Debian's postgresql package)")
	}
	dir := testslot.Dir(t)
	// The server runs as user postgres when the test is root: it must
	// reach its dirs.
	for d := dir; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	ports := testslot.Ports(t, 2)
	key := "test-key"
	log := &lockedBuf{}
	cfg := postgres.Config{
		DataDir: filepath.Join(dir, "data"), SocketDir: filepath.Join(dir, "sock"),
		Port: ports[0], ListenAddr: "127.0.0.1", APIListen: fmt.Sprintf("127.0.0.1:%d", ports[1]), APIKey: key,
		PublicHost: "127.0.0.1", ServerLog: log,
	}
	stop := start(t, cfg)
	api := "http://" + cfg.APIListen

	// The API needs its key; bad ids are 400s.
	res, err := http.Post(api+"/databases", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("provision without key: %s", res.Status)
	}
	if code := deprovision(t, api, key, "postgres"); code != http.StatusBadRequest {
		t.Fatalf("deprovision of a bad id: %d", code)
	}

	// No database yet: no server runs. Its port answers as a server
	// would, with an error; deleting a database that was never made
	// starts nothing.
	sock := filepath.Join(cfg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", ports[0]))
	serverRuns := func() bool {
		_, err := os.Stat(sock)
		return err == nil
	}
	if serverRuns() {
		t.Fatal("the server runs before any database was made")
	}
	nobody := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(ports[0]), "PGUSER": "x", "PGPASSWORD": "x", "PGDATABASE": "x"}
	if out, err := sql(nobody, "SELECT 1"); err == nil || !strings.Contains(out, "no database has been provisioned") {
		t.Fatalf("connect before any database: %q %v", out, err)
	}
	if code := deprovision(t, api, key, "db_0123456789abcdef"); code != http.StatusOK {
		t.Fatalf("deprovision before any database: %d", code)
	}
	if serverRuns() {
		t.Fatal("a deprovision started the server")
	}
	// Nor does a restart.
	stop()
	stop = start(t, cfg)
	if serverRuns() {
		t.Fatal("the server runs after a restart, before any database was made")
	}

	a := provision(t, api, key)
	if !serverRuns() {
		t.Fatal("no server after a database was made")
	}
	b := provision(t, api, key)
	if a["PGPORT"] != strconv.Itoa(ports[0]) || !strings.HasPrefix(a["DATABASE_URL"], "postgres://"+a["PGUSER"]+":"+a["PGPASSWORD"]+"@127.0.0.1:") {
		t.Fatalf("env %v", a)
	}
	if out, err := sql(a, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept'); SELECT v FROM t"); err != nil || out != "kept" {
		t.Fatalf("tenant a: %q %v", out, err)
	}
	// b's credentials do not reach a's database, nor the superuser's.
	cross := map[string]string{"PGHOST": b["PGHOST"], "PGPORT": b["PGPORT"], "PGUSER": b["PGUSER"], "PGPASSWORD": b["PGPASSWORD"], "PGDATABASE": a["PGDATABASE"]}
	if out, err := sql(cross, "SELECT 1"); err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("b into a's database: %q %v", out, err)
	}
	cross["PGDATABASE"] = "postgres"
	if out, err := sql(cross, "SELECT 1"); err == nil {
		t.Fatalf("b into the postgres database: %q", out)
	}
	wrong := map[string]string{"PGHOST": a["PGHOST"], "PGPORT": a["PGPORT"], "PGUSER": a["PGUSER"], "PGPASSWORD": "wrong", "PGDATABASE": a["PGDATABASE"]}
	if out, err := sql(wrong, "SELECT 1"); err == nil || !strings.Contains(out, "password authentication failed") {
		t.Fatalf("a with a wrong password: %q %v", out, err)
	}

	// flynn pg dump and restore's commands, as the tenant: a round trip.
	dumpFile := filepath.Join(dir, "a.dump")
	dumpCmd := exec.Command("pg_dump", "--format=custom", "--no-owner", "--no-acl", "-f", dumpFile)
	restoreCmd := exec.Command("pg_restore", "--clean", "--if-exists", "--no-owner", "--no-acl", "--exit-on-error", "-d", a["PGDATABASE"], dumpFile)
	for _, cmd := range []*exec.Cmd{dumpCmd, restoreCmd} {
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		for k, v := range a {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	if out, err := dumpCmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v %s", err, out)
	}
	if out, err := sql(a, "DELETE FROM t; SELECT count(*) FROM t"); err != nil || out != "0" {
		t.Fatalf("delete: %q %v", out, err)
	}
	if out, err := restoreCmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v %s", err, out)
	}
	if out, err := sql(a, "SELECT v FROM t"); err != nil || out != "kept" {
		t.Fatalf("after restore: %q %v", out, err)
	}

	// What provisions cut short leave (a role without its database, a
	// database without its grants, the last step) is dropped when the
	// server next starts; other roles and databases are not.
	super := func(query string) string {
		t.Helper()
		out, err := exec.Command("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", cfg.SocketDir,
			"-p", strconv.Itoa(ports[0]), "-U", "postgres", "-d", "postgres", "-c", query).CombinedOutput()
		if err != nil {
			t.Fatalf("psql %q: %v %s", query, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, q := range []string{
		"CREATE ROLE db_00000000000000aa LOGIN",
		"CREATE ROLE db_00000000000000bb LOGIN",
		"CREATE DATABASE db_00000000000000bb OWNER db_00000000000000bb",
		"CREATE ROLE keepme",
		"CREATE DATABASE keepme OWNER keepme",
	} {
		super(q)
	}
	ours := "SELECT string_agg(rolname, ' ' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'db\\_%' OR rolname = 'keepme'"
	dbs := "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database WHERE datname LIKE 'db\\_%' OR datname = 'keepme'"
	made := []string{a["PGUSER"], b["PGUSER"]}
	slices.Sort(made)
	want := strings.Join(made, " ") + " keepme"

	// A restart keeps the data; the server starts with the appliance.
	stop()
	start(t, cfg)
	if !serverRuns() {
		t.Fatal("the server did not start with the appliance, with databases made")
	}
	if out, err := sql(a, "SELECT v FROM t"); err != nil || out != "kept" {
		t.Fatalf("after restart: %q %v", out, err)
	}
	if got := super(ours); got != want {
		t.Errorf("roles after restart: %q, want %q", got, want)
	}
	if got := super(dbs); got != want {
		t.Errorf("databases after restart: %q, want %q", got, want)
	}

	if code := deprovision(t, api, key, a["PGDATABASE"]); code != http.StatusOK {
		t.Fatalf("deprovision: %d", code)
	}
	if out, err := sql(a, "SELECT 1"); err == nil {
		t.Fatalf("a after deprovision: %q", out)
	}
	if code := deprovision(t, api, key, a["PGDATABASE"]); code != http.StatusOK {
		t.Fatalf("deprovision again: %d", code)
	}
	for _, env := range []map[string]string{a, b} {
		if strings.Contains(log.String(), env["PGPASSWORD"]) {
			t.Fatalf("the server log holds a password:\n%s", log)
		}
	}
}
