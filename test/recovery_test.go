package test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// powerOff kills every process of the cluster at once, as a power cut
// does: the daemon, every job supervisor and every container, with
// SIGKILL and no chance to clean up. With reboot it also removes what a
// reboot removes: mounts (job root filesystems, pinned network
// namespaces), the job bridge, iptables rules and cgroups. Files on disk
// stay, as they do.
func (c *e2eCluster) powerOff(reboot bool) {
	c.t.Helper()
	for round := 0; ; round++ {
		pids := c.processes()
		if len(pids) == 0 {
			break
		}
		if round == 100 {
			c.t.Fatalf("processes of the cluster survive SIGKILL: %v", pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !reboot {
		return
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], c.stateDir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			c.t.Fatalf("unmount %s: %v", m, err)
		}
	}
	exec.Command("ip", "link", "del", c.bridge).Run()
	testslot.RemoveIptables(strings.TrimSuffix(c.subnet, "0/24"), c.bridge)
	testslot.RemoveCgroups(c.cgroup)
}

// processes are the cluster's processes: those in its jobs' cgroups and
// those whose command line names its state dir.
func (c *e2eCluster) processes() []int {
	seen := map[int]bool{}
	var cgs []string
	// One host's cgroup parent, or each host's (up --hosts: <parent>-hostN).
	for _, name := range []string{c.cgroup, c.cgroup + "-host*"} {
		m1, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
		m2, _ := filepath.Glob("/sys/fs/cgroup/" + name)
		cgs = append(append(cgs, m1...), m2...)
	}
	for _, top := range cgs {
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(b, []byte(c.stateDir)) {
			seen[pid] = true
		}
	}
	var out []int
	for pid := range seen {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// TestClusterRestoresItself: an app pushed, scaled to web=2, with env, a
// second route and a key, comes back by itself after each way a cluster
// stops: a power cut (every process SIGKILLed), a power cut followed by a
// reboot (mounts, namespaces, iptables rules, cgroups and the bridge gone
// too), and `flynn-host down --keep-data`. Each time `flynn-host up` (what
// make up runs) is the only command, and the app serves with its formation,
// env, routes and keys.
func TestClusterRestoresItself(t *testing.T) {
	c := startE2ECluster(t, nil)
	a := newPushApp(t, c, nil, "procfile", "survivor", false)
	a.pushAndServe("hello from the procfile app")
	a.flynn("scale", "web=2")
	a.flynn("env", "set", "SURVIVOR=still-here")
	a.flynn("route", "add", "http", "second-survivor."+c.domain)
	home := t.TempDir()
	key := filepath.Join(home, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	a.flynn("key", "add", key+".pub")
	webUp := func() (bool, error) {
		ps := a.flynn("ps")
		return strings.Count(ps, " up ") == 2 && strings.Count(ps, "web") == 2, errors.New(ps)
	}
	waitFor(t, within(t, time.Minute), "web=2 up", c.watch(), webUp)

	// After each stop, up alone brings the app back with everything.
	restored := func(how string) {
		t.Helper()
		start := time.Now()
		out := c.up()
		if !strings.Contains(out, "the controller answers through the router") {
			t.Errorf("up after %s does not say it waited for the platform:\n%s", how, out)
		}
		waitFor(t, within(t, 2*time.Minute), "the app to serve after "+how, c.watch(), func() (bool, error) {
			status, body := a.get()
			return status == 200 && strings.Contains(body, "hello from the procfile app"), fmt.Errorf("%d %s", status, body)
		})
		serving := time.Since(start)
		waitFor(t, within(t, time.Minute), "web=2 up after "+how, c.watch(), webUp)
		t.Logf("%s: up to the app serving %s, to web=2 up %s", how, serving.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
		if out := a.flynn("env", "get", "SURVIVOR"); strings.TrimSpace(out) != "still-here" {
			t.Errorf("after %s: env SURVIVOR = %q", how, out)
		}
		if status, body := c.curl("second-survivor."+c.domain, "/"); status != 200 {
			t.Errorf("after %s: the second route answers %d %s", how, status, body)
		}
		if out := a.flynn("key"); !strings.Contains(out, "ssh-ed25519") && !strings.Contains(out, ":") {
			t.Errorf("after %s: flynn key lists no key:\n%s", how, out)
		}
	}

	c.powerOff(false)
	restored("a power cut")

	c.powerOff(true)
	restored("a power cut and a reboot")

	out, err := exec.Command(filepath.Join(binDir, "flynn-host"), "down", "--keep-data", "--state-dir", c.stateDir).CombinedOutput()
	if err != nil {
		t.Fatalf("flynn-host down --keep-data: %v\n%s", err, out)
	}
	if pids := c.processes(); len(pids) > 0 {
		t.Fatalf("processes left after down --keep-data: %v", pids)
	}
	restored("down --keep-data")
}

// TestBackupRestore: `flynn cluster backup` writes the cluster to one
// file; after the cluster is wiped (down), `flynn-host up --from-backup`
// on a new cluster (other ports, so other blob URLs) brings the app back
// serving with its env, routes and formation. A truncated or foreign file
// is refused with one clear line before anything is made.
func TestBackupRestore(t *testing.T) {
	c := startE2ECluster(t, nil)
	a := newPushApp(t, c, nil, "procfile", "keeper", false)
	a.pushAndServe("hello from the procfile app")
	a.flynn("env", "set", "KEEPER=kept")
	a.flynn("scale", "web=2")
	a.flynn("route", "add", "http", "second-keeper."+c.domain)
	dir := t.TempDir()
	file := filepath.Join(dir, "backup.tar")
	out := c.flynn(dir, "cluster", "backup", "--file", file)
	if !strings.Contains(out, "backup of 1 apps") || !strings.Contains(out, "written to "+file) {
		t.Errorf("flynn cluster backup:\n%s", out)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	c.down()

	// Bad files: refused before anything is made.
	b, _ := os.ReadFile(file)
	truncated := filepath.Join(dir, "truncated.tar")
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	notTar := filepath.Join(dir, "notes.txt")
	os.WriteFile(notTar, []byte("not a backup\n"), 0o644)
	for _, bad := range []string{truncated, notTar, filepath.Join(dir, "missing.tar")} {
		state := filepath.Join(testslot.Dir(t), "state")
		cmd := exec.Command(filepath.Join(binDir, "flynn-host"), "up", "--state-dir", state, "--from-backup", bad, "--no-stack", "--deps", "")
		cmd.Env = append(c.env(), "SUDO_USER=")
		out, err := cmd.CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || !strings.Contains(lines[len(lines)-1], filepath.Base(bad)) {
			t.Errorf("up --from-backup %s: err %v, want a last line naming the file:\n%s", filepath.Base(bad), err, out)
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Errorf("up --from-backup %s made the state dir", filepath.Base(bad))
		}
	}

	start := time.Now()
	c2 := startE2ECluster(t, nil, "--from-backup", file)
	a2 := &pushApp{c: c2, t: t, name: "keeper", dir: a.dir}
	waitFor(t, within(t, 2*time.Minute), "the restored app to serve", c2.watch(), func() (bool, error) {
		status, body := a2.get()
		return status == 200 && strings.Contains(body, "hello from the procfile app"), fmt.Errorf("%d %s", status, body)
	})
	t.Logf("backup of %d bytes; up --from-backup to the app serving: %s", fi.Size(), time.Since(start).Round(100*time.Millisecond))
	if out := c2.flynn(dir, "-a", "keeper", "env", "get", "KEEPER"); strings.TrimSpace(out) != "kept" {
		t.Errorf("restored env KEEPER = %q", out)
	}
	waitFor(t, within(t, time.Minute), "web=2 up on the new cluster", c2.watch(), func() (bool, error) {
		ps := c2.flynn(dir, "-a", "keeper", "ps")
		return strings.Count(ps, " up ") == 2, errors.New(ps)
	})
	if status, body := c2.curl("second-keeper."+c2.domain, "/"); status != 200 {
		t.Errorf("the restored second route answers %d %s", status, body)
	}
}
