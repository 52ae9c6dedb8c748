package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestRedisAddon: a Node.js app using the redis package from the npm
// registry gets a database of its own with flynn resource add redis,
// writes a list and reads it back; it survives the redis job being
// killed and a power cut of the whole cluster; another app's database is
// another server (its keys are not this app's); flynn redis redis-cli,
// dump and restore round-trip.
func TestRedisAddon(t *testing.T) {
	port := fmt.Sprint(3480 + testslot.Get(t).N)
	c := startE2ECluster(t, nil, "--redis-host", e2eBridgeIP, "--redis-port", port,
		"--postgres-port", fmt.Sprint(3440+testslot.Get(t).N))
	dir := t.TempDir()
	if out := c.flynn(dir, "provider"); !strings.Contains(out, " redis ") {
		t.Fatalf("flynn provider does not list redis:\n%s", out)
	}
	a := newPushApp(t, c, nil, "noderedis", "rdapp", false)
	if out, ok := a.push("main"); !ok {
		t.Fatalf("push: %s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "rdapp to run without a database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 500 && strings.Contains(body, "no REDIS_URL"), fmt.Errorf("%d %s", status, body)
	})
	start := time.Now()
	if out := a.flynn("resource", "add", "redis"); !strings.Contains(out, "deployed a release of rdapp") {
		t.Fatalf("resource add: %s", out)
	}
	waitFor(t, within(t, 2*time.Minute), "rdapp to serve with its database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 200 && strings.HasPrefix(body, "rows: "), fmt.Errorf("%d %s", status, body)
	})
	t.Logf("resource add to the app serving with its database: %s", time.Since(start).Round(time.Millisecond))
	env := a.flynn("env")
	for _, k := range []string{"REDIS_URL=redis://:", "REDIS_HOST=", "REDIS_PORT=" + port, "REDIS_PASSWORD=", "FLYNN_REDIS=redis"} {
		if !strings.Contains(env, k) {
			t.Errorf("flynn env lacks %s:\n%s", k, env)
		}
	}
	post, rows := a.postRow, a.waitRows
	post("a")
	post("b")
	rows("a,b")

	if out := a.flynn("redis", "redis-cli", "--", "lrange", "rows", "0", "-1"); !strings.Contains(out, "a\nb") {
		t.Fatalf("redis-cli lrange: %q", out)
	}
	a.flynn("redis", "redis-cli", "--", "set", "ttlkey", "x", "EX", "3600")
	dump := filepath.Join(dir, "redis.rdb")
	a.flynn("redis", "dump", "-f", dump)
	if b, err := os.ReadFile(dump); err != nil || !strings.HasPrefix(string(b), "REDIS") {
		t.Fatalf("dump file (%d bytes): %v %.40q", len(b), err, b)
	}

	// Kill the redis job: the scheduler starts it again on the host
	// holding its volume, and the list is there.
	c.killApplianceJob("redis")
	// (The app's client meets a closed connection once, and reconnects.)
	rows("a,b")
	post("c")
	rows("a,b,c")

	// Another app's database is a server of its own: the same key is
	// not there, and its password does not open this app's database.
	c.flynn(dir, "create", "rdother")
	c.flynn(dir, "-a", "rdother", "resource", "add", "redis")
	other := exec.Command(filepath.Join(binDir, "flynn"), "-a", "rdother", "redis", "redis-cli", "--", "llen", "rows")
	other.Dir, other.Env = dir, c.env()
	if out, err := other.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "(integer) 0" && strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("rdother's llen rows: %v %q", err, out)
	}

	// Restore brings back what the dump held (and nothing else), TTLs
	// kept.
	a.flynn("redis", "redis-cli", "--", "del", "rows")
	rows("")
	a.flynn("redis", "restore", "-f", dump)
	rows("a,b")
	if out := a.flynn("redis", "redis-cli", "--", "ttl", "ttlkey"); !strings.Contains(out, "3") {
		t.Errorf("ttl of ttlkey after restore: %q", out)
	}

	// The password is in no log of the appliance.
	pass := envVar(env, "REDIS_PASSWORD")
	if log := c.flynn(dir, "-a", "redis", "log"); pass == "" || strings.Contains(log, pass) || !strings.Contains(log, "database provisioned") {
		t.Errorf("the redis appliance's log (password %q):\n%s", pass, log)
	}

	// A power cut of the whole cluster keeps the data: the servers
	// replay their append-only files from the volume.
	post("d")
	rows("a,b,d")
	c.powerOff(true)
	start = time.Now()
	c.up()
	rows("a,b,d")
	t.Logf("power cut: up to the app serving its list again: %s", time.Since(start).Round(time.Millisecond))

	// Removing the resource takes the env away, deploys and stops the
	// database's server.
	a.flynn("resource", "remove", "-y", "redis")
	if env := a.flynn("env"); strings.Contains(env, "REDIS_URL") || strings.Contains(env, "REDIS_PASSWORD") {
		t.Errorf("env after resource remove:\n%s", env)
	}
	waitFor(t, within(t, 2*time.Minute), "rdapp to run without its database", c.watch(), func() (bool, error) {
		status, body := a.get()
		return status == 500 && strings.Contains(body, "no REDIS_URL"), fmt.Errorf("%d %s", status, body)
	})
}
