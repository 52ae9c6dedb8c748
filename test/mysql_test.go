package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestMySQLAddon: the mysql appliance (scaled up from 0), a Node.js app
// using the mysql2 package gets a database with flynn resource add mysql,
// writes rows and reads them back; they survive the mysql job being
// killed (whose restart drops what unfinished provisions left) and a
// power cut of the whole cluster; another app's credentials do not reach
// them, nor can the app make databases beside its own; flynn mysql
// console, dump and restore round-trip.
func TestMySQLAddon(t *testing.T) {
	myPort := fmt.Sprint(3460 + testslot.Get(t).N)
	c := startE2ECluster(t, nil, "--mysql-host", e2eBridgeIP, "--mysql-port", myPort,
		"--postgres-port", fmt.Sprint(3440+testslot.Get(t).N))
	dir := t.TempDir()
	if out := c.flynn(dir, "provider"); !strings.Contains(out, " mysql ") {
		t.Fatalf("flynn provider does not list mysql:\n%s", out)
	}
	c.flynn(dir, "-a", "mysql", "scale", "mysql=1")
	a := newPushApp(t, c, nil, "nodemysql", "myapp", false)
	if out, ok := a.push("main"); !ok {
		t.Fatalf("push: %s", out)
	}
	start := time.Now()
	if out := a.flynn("resource", "add", "mysql"); !strings.Contains(out, "deployed a release of myapp") {
		t.Fatalf("resource add: %s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "myapp to serve with its database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 200 && strings.HasPrefix(body, "rows: "), fmt.Errorf("%d %s", status, body)
	})
	t.Logf("resource add to the app serving with its database: %s", time.Since(start).Round(time.Millisecond))
	env := a.flynn("env")
	for _, k := range []string{"DATABASE_URL=mysql://", "MYSQL_HOST=", "MYSQL_PORT=" + myPort, "MYSQL_USER=", "MYSQL_PWD=", "MYSQL_DATABASE="} {
		if !strings.Contains(env, k) {
			t.Errorf("flynn env lacks %s:\n%s", k, env)
		}
	}
	post, rows := a.postRow, a.waitRows
	post("a")
	post("b")
	rows("a,b")

	if out := a.flynn("mysql", "console", "--", "-N", "-e", "select group_concat(v order by id separator '+') from rows_"); !strings.Contains(out, "a+b") {
		t.Fatalf("mysql console: %s", out)
	}
	dump := filepath.Join(dir, "db.sql")
	a.flynn("mysql", "dump", "-f", dump)
	if b, err := os.ReadFile(dump); err != nil || !strings.Contains(string(b), "INSERT INTO `rows_`") {
		t.Fatalf("dump file: %v\n%s", err, b)
	}

	// What a provision or deprovision cut short by a kill leaves (a
	// locked db_ user, with or without its database; a db_ database
	// without its user) is dropped when the server next starts; an app's
	// database and names not of the appliance's form stay.
	rootSQLErr := func(sql string) (string, error) {
		j := c.applianceJob("mysql")
		if j == nil || j.PID == 0 {
			return "", fmt.Errorf("no running mysql job with a pid:\n%s", c.jobTable(c.hosts[0]))
		}
		cmd := exec.Command("nsenter", "-t", fmt.Sprint(j.PID), "-m", "--", "mariadb", "--no-defaults",
			"--protocol=socket", "--socket=/tmp/flynn-mysql/mysqld.sock", "-u", "root", "-N", "-B")
		cmd.Stdin = strings.NewReader(sql)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("root sql in the mysql job: %v\n%s", err, out)
		}
		return string(out), nil
	}
	rootSQL := func(sql string) string {
		t.Helper()
		out, err := rootSQLErr(sql)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	rootSQL("CREATE USER 'db_00000000000000aa'@'%' ACCOUNT LOCK; CREATE DATABASE db_00000000000000aa;\n" +
		"CREATE USER 'db_00000000000000bb'@'%' ACCOUNT LOCK;\n" +
		"CREATE DATABASE db_00000000000000cc;\n" +
		"CREATE USER 'db_keep'@'%' ACCOUNT LOCK; CREATE DATABASE db_keep2;\n" +
		// A database provisioned before grants escaped the _ in its name.
		"CREATE USER 'db_00000000000000dd'@'%' IDENTIFIED BY 'x'; CREATE DATABASE db_00000000000000dd;\n" +
		"GRANT ALL PRIVILEGES ON `db_00000000000000dd`.* TO 'db_00000000000000dd'@'%';\n")
	// The databases its user's grants name, \ shown as !.
	const legacyGrants = "SELECT REPLACE(Db, '\\\\', '!') FROM mysql.db WHERE User = 'db_00000000000000dd' ORDER BY Db;\n"
	if g := strings.Fields(rootSQL(legacyGrants)); !slices.Equal(g, []string{"db_00000000000000dd"}) {
		t.Fatalf("the old-style grant before the restart: %v", g)
	}
	const names = "SELECT User FROM mysql.global_priv WHERE User LIKE 'db%' UNION ALL SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'db%';\n"
	before := strings.Fields(rootSQL(names))
	unfinished := []string{"db_00000000000000aa", "db_00000000000000bb", "db_00000000000000cc"}
	for _, n := range unfinished {
		if !slices.Contains(before, n) {
			t.Fatalf("%s is not there before the restart: %v", n, before)
		}
	}
	c.killApplianceJob("mysql")
	rows("a,b")
	// The server answers (the app's rows are back) before the appliance
	// has swept: wait for the sweep, then check what it kept.
	var after []string
	waitFor(t, within(t, time.Minute), "the restarted mysql to drop what unfinished provisions left", c.watch(), func() (bool, error) {
		out, err := rootSQLErr(names)
		if err != nil {
			return false, err
		}
		after = strings.Fields(out)
		for _, n := range unfinished {
			if slices.Contains(after, n) {
				return false, fmt.Errorf("%s is still there: %v", n, after)
			}
		}
		// And mended the old-style grant: only the escaped name.
		out, err = rootSQLErr(legacyGrants)
		if err != nil {
			return false, err
		}
		if g := strings.Fields(out); !slices.Equal(g, []string{`db!_00000000000000dd`}) {
			return false, fmt.Errorf("db_00000000000000dd's grants are on %v", g)
		}
		return true, nil
	})
	db := envVar(env, "MYSQL_DATABASE")
	for _, n := range []string{db, "db_keep", "db_keep2", "db_00000000000000dd"} {
		if !slices.Contains(after, n) {
			t.Errorf("%s is gone after the restart: %v", n, after)
		}
	}

	// Another app's credentials do not reach this app's database.
	c.flynn(dir, "create", "myother")
	c.flynn(dir, "-a", "myother", "resource", "add", "mysql")
	cross := exec.Command(filepath.Join(binDir, "flynn"), "-a", "myother", "mysql", "console", "--", "-e", "select v from `"+db+"`.rows_")
	cross.Dir, cross.Env = dir, c.env()
	if out, err := cross.CombinedOutput(); err == nil || !strings.Contains(string(out), "denied") {
		t.Fatalf("myother reading myapp's database: %v\n%s", err, out)
	}

	// Its grant is of its own database only: _ in the name is no
	// wildcard that would let it make others.
	sibling := exec.Command(filepath.Join(binDir, "flynn"), "-a", "myapp", "mysql", "console", "--", "-e", "create database `dbx"+strings.TrimPrefix(db, "db_")+"`")
	sibling.Dir, sibling.Env = dir, c.env()
	if out, err := sibling.CombinedOutput(); err == nil || !strings.Contains(string(out), "denied") {
		t.Fatalf("myapp making a database dbx<its id>: %v\n%s", err, out)
	}

	a.flynn("mysql", "console", "--", "-e", "delete from rows_")
	rows("")
	a.flynn("mysql", "restore", "-f", dump)
	rows("a,b")

	// A power cut of the whole cluster keeps them: InnoDB recovers from
	// its redo log on the volume.
	c.powerOff(true)
	start = time.Now()
	c.up()
	rows("a,b")
	t.Logf("power cut: up to the app serving its rows again: %s", time.Since(start).Round(time.Millisecond))
}
