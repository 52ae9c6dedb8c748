package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestMySQLAddon: the mysql appliance (scaled up from 0), a Node.js app
// using the mysql2 package gets a database with flynn resource add mysql,
// writes rows and reads them back; they survive the mysql job being
// killed and a power cut of the whole cluster; another app's credentials do not reach them; flynn mysql
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
	post := func(v string) {
		t.Helper()
		out, err := exec.Command("curl", "-sS", "-m", "10", "-X", "POST", c.url(a.name+"."+c.domain, "/rows?v="+v)).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "rows: ") {
			t.Fatalf("POST /rows?v=%s: %v %s", v, err, out)
		}
	}
	rows := func(want string) {
		t.Helper()
		waitFor(t, within(t, 2*time.Minute), "rows "+want, c.watch(), func() (bool, error) {
			status, body := a.get()
			return status == 200 && strings.TrimSpace(body) == strings.TrimSpace("rows: "+want), fmt.Errorf("%d %s", status, body)
		})
	}
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

	ctx := context.Background()
	hc := c.hostClient(c.hosts[0])
	myJob := func() *api.ActiveJob {
		jobs, err := hc.ListJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Job.Metadata[api.JobMetaAppName] == "mysql" && j.Status == api.HostJobRunning && j.Job.Metadata[api.JobMetaProcessType] == "mysql" {
				return j
			}
		}
		return nil
	}
	old := myJob()
	if old == nil {
		t.Fatalf("no running mysql job:\n%s", c.jobTable(c.hosts[0]))
	}
	if err := hc.SignalJob(ctx, old.Job.ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, within(t, 2*time.Minute), "a new mysql job", c.watch(), func() (bool, error) {
		j := myJob()
		return j != nil && j.Job.ID != old.Job.ID, nil
	})
	rows("a,b")

	// Another app's credentials do not reach this app's database.
	c.flynn(dir, "create", "myother")
	c.flynn(dir, "-a", "myother", "resource", "add", "mysql")
	db := ""
	for _, l := range strings.Split(env, "\n") {
		if v, ok := strings.CutPrefix(l, "MYSQL_DATABASE="); ok {
			db = strings.TrimSpace(v)
		}
	}
	cross := exec.Command(filepath.Join(binDir, "flynn"), "-a", "myother", "mysql", "console", "--", "-e", "select v from `"+db+"`.rows_")
	cross.Dir, cross.Env = dir, c.env()
	if out, err := cross.CombinedOutput(); err == nil || !strings.Contains(string(out), "denied") {
		t.Fatalf("myother reading myapp's database: %v\n%s", err, out)
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
