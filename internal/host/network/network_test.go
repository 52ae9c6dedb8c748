package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// listenIn opens a TCP listener inside the namespace pinned at path.
func listenIn(t *testing.T, path string, port int) net.Listener {
	t.Helper()
	type res struct {
		l   net.Listener
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, _ := os.Open("/proc/thread-self/ns/net")
		defer orig.Close()
		ns, err := os.Open(path)
		if err != nil {
			c <- res{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			c <- res{err: err}
			return
		}
		l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		c <- res{l, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.l
}

func TestAttachPublishDetach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bridge, subnet := testslot.Name(t, "net"), testslot.Subnet(t)
	hostPorts := testslot.Ports(t, 4)
	m, err := New(Config{Bridge: bridge, Subnet: subnet, StateDir: t.TempDir(), PortMin: hostPorts[0], PortMax: hostPorts[3]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		RemoveFirewall(bridge)
	})
	ctx := context.Background()
	ports := []Port{{Port: 8080, Proto: "tcp"}}
	hp, err := m.AllocPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	att, err := m.Attach(ctx, "fltjob1", ports, hp, Pass{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(att.IP, strings.TrimSuffix(subnet, "0/24")) || att.IP == m.Gateway() {
		t.Fatalf("ip %s", att.IP)
	}
	l := listenIn(t, att.NetNS, 8080)
	// Loopback is up inside the namespace.
	lc := dialIn(t, att.NetNS, "127.0.0.1:8080")
	lc.Close()
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
	if err := m.Detach(ctx, "fltjob1", ports, hp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(att.NetNS); !os.IsNotExist(err) {
		t.Fatalf("netns pin left: %v", err)
	}
	out, _ := exec.Command("iptables-save", "-t", "nat").Output()
	if strings.Contains(string(out), fmt.Sprintf("%d", hp[0])) {
		t.Fatalf("port mapping left in iptables:\n%s", out)
	}
	if err := m.Detach(ctx, "fltjob1", ports, hp); err != nil {
		t.Fatalf("second detach: %v", err)
	}
}

// dialIn connects to addr from inside the namespace pinned at path.
func dialIn(t *testing.T, path, addr string) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, _ := os.Open("/proc/thread-self/ns/net")
		defer orig.Close()
		ns, err := os.Open(path)
		if err != nil {
			c <- res{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			c <- res{err: err}
			return
		}
		conn, err := net.Dial("tcp4", addr)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		c <- res{conn, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatalf("dial %s in netns: %v", addr, r.err)
	}
	return r.c
}

// TestAllocPorts: ports come from the configured range only, skip ports
// something on the host holds, go round the range before reusing a
// released port, and run out with an error naming the range.
func TestAllocPorts(t *testing.T) {
	p := testslot.Ports(t, 4)
	m, err := New(Config{Bridge: "unused", StateDir: t.TempDir(), HostIP: "127.0.0.1", PortMin: p[0], PortMax: p[3]})
	if err != nil {
		t.Fatal(err)
	}
	held, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p[1]))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	got, err := m.AllocPorts(2)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{p[0], p[2]}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("AllocPorts(2) = %v, want %v (port %d is held)", got, want, p[1])
	}
	m.Release(got[:1])
	// p[3] next, then round to p[0] (released); p[1] is still held.
	got2, err := m.AllocPorts(2)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{p[3], p[0]}; fmt.Sprint(got2) != fmt.Sprint(want) {
		t.Fatalf("second AllocPorts(2) = %v, want %v", got2, want)
	}
	if _, err := m.AllocPorts(1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d-%d", p[0], p[3])) {
		t.Fatalf("AllocPorts on a full range: err = %v, want one naming the range", err)
	}
	for _, bad := range []string{"", "1", "0-10", "10-5", "1-70000", "a-b"} {
		if _, _, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q) accepted", bad)
		}
	}
}
