package network

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestSpares: KeepSpares removes the spares a killed agent left, keeps
// the number asked ready, a job takes one (and its ports are published
// on it), none is made again while a job starts, and when KeepSpares returns and the job is detached nothing is
// left: no pinned namespace, record of a taken spare, address or veth.
func TestSpares(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bridge, subnet := testslot.Name(t, "sp"), testslot.Subnet(t)
	hostPorts := testslot.Ports(t, 2)
	dir := t.TempDir()
	cfg := Config{Bridge: bridge, Subnet: subnet, StateDir: dir, PortMin: hostPorts[0], PortMax: hostPorts[1], Spares: 2}
	killed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		RemoveFirewall(bridge)
	})
	if err := killed.EnsureFirewall(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stray, err := killed.attachBridge(ctx, newSpareKey())
	if err != nil {
		t.Fatal(err)
	}

	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// However slow the machine, no spare is made while a job starts
	// (TestSparesSteadyStarts: after spareMaxWait, one is).
	m.spareMaxWait = time.Hour
	kctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.KeepSpares(kctx, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { stop(); <-done })
	ready := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m.spareMu.Lock()
			n := len(m.spares)
			m.spareMu.Unlock()
			if n == cfg.Spares {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d spares ready after 30s, want %d", n, cfg.Spares)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ready()
	if _, err := os.Stat(killed.netnsPath(stray.key)); !os.IsNotExist(err) {
		t.Errorf("the killed agent's spare is still pinned (%v)", err)
	}

	ports := []Port{{Port: 8080, Proto: "tcp"}}
	hp, err := m.AllocPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	// Two jobs starting at once, as the runtime holds while each starts:
	// no spare is made meanwhile.
	release, release2 := m.Hold(), m.Hold()
	att, err := m.Attach(ctx, "spjob", ports, hp, Pass{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * spareQuiet)
	m.spareMu.Lock()
	n := len(m.spares)
	m.spareMu.Unlock()
	if n != cfg.Spares-1 {
		t.Errorf("%d spares while two jobs start at once, want %d: none made meanwhile", n, cfg.Spares-1)
	}
	release2()
	// One job still starting: none is made while it starts either.
	time.Sleep(4 * spareQuiet)
	m.spareMu.Lock()
	n = len(m.spares)
	m.spareMu.Unlock()
	if n != cfg.Spares-1 {
		t.Errorf("%d spares while a job starts, want %d: none made meanwhile", n, cfg.Spares-1)
	}
	// Once it is done, the spare it took is made again.
	release()
	ready()
	if att.NetNS != m.netnsPath("spjob") {
		t.Errorf("the job's namespace is pinned at %s, want %s", att.NetNS, m.netnsPath("spjob"))
	}
	if b, err := os.ReadFile(m.takenFile("spjob")); err != nil || !isSpareKey(strings.TrimSpace(string(b))) {
		t.Errorf("the job took no spare: %q %v", b, err)
	}
	l := listenIn(t, att.NetNS, 8080)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }))
	defer l.Close()
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", hp[0]), att.IP + ":8080"} {
		res, err := http.Get("http://" + addr)
		if err != nil {
			t.Fatalf("GET %s: %v", addr, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) != "hi" {
			t.Fatalf("GET %s = %q", addr, b)
		}
	}
	ready() // made again
	// Every job's bridge port, spares' too, is isolated.
	out, err := exec.Command("ip", "-d", "-o", "link", "show", "master", bridge).Output()
	if err != nil {
		t.Fatal(err)
	}
	links := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(links) != 1+cfg.Spares {
		t.Errorf("links on the bridge:\n%s\nwant the job's and %d spares'", out, cfg.Spares)
	}
	for _, l := range links {
		if !strings.Contains(l, "isolated on") {
			t.Errorf("bridge port not isolated: %s", l)
		}
	}

	stop()
	if err := <-done; err != nil {
		t.Fatalf("KeepSpares: %v", err)
	}
	done <- nil // for the clean-up
	if pins := names(t, filepath.Join(dir, "netns")); len(pins) != 1 || pins[0] != "spjob" {
		t.Errorf("pinned namespaces after KeepSpares returned: %v, want only the job's", pins)
	}
	if err := m.Detach(ctx, "spjob", ports, hp); err != nil {
		t.Fatal(err)
	}
	if pins := names(t, filepath.Join(dir, "netns")); len(pins) != 0 {
		t.Errorf("pinned namespaces after the job's detach: %v", pins)
	}
	if taken := names(t, filepath.Join(dir, "taken")); len(taken) != 0 {
		t.Errorf("taken records left: %v", taken)
	}
	for _, f := range names(t, filepath.Join(dir, "ipam", bridge)) {
		if f != "lock" && !strings.HasPrefix(f, "last_reserved_ip") {
			t.Errorf("address left reserved: %s", f)
		}
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", bridge).Output(); len(out) > 0 {
		t.Errorf("links left on the bridge:\n%s", out)
	}
	out, _ = exec.Command("iptables-save", "-t", "nat").Output()
	if strings.Contains(string(out), fmt.Sprintf("%d", hp[0])) {
		t.Errorf("port mapping left in iptables:\n%s", out)
	}
}

// TestSparesSteadyStarts: on a host that always has a job starting, the
// spare a start took is made again all the same, after spareMaxWait.
func TestSparesSteadyStarts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bridge, subnet := testslot.Name(t, "ss"), testslot.Subnet(t)
	hostPorts := testslot.Ports(t, 2)
	cfg := Config{Bridge: bridge, Subnet: subnet, StateDir: t.TempDir(), PortMin: hostPorts[0], PortMax: hostPorts[1], Spares: 1}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		RemoveFirewall(bridge)
	})
	if err := m.EnsureFirewall(); err != nil {
		t.Fatal(err)
	}
	m.spareMaxWait = 200 * time.Millisecond
	ctx := context.Background()
	kctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.KeepSpares(kctx, slog.New(slog.DiscardHandler)) }()
	spares := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m.spareMu.Lock()
			n := len(m.spares)
			m.spareMu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d spares after 30s, want %d", n, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	spares(1)
	release := m.Hold()
	if _, err := m.Attach(ctx, "ssjob", nil, nil, Pass{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(m.takenFile("ssjob")); err != nil || !isSpareKey(strings.TrimSpace(string(b))) {
		t.Fatalf("the job took no spare: %q %v", b, err)
	}
	// Still starting: the spare is made again anyway.
	spares(1)
	release()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("KeepSpares: %v", err)
	}
	if err := m.Detach(ctx, "ssjob", nil, nil); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", bridge).Output(); len(out) > 0 {
		t.Errorf("links left on the bridge:\n%s", out)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
