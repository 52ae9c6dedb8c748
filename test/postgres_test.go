package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestPostgresAddon: on a cluster with the postgres appliance, a Node.js
// app using the pg package from the npm registry gets a database with
// flynn resource add postgres (deployed at once), writes rows and reads
// them back; the rows survive the postgres job being killed (the
// scheduler starts it again on its volume) and a power cut of the whole
// cluster; flynn pg psql, dump and restore round-trip; flynn resource
// remove takes the env away.
func TestPostgresAddon(t *testing.T) {
	// Routers bind TCP route ports on every address: a port of this
	// slot's own keeps concurrent test clusters apart.
	pgPort := fmt.Sprint(3440 + testslot.Get(t).N)
	c := startE2ECluster(t, nil, "--postgres-host", e2eBridgeIP, "--postgres-port", pgPort)
	dir := t.TempDir()
	if out := c.flynn(dir, "provider"); !strings.Contains(out, " postgres ") {
		t.Fatalf("flynn provider does not list postgres:\n%s", out)
	}
	a := newPushApp(t, c, nil, "nodepg", "pgapp", false)
	if out, ok := a.push("main"); !ok {
		t.Fatalf("push: %s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "pgapp to run without a database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 500 && strings.Contains(body, "db error"), nil
	})

	start := time.Now()
	if out := a.flynn("resource", "add", "postgres"); !strings.Contains(out, "deployed a release of pgapp") {
		t.Fatalf("resource add: %s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "pgapp to serve with its database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 200 && strings.HasPrefix(body, "rows: "), nil
	})
	t.Logf("resource add to the app serving with its database: %s", time.Since(start).Round(time.Millisecond))

	env := a.flynn("env")
	for _, k := range []string{"DATABASE_URL=postgres://", "PGHOST=", "PGPORT=" + pgPort, "PGUSER=", "PGPASSWORD=", "PGDATABASE="} {
		if !strings.Contains(env, k) {
			t.Errorf("flynn env lacks %s:\n%s", k, env)
		}
	}
	post, rows := a.postRow, a.waitRows
	post("a")
	post("b")
	rows("a,b")

	// psql with arguments, dump to a file.
	if out := a.flynn("pg", "psql", "--", "-A", "-t", "-c", "select string_agg(v, '+' order by id) from rows"); !strings.Contains(out, "a+b") {
		t.Fatalf("pg psql: %s", out)
	}
	dump := filepath.Join(dir, "db.dump")
	a.flynn("pg", "dump", "-f", dump)
	if b, err := os.ReadFile(dump); err != nil || !strings.HasPrefix(string(b), "PGDMP") {
		t.Fatalf("dump file: %v %q", err, b[:min(len(b), 16)])
	}

	// Kill the postgres job: the scheduler starts it again, on the host
	// holding its volume, and the rows are there.
	vol := c.killApplianceJob("postgres")
	rows("a,b")
	if out := c.flynn(dir, "-a", "postgres", "volume", "list"); !strings.Contains(out, vol) || !strings.Contains(out, "/data") {
		t.Errorf("flynn volume list:\n%s", out)
	}

	// Restore brings back what the dump held.
	a.flynn("pg", "psql", "--", "-c", "delete from rows")
	rows("")
	a.flynn("pg", "restore", "-f", dump)
	rows("a,b")

	// A power cut with a reboot of the whole cluster keeps them too: the
	// platform comes back, postgres recovers from its WAL on its volume.
	c.powerOff(true)
	start = time.Now()
	c.up()
	rows("a,b")
	t.Logf("power cut: up to the app serving its rows again: %s", time.Since(start).Round(time.Millisecond))

	// Removing the resource takes the env away and deploys.
	a.flynn("resource", "remove", "-y", "postgres")
	if env := a.flynn("env"); strings.Contains(env, "DATABASE_URL") || strings.Contains(env, "PGPASSWORD") {
		t.Errorf("env after resource remove:\n%s", env)
	}
	waitFor(t, within(t, 2*time.Minute), "pgapp to run without its database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 500 && strings.Contains(body, "db error"), nil
	})
}
