package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// inNetNS runs f on a thread in the namespace pinned at path.
func inNetNS(t *testing.T, path string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// probe connects to addr over TCP from the namespace at path and names
// how it ended: connected, blocked (the firewall answered, or the address
// cannot be reached at all), refused (nothing listens) or the error.
func probe(t *testing.T, path, addr string) string {
	t.Helper()
	var out string
	inNetNS(t, path, func() {
		for tries := 0; ; tries++ {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			switch {
			case err == nil:
				c.Close()
				out = "connected"
			case errors.Is(err, syscall.EADDRNOTAVAIL) && tries < 100:
				// An IPv6 link-local address still in duplicate
				// address detection.
				time.Sleep(100 * time.Millisecond)
				continue
			case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EACCES):
				out = "blocked"
			case errors.Is(err, syscall.ECONNREFUSED):
				out = "refused"
			default:
				out = err.Error()
			}
			return
		}
	})
	return out
}

// serve accepts and closes connections on ln until the test ends.
func serve(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func listenHost(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln)
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// outside is a network namespace standing for the world beyond the host:
// a veth to the host, with the subnet's .1 on the host side and .2
// inside, routed to the jobs' subnet through the host.
type outside struct {
	ns, hostIP, ip string
}

func newOutside(t *testing.T, jobSubnet string) *outside {
	t.Helper()
	name, veth := testslot.Name(t, "out"), testslot.Name(t, "vo")
	prefix := strings.TrimSuffix(testslot.Subnet(t), "0/24")
	o := &outside{ns: name, hostIP: prefix + "1", ip: prefix + "2"}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", veth).Run()
		exec.Command("ip", "netns", "del", name).Run()
	})
	run(t, "ip", "netns", "add", name)
	run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
	run(t, "ip", "addr", "add", o.hostIP+"/24", "dev", veth)
	run(t, "ip", "link", "set", veth, "up")
	run(t, "ip", "-n", name, "addr", "add", o.ip+"/24", "dev", "eth0")
	run(t, "ip", "-n", name, "link", "set", "eth0", "up")
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "route", "add", "default", "via", o.hostIP)
	return o
}

func (o *outside) path() string { return "/run/netns/" + o.ns }

// TestFirewall: from inside real job namespaces on a bridge with the
// firewall, a job reaches the world beyond the host, the routers' ports
// and DNS on the host, and not the host's other ports (over IPv4 or
// IPv6), other jobs (directly or through their published ports) nor the
// denied networks beyond the host, but at router ports. Published ports
// still reach jobs from outside; a system job reaches the host (but not
// the published ports of the host's jobs: it gets no port mapping).
// Removing the firewall takes every rule away.
func TestFirewall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bridge, subnet := testslot.Name(t, "fw"), testslot.Subnet(t)
	p := testslot.Ports(t, 8)
	hostPort, routerPort, dnsPort, jobPorts := p[0], p[1], p[2], p[3:]
	world := newOutside(t, subnet)   // beyond the host, not denied
	private := newOutside(t, subnet) // beyond the host, denied
	m, err := New(Config{
		Bridge: bridge, Subnet: subnet, StateDir: t.TempDir(), PortMin: jobPorts[0], PortMax: jobPorts[len(jobPorts)-1],
		RouterPorts: []PortRange{{routerPort, routerPort}}, DNSPorts: []int{dnsPort},
		DenyNets: []netip.Prefix{netip.MustParsePrefix(strings.TrimSuffix(private.ip, "2") + "0/24")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		RemoveFirewall(bridge)
	})
	ctx := context.Background()
	attach := func(id string, pass Pass) (*Attachment, int) {
		t.Helper()
		hp, err := m.AllocPorts(1)
		if err != nil {
			t.Fatal(err)
		}
		att, err := m.Attach(ctx, id, []Port{{Port: 8080}}, hp, pass)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Detach(ctx, id, []Port{{Port: 8080}}, hp) })
		serve(t, listenIn(t, att.NetNS, 8080))
		return att, hp[0]
	}
	a, aPort := attach("fwa", Pass{})
	b, bPort := attach("fwb", Pass{})
	sys, sysPort := attach("fwsys", Pass{System: true})
	build, buildPort := attach("fwbuild", Pass{TCPPorts: []int{hostPort}})
	gw := m.Gateway()
	for _, port := range []int{hostPort, routerPort, dnsPort} {
		listenHost(t, fmt.Sprintf("%s:%d", gw, port))
	}
	listenHost(t, fmt.Sprintf("%s:%d", world.hostIP, hostPort)) // the host, at another address
	listenHost(t, fmt.Sprintf("[::]:%d", jobPorts[len(jobPorts)-1]))
	inNetNS(t, world.path(), func() {
		for _, port := range []int{hostPort, routerPort} {
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
			if err != nil {
				t.Error(err)
				return
			}
			serve(t, ln)
		}
	})
	// What the world sees a job's connection come from: the host
	// (masqueraded), not the job's address.
	seen := make(chan string, 1)
	inNetNS(t, world.path(), func() {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", jobPorts[1]))
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}()
	})
	inNetNS(t, private.path(), func() {
		for _, port := range []int{hostPort, routerPort} {
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
			if err != nil {
				t.Error(err)
				return
			}
			serve(t, ln)
		}
	})
	addr := func(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
	if got := probe(t, a.NetNS, addr(world.ip, jobPorts[1])); got != "connected" {
		t.Errorf("job to the world: %s, want connected", got)
	} else if from := <-seen; from != world.hostIP {
		t.Errorf("the world saw the job's connection come from %s, want the host's %s (masqueraded)", from, world.hostIP)
	}
	tests := []struct {
		name, from, to, want string
	}{
		{"world", a.NetNS, addr(world.ip, hostPort), "connected"},
		{"router port", a.NetNS, addr(gw, routerPort), "connected"},
		{"dns", a.NetNS, addr(gw, dnsPort), "connected"},
		{"host port", a.NetNS, addr(gw, hostPort), "blocked"},
		{"host port at another address", a.NetNS, addr(world.hostIP, hostPort), "blocked"},
		{"job's own published port", a.NetNS, addr(world.hostIP, aPort), "blocked"},
		{"other job", a.NetNS, addr(b.IP, 8080), "blocked"},
		{"other job's published port", a.NetNS, addr(world.hostIP, bPort), "blocked"},
		{"denied net", a.NetNS, addr(private.ip, hostPort), "blocked"},
		{"denied net at a router port", a.NetNS, addr(private.ip, routerPort), "connected"},
		{"published port from outside", world.path(), addr(world.hostIP, bPort), "connected"},
		{"job address from outside", world.path(), addr(b.IP, 8080), "blocked"},
		{"system job to host port", sys.NetNS, addr(gw, hostPort), "connected"},
		{"system job to a published port", sys.NetNS, addr(world.hostIP, bPort), "refused"},
		{"build to its port on the host", build.NetNS, addr(gw, hostPort), "connected"},
		{"build to its port in a denied net", build.NetNS, addr(private.ip, hostPort), "connected"},
		{"build to another port of the host", build.NetNS, addr(gw, jobPorts[len(jobPorts)-1]), "blocked"},
		{"build to the world", build.NetNS, addr(world.ip, hostPort), "connected"},
		{"build to another job", build.NetNS, addr(b.IP, 8080), "blocked"},
	}
	// The world namespace reaches the jobs' subnet through the host.
	run(t, "ip", "-n", world.ns, "route", "add", subnet, "via", world.hostIP)
	if ll := linkLocal(bridge); ll != "" {
		tests = append(tests, struct{ name, from, to, want string }{"host over IPv6", a.NetNS, "[" + ll + "%eth0]:" + fmt.Sprint(jobPorts[len(jobPorts)-1]), "blocked"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := probe(t, tt.from, tt.to); got != tt.want {
				t.Errorf("connect to %s: %s, want %s", tt.to, got, tt.want)
			}
		})
	}
	// The host itself reaches jobs, as routers and health checks do.
	if c, err := net.DialTimeout("tcp", addr(b.IP, 8080), 10*time.Second); err != nil {
		t.Errorf("the host connecting to a job: %v", err)
	} else {
		c.Close()
	}

	// The policy in place is kept as it is by a new manager (a restarted
	// agent), and the system job keeps its pass.
	before := rules(t, bridge)
	m2, err := New(m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.EnsureFirewall(); err != nil {
		t.Fatal(err)
	}
	if after := rules(t, bridge); after != before {
		t.Errorf("a restarted agent changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := probe(t, sys.NetNS, addr(gw, hostPort)); got != "connected" {
		t.Errorf("system job after a restart: %s", got)
	}
	if got := probe(t, build.NetNS, addr(gw, hostPort)); got != "connected" {
		t.Errorf("build after a restart: %s", got)
	}
	// Detached, the system job's and the build's addresses lose their
	// passes.
	m.Detach(ctx, "fwsys", []Port{{Port: 8080}}, []int{sysPort})
	m.Detach(ctx, "fwbuild", []Port{{Port: 8080}}, []int{buildPort})
	if r := rules(t, bridge); strings.Contains(r, sys.IP+"/") || strings.Contains(r, build.IP+"/") {
		t.Errorf("a detached job's address is still let through:\n%s", r)
	}

	// A changed policy replaces the old one.
	cfg := m.cfg
	cfg.RouterPorts = []PortRange{{hostPort, hostPort}}
	m3, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m3.EnsureFirewall(); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, a.NetNS, addr(gw, hostPort)); got != "connected" {
		t.Errorf("after the router ports changed to the host port: %s, want connected", got)
	}
	if got := probe(t, a.NetNS, addr(gw, routerPort)); got != "blocked" {
		t.Errorf("after the router ports changed, the old router port: %s, want blocked", got)
	}
	if r := rules(t, bridge); strings.Contains(r, newSuffix+" ") || strings.Count(r, "iptables-save filter: -A INPUT -i "+bridge+" -j FLYNN-IN-") != 1 {
		t.Errorf("rules after a policy change:\n%s\nwant one jump to each chain and no chain aside", r)
	}

	if err := RemoveFirewall(bridge); err != nil {
		t.Fatal(err)
	}
	if left := rules(t, bridge); left != "" {
		t.Errorf("rules left after RemoveFirewall:\n%s", left)
	}
	if got := probe(t, a.NetNS, addr(gw, hostPort)); got != "connected" {
		t.Errorf("without the firewall, the host port: %s, want connected (the test's setup reaches it)", got)
	}
}

// rules are the lines of iptables and ip6tables (filter and nat) of the
// firewall of bridge.
func rules(t *testing.T, bridge string) string {
	t.Helper()
	var out []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"filter", "nat"} {
			b, err := exec.Command(cmd, "-t", table).Output()
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "FLYNN-") && strings.Contains(l, bridge) {
					out = append(out, cmd+" "+table+": "+strings.Join(strings.Fields(strings.SplitN(l, "[", 2)[0]), " "))
				}
			}
		}
	}
	return strings.Join(out, "\n")
}

// linkLocal is the IPv6 link-local address of link, or "".
func linkLocal(link string) string {
	i, err := net.InterfaceByName(link)
	if err != nil {
		return ""
	}
	addrs, _ := i.Addrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() == nil && n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}
