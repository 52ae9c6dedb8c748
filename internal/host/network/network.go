// Package network gives each job its own network namespace, pinned to a
// file so it outlives any process, attached to the host's bridge with CNI
// (bridge + host-local + portmap), and publishes the job's ports on host
// ports it allocates. Detach undoes all of it. Jobs on the bridge are
// kept apart from each other (isolated bridge ports) and from the host by
// a firewall (firewall.go), which also masquerades their traffic to the
// world. KeepSpares keeps a few namespaces attached ahead of demand
// (spares.go), so that Attach mostly only hands one over.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"
)

// Config says which bridge, subnet and CNI plugins jobs use.
type Config struct {
	// Bridge is the Linux bridge jobs attach to (default flynnbr0).
	Bridge string
	// Subnet is the jobs' address range (default 100.64.0.0/16); the
	// bridge takes its first address.
	Subnet string
	// PluginDir holds the CNI plugin binaries (default /usr/lib/cni).
	PluginDir string
	// StateDir holds pinned namespaces, the CNI cache and IPAM data.
	StateDir string
	// HostIP is the address ports are published on; empty means every
	// local address.
	HostIP string
	// PortMin and PortMax bound the host ports jobs get (default
	// DefaultPortMin-DefaultPortMax). Keep the range outside the kernel's
	// ephemeral range (net.ipv4.ip_local_port_range): a port picked there
	// can be taken by any outgoing connection before the job binds it.
	PortMin, PortMax int

	// The firewall (see firewall.go). RouterPorts are the TCP ports of
	// the host (and of DenyNets) jobs may connect to, the routers'
	// (default DefaultRouterPorts); DNSPorts the DNS ports, UDP and TCP
	// (default 53); DenyNets the networks beyond the host jobs reach at
	// those ports only (default DefaultDenyNets).
	RouterPorts []PortRange
	DNSPorts    []int
	DenyNets    []netip.Prefix

	// Spares is how many attached namespaces KeepSpares keeps ready
	// for jobs (default DefaultSpares; negative: none).
	Spares int
}

// The default host port range of jobs: above Linux's default ephemeral
// range (32768-60999).
const (
	DefaultPortMin = 61000
	DefaultPortMax = 65535
)

// ParsePortRange parses "LO-HI".
func ParsePortRange(s string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("port range %q: give LO-HI, two ports from 1 to 65535, LO <= HI", s)
	}
	return lo, hi, nil
}

// EphemeralOverlap reports the kernel's ephemeral port range when it
// overlaps [lo, hi] (ok false when it does not, or cannot be read).
func EphemeralOverlap(lo, hi int) (elo, ehi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	elo, _ = strconv.Atoi(f[0])
	ehi, _ = strconv.Atoi(f[1])
	return elo, ehi, lo <= ehi && elo <= hi
}

// Port is a container port to publish.
type Port struct {
	Port  int
	Proto string // tcp or udp
}

// Attachment is a job's network: its pinned namespace, address and the
// host port published for each requested port, in order.
type Attachment struct {
	NetNS     string
	IP        string
	HostPorts []int
}

// Manager attaches and detaches job networks.
type Manager struct {
	cfg     Config
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	noPorts *libcni.NetworkConfigList
	portmap map[string]any // the portmap plugin's config
	gateway string

	mu    sync.Mutex
	ports map[int]bool
	next  int // where the next search for a free port starts

	fwMu    sync.Mutex
	fw      *firewall
	fwReady bool

	spareMu    sync.Mutex
	spares     []*spare      // ready, oldest first
	starting   int           // jobs starting (Hold)
	lastBusy   time.Time     // when 2 or more were last starting at once
	startsDone chan struct{} // wakes waitQuiet when no job is starting
	spareWant  chan struct{} // wakes KeepSpares when a spare was taken
	// spareMaxWait bounds waitQuiet (spareMaxWait by default).
	spareMaxWait time.Duration
}

// New checks cfg and prepares the CNI configuration.
func New(cfg Config) (*Manager, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = "flynnbr0"
	}
	if cfg.Subnet == "" {
		cfg.Subnet = "100.64.0.0/16"
	}
	if cfg.PluginDir == "" {
		cfg.PluginDir = "/usr/lib/cni"
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = DefaultPortMin, DefaultPortMax
	}
	if cfg.PortMin < 1 || cfg.PortMax > 65535 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("network: port range %d-%d is not within 1-65535", cfg.PortMin, cfg.PortMax)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("network: StateDir is required")
	}
	if cfg.RouterPorts == nil {
		cfg.RouterPorts = DefaultRouterPorts
	}
	if cfg.DNSPorts == nil {
		cfg.DNSPorts = []int{53}
	}
	if cfg.DenyNets == nil {
		cfg.DenyNets = DefaultDenyNets
	}
	if cfg.Spares == 0 {
		cfg.Spares = DefaultSpares
	}
	for _, n := range cfg.DenyNets {
		if !n.Addr().Is4() {
			return nil, fmt.Errorf("network: deny net %s is not IPv4 (jobs have no IPv6 at all)", n)
		}
	}
	ip, ipnet, err := net.ParseCIDR(cfg.Subnet)
	if err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("network: subnet %q is not an IPv4 CIDR", cfg.Subnet)
	}
	gw := make(net.IP, 4)
	copy(gw, ipnet.IP.To4())
	gw[3]++
	for _, d := range []string{"netns", "cache", "ipam", "system", "taken"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cfg.Bridge,
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    cfg.Bridge,
				"isGateway": true,
				// The firewall masquerades the subnet (one rule, not
				// iptables execs for every job).
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": cfg.Subnet, "gateway": gw.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(cfg.StateDir, "ipam"),
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
		},
	}
	b, _ := json.Marshal(conf)
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	// A namespace is attached to the bridge first (no ports: a spare,
	// or a job without any), its ports published after.
	plugins := conf["plugins"].([]any)
	conf["plugins"] = plugins[:1]
	b, _ = json.Marshal(conf)
	noPorts, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	return &Manager{
		cfg: cfg,
		// An exec of our own: libcni makes its default on first use,
		// racing when that use is concurrent.
		cni: libcni.NewCNIConfigWithCacheDir([]string{cfg.PluginDir}, filepath.Join(cfg.StateDir, "cache"), &invoke.DefaultExec{
			RawExec:       &invoke.RawExec{Stderr: os.Stderr},
			PluginDecoder: version.PluginDecoder{},
		}),
		list:         list,
		noPorts:      noPorts,
		portmap:      plugins[1].(map[string]any),
		gateway:      gw.String(),
		ports:        map[int]bool{},
		next:         cfg.PortMin,
		spareWant:    make(chan struct{}, 1),
		startsDone:   make(chan struct{}, 1),
		spareMaxWait: spareMaxWait,
	}, nil
}

// EnsureFirewall puts the firewall of the bridge's jobs in place (see
// firewall.go) and lets the system jobs attached so far through. Attach
// calls it on first use; an agent calls it at start, so that a changed
// policy applies to jobs it adopts too.
func (m *Manager) EnsureFirewall() error {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	return m.ensureFirewallLocked()
}

func (m *Manager) ensureFirewallLocked() error {
	if m.fwReady {
		return nil
	}
	if m.fw == nil {
		fw, err := newFirewall(&m.cfg)
		if err != nil {
			return err
		}
		m.fw = fw
	}
	if err := m.fw.ensure(); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(m.cfg.StateDir, "system"))
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	var passes []jobPass
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(m.cfg.StateDir, "system", e.Name()))
		if err != nil {
			return fmt.Errorf("firewall: %w", err)
		}
		ip, pass, err := parsePass(b)
		if err != nil {
			return fmt.Errorf("firewall: %s: %w", e.Name(), err)
		}
		passes = append(passes, jobPass{ip, pass})
	}
	// In the addresses' order: the order jobs were attached in, as a
	// rule, so a restarted agent makes the chain as it was.
	sort.Slice(passes, func(i, j int) bool {
		a, _ := netip.ParseAddr(passes[i].IP)
		b, _ := netip.ParseAddr(passes[j].IP)
		return a.Less(b)
	})
	if err := m.fw.setPasses(passes); err != nil {
		return err
	}
	m.fwReady = true
	return nil
}

// Gateway is the bridge's address, which jobs see as their gateway.
func (m *Manager) Gateway() string { return m.gateway }

// netnsPath is where the namespace of CNI container key (a job's id, or
// a spare's key) is pinned.
func (m *Manager) netnsPath(key string) string {
	return filepath.Join(m.cfg.StateDir, "netns", key)
}

// Reserve marks host ports as in use, e.g. those of jobs that survived a
// restart of the agent.
func (m *Manager) Reserve(ports []int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range ports {
		m.ports[p] = true
		// Go on from the newest port, as before a restart: a port is
		// given out again as late as possible.
		if p >= m.cfg.PortMin && p < m.cfg.PortMax && p >= m.next {
			m.next = p + 1
		}
	}
}

// Release frees host ports.
func (m *Manager) Release(ports []int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range ports {
		delete(m.ports, p)
	}
}

// AllocPorts picks n host ports from the configured range that no job
// holds and that are free for both TCP and UDP on the host address. The
// search goes round the range from where the last one ended, so a port
// just released is the last to be given out again.
func (m *Manager) AllocPorts(n int) ([]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	size := m.cfg.PortMax - m.cfg.PortMin + 1
	var out []int
	for tried := 0; len(out) < n; tried++ {
		if tried >= size {
			m.releaseLocked(out)
			return nil, fmt.Errorf("no free host port in %d-%d", m.cfg.PortMin, m.cfg.PortMax)
		}
		p := m.next
		if m.next++; m.next > m.cfg.PortMax {
			m.next = m.cfg.PortMin
		}
		if m.ports[p] || !m.portFree(p) {
			continue
		}
		m.ports[p] = true
		out = append(out, p)
	}
	return out, nil
}

// portFree reports whether nothing on the host holds p, TCP or UDP.
func (m *Manager) portFree(p int) bool {
	addr := net.JoinHostPort(m.cfg.HostIP, strconv.Itoa(p))
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

func (m *Manager) releaseLocked(ports []int) {
	for _, p := range ports {
		delete(m.ports, p)
	}
}

// runtimeConf is CNI's view of the namespace pinned at path: its
// container id is key.
func (m *Manager) runtimeConf(key, path string, ports []Port, hostPorts []int) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: key, NetNS: path, IfName: "eth0"}
	if len(ports) > 0 {
		var pm []map[string]any
		for i, p := range ports {
			proto := p.Proto
			if proto == "" {
				proto = "tcp"
			}
			e := map[string]any{"hostPort": hostPorts[i], "containerPort": p.Port, "protocol": proto}
			if m.cfg.HostIP != "" {
				e["hostIP"] = m.cfg.HostIP
			}
			pm = append(pm, e)
		}
		rt.CapabilityArgs = map[string]any{"portMappings": pm}
	}
	return rt
}

// delList is the plugin list that detaches the namespace of key: the
// bridge, and portmap when it has ports. A namespace attached by an agent
// from before the firewall masqueraded the subnet is detached with the
// list it was attached with, whose bridge undoes its own masquerading.
func (m *Manager) delList(key string, ports []Port) *libcni.NetworkConfigList {
	b, _, err := m.cni.GetNetworkListCachedConfig(m.list, m.runtimeConf(key, "", nil, nil))
	if err == nil && len(b) > 0 {
		if l, err := libcni.NetworkConfFromBytes(b); err == nil && len(l.Plugins) > 0 && l.Plugins[0].Network.Type == "bridge" {
			var c struct {
				IPMasq bool `json:"ipMasq"`
			}
			if json.Unmarshal(l.Plugins[0].Bytes, &c) == nil && c.IPMasq {
				return l
			}
		}
	}
	if len(ports) == 0 {
		return m.noPorts
	}
	return m.list
}

// Attach gives job id a namespace attached to the bridge, a spare when
// there is one, else one made now, and publishes ports on hostPorts (one
// per port). The firewall lets a system job reach the host's ports; any
// other job reaches only the internet, the routers and DNS. No job
// reaches another on the bridge. On error everything it did is undone.
func (m *Manager) Attach(ctx context.Context, id string, ports []Port, hostPorts []int, pass Pass) (_ *Attachment, err error) {
	if len(ports) != len(hostPorts) {
		return nil, errors.New("attach network: one host port per port is needed")
	}
	if err := m.EnsureFirewall(); err != nil {
		return nil, fmt.Errorf("attach network: %w", err)
	}
	defer func() {
		if err != nil {
			m.Detach(context.WithoutCancel(ctx), id, ports, hostPorts)
		}
	}()
	sp, err := m.takeSpare(id)
	if err != nil {
		return nil, fmt.Errorf("attach network: %w", err)
	}
	path := m.netnsPath(id)
	if sp != nil {
		// Pinned where a job's namespace is, as if made for it.
		if err := moveNetNS(m.netnsPath(sp.key), path); err != nil {
			return nil, fmt.Errorf("attach network: %w", err)
		}
	} else {
		// None ready: the job's own, keyed by its id.
		if sp, err = m.attachBridge(ctx, id); err != nil {
			return nil, fmt.Errorf("attach network: %w", err)
		}
	}
	if len(ports) > 0 {
		if err := m.publish(ctx, sp, path, ports, hostPorts); err != nil {
			return nil, fmt.Errorf("attach network: %w", err)
		}
	}
	ip := sp.ip
	if !pass.Empty() {
		if err := os.WriteFile(m.systemFile(id), []byte(ip+" "+pass.String()+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("attach network: %w", err)
		}
		m.fwMu.Lock()
		err := m.fw.allowPass(ip, pass)
		m.fwMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("attach network: %w", err)
		}
	}
	return &Attachment{NetNS: path, IP: ip, HostPorts: hostPorts}, nil
}

// attachBridge pins a new namespace for CNI container key and attaches
// it to the bridge (no ports), its bridge port isolated. On error
// nothing is left of it.
func (m *Manager) attachBridge(ctx context.Context, key string) (_ *spare, err error) {
	path := m.netnsPath(key)
	if err := pinNetNS(path); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.detachKey(context.WithoutCancel(ctx), key, "", nil, nil)
		}
	}()
	res, err := m.cni.AddNetworkList(ctx, m.noPorts, m.runtimeConf(key, path, nil, nil))
	if err != nil {
		return nil, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	if len(r.IPs) == 0 {
		return nil, errors.New("CNI gave no address")
	}
	// No frames between jobs on the bridge, whatever their protocol
	// (IPv6 link-local, ARP): each job's port talks to the host only.
	for _, i := range r.Interfaces {
		if i.Sandbox == "" && i.Name != m.cfg.Bridge {
			if err := isolatePort(ctx, i.Name); err != nil {
				return nil, err
			}
		}
	}
	return &spare{key: key, ip: r.IPs[0].Address.IP.String(), prev: res}, nil
}

// isolatePort turns bridge port isolation on for the host's end of a
// job's veth: through sysfs when it shows this network namespace's
// links, else with ip.
func isolatePort(ctx context.Context, link string) error {
	f := filepath.Join("/sys/class/net", link, "brport", "isolated")
	if _, err := os.Stat(f); err == nil {
		if err := os.WriteFile(f, []byte("1"), 0); err == nil {
			return nil
		}
	}
	if out, err := exec.CommandContext(ctx, "ip", "link", "set", "dev", link, "type", "bridge_slave", "isolated", "on").CombinedOutput(); err != nil {
		return fmt.Errorf("isolate bridge port %s: %v: %s", link, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// publish maps hostPorts to the ports of the namespace pinned at path
// (CNI's portmap, chained after the bridge's result).
func (m *Manager) publish(ctx context.Context, sp *spare, path string, ports []Port, hostPorts []int) error {
	pm := map[string]any{}
	for k, v := range m.portmap {
		pm[k] = v
	}
	pm["prevResult"] = sp.prev
	b, err := json.Marshal(map[string]any{"cniVersion": m.list.CNIVersion, "name": m.list.Name, "plugins": []any{pm}})
	if err != nil {
		return err
	}
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return err
	}
	if _, err := m.cni.AddNetworkList(ctx, list, m.runtimeConf(sp.key, path, ports, hostPorts)); err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	return nil
}

func (m *Manager) systemFile(id string) string {
	return filepath.Join(m.cfg.StateDir, "system", id)
}

// Detach removes job id's CNI attachment (address, port mappings, veth),
// unpins and deletes its namespace and frees its host ports. It is safe to
// call on a partly attached or already detached job.
func (m *Manager) Detach(ctx context.Context, id string, ports []Port, hostPorts []int) error {
	if len(ports) != len(hostPorts) {
		ports, hostPorts = nil, nil
	}
	// A system job's address loses its pass before CNI gives it back
	// for another job.
	if b, err := os.ReadFile(m.systemFile(id)); err == nil {
		m.fwMu.Lock()
		err := m.ensureFirewallLocked()
		if err == nil {
			var ip string
			var pass Pass
			if ip, pass, err = parsePass(b); err == nil {
				err = m.fw.forgetPass(ip, pass)
			}
		}
		m.fwMu.Unlock()
		if err != nil {
			return fmt.Errorf("detach network of %s: %w", id, err)
		}
		if err := os.Remove(m.systemFile(id)); err != nil {
			return fmt.Errorf("detach network of %s: %w", id, err)
		}
	}
	key := id
	taken := m.takenFile(id)
	if b, err := os.ReadFile(taken); err == nil {
		key = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach network of %s: %w", id, err)
	}
	err := m.detachKey(ctx, key, m.netnsPath(id), ports, hostPorts)
	if err == nil {
		if err = os.Remove(taken); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	m.Release(hostPorts)
	if err != nil {
		return fmt.Errorf("detach network of %s: %w", id, err)
	}
	return nil
}

// detachKey removes the CNI attachment of key and unpins its namespace,
// pinned at jobPath (a job's) or where a spare's is, or both (an agent
// killed while it moved the pin).
func (m *Manager) detachKey(ctx context.Context, key, jobPath string, ports []Port, hostPorts []int) error {
	var errs []error
	paths := []string{m.netnsPath(key)}
	if jobPath != "" && jobPath != paths[0] {
		paths = []string{jobPath, paths[0]}
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			if err := m.cni.DelNetworkList(ctx, m.delList(key, ports), m.runtimeConf(key, p, ports, hostPorts)); err != nil {
				errs = append(errs, fmt.Errorf("cni del: %w", err))
			}
			break
		}
	}
	for _, p := range paths {
		if err := unpinNetNS(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pinNetNS creates a new network namespace and bind-mounts it on path.
func pinNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("pin netns: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread changes namespace; it is thrown away (never
		// unlocked) unless it gets back to the original one.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		merr := loopbackUp()
		if merr == nil {
			merr = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		if merr != nil {
			merr = fmt.Errorf("set up netns: %w", merr)
		}
		errc <- merr
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("pin netns: %w", err)
	}
	return nil
}

// moveNetNS pins the namespace pinned at from at to instead.
func moveNetNS(from, to string) error {
	f, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("pin netns: %w", err)
	}
	f.Close()
	if err := unix.Mount(from, to, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(to)
		return fmt.Errorf("pin netns: %w", err)
	}
	return unpinNetNS(from)
}

func unpinNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin netns: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin netns: %w", err)
	}
	return nil
}

// loopbackUp brings up lo in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}
