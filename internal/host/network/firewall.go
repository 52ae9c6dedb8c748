package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// The firewall keeps jobs on the bridge to what a tenant needs: the
// internet, the routers and DNS. They do not reach the host's other
// ports (etcd, discoverd, the host agent, system components), other
// jobs' addresses (directly or through their published ports: app to app
// goes through a router), nor, beyond the host, the DenyNets except at
// the router and DNS ports. Published ports still reach jobs from
// anywhere else. Jobs on the host's network (system components, builds)
// are not on the bridge and are not filtered; a system job on the bridge
// is let through (Attach with system set).
//
// The rules live in iptables (and ip6tables: jobs get no IPv6 at all),
// in chains named after the bridge so that several hosts on one machine
// keep apart:
//
//	FLYNN-IN-<bridge>   from INPUT, for packets from the bridge
//	FLYNN-FWD-<bridge>  from FORWARD, for packets from or to the bridge
//	FLYNN-SYS-<bridge>  the system jobs' addresses, let through, and the
//	                    builds' addresses, let through to given ports
//	FLYNN-PRE-<bridge>  (nat) from PREROUTING, for packets from the
//	                    bridge: no port mapping for them, so a job that
//	                    dials a published port meets FLYNN-IN
//	FLYNN-OUT-<bridge>  (nat) from POSTROUTING, for packets from the
//	                    subnet: masquerades those leaving it (one chain
//	                    for all jobs, where CNI's bridge would make one a
//	                    job, with iptables execs at every start and stop)
//
// They are kept in the kernel, not in the agent: a restarted agent finds
// them in place (and rebuilds them only if its policy changed, without a
// moment unfiltered); RemoveFirewall takes them away.
//
// github.com/coreos/go-iptables drives them because the CNI plugins that
// attach jobs (bridge, portmap) program iptables through it too: the
// port mappings, masquerading and this policy are one ruleset an operator
// reads with iptables -S, whichever backend (nf_tables or legacy) the
// host's iptables uses.

// PortRange is a range of ports, Lo to Hi inclusive.
type PortRange struct{ Lo, Hi int }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParsePorts parses a comma-separated list of ports and LO-HI ranges.
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi := f, f
		if a, b, ok := strings.Cut(f, "-"); ok {
			lo, hi = a, b
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || l < 1 || h > 65535 || l > h {
			return nil, fmt.Errorf("ports %q: give ports (1-65535) and LO-HI ranges, separated by commas", s)
		}
		out = append(out, PortRange{l, h})
	}
	return out, nil
}

// DefaultRouterPorts are the router's HTTP, HTTPS and TCP route ports.
var DefaultRouterPorts = []PortRange{{80, 80}, {443, 443}, {3000, 3500}}

// DefaultDenyNets are the networks beyond the host that jobs reach only
// at router and DNS ports: link-local, where clouds serve instance
// metadata and credentials.
var DefaultDenyNets = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}

// Chain names of a bridge's firewall.
func chainIn(bridge string) string  { return "FLYNN-IN-" + bridge }
func chainFwd(bridge string) string { return "FLYNN-FWD-" + bridge }
func chainSys(bridge string) string { return "FLYNN-SYS-" + bridge }
func chainPre(bridge string) string { return "FLYNN-PRE-" + bridge }
func chainOut(bridge string) string { return "FLYNN-OUT-" + bridge }

const (
	filter = "filter"
	nat    = "nat"
	// newSuffix names the chain a changed policy is built in before it
	// replaces the old one.
	newSuffix = ".n"
)

type firewall struct {
	bridge   string
	subnet   string             // the jobs' subnet, as iptables shows it
	ip4, ip6 *iptables.IPTables // ip6 nil on a host without IPv6
	in, fwd  [][]string         // IPv4 rules of FLYNN-IN and FLYNN-FWD
	out      [][]string         // rules of FLYNN-OUT
}

func newFirewall(cfg *Config) (*firewall, error) {
	ip4, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("firewall: iptables: %w (make deps installs it)", err)
	}
	_, subnet, err := net.ParseCIDR(cfg.Subnet)
	if err != nil {
		return nil, fmt.Errorf("firewall: subnet: %w", err)
	}
	fw := &firewall{bridge: cfg.Bridge, subnet: subnet.String(), ip4: ip4}
	// As CNI's bridge masqueraded a job's packets: not those within the
	// subnet, nor multicast.
	fw.out = [][]string{
		{"-d", fw.subnet, "-j", "RETURN"},
		{"-d", "224.0.0.0/4", "-j", "RETURN"},
		{"-j", "MASQUERADE"},
	}
	if _, err := os.Stat("/proc/net/if_inet6"); err == nil {
		if fw.ip6, err = iptables.NewWithProtocol(iptables.ProtocolIPv6); err != nil {
			return nil, fmt.Errorf("firewall: ip6tables: %w", err)
		}
	}
	reject := []string{"-j", "REJECT", "--reject-with", "icmp-admin-prohibited"}
	established := []string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"}
	var allowed [][]string // what jobs may reach on the host and the deny nets
	for _, p := range cfg.DNSPorts {
		for _, proto := range []string{"udp", "tcp"} {
			allowed = append(allowed, []string{"-p", proto, "--dport", strconv.Itoa(p)})
		}
	}
	// multiport takes 15 ports a rule, a range counting two.
	for i := 0; i < len(cfg.RouterPorts); i += 7 {
		var ports []string
		for _, r := range cfg.RouterPorts[i:min(i+7, len(cfg.RouterPorts))] {
			ports = append(ports, strings.Replace(r.String(), "-", ":", 1))
		}
		allowed = append(allowed, []string{"-p", "tcp", "-m", "multiport", "--dports", strings.Join(ports, ",")})
	}

	fw.in = append(fw.in, established, []string{"-j", chainSys(cfg.Bridge)})
	for _, a := range allowed {
		fw.in = append(fw.in, append(append([]string(nil), a...), "-j", "RETURN"))
	}
	fw.in = append(fw.in, reject)

	br := cfg.Bridge
	fw.fwd = append(fw.fwd, established,
		[]string{"-i", br, "-j", chainSys(br)},
		// Job to job, straight or through a published port.
		append([]string{"-i", br, "-o", br}, reject...),
		// From elsewhere, only published ports reach jobs.
		append([]string{"-o", br, "-m", "conntrack", "!", "--ctstate", "DNAT"}, reject...),
	)
	for _, n := range cfg.DenyNets {
		for _, a := range allowed {
			fw.fwd = append(fw.fwd, append(append([]string{"-i", br, "-d", n.String()}, a...), "-j", "RETURN"))
		}
		fw.fwd = append(fw.fwd, append([]string{"-i", br, "-d", n.String()}, reject...))
	}
	return fw, nil
}

// marker is the first rule of a policy chain: it names the policy (a hash
// of its rules), so an agent finds out whether the chain in the kernel is
// the policy it wants without parsing iptables' rendering of rules.
func marker(rules [][]string) []string {
	h := sha256.New()
	for _, r := range rules {
		fmt.Fprintf(h, "%q\n", r)
	}
	return []string{"-m", "comment", "--comment", "flynn-policy-" + hex.EncodeToString(h.Sum(nil))[:16]}
}

// ensure puts the bridge's policy in place: the system chain (kept as it
// is), the policy chains (rebuilt if they differ from the wanted ones)
// and the jumps to them, for IPv4 and IPv6.
func (fw *firewall) ensure() error {
	br := fw.bridge
	reject6 := []string{"-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"}
	type family struct {
		ipt     *iptables.IPTables
		in, fwd [][]string
	}
	fams := []family{{fw.ip4, fw.in, fw.fwd}}
	if fw.ip6 != nil {
		fams = append(fams, family{fw.ip6,
			[][]string{reject6},
			[][]string{append([]string{"-i", br}, reject6...), append([]string{"-o", br}, reject6...)}})
	}
	for _, f := range fams {
		if f.ipt.Proto() == iptables.ProtocolIPv4 {
			if ok, err := f.ipt.ChainExists(filter, chainSys(br)); err != nil {
				return fmt.Errorf("firewall: %w", err)
			} else if !ok {
				if err := f.ipt.NewChain(filter, chainSys(br)); err != nil {
					return fmt.Errorf("firewall: %w", err)
				}
			}
		}
		if err := ensureChain(f.ipt, filter, chainIn(br), "INPUT", []string{"-i", br}, f.in); err != nil {
			return fmt.Errorf("firewall: %w", err)
		}
		if err := ensureChain(f.ipt, filter, chainFwd(br), "FORWARD", nil, f.fwd); err != nil {
			return fmt.Errorf("firewall: %w", err)
		}
		if f.ipt.Proto() == iptables.ProtocolIPv4 {
			// Published ports are for the world and the routers: a job
			// that dials one on this host is not mapped to the other
			// job (which bridge port isolation would drop silently) but
			// meets the host's INPUT filter.
			pre := [][]string{{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "ACCEPT"}}
			if err := ensureChain(f.ipt, nat, chainPre(br), "PREROUTING", []string{"-i", br}, pre); err != nil {
				return fmt.Errorf("firewall: %w", err)
			}
			if err := ensureChain(f.ipt, nat, chainOut(br), "POSTROUTING", []string{"-s", fw.subnet}, fw.out); err != nil {
				return fmt.Errorf("firewall: %w", err)
			}
		}
	}
	return nil
}

// ensureChain makes chain hold rules (after their marker) and parent
// jump to it first, for packets that match match. A chain that differs is
// replaced whole: the new one is built aside, the parent jumps to it
// before it stops jumping to the old one, so no packet passes unfiltered.
func ensureChain(ipt *iptables.IPTables, table, chain, parent string, match []string, rules [][]string) error {
	mark := marker(rules)
	jump := func(c string) []string { return append(append([]string(nil), match...), "-j", c) }
	exists, err := ipt.ChainExists(table, chain)
	if err != nil {
		return err
	}
	if exists {
		cur, err := ipt.List(table, chain)
		if err != nil {
			return err
		}
		if len(cur) > 1 && strings.Contains(cur[1], mark[len(mark)-1]) {
			return insertFirst(ipt, table, parent, jump(chain))
		}
	}
	next := chain + newSuffix
	if err := ipt.ClearChain(table, next); err != nil {
		return err
	}
	for _, r := range append([][]string{mark}, rules...) {
		if err := ipt.Append(table, next, r...); err != nil {
			return fmt.Errorf("%s %s: %w", next, strings.Join(r, " "), err)
		}
	}
	if exists {
		if err := ipt.Insert(table, parent, 1, jump(next)...); err != nil {
			return err
		}
		if err := ipt.DeleteIfExists(table, parent, jump(chain)...); err != nil {
			return err
		}
		if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
			return err
		}
	}
	// References follow a renamed chain.
	if err := ipt.RenameChain(table, next, chain); err != nil {
		return err
	}
	return insertFirst(ipt, table, parent, jump(chain))
}

func insertFirst(ipt *iptables.IPTables, table, chain string, rule []string) error {
	ok, err := ipt.Exists(table, chain, rule...)
	if err != nil || ok {
		return err
	}
	return ipt.Insert(table, chain, 1, rule...)
}

// Pass is what a job on the bridge may reach beyond the jobs' policy.
type Pass struct {
	// System lets the job reach everything, as a system job does.
	System bool
	// TCPPorts lets the job reach these TCP ports at any address, its
	// host's and the deny nets' included: a build reaches the blobstore
	// its signed URLs name, and nothing else of the platform.
	TCPPorts []int
}

// Empty reports whether p lets nothing more through.
func (p Pass) Empty() bool { return !p.System && len(p.TCPPorts) == 0 }

// String is the pass as kept in the agent's state ("system" or
// "tcp:5380,5381"), read back by parsePass.
func (p Pass) String() string {
	if p.System {
		return "system"
	}
	ports := make([]string, len(p.TCPPorts))
	for i, port := range p.TCPPorts {
		ports[i] = strconv.Itoa(port)
	}
	return "tcp:" + strings.Join(ports, ",")
}

// parsePass reads a pass file: the job's address, then its pass (none:
// a system job, as files written before passes had ports say).
func parsePass(b []byte) (ip string, p Pass, err error) {
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "", p, errors.New("empty pass file")
	}
	ip = f[0]
	if len(f) == 1 || f[1] == "system" {
		return ip, Pass{System: true}, nil
	}
	list, ok := strings.CutPrefix(f[1], "tcp:")
	if !ok {
		return "", p, fmt.Errorf("pass %q: want system or tcp:PORTS", f[1])
	}
	for _, ps := range strings.Split(list, ",") {
		port, err := strconv.Atoi(ps)
		if err != nil || port < 1 || port > 65535 {
			return "", p, fmt.Errorf("pass %q: bad port %q", f[1], ps)
		}
		p.TCPPorts = append(p.TCPPorts, port)
	}
	return ip, p, nil
}

// passRules are the rules of the system chain that let ip through as p
// says.
func passRules(ip string, p Pass) [][]string {
	if p.System {
		return [][]string{{"-s", ip, "-j", "ACCEPT"}}
	}
	var rules [][]string
	for _, port := range p.TCPPorts {
		rules = append(rules, []string{"-s", ip, "-p", "tcp", "--dport", strconv.Itoa(port), "-j", "ACCEPT"})
	}
	return rules
}

func (fw *firewall) allowPass(ip string, p Pass) error {
	for _, r := range passRules(ip, p) {
		if err := fw.ip4.AppendUnique(filter, chainSys(fw.bridge), r...); err != nil {
			return fmt.Errorf("firewall: let job %s through (%s): %w", ip, p, err)
		}
	}
	return nil
}

func (fw *firewall) forgetPass(ip string, p Pass) error {
	for _, r := range passRules(ip, p) {
		if err := fw.ip4.DeleteIfExists(filter, chainSys(fw.bridge), r...); err != nil {
			return fmt.Errorf("firewall: forget job %s's pass (%s): %w", ip, p, err)
		}
	}
	return nil
}

// jobPass is a job's address and its pass.
type jobPass struct {
	IP   string
	Pass Pass
}

// setPasses makes the system chain let exactly these jobs through, each
// as its pass says, in this order.
func (fw *firewall) setPasses(passes []jobPass) error {
	if err := fw.ip4.ClearChain(filter, chainSys(fw.bridge)); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	for _, jp := range passes {
		if err := fw.allowPass(jp.IP, jp.Pass); err != nil {
			return err
		}
	}
	return nil
}

// RemoveFirewall removes the firewall of the jobs on bridge: the jumps to
// its chains and the chains. Removing one that is not there is no error.
func RemoveFirewall(bridge string) error {
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			if proto == iptables.ProtocolIPv6 {
				continue
			}
			return fmt.Errorf("remove firewall: %w", err)
		}
		for _, j := range []struct{ table, chain, parent, match string }{
			{filter, chainIn(bridge), "INPUT", "-i"},
			{filter, chainFwd(bridge), "FORWARD", ""},
			{nat, chainPre(bridge), "PREROUTING", "-i"},
		} {
			for _, name := range []string{j.chain, j.chain + newSuffix} {
				if ok, _ := ipt.ChainExists(j.table, name); !ok {
					continue
				}
				rule := []string{"-j", name}
				if j.match != "" {
					rule = []string{j.match, bridge, "-j", name}
				}
				if err := ipt.DeleteIfExists(j.table, j.parent, rule...); err != nil {
					errs = append(errs, err)
				}
				if err := ipt.ClearAndDeleteChain(j.table, name); err != nil {
					errs = append(errs, err)
				}
			}
		}
		// The masquerading chain's jump names the subnet, which the
		// caller need not know: found by the chain it jumps to.
		for _, name := range []string{chainOut(bridge), chainOut(bridge) + newSuffix} {
			if ok, _ := ipt.ChainExists(nat, name); !ok {
				continue
			}
			jumps, err := ipt.List(nat, "POSTROUTING")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, j := range jumps {
				f := strings.Fields(j)
				if len(f) > 2 && f[len(f)-1] == name && f[len(f)-2] == "-j" {
					if err := ipt.DeleteIfExists(nat, "POSTROUTING", f[2:]...); err != nil {
						errs = append(errs, err)
					}
				}
			}
			if err := ipt.ClearAndDeleteChain(nat, name); err != nil {
				errs = append(errs, err)
			}
		}
		if err := ipt.ClearAndDeleteChain(filter, chainSys(bridge)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove firewall of %s: %w", bridge, err)
	}
	return nil
}
