package hostcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/backup"
	"github.com/flynnrebuilt/flynn/internal/bootstrap"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

// upState is what `up` started, kept in <state-dir>/up.json for `down`
// and the next `up`.
type upState struct {
	// One host in this machine's own network namespace (Hosts empty):
	DaemonArgs   []string `json:"daemon_args,omitempty"`
	Bridge       string   `json:"bridge"`
	Subnet       string   `json:"subnet"`
	CgroupParent string   `json:"cgroup_parent"`
	HostURL      string   `json:"host_url,omitempty"`
	DiscoverdURL string   `json:"discoverd_url,omitempty"`
	// Several hosts, each in its own namespace (up --hosts N):
	Hosts []*upHost   `json:"hosts,omitempty"`
	Net   *machineNet `json:"net,omitempty"`
	Ports []int       `json:"forward_ports,omitempty"`
	// Rcfiles are the CLI configs up added the cluster to.
	Rcfiles []string `json:"rcfiles,omitempty"`
	Cluster string   `json:"cluster"`
}

// hosts are the hosts of the state: the one host, or each of several.
func (st *upState) hosts(stateDir string) []*upHost {
	if len(st.Hosts) > 0 {
		return st.Hosts
	}
	return []*upHost{{Name: "host", StateDir: stateDir, CgroupParent: st.CgroupParent, DaemonArgs: st.DaemonArgs,
		HostURL: st.HostURL, DiscoverdURL: st.DiscoverdURL}}
}

func saveUpState(stateDir string, st *upState) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	return os.WriteFile(filepath.Join(stateDir, "up.json"), b, 0o600)
}

func loadUpState(stateDir string) (*upState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "up.json"))
	if err != nil {
		return nil, err
	}
	st := &upState{}
	return st, json.Unmarshal(b, st)
}

// upFlags are up's flags.
type upFlags struct {
	b                                          bootstrapFlags
	stateDir, listenIP, bridge, subnet, cgroup string
	stackDir, clusterName, deps, flynnCLI      string
	manifest, portRange                        string
	etcdClient, etcdPeer, discPort, dnsPort    int
	hostPort                                   int
	noStack, etcdFast, noCLI                   bool
	hosts                                      int
	net                                        machineNet
}

// daemonArgs are the daemon's arguments for a host at ip with stateDir.
func (f *upFlags) daemonArgs(stateDir, ip, cgroup string) []string {
	args := []string{"daemon", "--state-dir", stateDir, "--listen-ip", ip,
		"--etcd-client-port", strconv.Itoa(f.etcdClient), "--etcd-peer-port", strconv.Itoa(f.etcdPeer),
		"--discoverd-port", strconv.Itoa(f.discPort), "--dns-port", strconv.Itoa(f.dnsPort),
		"--host-port", strconv.Itoa(f.hostPort), "--bridge", f.bridge, "--subnet", f.subnet,
		"--cgroup-parent", cgroup, "--port-range", f.portRange,
		// Jobs reach the routers' ports of the hosts, not their others.
		"--router-ports", fmt.Sprintf("%d,%d,3000-3500", f.b.ports.HTTP, f.b.ports.HTTPS)}
	if f.hosts > 1 {
		// The other hosts' internal ports too: a job's traffic reaches
		// them masqueraded as its host's.
		for _, n := range network.DefaultDenyNets {
			args = append(args, "--job-deny-net", n.String())
		}
		args = append(args, "--job-deny-net", f.net.Subnet)
	}
	if f.etcdFast {
		args = append(args, "--etcd-fast")
	}
	return args
}

func newUpCmd(env Env) *cobra.Command {
	f := &upFlags{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a cluster on this machine (one host, or --hosts N) and configure the flynn CLI",
		Long: `As root: install missing OS packages, build the default stack if it is not
built yet, create the cluster (init) if this host has none, start the host
daemon, bootstrap the platform, and add the cluster to the flynn CLI config
of the invoking user ($SUDO_USER's ~/.flynnrc under sudo).

The daemon runs as the systemd service flynn-host.service (restarted when it
dies, started at boot) on a machine whose init is systemd, else as a
background process; either way its log is <state-dir>/daemon.log and its pid
is in <state-dir>/daemon.pid.

With --hosts N (2 to 5 are usual) up runs N hosts on this machine, as N
machines would be: each in its own network namespace (flynn-host1, ...)
joined by a bridge (--hosts-bridge, addresses in --hosts-subnet), with its
own state dir (<state-dir>/host1, ...), daemon, job bridge and cgroup
parent. Host 1 runs init, the others join it. This machine's loopback ports
--http-port, --https-port and --git-ssh-port are forwarded to the hosts'
routers, so the CLI, git and curl work as with one host. On real machines
the same is 'flynn-host init' on the first, 'flynn-host join' on the others,
'flynn-host daemon' on each, then 'flynn-host bootstrap' once.

Running it again is safe and fast. On a cluster that was stopped (a power
loss, a reboot, 'flynn-host down --keep-data') it starts the daemons and
waits while the hosts restore the platform and every app from the cluster
state.`,
		Example: `  flynn-host up
  flynn-host up --hosts 3
  flynn-host up --from-backup flynn-backup.tar`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runUp(cmd.Context(), env, cmd.OutOrStdout(), f)
		},
	}
	f.b.register(cmd, env)
	fl := cmd.Flags()
	fl.StringVar(&f.stateDir, "state-dir", daemon.DefaultStateDir, "directory of all the cluster's state on this machine")
	fl.StringVar(&f.listenIP, "listen-ip", "", "the host's cluster address (default: the address of the default route; with --hosts, from --hosts-subnet)")
	fl.StringVar(&f.bridge, "bridge", "flynnbr0", "bridge jobs attach to (in each host's namespace)")
	fl.StringVar(&f.subnet, "subnet", "100.64.0.0/16", "job network (each host's, in its namespace)")
	fl.StringVar(&f.cgroup, "cgroup-parent", "flynn", "cgroup jobs are placed under (with --hosts: <name>-host1, ...)")
	fl.StringVar(&f.portRange, "port-range", defaultPortRange, "host ports given to jobs, LO-HI (keep it outside net.ipv4.ip_local_port_range)")
	fl.IntVar(&f.etcdClient, "etcd-client-port", daemon.DefaultEtcdClientPort, "etcd client port")
	fl.IntVar(&f.etcdPeer, "etcd-peer-port", daemon.DefaultEtcdPeerPort, "etcd peer port")
	fl.IntVar(&f.discPort, "discoverd-port", daemon.DefaultDiscoverdPort, "discoverd HTTP port")
	fl.IntVar(&f.dnsPort, "dns-port", daemon.DefaultDNSPort, "discoverd DNS port (-1 disables DNS)")
	fl.IntVar(&f.hostPort, "host-port", daemon.DefaultHostPort, "host agent port")
	fl.StringVar(&f.stackDir, "stack-dir", "/var/cache/flynn/stack", "where the default stack is built and cached")
	fl.BoolVar(&f.noStack, "no-stack", false, "do not build the default stack")
	fl.StringVar(&f.deps, "deps", "scripts/deps.sh", "script that installs missing OS packages (skipped when absent)")
	fl.StringVar(&f.clusterName, "cluster-name", "default", "name of the cluster in the flynn CLI config")
	fl.StringVar(&f.flynnCLI, "flynn", "", "flynn CLI binary (default: flynn next to this flynn-host, else in $PATH)")
	fl.BoolVar(&f.noCLI, "no-cli", false, "do not configure the flynn CLI")
	fl.StringVar(&f.manifest, "manifest", "", "bootstrap manifest JSON file (default: the built-in one)")
	fl.IntVar(&f.hosts, "hosts", 1, "how many hosts to run on this machine, each in its own network namespace")
	fl.StringVar(&f.net.Bridge, "hosts-bridge", "flynnhosts0", "with --hosts: the bridge joining the hosts")
	fl.StringVar(&f.net.Subnet, "hosts-subnet", "100.100.0.0/24", "with --hosts: the hosts' network (host N is .N, this machine .254)")
	fl.StringVar(&f.net.NetnsPrefix, "netns-prefix", "flynn-host", "with --hosts: network namespace names (flynn-host1, ...)")
	fl.StringVar(&f.net.VethPrefix, "veth-prefix", "flynnh", "with --hosts: names of this machine's ends of the hosts' links")
	fl.BoolVar(&f.etcdFast, "etcd-fast", false, "short etcd ticks, for tests")
	fl.MarkHidden("etcd-fast")
	return cmd
}

func runUp(ctx context.Context, env Env, out io.Writer, f *upFlags) error {
	if os.Geteuid() != 0 {
		return errors.New("flynn-host up must run as root (try: sudo make up)")
	}
	if _, _, err := parseJobPortRange(f.portRange); err != nil {
		return err
	}
	if f.hosts > 1 {
		if err := f.net.check(f.hosts); err != nil {
			return err
		}
	} else if f.hosts < 1 {
		return fmt.Errorf("--hosts %d: give at least 1", f.hosts)
	}
	old, oldErr := loadUpState(f.stateDir)
	if oldErr == nil {
		if n := len(old.Hosts); n > 0 && n != f.hosts || n == 0 && f.hosts > 1 {
			return fmt.Errorf("the cluster in %s runs %d host(s), not %d: use --hosts %d, or flynn-host down first", f.stateDir, max(n, 1), f.hosts, max(n, 1))
		}
	}
	if f.b.fromBackup != "" {
		// A bad backup changes nothing, not even this machine.
		fmt.Fprintf(out, "==> checking the backup %s\n", f.b.fromBackup)
		if _, err := backup.Check(f.b.fromBackup); err != nil {
			return err
		}
	}
	start := time.Now()
	log, err := logging.New(env.Stderr, logging.Config{Level: "warn"})
	if err != nil {
		return err
	}
	if f.deps != "" {
		if _, err := os.Stat(f.deps); err == nil {
			fmt.Fprintln(out, "==> OS packages")
			c := exec.CommandContext(ctx, "bash", f.deps)
			c.Stdout, c.Stderr = out, env.Stderr
			if err := c.Run(); err != nil {
				return fmt.Errorf("install OS packages (%s): %w", f.deps, err)
			}
		}
	}
	stackLayer := ""
	if !f.noStack {
		fmt.Fprintln(out, "==> build stack")
		res, err := stack.Build(ctx, stack.Config{Dir: f.stackDir, Tar: true, Progress: &logging.PrefixWriter{W: out, Prefix: "    "}})
		if err != nil {
			return fmt.Errorf("build the default stack: %w", err)
		}
		stackLayer = res.Layer
		if res.Cached {
			fmt.Fprintf(out, "    stack %s already built\n", res.Key)
		}
	}
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		return err
	}
	st := &upState{Bridge: f.bridge, Subnet: f.subnet, CgroupParent: f.cgroup, Cluster: f.clusterName}
	if oldErr == nil {
		st.Rcfiles = old.Rcfiles
	}
	if f.hosts == 1 {
		err = upOneHost(ctx, out, f, st)
	} else {
		err = upHosts(ctx, out, f, st)
	}
	if err != nil {
		return err
	}
	first := st.hosts(f.stateDir)[0]
	fmt.Fprintln(out, "==> bootstrap")
	bctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	res, err := runBootstrap(bctx, first.StateDir, first.DiscoverdURL, f.manifest, stackLayer, f.b, &logging.PrefixWriter{W: out, Prefix: "    "}, log)
	if err != nil {
		return err
	}
	if res.AlreadyDone {
		// A cluster that was stopped (power loss, down --keep-data)
		// restores itself: the daemons start the scheduler, which
		// starts everything else.
		fmt.Fprintln(out, "==> waiting for the platform (the hosts restore it from the cluster state)")
		wstart := time.Now()
		if err := bootstrap.WaitRouted(ctx, res, 5*time.Minute); err != nil {
			return fmt.Errorf("%w (see %s and `flynn-host ps`)", err, filepath.Join(first.StateDir, "daemon.log"))
		}
		fmt.Fprintf(out, "    the controller answers through the router (%s)\n", time.Since(wstart).Round(100*time.Millisecond))
	}
	if !f.noCLI {
		rc, err := addToCLI(ctx, env, f.flynnCLI, f.clusterName, res)
		if err != nil {
			return err
		}
		st.Rcfiles = []string{rc}
		fmt.Fprintf(out, "==> flynn CLI: cluster %q added to %s\n", f.clusterName, rc)
	}
	if err := saveUpState(f.stateDir, st); err != nil {
		return err
	}
	printResult(out, res)
	fmt.Fprintf(out, "Cluster up in %s. Try: flynn create myapp\n", time.Since(start).Round(time.Second))
	return nil
}

// upOneHost runs one host in this machine's own network namespace.
func upOneHost(ctx context.Context, out io.Writer, f *upFlags, st *upState) error {
	ip := f.listenIP
	if ip == "" {
		ip = daemon.DefaultListenIP()
	}
	if _, err := daemon.LoadHostConfig(f.stateDir); errors.Is(err, daemon.ErrNoHostConfig) {
		fmt.Fprintln(out, "==> init")
		if err := selfRun(ctx, "init", "--state-dir", f.stateDir); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	st.DaemonArgs = f.daemonArgs(f.stateDir, ip, f.cgroup)
	st.DiscoverdURL = "http://" + net.JoinHostPort(ip, strconv.Itoa(f.discPort))
	st.HostURL = "http://" + net.JoinHostPort(ip, strconv.Itoa(f.hostPort))
	if err := saveUpState(f.stateDir, st); err != nil {
		return err
	}
	h := st.hosts(f.stateDir)[0]
	service := systemdBooted()
	if service {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		if err := installService(ctx, out, f.stateDir, exe, st.DaemonArgs); err != nil {
			return err
		}
	} else if err := startHostDaemon(out, h); err != nil {
		return err
	}
	return waitHostDaemon(ctx, h, service)
}

// upHosts runs f.hosts hosts, each in its own network namespace: the
// network first, then host 1 (init) and each other host (join) in turn,
// and the forwarder of this machine's loopback ports to their routers.
func upHosts(ctx context.Context, out io.Writer, f *upFlags, st *upState) error {
	fmt.Fprintf(out, "==> network: bridge %s (%s), namespaces %s1-%d\n", f.net.Bridge, f.net.Subnet, f.net.NetnsPrefix, f.hosts)
	if err := f.net.setup(ctx, f.hosts); err != nil {
		return err
	}
	mnet := f.net
	st.Net = &mnet
	for i := 1; i <= f.hosts; i++ {
		name := "host" + strconv.Itoa(i)
		ip := f.net.hostIP(i)
		dir := filepath.Join(f.stateDir, name)
		h := &upHost{
			Name: name, Netns: f.net.netns(i), IP: ip, StateDir: dir, CgroupParent: f.cgroup + "-" + name,
			HostURL:      "http://" + net.JoinHostPort(ip, strconv.Itoa(f.hostPort)),
			DiscoverdURL: "http://" + net.JoinHostPort(ip, strconv.Itoa(f.discPort)),
		}
		h.DaemonArgs = f.daemonArgs(dir, ip, h.CgroupParent)
		st.Hosts = append(st.Hosts, h)
	}
	st.Ports = []int{f.b.ports.HTTP, f.b.ports.HTTPS, f.b.ports.GitSSH}
	if err := saveUpState(f.stateDir, st); err != nil {
		return err
	}
	// Hosts that exist start together (etcd needs a quorum of them);
	// new ones are made one at a time, each joining the first.
	var fresh []*upHost
	for _, h := range st.Hosts {
		if _, err := daemon.LoadHostConfig(h.StateDir); err == nil {
			if err := startHostDaemon(out, h); err != nil {
				return err
			}
		} else {
			fresh = append(fresh, h)
		}
	}
	for _, h := range st.Hosts {
		if !contains(fresh, h) {
			if err := waitHostDaemon(ctx, h, false); err != nil {
				return err
			}
		}
	}
	first := st.Hosts[0]
	for _, h := range fresh {
		if err := os.MkdirAll(h.StateDir, 0o700); err != nil {
			return err
		}
		if h == first {
			fmt.Fprintf(out, "==> %s: init\n", h.Name)
			if err := selfRun(ctx, "init", "--state-dir", h.StateDir); err != nil {
				return err
			}
		} else {
			hc, err := daemon.LoadHostConfig(first.StateDir)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "==> %s: join %s\n", h.Name, first.Name)
			if err := selfRunEnv(ctx, []string{"FLYNN_CLUSTER_TOKEN=" + hc.Token}, "join", "--state-dir", h.StateDir, "--peer", strings.TrimPrefix(first.DiscoverdURL, "http://")); err != nil {
				return err
			}
		}
		if err := startHostDaemon(out, h); err != nil {
			return err
		}
		if err := waitHostDaemon(ctx, h, false); err != nil {
			return err
		}
	}
	var targets []string
	for _, h := range st.Hosts {
		targets = append(targets, h.IP)
	}
	return startForwarder(out, f.stateDir, st.Ports, targets)
}

func contains(hs []*upHost, h *upHost) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

// selfRun runs this flynn-host with args in the foreground.
func selfRun(ctx context.Context, args ...string) error { return selfRunEnv(ctx, nil, args...) }

// selfRunEnv is selfRun with env added to this process's environment: the
// way to hand the command a secret, which its command line would show to
// every user of the machine.
func selfRunEnv(ctx context.Context, env []string, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, exe, args...)
	if env != nil {
		c.Env = append(os.Environ(), env...)
	}
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	if err := c.Run(); err != nil {
		return fmt.Errorf("flynn-host %s: %w\n%s", args[0], err, buf.String())
	}
	return nil
}

func backgroundProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

// writePIDFile writes pid to file whole or not at all (a new file renamed
// over the old): up polls the file while the daemon rewrites it, and a
// reader that met it truncated would take a starting daemon for a dead one.
func writePIDFile(file string, pid int) error {
	tmp := fmt.Sprintf("%s.%d.tmp", file, os.Getpid()) // up and the daemon both write it
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// pidOf returns the pid in file if that process runs and its command line
// holds word, else 0.
func pidOf(file, word string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte(word)) {
		return 0 // the pid was reused
	}
	return pid
}

// daemonPID returns the pid of the running daemon of stateDir, or 0.
func daemonPID(stateDir string) int {
	return pidOf(filepath.Join(stateDir, "daemon.pid"), "daemon")
}

// hostReady says why h is not ready yet, or nil: its discoverd and agent
// answer and it is registered.
func hostReady(ctx context.Context, h *upHost, token string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var status api.GridStatus
	if err := (&httpclient.Client{URL: h.DiscoverdURL, Key: token}).Do(cctx, "GET", "/grid/status", nil, &status); err != nil {
		return err
	}
	if _, err := hostclient.New(h.HostURL, token).Status(cctx); err != nil {
		return err
	}
	hc, err := daemon.LoadHostConfig(h.StateDir)
	if err != nil {
		return err
	}
	for _, x := range status.Hosts {
		if x.ID == hc.HostID {
			return nil
		}
	}
	return errNotRegistered
}

func newDownCmd(env Env) *cobra.Command {
	var stateDir string
	var keepData bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the cluster `flynn-host up` started and clean the machine",
		Long: `Stop every job and host daemon, and remove what they made on this machine:
job bridges, mounts under the state dir, the jobs' cgroups and iptables
rules, and for 'up --hosts N' the hosts' network namespaces, their bridge
and the port forwarder. The state dir is deleted unless --keep-data; with
it, 'flynn-host up' brings the same cluster back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return errors.New("flynn-host down must run as root")
			}
			return down(cmd.Context(), cmd.OutOrStdout(), stateDir, keepData)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "the cluster's state dir")
	cmd.Flags().BoolVar(&keepData, "keep-data", false, "keep the state dir (cluster config, etcd, blobs)")
	return cmd
}

func down(ctx context.Context, out io.Writer, stateDir string, keepData bool) error {
	if _, err := os.Stat(stateDir); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "==> no cluster state at %s: nothing to stop\n", stateDir)
		return nil
	}
	st, err := loadUpState(stateDir)
	upStarted := err == nil // the jobs' firewall is removed only for a bridge up named
	if errors.Is(err, os.ErrNotExist) {
		st = &upState{Bridge: "flynnbr0", Subnet: "100.64.0.0/16", CgroupParent: "flynn",
			HostURL: "http://" + net.JoinHostPort(daemon.DefaultListenIP(), strconv.Itoa(daemon.DefaultHostPort))}
	} else if err != nil {
		return err
	}
	var errs []error
	if err := removeService(ctx, out, stateDir); err != nil {
		errs = append(errs, err)
	}
	stopForwarder(out, stateDir)
	hosts := st.hosts(stateDir)
	// Jobs first, on every host, while the daemons answer.
	for _, h := range hosts {
		if daemonPID(h.StateDir) == 0 {
			continue
		}
		if hc, err := daemon.LoadHostConfig(h.StateDir); err == nil {
			stopAllJobs(ctx, out, hostclient.New(h.HostURL, hc.Token))
		}
	}
	for _, h := range hosts {
		if pid := daemonPID(h.StateDir); pid != 0 {
			fmt.Fprintf(out, "==> stopping the daemon of %s (pid %d)\n", h.Name, pid)
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 300 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		// Supervisors and containers left behind (a daemon that died):
		// kill what runs from the state dir.
		killStateDirProcs(h.StateDir)
		os.Remove(filepath.Join(h.StateDir, "daemon.pid"))
	}
	errs = append(errs, unmountUnder(stateDir)...)
	if st.Net != nil {
		errs = append(errs, st.Net.teardown(ctx, len(st.Hosts))...)
	} else if st.Bridge != "" && linkExists(st.Bridge) {
		if b, err := exec.Command("ip", "link", "del", st.Bridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", st.Bridge, err, b))
		}
	}
	if st.Net == nil {
		// (The hosts' rules went with their namespaces.)
		removeIptablesRules(st.Subnet)
		if upStarted && st.Bridge != "" {
			if err := network.RemoveFirewall(st.Bridge); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, h := range hosts {
		if h.CgroupParent != "" {
			removeCgroups(h.CgroupParent)
		}
	}
	for _, rc := range st.Rcfiles {
		// Leave the user's config as it was: drop the cluster up added.
		if flynnBin, err := findFlynnCLI(); err == nil {
			c := exec.Command(flynnBin, "cluster", "remove", st.Cluster)
			c.Env = append(os.Environ(), "FLYNNRC="+rc)
			c.Run()
		}
	}
	if !keepData {
		if err := os.RemoveAll(stateDir); err != nil {
			errs = append(errs, err)
		}
	}
	fmt.Fprintln(out, "==> cluster down")
	return errors.Join(errs...)
}

// unmountUnder detaches every mount under dir, deepest first.
func unmountUnder(dir string) []error {
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], strings.TrimSuffix(dir, "/")+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errs
}
