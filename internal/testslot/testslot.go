// Package testslot hands tests the names they share with every other
// process on the machine: TCP and UDP ports, network interface and
// namespace names, job subnets, cgroup parents and state dirs.
//
// A test binary takes one of Slots slots, an exclusive flock on a file
// under LockDir held for the life of the process (the kernel drops it when
// the process dies, however it dies), so two test binaries that run at
// the same time (two packages, two checkouts) never get the same names.
// Whoever takes a slot first removes what an earlier holder left behind
// when it was killed (a test timeout, a SIGKILL): its processes, mounts,
// links, network namespaces, iptables rules and cgroups. Nothing else can
// be using them, so this is safe, and a killed run never breaks the next.
//
// Ports come from the slot's block, which lies below the kernel's
// ephemeral range (net.ipv4.ip_local_port_range): outgoing connections
// never take one, so a port handed to a server that binds it later is
// still free when it does. Each port is handed out once per binary and is
// checked free (TCP and UDP, every address) when handed out.
//
// Everything else is named from the slot: Name gives "ft" + the slot's
// letter + a prefix + a counter; Subnet gives /24s of 100.(96+slot).0.0/16
// (inside 100.64.0.0/10); Dir gives directories under the slot's root.
package testslot

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// Slots is how many test binaries can hold a slot at once.
	Slots = 8
	// PortBase and PortsPerSlot place slot s's ports at
	// [PortBase+s*PortsPerSlot, PortBase+(s+1)*PortsPerSlot).
	PortBase     = 10000
	PortsPerSlot = 2500
	// LockDir holds the slot lock files and RootDir the slots' dirs.
	LockDir = "/tmp/flynn-test-slots"
	RootDir = "/tmp/flynn-test"
)

// Slot is what one test binary holds.
type Slot struct {
	N      int    // 0 .. Slots-1
	Letter string // "a" + N
	// Root is the slot's directory; every Dir is under it.
	Root string

	lock *os.File // held open: the flock lives as long as the process

	mu       sync.Mutex
	nextPort int
	names    int
	subnets  int
	dirs     int
}

var (
	once    sync.Once
	current *Slot
	err     error
)

// Get returns this binary's slot, taking one (and cleaning up after its
// previous holder) on first use.
func Get(t testing.TB) *Slot {
	t.Helper()
	once.Do(func() { current, err = take() })
	if err != nil {
		t.Fatalf("testslot: %v", err)
	}
	return current
}

func take() (*Slot, error) {
	if err := os.MkdirAll(LockDir, 0o777); err != nil {
		return nil, err
	}
	if err := checkEphemeral(); err != nil {
		return nil, err
	}
	// Wait for a free slot rather than fail: more binaries than slots
	// only means some wait for others to finish.
	deadline := time.Now().Add(30 * time.Minute)
	for {
		for n := 0; n < Slots; n++ {
			f, err := os.OpenFile(filepath.Join(LockDir, fmt.Sprintf("slot-%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o666)
			if err != nil {
				return nil, err
			}
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				f.Close()
				continue
			}
			f.Truncate(0)
			fmt.Fprintf(f, "%d\n", os.Getpid())
			s := &Slot{N: n, Letter: string(rune('a' + n)), lock: f}
			s.Root = filepath.Join(RootDir, s.Letter)
			s.nextPort = PortBase + n*PortsPerSlot
			s.clean()
			if err := os.MkdirAll(s.Root, 0o755); err != nil {
				return nil, err
			}
			return s, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("all %d test slots (%s) stayed taken for 30 minutes", Slots, LockDir)
		}
		time.Sleep(time.Second)
	}
}

// checkEphemeral fails when the kernel's ephemeral port range overlaps
// the ports of the slots.
func checkEphemeral() error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return nil // not Linux; nothing to check
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return nil
	}
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	if PortBase < hi+1 && lo < PortBase+Slots*PortsPerSlot {
		return fmt.Errorf("the ephemeral port range %d-%d overlaps the test ports %d-%d: set net.ipv4.ip_local_port_range to start above %d",
			lo, hi, PortBase, PortBase+Slots*PortsPerSlot-1, PortBase+Slots*PortsPerSlot-1)
	}
	return nil
}

// Prefix is what every name of the slot starts with.
func (s *Slot) Prefix() string { return "ft" + s.Letter }

// SubnetPrefix is what every subnet of the slot starts with ("100.96.").
func (s *Slot) SubnetPrefix() string { return fmt.Sprintf("100.%d.", 96+s.N) }

// Port returns a port free for TCP and UDP on every address, which no
// other test binary holds and this one has not handed out before.
func Port(t testing.TB) int {
	t.Helper()
	return Ports(t, 1)[0]
}

// Ports returns n consecutive ports (see Port): PortRange's ports for a
// daemon that allocates from a range.
func Ports(t testing.TB, n int) []int {
	t.Helper()
	s := Get(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	end := PortBase + (s.N+1)*PortsPerSlot
	var out []int
	for len(out) < n {
		if s.nextPort >= end {
			t.Fatalf("testslot: slot %s handed out all its %d ports", s.Letter, PortsPerSlot)
		}
		p := s.nextPort
		s.nextPort++
		if !portFree(p) {
			out = out[:0] // keep them consecutive
			continue
		}
		out = append(out, p)
	}
	return out
}

// PortRange returns "LO-HI", n consecutive ports for a daemon's jobs.
func PortRange(t testing.TB, n int) string {
	t.Helper()
	p := Ports(t, n)
	return fmt.Sprintf("%d-%d", p[0], p[len(p)-1])
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// Name returns a name for a bridge, link, network namespace, cgroup parent
// or iptables chain: the slot's prefix, prefix and a counter, at most 15
// bytes (a Linux interface name).
func Name(t testing.TB, prefix string) string {
	t.Helper()
	s := Get(t)
	s.mu.Lock()
	s.names++
	n := s.names
	s.mu.Unlock()
	name := fmt.Sprintf("%s%s%d", s.Prefix(), prefix, n)
	if len(name) > 15 {
		t.Fatalf("testslot: name %q is longer than 15 bytes: use a shorter prefix than %q", name, prefix)
	}
	return name
}

// Subnet returns a /24 no other test uses, in 100.64.0.0/10.
func Subnet(t testing.TB) string {
	t.Helper()
	s := Get(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subnets > 255 {
		t.Fatalf("testslot: slot %s handed out all its subnets", s.Letter)
	}
	n := s.subnets
	s.subnets++
	return fmt.Sprintf("100.%d.%d.0/24", 96+s.N, n)
}

// Dir returns a new directory under the slot's root (short, so paths in
// it stay short), removed when the test ends after unmounting whatever is
// left mounted under it.
func Dir(t testing.TB) string {
	t.Helper()
	s := Get(t)
	s.mu.Lock()
	s.dirs++
	n := s.dirs
	s.mu.Unlock()
	d := filepath.Join(s.Root, strconv.Itoa(n))
	os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatalf("testslot: %v", err)
	}
	t.Cleanup(func() {
		unmountUnder(d)
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("testslot: remove %s: %v", d, err)
		}
	})
	return d
}

// clean removes what an earlier holder of the slot left behind.
func (s *Slot) clean() {
	if os.Geteuid() != 0 {
		os.RemoveAll(s.Root)
		return
	}
	prefix := s.Prefix()
	// Processes that run from the slot's dirs (daemons, supervisors)
	// and processes in the slot's cgroups (containers).
	killMatching(func(cmdline []byte) bool { return bytes.Contains(cmdline, []byte(s.Root+"/")) })
	for _, cg := range cgroupsNamed(prefix) {
		killCgroup(cg)
	}
	unmountUnder(s.Root)
	os.RemoveAll(s.Root)
	for _, l := range linksNamed(prefix) {
		exec.Command("ip", "link", "del", l).Run()
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				exec.Command("ip", "netns", "del", e.Name()).Run()
			}
		}
	}
	RemoveIptables(s.SubnetPrefix(), prefix)
	RemoveCgroups(prefix)
}

// killMatching SIGKILLs every process whose command line matches.
func killMatching(match func([]byte) bool) {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && match(b) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cgroupsNamed returns the cgroup dirs (any hierarchy, top level) whose
// name starts with prefix.
func cgroupsNamed(prefix string) []string {
	var out []string
	for _, pat := range []string{"/sys/fs/cgroup/" + prefix + "*", "/sys/fs/cgroup/*/" + prefix + "*"} {
		m, _ := filepath.Glob(pat)
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				out = append(out, d)
			}
		}
	}
	return out
}

func killCgroup(top string) {
	filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(filepath.Join(p, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		return nil
	})
}

// RemoveCgroups kills what runs in the cgroups whose top-level name
// starts with prefix and removes them, children first.
func RemoveCgroups(prefix string) {
	var dirs []string
	for _, top := range cgroupsNamed(prefix) {
		killCgroup(top)
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		// A killed process leaves its cgroup a moment later.
		for i := 0; i < 50; i++ {
			if err := os.Remove(d); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func linksNamed(prefix string) []string {
	ifs, _ := net.Interfaces()
	var out []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, prefix) {
			out = append(out, i.Name)
		}
	}
	return out
}

// unmountUnder detaches every mount at or under dir, deepest first.
func unmountUnder(dir string) {
	dir = strings.TrimSuffix(dir, "/")
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// RemoveIptables deletes the nat and filter rules (IPv4 and IPv6) that
// mention any of words (a subnet prefix such as "100.96.", a bridge or
// name prefix), then the chains those rules lived in or jumped to once
// they are empty (CNI's per-job chains), and the chains whose names hold
// a word (the host firewall's, named after bridges). Chains of other runs
// are left alone.
func RemoveIptables(words ...string) {
	mentions := func(line string) bool {
		for _, w := range words {
			if w != "" && strings.Contains(line, w) {
				return true
			}
		}
		return false
	}
	for _, v := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"nat", "filter"} {
			b, err := exec.Command(v+"-save", "-t", table).Output()
			if err != nil {
				continue
			}
			chains := map[string]bool{}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				line := sc.Text()
				if strings.HasPrefix(line, ":") {
					if name := strings.Fields(line[1:])[0]; mentions(name) {
						chains[name] = true
					}
					continue
				}
				if !strings.HasPrefix(line, "-A ") || !mentions(line) {
					continue
				}
				f := strings.Fields(line)
				if strings.HasPrefix(f[1], "CNI-") {
					chains[f[1]] = true
				}
				for i := range f {
					if (f[i] == "-j" || f[i] == "-g") && i+1 < len(f) && strings.HasPrefix(f[i+1], "CNI-") {
						chains[f[i+1]] = true
					}
				}
				// iptables-save quotes as a shell does (comments have spaces).
				exec.Command("sh", "-c", v+" -t "+table+" -D "+strings.TrimPrefix(line, "-A ")).Run()
			}
			// Flush them all before deleting any: they may jump to
			// each other.
			for c := range chains {
				if !strings.HasPrefix(c, "CNI-HOSTPORT") { // CNI's shared chains
					exec.Command(v, "-t", table, "-F", c).Run()
				}
			}
			for c := range chains {
				if !strings.HasPrefix(c, "CNI-HOSTPORT") {
					exec.Command(v, "-t", table, "-X", c).Run()
				}
			}
		}
	}
}
