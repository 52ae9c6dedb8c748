package hostcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/monitor"
	"github.com/flynnrebuilt/flynn/internal/pki"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// The layer 0 commands: daemon, init, join, status.

func newDaemonCmd(env Env) *cobra.Command {
	cfg := daemon.Config{}
	var logLevel string
	var logJSON bool
	var agent host.Config
	var noAgent, noMonitor bool
	var portRange string
	var monitorCfg monitor.Config
	var mountAllow []string
	var fw firewallFlags
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the host daemon (etcd, discoverd, host agent)",
		Long: `Run the host daemon: the embedded etcd member (or an etcd client), discoverd
(HTTP API and DNS) and the host's registration in the cluster. Run
'flynn-host init' or 'flynn-host join' once before the first start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if logLevel == "" && env.Getenv != nil {
				logLevel = env.Getenv("FLYNN_LOG_LEVEL")
			}
			log, err := logging.New(env.Stderr, logging.Config{Level: logLevel, JSON: logJSON})
			if err != nil {
				return err
			}
			if !noAgent {
				if agent.PortMin, agent.PortMax, err = parseJobPortRange(portRange); err != nil {
					return err
				}
				if err := validateAgentFlags(agent); err != nil {
					return err
				}
				if agent.MountAllow, err = mountAllowList(mountAllow); err != nil {
					return err
				}
				if err := fw.apply(&agent); err != nil {
					return err
				}
				warnEphemeral(log, agent.PortMin, agent.PortMax)
				cfg.Services = append(cfg.Services, hostAgentService(cfg, agent, log))
			}
			if !noMonitor {
				cfg.Services = append(cfg.Services, monitorService(monitorCfg, log))
			}
			// The pid file tells up and down which process is the
			// daemon, however it was started (systemd, up, by hand).
			// (No state dir: Run says to init first.)
			pidFile := filepath.Join(cfg.StateDir, "daemon.pid")
			if _, err := os.Stat(cfg.StateDir); err == nil {
				if err := writePIDFile(pidFile, os.Getpid()); err != nil {
					return fmt.Errorf("write %s: %w", pidFile, err)
				}
			}
			defer func() {
				if b, _ := os.ReadFile(pidFile); strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
					os.Remove(pidFile)
				}
			}()
			return daemon.Run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noAgent, "no-agent", false, "do not run the host agent (jobs API on --host-port)")
	f.BoolVar(&noMonitor, "no-monitor", false, "do not take part in restoring the platform's scheduler when none runs")
	f.DurationVar(&monitorCfg.Grace, "monitor-grace", 3*time.Second, "how long no scheduler job may run before the elected monitor starts one")
	f.StringVar(&agent.Runc, "runc", "runc", "OCI runtime binary")
	f.StringVar(&agent.Bridge, "bridge", "flynnbr0", "bridge jobs attach to")
	f.StringVar(&agent.Subnet, "subnet", "100.64.0.0/16", "job network")
	f.StringVar(&agent.CgroupParent, "cgroup-parent", "flynn", "cgroup jobs are placed under")
	f.DurationVar(&agent.StopGrace, "stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a job")
	f.StringVar(&portRange, "port-range", defaultPortRange, "host ports given to jobs, LO-HI (keep it outside net.ipv4.ip_local_port_range)")
	f.StringSliceVar(&mountAllow, "mount-allow", nil, mountAllowHelp)
	fw.register(cmd)
	f.StringVar(&cfg.StateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config and etcd data")
	f.StringVar(&cfg.ListenIP, "listen-ip", "", "the host's cluster address (default: the address of the default route, else 127.0.0.1)")
	f.IntVar(&cfg.EtcdClientPort, "etcd-client-port", daemon.DefaultEtcdClientPort, "etcd client port")
	f.IntVar(&cfg.EtcdPeerPort, "etcd-peer-port", daemon.DefaultEtcdPeerPort, "etcd peer port")
	f.IntVar(&cfg.DiscoverdPort, "discoverd-port", daemon.DefaultDiscoverdPort, "discoverd HTTP port")
	f.IntVar(&cfg.DNSPort, "dns-port", daemon.DefaultDNSPort, "discoverd DNS port (-1 disables DNS)")
	f.IntVar(&cfg.HostPort, "host-port", daemon.DefaultHostPort, "host agent HTTP port (advertised)")
	f.DurationVar(&cfg.TTL, "ttl", 10*time.Second, "how long a host or service instance lives without heartbeats")
	f.StringToStringVar(&cfg.Tags, "tag", nil, "host tag key=value (repeatable)")
	f.StringSliceVar(&cfg.Recursors, "recursor", nil, "DNS resolver ip:port for names outside .discoverd (default: from /etc/resolv.conf)")
	f.BoolVar(&cfg.EtcdFast, "etcd-fast", false, "short etcd ticks, for tests")
	f.MarkHidden("etcd-fast")
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default $FLYNN_LOG_LEVEL or info)")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines")
	return cmd
}

func newInitCmd(env Env) *cobra.Command {
	var stateDir, token string
	var maxMembers int
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make this host the first host of a new cluster",
		Long: `Create a new cluster: a cluster id and a random cluster token, with this host
as its first etcd member. It writes the host config to the state dir; start
the host with 'flynn-host daemon' and add hosts with 'flynn-host join'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxMembers < 1 || maxMembers > 7 || maxMembers%2 == 0 {
				return fmt.Errorf("--max-etcd-members %d: use an odd number from 1 to 7 (3 or 5 are usual)", maxMembers)
			}
			if _, err := daemon.LoadHostConfig(stateDir); !errors.Is(err, daemon.ErrNoHostConfig) {
				return fmt.Errorf("%s already has a host config: this host is set up already", stateDir)
			}
			if token == "" {
				token = daemon.RandomID(24)
			}
			hc := &daemon.HostConfig{
				HostID: daemon.RandomID(8), ClusterID: daemon.RandomID(16), Token: token,
				Role: daemon.RoleInit, MaxEtcdMembers: maxMembers,
			}
			if err := hc.Save(stateDir); err != nil {
				return err
			}
			// The internal CA: etcd speaks mutual TLS with what it issues.
			caCert, caKey, err := pki.NewCA(hc.ClusterID)
			if err != nil {
				return err
			}
			if err := pki.WriteCA(daemon.PKIDir(stateDir), caCert, caKey); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "cluster: %s\nhost: %s\ntoken: %s\n", hc.ClusterID, hc.HostID, hc.Token)
			fmt.Fprintf(w, "Start this host with `flynn-host daemon`, then add hosts with\n  FLYNN_CLUSTER_TOKEN=%s flynn-host join --peer <this host's IP>\n", hc.Token)
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config and etcd data")
	cmd.Flags().IntVar(&maxMembers, "max-etcd-members", daemon.DefaultMaxEtcdMembers, "how many hosts run an etcd member (3 or 5)")
	cmd.Flags().StringVar(&token, "token", "", "cluster token (default: random)")
	return cmd
}

// peerURL turns "host[:port]" or a URL into discoverd's base URL.
func peerURL(peer string) (string, error) {
	if strings.Contains(peer, "://") {
		return strings.TrimSuffix(peer, "/"), nil
	}
	if _, _, err := net.SplitHostPort(peer); err != nil {
		if net.ParseIP(strings.Trim(peer, "[]")) == nil && strings.Contains(peer, ":") {
			return "", fmt.Errorf("invalid peer address %q: want host or host:port", peer)
		}
		peer = net.JoinHostPort(strings.Trim(peer, "[]"), fmt.Sprint(daemon.DefaultDiscoverdPort))
	}
	return "http://" + peer, nil
}

func newJoinCmd(env Env) *cobra.Command {
	var stateDir, peer, token string
	cmd := &cobra.Command{
		Use:   "join --peer ADDR",
		Short: "Make this host join an existing cluster",
		Long: `Join the cluster of the host at ADDR (its discoverd address, host[:1111]),
proving membership with the cluster token. It writes the host config; on
its first start 'flynn-host daemon' becomes an etcd member while the
cluster has fewer than its configured members, otherwise an etcd client.

The token is read from $FLYNN_CLUSTER_TOKEN (--token works too, but puts
the secret on the command line, where every user of the machine sees it).`,
		Example: `  FLYNN_CLUSTER_TOKEN=... flynn-host join --peer 10.0.0.1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" && env.Getenv != nil {
				token = env.Getenv("FLYNN_CLUSTER_TOKEN")
			}
			if peer == "" || token == "" {
				return errors.New("join needs --peer ADDR and --token TOKEN (from `flynn-host init` on the first host)")
			}
			if _, err := daemon.LoadHostConfig(stateDir); !errors.Is(err, daemon.ErrNoHostConfig) {
				return fmt.Errorf("%s already has a host config: this host is set up already", stateDir)
			}
			u, err := peerURL(peer)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var info api.ClusterInfo
			hc := &httpclient.Client{URL: u, Key: token}
			if err := hc.Do(ctx, "GET", "/grid/cluster", nil, &info); err != nil {
				if errors.Is(err, api.ErrUnauthorized) {
					return fmt.Errorf("peer %s refused the token: check --token", peer)
				}
				return fmt.Errorf("ask peer %s about its cluster: %w", peer, err)
			}
			var ca api.ClusterCA
			err = hc.Do(ctx, "GET", "/grid/ca", nil, &ca)
			if err != nil && !errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("get the cluster's CA from peer %s: %w", peer, err)
			}
			conf := &daemon.HostConfig{
				HostID: daemon.RandomID(8), ClusterID: info.ID, Token: token, Role: daemon.RoleJoin,
				MaxEtcdMembers: info.MaxEtcdMembers, EtcdEndpoints: info.EtcdEndpoints,
			}
			if err := conf.Save(stateDir); err != nil {
				return err
			}
			if err == nil { // (a cluster with no CA runs etcd without TLS)
				if err := pki.WriteCA(daemon.PKIDir(stateDir), []byte(ca.Cert), []byte(ca.Key)); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster: %s\nhost: %s\nStart this host with `flynn-host daemon` to join.\n", conf.ClusterID, conf.HostID)
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config and etcd data")
	cmd.Flags().StringVar(&peer, "peer", "", "discoverd address of a host of the cluster, host[:port]")
	cmd.Flags().StringVar(&token, "token", "", "cluster token (default $FLYNN_CLUSTER_TOKEN)")
	return cmd
}

func newStatusCmd(env Env) *cobra.Command {
	var stateDir, addr, token string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster: hosts, etcd members, discoverd services",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			u, token, err := gridTarget(stateDir, addr, token)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var st api.GridStatus
			if err := (&httpclient.Client{URL: u, Key: token}).Do(ctx, "GET", "/grid/status", nil, &st); err != nil {
				return fmt.Errorf("get status from %s: %w", addr, err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), &st)
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config (for the token)")
	cmd.Flags().StringVar(&addr, "addr", "", "discoverd address of a host, host[:port] (default: this host's cluster address, port 1111)")
	cmd.Flags().StringVar(&token, "token", "", "cluster token (default: from the host config)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// gridTarget is the discoverd URL and token the host commands use: those
// given, else this machine's cluster's (for one `up --hosts N` cluster,
// its first host's).
func gridTarget(stateDir, addr, token string) (string, string, error) {
	if st, err := loadUpState(stateDir); err == nil && len(st.Hosts) > 0 {
		if token == "" {
			hc, err := daemon.LoadHostConfig(st.Hosts[0].StateDir)
			if err != nil {
				return "", "", fmt.Errorf("no --token given and %w", err)
			}
			token = hc.Token
		}
		if addr == "" {
			return st.Hosts[0].DiscoverdURL, token, nil
		}
	}
	if token == "" {
		hc, err := daemon.LoadHostConfig(stateDir)
		if err != nil {
			return "", "", fmt.Errorf("no --token given and %w", err)
		}
		token = hc.Token
	}
	if addr == "" {
		addr = daemon.DefaultListenIP()
	}
	u, err := peerURL(addr)
	return u, token, err
}

func newListCmd(env Env) *cobra.Command {
	var stateDir, addr, token string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every host of the cluster: id, address, state, etcd role, jobs",
		Long: `List every host that has joined the cluster, up or down, with its address,
its etcd role (leader, member, learner or client) and how many jobs run on it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			u, token, err := gridTarget(stateDir, addr, token)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var hosts []*api.HostListing
			if err := (&httpclient.Client{URL: u, Key: token}).Do(ctx, "GET", "/grid/hosts", nil, &hosts); err != nil {
				return fmt.Errorf("list hosts from %s: %w", u, err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(hosts)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tADDR\tSTATE\tETCD\tJOBS")
			for _, h := range hosts {
				jobs := "?"
				if h.Jobs >= 0 {
					jobs = strconv.Itoa(h.Jobs)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", h.Host.ID, h.Host.Addr, h.State, h.EtcdRole, jobs)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config (for the token)")
	cmd.Flags().StringVar(&addr, "addr", "", "discoverd address of a host, host[:port] (default: this machine's cluster)")
	cmd.Flags().StringVar(&token, "token", "", "cluster token (default: from the host config)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printStatus(out io.Writer, st *api.GridStatus) {
	fmt.Fprintf(out, "Cluster %s (seen from host %s)\n\n", st.ClusterID, st.HostID)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "HOST\tADDR\tETCD MEMBER\tCPUS\tMEMORY\tTAGS\n")
	sort.Slice(st.Hosts, func(i, j int) bool { return st.Hosts[i].ID < st.Hosts[j].ID })
	for _, h := range st.Hosts {
		var tags []string
		for k, v := range h.Tags {
			tags = append(tags, k+"="+v)
		}
		sort.Strings(tags)
		fmt.Fprintf(w, "%s\t%s\t%v\t%d\t%d MiB\t%s\n", h.ID, h.Addr, h.EtcdMember, h.CPUs, h.Memory>>20, strings.Join(tags, ","))
	}
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "ETCD MEMBER\tID\tCLIENT URL\tSTATUS\n")
	for _, m := range st.Members {
		status := "healthy"
		if !m.Healthy {
			status = "unhealthy: " + m.Error
		}
		if m.IsLeader {
			status += " (leader)"
		}
		if m.IsLearner {
			status += " (learner)"
		}
		name := m.Name
		if name == "" {
			name = "(unstarted)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", name, m.ID, strings.Join(m.ClientURLs, ","), status)
	}
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "SERVICE\tINSTANCES\tLEADER\n")
	for _, s := range st.Services {
		leader := "-"
		for _, i := range s.Instances {
			if i.ID == s.Leader {
				leader = i.Addr
			}
		}
		fmt.Fprintf(w, "%s\t%d\t%s\n", s.Name, len(s.Instances), leader)
	}
	w.Flush()
}

// hostAgentService runs the host agent inside the daemon, with the host's
// id and cluster token, listening on the advertised host port. Its state
// lives in <state-dir>/host. Jobs keep running when the daemon stops.
func hostAgentService(dcfg daemon.Config, acfg host.Config, log *slog.Logger) func(context.Context, *daemon.Deps) error {
	return func(ctx context.Context, d *daemon.Deps) error {
		cfg := acfg
		cfg.ID = d.HostID
		cfg.Keys = []string{d.Token}
		port := dcfg.HostPort
		if port == 0 {
			port = daemon.DefaultHostPort
		}
		cfg.Listen = net.JoinHostPort(d.ListenIP, strconv.Itoa(port))
		stateDir := dcfg.StateDir
		if stateDir == "" {
			stateDir = daemon.DefaultStateDir
		}
		cfg.StateDir = filepath.Join(stateDir, "host")
		cfg.Discoverd = d.DiscoverdURL
		if cfg.DNS == "" {
			cfg.DNS = jobDNS(dcfg.DNSPort, d.ListenIP)
		}
		cfg.Registry = host.DiscoverdRegistry(d.Discoverd, d.Token)
		// Layers from the blobstore through discoverd, the platform's
		// mounts and env from this host and the cluster.
		// The blobstore is read with the service token (a read key of
		// its), sent to no other host.
		cfg.HTTP = d.Discoverd.HTTPClient()
		cfg.HTTP.Transport = &blobclient.KeyTransport{Host: "blobstore" + discoverdclient.ServiceDomain, Key: api.ServiceToken(d.Token), Base: cfg.HTTP.Transport}
		// (The daemon's state dir: data dirs stay where bootstraps put
		// them before there were flynn-host: mounts.)
		mounts := &hostMounts{stateDir: stateDir, etcd: d.Etcd}
		cfg.ResolveMount = mounts.resolve
		cfg.SystemEnv = func() map[string]string {
			return map[string]string{
				"EXTERNAL_IP":    d.ListenIP,
				"LISTEN_IP":      d.ListenIP,
				"ETCD_ENDPOINTS": strings.Join(d.Etcd.Endpoints(), ","),
				"FLYNN_ETCD":     strings.Join(d.Etcd.Endpoints(), ","),
			}
		}
		a, err := host.New(cfg, log.With("component", "host"))
		if err != nil {
			return err // already says "host agent: ..."
		}
		return a.Run(ctx)
	}
}

// monitorService runs the host's part in restoring the platform: the
// monitor elected among the daemons starts the scheduler when none runs.
func monitorService(cfg monitor.Config, log *slog.Logger) func(context.Context, *daemon.Deps) error {
	return func(ctx context.Context, d *daemon.Deps) error {
		cfg.Etcd = d.KV
		cfg.HostID = d.HostID
		cfg.Cluster = scheduler.NewHostCluster(d.KV, d.Token, log.With("component", "monitor"))
		return monitor.Run(ctx, cfg, log)
	}
}

// jobDNS is the nameserver for jobs in their own network namespace: this
// host's discoverd DNS when it serves on port 53 at an address jobs can
// reach, else the host's first resolver that is not on loopback (names
// outside the cluster still resolve), else "" (the agent's default).
func jobDNS(port int, listenIP string) string {
	if port == 0 {
		port = daemon.DefaultDNSPort
	}
	if ip := net.ParseIP(listenIP); port == 53 && ip != nil && !ip.IsLoopback() {
		return listenIP
	}
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "nameserver" {
			if ip := net.ParseIP(f[1]); ip != nil && !ip.IsLoopback() && ip.To4() != nil {
				return f[1]
			}
		}
	}
	return ""
}

var bridgeNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)

// validateAgentFlags checks the host agent's flags before the daemon starts
// anything, so a typo is a one-line error rather than a failure later.
var defaultPortRange = fmt.Sprintf("%d-%d", network.DefaultPortMin, network.DefaultPortMax)

func parseJobPortRange(s string) (lo, hi int, err error) {
	lo, hi, err = network.ParsePortRange(s)
	if err != nil {
		return 0, 0, fmt.Errorf("--port-range: %w", err)
	}
	return lo, hi, nil
}

// warnEphemeral warns when the jobs' port range overlaps the kernel's
// ephemeral ports: an outgoing connection can then take a job's port
// before the job binds it.
func warnEphemeral(log *slog.Logger, lo, hi int) {
	if elo, ehi, ok := network.EphemeralOverlap(lo, hi); ok {
		log.Warn("the jobs' port range overlaps the kernel's ephemeral ports; outgoing connections can take a job's port (change --port-range or net.ipv4.ip_local_port_range)",
			"port_range", fmt.Sprintf("%d-%d", lo, hi), "ip_local_port_range", fmt.Sprintf("%d-%d", elo, ehi))
	}
}

// firewallFlags shape the jobs' firewall.
type firewallFlags struct {
	routerPorts string
	denyNets    []string
}

func (f *firewallFlags) register(cmd *cobra.Command) {
	var def []string
	for _, p := range network.DefaultRouterPorts {
		def = append(def, p.String())
	}
	var nets []string
	for _, n := range network.DefaultDenyNets {
		nets = append(nets, n.String())
	}
	cmd.Flags().StringVar(&f.routerPorts, "router-ports", strings.Join(def, ","), "the routers' ports: the only TCP ports of this host (and of --job-deny-net) jobs may connect to, besides DNS")
	cmd.Flags().StringSliceVar(&f.denyNets, "job-deny-net", nets, "network beyond this host jobs reach only at router and DNS ports, e.g. the cluster's own network (repeatable)")
}

func (f *firewallFlags) apply(c *host.Config) error {
	ports, err := network.ParsePorts(f.routerPorts)
	if err != nil {
		return fmt.Errorf("--router-ports: %w", err)
	}
	c.RouterPorts = ports
	c.DenyNets = []netip.Prefix{}
	for _, s := range f.denyNets {
		n, err := netip.ParsePrefix(s)
		if err != nil || !n.Addr().Is4() {
			return fmt.Errorf("--job-deny-net %q: give an IPv4 network like 10.0.0.0/8", s)
		}
		c.DenyNets = append(c.DenyNets, n.Masked())
	}
	return nil
}

const mountAllowHelp = "host path jobs may bind-mount, PATH or PATH:rw (repeatable; added to the platform's own: this flynn-host binary and the CA bundle, besides its named flynn-host:NAME mounts)"

// mountAllowList is the platform's own mounts and those of the
// --mount-allow flags.
func mountAllowList(flags []string) ([]host.AllowedMount, error) {
	out := host.PlatformMounts()
	for _, f := range flags {
		m, err := host.ParseAllowedMount(f)
		if err != nil {
			return nil, fmt.Errorf("--mount-allow: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

func validateAgentFlags(c host.Config) error {
	if !bridgeNameRE.MatchString(c.Bridge) {
		return fmt.Errorf("--bridge %q: a network interface name of 1-15 letters, digits, '.', '_' or '-'", c.Bridge)
	}
	if ip, n, err := net.ParseCIDR(c.Subnet); err != nil || ip.To4() == nil {
		return fmt.Errorf("--subnet %q: give an IPv4 network like 100.64.0.0/16", c.Subnet)
	} else if ones, _ := n.Mask.Size(); ones > 29 {
		return fmt.Errorf("--subnet %q: too small for jobs, use /29 or larger", c.Subnet)
	}
	if c.StopGrace < 0 {
		return fmt.Errorf("--stop-grace %s: must not be negative", c.StopGrace)
	}
	if _, err := exec.LookPath(c.Runc); err != nil {
		return fmt.Errorf("--runc %q: not found (make deps installs runc)", c.Runc)
	}
	return nil
}
