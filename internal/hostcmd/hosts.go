package hostcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/internal/daemon"
)

// `up --hosts N` runs N hosts on this one machine, each in its own network
// namespace, as separate machines would be: its own address, state dir,
// daemon, job bridge and cgroup parent. This file makes and removes the
// network they share.

// upHost is one host `up` runs.
type upHost struct {
	// Name is "host1", "host2", ...
	Name string `json:"name"`
	// Netns is the host's network namespace (under /run/netns), "" for a
	// single host in the machine's own namespace.
	Netns        string   `json:"netns,omitempty"`
	IP           string   `json:"ip"`
	StateDir     string   `json:"state_dir"`
	CgroupParent string   `json:"cgroup_parent"`
	DaemonArgs   []string `json:"daemon_args"`
	HostURL      string   `json:"host_url"`
	DiscoverdURL string   `json:"discoverd_url"`

	// exited, when this up started the daemon, says how it ended.
	exited chan error
}

// machineNet is the network of `up --hosts N`: a bridge on this machine
// with the hosts' gateway address, NAT for the hosts' traffic out, and a
// veth pair from the bridge into each host's network namespace.
type machineNet struct {
	Bridge string `json:"bridge"`
	// Subnet is the hosts' network, a /24: host i is .i, the bridge .254.
	Subnet string `json:"subnet"`
	// NetnsPrefix names the namespaces (prefix + "1", ...) and
	// VethPrefix the machine's ends of the veth pairs.
	NetnsPrefix string `json:"netns_prefix"`
	VethPrefix  string `json:"veth_prefix"`
}

func (m *machineNet) base() (net.IP, error) {
	ip, n, err := net.ParseCIDR(m.Subnet)
	if err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("--hosts-subnet %q: give an IPv4 /24 like 100.100.0.0/24", m.Subnet)
	}
	if ones, _ := n.Mask.Size(); ones != 24 {
		return nil, fmt.Errorf("--hosts-subnet %q: give a /24", m.Subnet)
	}
	return n.IP.To4(), nil
}

func (m *machineNet) addr(last byte) string {
	b, _ := m.base()
	ip := make(net.IP, 4)
	copy(ip, b)
	ip[3] = last
	return ip.String()
}

// gateway is the bridge's address; hostIP host i's.
func (m *machineNet) gateway() string     { return m.addr(254) }
func (m *machineNet) hostIP(i int) string { return m.addr(byte(i)) }
func (m *machineNet) netns(i int) string  { return m.NetnsPrefix + strconv.Itoa(i) }
func (m *machineNet) veth(i int) string   { return m.VethPrefix + strconv.Itoa(i) }

func (m *machineNet) check(n int) error {
	if _, err := m.base(); err != nil {
		return err
	}
	if n < 1 || n > 200 {
		return fmt.Errorf("--hosts %d: give 1 to 200 hosts", n)
	}
	for _, name := range []string{m.Bridge, m.veth(n)} {
		if !bridgeNameRE.MatchString(name) {
			return fmt.Errorf("interface name %q: 1-15 letters, digits, '.', '_' or '-' (shorten --hosts-bridge or the veth prefix)", name)
		}
	}
	return nil
}

// run runs a command and returns its error with its output.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// masquerade is the NAT rule that lets the hosts reach beyond the bridge.
func (m *machineNet) masquerade() []string {
	return []string{"-t", "nat", "POSTROUTING", "-s", m.Subnet, "!", "-o", m.Bridge, "-j", "MASQUERADE", "-m", "comment", "--comment", "flynn hosts " + m.Bridge}
}

func (m *machineNet) forwardRules() [][]string {
	c := "flynn hosts " + m.Bridge
	return [][]string{
		{"-t", "filter", "FORWARD", "-i", m.Bridge, "-j", "ACCEPT", "-m", "comment", "--comment", c},
		{"-t", "filter", "FORWARD", "-o", m.Bridge, "-j", "ACCEPT", "-m", "comment", "--comment", c},
	}
}

// ensureRule appends an iptables rule unless it is there (rule is
// -t TABLE CHAIN SPEC...).
func ensureRule(ctx context.Context, rule []string) error {
	table, chain, spec := rule[1], rule[2], rule[3:]
	if exec.CommandContext(ctx, "iptables", append([]string{"-t", table, "-C", chain}, spec...)...).Run() == nil {
		return nil
	}
	return run(ctx, "iptables", append([]string{"-t", table, "-A", chain}, spec...)...)
}

func deleteRule(ctx context.Context, rule []string) {
	table, chain, spec := rule[1], rule[2], rule[3:]
	for exec.CommandContext(ctx, "iptables", append([]string{"-t", table, "-D", chain}, spec...)...).Run() == nil {
	}
}

// setup makes the network for n hosts, or the part of it that is missing
// (after a reboot everything is): idempotent.
func (m *machineNet) setup(ctx context.Context, n int) error {
	if err := m.check(n); err != nil {
		return err
	}
	if !linkExists(m.Bridge) {
		if err := run(ctx, "ip", "link", "add", m.Bridge, "type", "bridge"); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "addr", "replace", m.gateway()+"/24", "dev", m.Bridge); err != nil {
		return err
	}
	if err := run(ctx, "ip", "link", "set", m.Bridge, "up"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IP forwarding: %w", err)
	}
	for _, r := range append(m.forwardRules(), m.masquerade()) {
		if err := ensureRule(ctx, r); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		ns, veth := m.netns(i), m.veth(i)
		if !netnsExists(ns) {
			if err := run(ctx, "ip", "netns", "add", ns); err != nil {
				return err
			}
		}
		if !linkExists(veth) {
			if err := run(ctx, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
				return err
			}
		}
		for _, args := range [][]string{
			{"link", "set", veth, "master", m.Bridge},
			{"link", "set", veth, "up"},
			{"-n", ns, "addr", "replace", m.hostIP(i) + "/24", "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
			{"-n", ns, "link", "set", "lo", "up"},
			{"-n", ns, "route", "replace", "default", "via", m.gateway()},
		} {
			if err := run(ctx, "ip", args...); err != nil {
				return err
			}
		}
		// Jobs' traffic is routed through the host's namespace.
		if err := run(ctx, "ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
			return err
		}
	}
	return nil
}

// teardown removes the namespaces of n hosts (and with them their links,
// job bridges and iptables rules), the bridge and its rules.
func (m *machineNet) teardown(ctx context.Context, n int) []error {
	var errs []error
	for i := 1; i <= n; i++ {
		if netnsExists(m.netns(i)) {
			if err := run(ctx, "ip", "netns", "del", m.netns(i)); err != nil {
				errs = append(errs, err)
			}
		}
		if linkExists(m.veth(i)) {
			run(ctx, "ip", "link", "del", m.veth(i))
		}
	}
	for _, r := range append(m.forwardRules(), m.masquerade()) {
		deleteRule(ctx, r)
	}
	if linkExists(m.Bridge) {
		if err := run(ctx, "ip", "link", "del", m.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// daemonCommand is the command that runs h's daemon: in its network
// namespace (only that: nsenter leaves the mount namespace shared, so
// `down` sees the host's mounts).
func (h *upHost) daemonCommand(exe string) *exec.Cmd {
	if h.Netns == "" {
		return exec.Command(exe, h.DaemonArgs...)
	}
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", h.Netns), "--", exe}, h.DaemonArgs...)...)
}

// startHostDaemon starts h's daemon in the background unless it runs.
func startHostDaemon(out io.Writer, h *upHost) error {
	if pid := daemonPID(h.StateDir); pid != 0 {
		fmt.Fprintf(out, "==> %s: daemon running (pid %d)\n", h.Name, pid)
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logFile := filepath.Join(h.StateDir, "daemon.log")
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	c := h.daemonCommand(exe)
	c.Stdout, c.Stderr = lf, lf
	c.SysProcAttr = backgroundProcAttr()
	if err := c.Start(); err != nil {
		return fmt.Errorf("start the daemon of %s: %w", h.Name, err)
	}
	pid := c.Process.Pid
	// Reaped here, so a daemon that exits at once is seen as gone (not a
	// zombie) and waitHostDaemon can say how it ended.
	h.exited = make(chan error, 1)
	go func() { h.exited <- c.Wait() }()
	// The daemon writes its own pid file too; this one covers the
	// moment before it does.
	if err := writePIDFile(filepath.Join(h.StateDir, "daemon.pid"), pid); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> %s: daemon started (pid %d, log %s)\n", h.Name, pid, logFile)
	return nil
}

// waitHostDaemon waits until h's discoverd and host agent answer and the
// host has registered.
func waitHostDaemon(ctx context.Context, h *upHost, service bool) error {
	hc, err := daemon.LoadHostConfig(h.StateDir)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := hostReady(ctx, h, hc.Token)
		if err == nil {
			return nil
		}
		select {
		case werr := <-h.exited:
			return fmt.Errorf("the daemon of %s exited (%v) before it was up: %v (see %s)", h.Name, werr, err, filepath.Join(h.StateDir, "daemon.log"))
		default:
		}
		// (systemd restarts a daemon that exits; a background one is gone.)
		if time.Now().After(deadline) || (!service && h.exited == nil && daemonPID(h.StateDir) == 0) {
			return fmt.Errorf("the daemon of %s did not come up: %v (see %s)", h.Name, err, filepath.Join(h.StateDir, "daemon.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// errNotRegistered: the daemon answers but the host is not in the grid.
var errNotRegistered = errors.New("the host has not registered yet")
