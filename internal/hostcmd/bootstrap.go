package hostcmd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/internal/backup"
	"github.com/flynnrebuilt/flynn/internal/bootstrap"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

// The cluster set-up commands: bootstrap, up, down.

// bootstrapFlags are the flags bootstrap and up share.
type bootstrapFlags struct {
	domain    string
	ports     bootstrap.Ports
	startJobs bool
	// fromBackup is a backup file (flynn cluster backup) to restore
	// once the platform runs.
	fromBackup string
}

func (b *bootstrapFlags) register(cmd *cobra.Command, env Env) {
	domain := "flynn.localhost"
	if env.Getenv != nil && env.Getenv("CLUSTER_DOMAIN") != "" {
		domain = env.Getenv("CLUSTER_DOMAIN")
	}
	f := cmd.Flags()
	p := bootstrap.DefaultPorts
	f.StringVar(&b.domain, "domain", domain, "cluster domain: apps are served at APP.DOMAIN (default $CLUSTER_DOMAIN if set)")
	f.IntVar(&b.ports.HTTP, "http-port", p.HTTP, "router HTTP port")
	f.IntVar(&b.ports.HTTPS, "https-port", p.HTTPS, "router HTTPS port")
	f.IntVar(&b.ports.RouterAPI, "router-api-port", p.RouterAPI, "router API port")
	f.IntVar(&b.ports.Blobstore, "blobstore-port", p.Blobstore, "blobstore port")
	f.IntVar(&b.ports.Logagg, "logaggregator-port", p.Logagg, "log aggregator port")
	f.IntVar(&b.ports.GitHTTP, "git-http-port", p.GitHTTP, "gitreceive smart-HTTP port")
	f.IntVar(&b.ports.GitSSH, "git-ssh-port", p.GitSSH, "gitreceive SSH port")
	f.StringVar(&b.fromBackup, "from-backup", "", "restore the apps of a backup file (flynn cluster backup) on this new cluster")
	f.BoolVar(&b.startJobs, "start-jobs", false, "start every system job directly instead of leaving it to the scheduler")
	f.MarkHidden("start-jobs")
}

func runBootstrap(ctx context.Context, stateDir, discoverdURL, manifestFile string, stackLayer string, b bootstrapFlags, out io.Writer, log *slog.Logger) (*bootstrap.Result, error) {
	hc, err := daemon.LoadHostConfig(stateDir)
	if err != nil {
		return nil, err
	}
	cfg := bootstrap.Config{
		DiscoverdURL: discoverdURL, Token: hc.Token, Domain: b.domain, StateDir: stateDir,
		Ports: b.ports, StartJobs: b.startJobs, Out: out, StackLayer: stackLayer,
	}
	if manifestFile != "" {
		if cfg.Manifest, err = bootstrap.LoadManifest(manifestFile); err != nil {
			return nil, err
		}
	}
	if b.fromBackup != "" {
		// The whole file is read before anything changes.
		fmt.Fprintf(out, "checking the backup %s\n", b.fromBackup)
		if _, err := backup.Check(b.fromBackup); err != nil {
			return nil, err
		}
	}
	res, err := bootstrap.Run(ctx, cfg, log)
	if err != nil || b.fromBackup == "" {
		return res, err
	}
	if res.AlreadyDone {
		return nil, errors.New("this cluster is bootstrapped already and has apps of its own: --from-backup restores onto a new cluster (flynn-host down removes this one)")
	}
	disc := discoverdclient.New(strings.TrimSuffix(discoverdURL, "/"), hc.Token)
	t := backup.Target{
		Controller: controllerclient.NewWithHTTP("http://controller"+discoverdclient.ServiceDomain, res.Key, disc.HTTPClient()),
		Blobs:      blobclient.New(res.BlobURL, res.Key, nil),
		BlobURL:    res.BlobURL,
		Progress:   out,
	}
	if _, err := backup.Restore(ctx, b.fromBackup, t); err != nil {
		return nil, err
	}
	return res, nil
}

func newBootstrapCmd(env Env) *cobra.Command {
	var (
		b                  bootstrapFlags
		stateDir, discURL  string
		stackLayer, logLvl string
	)
	cmd := &cobra.Command{
		Use:   "bootstrap [MANIFEST]",
		Short: "Start the platform on a running cluster and print the `flynn cluster add` line",
		Long: `Run the bootstrap manifest (the built-in one, or MANIFEST, a JSON file of
steps and system apps): generate the cluster key, CA and wildcard
certificate, start the controller and the scheduler, register and deploy
the system apps (router, blobstore, gitreceive, logaggregator), add the
controller and git routes and wait for them. On a cluster that is
bootstrapped already it changes nothing and prints the line again.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logging.New(env.Stderr, logging.Config{Level: logLvl})
			if err != nil {
				return err
			}
			if discURL == "" {
				discURL = fmt.Sprintf("http://%s", net.JoinHostPort(daemon.DefaultListenIP(), strconv.Itoa(daemon.DefaultDiscoverdPort)))
			}
			manifest := ""
			if len(args) == 1 {
				manifest = args[0]
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Minute)
			defer cancel()
			res, err := runBootstrap(ctx, stateDir, discURL, manifest, stackLayer, b, cmd.OutOrStdout(), log)
			if err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), res)
			return nil
		},
	}
	b.register(cmd, env)
	cmd.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of the host config")
	cmd.Flags().StringVar(&discURL, "discoverd", "", "discoverd URL of a host (default http://<cluster address>:1111)")
	cmd.Flags().StringVar(&stackLayer, "stack-layer", "", "layer tar of the build stack (given to gitreceive)")
	cmd.Flags().StringVar(&logLvl, "log-level", "warn", "debug, info, warn or error")
	return cmd
}

func printResult(w io.Writer, res *bootstrap.Result) {
	if res.AlreadyDone {
		fmt.Fprintln(w, "The cluster is bootstrapped already; nothing changed.")
	} else {
		fmt.Fprintln(w, "Flynn bootstrapping complete. Add the cluster to the flynn CLI with:")
	}
	fmt.Fprintf(w, "  %s\n", res.ClusterAddLine("default"))
	if !strings.HasSuffix(res.Domain, ".localhost") && res.Domain != "localhost" {
		fmt.Fprintf(w, "(controller.%s and git.%s must resolve to the cluster's routers)\n", res.Domain, res.Domain)
	}
}

// upState is what `up` started, kept in <state-dir>/up.json for `down`.
type upState struct {
	DaemonArgs   []string `json:"daemon_args"`
	Bridge       string   `json:"bridge"`
	Subnet       string   `json:"subnet"`
	CgroupParent string   `json:"cgroup_parent"`
	HostURL      string   `json:"host_url"`
	DiscoverdURL string   `json:"discoverd_url"`
	// Rcfiles are the CLI configs up added the cluster to.
	Rcfiles []string `json:"rcfiles,omitempty"`
	Cluster string   `json:"cluster"`
}

func newUpCmd(env Env) *cobra.Command {
	var (
		b                                          bootstrapFlags
		stateDir, listenIP, bridge, subnet, cgroup string
		stackDir, clusterName, deps, flynnCLI      string
		manifest, portRange                        string
		etcdClient, etcdPeer, discPort, dnsPort    int
		hostPort                                   int
		noStack, etcdFast, noCLI                   bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a single-node cluster on this machine and configure the flynn CLI",
		Long: `As root: install missing OS packages, build the default stack if it is not
built yet, create the cluster (init) if this host has none, start the host
daemon, bootstrap the platform, and add the cluster to the flynn CLI config
of the invoking user ($SUDO_USER's ~/.flynnrc under sudo).

The daemon runs as the systemd service flynn-host.service (restarted when it
dies, started at boot) on a machine whose init is systemd, else as a
background process; either way its log is <state-dir>/daemon.log and its pid
is in <state-dir>/daemon.pid.

Running it again is safe and fast. On a cluster that was stopped (a power
loss, a reboot, 'flynn-host down --keep-data') it starts the daemon and waits
while the hosts restore the platform and every app from the cluster state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if os.Geteuid() != 0 {
				return errors.New("flynn-host up must run as root (try: sudo make up)")
			}
			if _, _, err := parseJobPortRange(portRange); err != nil {
				return err
			}
			if b.fromBackup != "" {
				// A bad backup changes nothing, not even this machine.
				fmt.Fprintf(out, "==> checking the backup %s\n", b.fromBackup)
				if _, err := backup.Check(b.fromBackup); err != nil {
					return err
				}
			}
			start := time.Now()
			ctx := cmd.Context()
			log, err := logging.New(env.Stderr, logging.Config{Level: "warn"})
			if err != nil {
				return err
			}
			if deps != "" {
				if _, err := os.Stat(deps); err == nil {
					fmt.Fprintln(out, "==> OS packages")
					c := exec.CommandContext(ctx, "bash", deps)
					c.Stdout, c.Stderr = out, env.Stderr
					if err := c.Run(); err != nil {
						return fmt.Errorf("install OS packages (%s): %w", deps, err)
					}
				}
			}
			stackLayer := ""
			if !noStack {
				fmt.Fprintln(out, "==> build stack")
				res, err := stack.Build(ctx, stack.Config{Dir: stackDir, Tar: true, Progress: &prefixWriter{w: out, prefix: "    "}})
				if err != nil {
					return fmt.Errorf("build the default stack: %w", err)
				}
				stackLayer = res.Layer
				if res.Cached {
					fmt.Fprintf(out, "    stack %s already built\n", res.Key)
				}
			}
			if listenIP == "" {
				listenIP = daemon.DefaultListenIP()
			}
			if _, err := daemon.LoadHostConfig(stateDir); errors.Is(err, daemon.ErrNoHostConfig) {
				fmt.Fprintln(out, "==> init")
				if err := selfRun(ctx, out, "init", "--state-dir", stateDir); err != nil {
					return err
				}
			} else if err != nil {
				return err
			}
			st := &upState{
				Bridge: bridge, Subnet: subnet, CgroupParent: cgroup, Cluster: clusterName,
				DiscoverdURL: "http://" + net.JoinHostPort(listenIP, strconv.Itoa(discPort)),
				HostURL:      "http://" + net.JoinHostPort(listenIP, strconv.Itoa(hostPort)),
				DaemonArgs: []string{"daemon", "--state-dir", stateDir, "--listen-ip", listenIP,
					"--etcd-client-port", strconv.Itoa(etcdClient), "--etcd-peer-port", strconv.Itoa(etcdPeer),
					"--discoverd-port", strconv.Itoa(discPort), "--dns-port", strconv.Itoa(dnsPort),
					"--host-port", strconv.Itoa(hostPort), "--bridge", bridge, "--subnet", subnet,
					"--cgroup-parent", cgroup, "--port-range", portRange},
			}
			if etcdFast {
				st.DaemonArgs = append(st.DaemonArgs, "--etcd-fast")
			}
			if old, err := loadUpState(stateDir); err == nil {
				st.Rcfiles = old.Rcfiles
			}
			if err := saveUpState(stateDir, st); err != nil {
				return err
			}
			if err := startDaemon(ctx, out, stateDir, st); err != nil {
				return err
			}
			fmt.Fprintln(out, "==> bootstrap")
			bctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
			defer cancel()
			res, err := runBootstrap(bctx, stateDir, st.DiscoverdURL, manifest, stackLayer, b, &prefixWriter{w: out, prefix: "    "}, log)
			if err != nil {
				return err
			}
			if res.AlreadyDone {
				// A cluster that was stopped (power loss, down
				// --keep-data) restores itself: the daemons start the
				// scheduler, which starts everything else.
				fmt.Fprintln(out, "==> waiting for the platform (the hosts restore it from the cluster state)")
				wstart := time.Now()
				if err := bootstrap.WaitRouted(ctx, res, 5*time.Minute); err != nil {
					return fmt.Errorf("%w (see %s and `flynn-host ps`)", err, filepath.Join(stateDir, "daemon.log"))
				}
				fmt.Fprintf(out, "    the controller answers through the router (%s)\n", time.Since(wstart).Round(100*time.Millisecond))
			}
			if !noCLI {
				rc, err := addToCLI(ctx, env, flynnCLI, clusterName, res)
				if err != nil {
					return err
				}
				st.Rcfiles = []string{rc}
				fmt.Fprintf(out, "==> flynn CLI: cluster %q added to %s\n", clusterName, rc)
			}
			if err := saveUpState(stateDir, st); err != nil {
				return err
			}
			printResult(out, res)
			fmt.Fprintf(out, "Cluster up in %s. Try: flynn create myapp\n", time.Since(start).Round(time.Second))
			return nil
		},
	}
	b.register(cmd, env)
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", daemon.DefaultStateDir, "directory of all the cluster's state on this host")
	f.StringVar(&listenIP, "listen-ip", "", "the host's cluster address (default: the address of the default route)")
	f.StringVar(&bridge, "bridge", "flynnbr0", "bridge jobs attach to")
	f.StringVar(&subnet, "subnet", "100.64.0.0/16", "job network")
	f.StringVar(&cgroup, "cgroup-parent", "flynn", "cgroup jobs are placed under")
	f.StringVar(&portRange, "port-range", defaultPortRange, "host ports given to jobs, LO-HI (keep it outside net.ipv4.ip_local_port_range)")
	f.IntVar(&etcdClient, "etcd-client-port", daemon.DefaultEtcdClientPort, "etcd client port")
	f.IntVar(&etcdPeer, "etcd-peer-port", daemon.DefaultEtcdPeerPort, "etcd peer port")
	f.IntVar(&discPort, "discoverd-port", daemon.DefaultDiscoverdPort, "discoverd HTTP port")
	f.IntVar(&dnsPort, "dns-port", daemon.DefaultDNSPort, "discoverd DNS port (-1 disables DNS)")
	f.IntVar(&hostPort, "host-port", daemon.DefaultHostPort, "host agent port")
	f.StringVar(&stackDir, "stack-dir", "/var/cache/flynn/stack", "where the default stack is built and cached")
	f.BoolVar(&noStack, "no-stack", false, "do not build the default stack")
	f.StringVar(&deps, "deps", "scripts/deps.sh", "script that installs missing OS packages (skipped when absent)")
	f.StringVar(&clusterName, "cluster-name", "default", "name of the cluster in the flynn CLI config")
	f.StringVar(&flynnCLI, "flynn", "", "flynn CLI binary (default: flynn next to this flynn-host, else in $PATH)")
	f.BoolVar(&noCLI, "no-cli", false, "do not configure the flynn CLI")
	f.StringVar(&manifest, "manifest", "", "bootstrap manifest JSON file (default: the built-in one)")
	f.BoolVar(&etcdFast, "etcd-fast", false, "short etcd ticks, for tests")
	f.MarkHidden("etcd-fast")
	return cmd
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

// selfRun runs this flynn-host with args in the foreground.
func selfRun(ctx context.Context, out io.Writer, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, exe, args...)
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	if err := c.Run(); err != nil {
		return fmt.Errorf("flynn-host %s: %w\n%s", args[0], err, buf.String())
	}
	return nil
}

// daemonPID returns the pid of the running daemon of stateDir, or 0.
func daemonPID(stateDir string) int {
	b, err := os.ReadFile(filepath.Join(stateDir, "daemon.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte("daemon")) {
		return 0 // the pid was reused
	}
	return pid
}

// startDaemon starts `flynn-host daemon` in the background unless it runs
// already, and waits until its discoverd and host agent answer.
func startDaemon(ctx context.Context, out io.Writer, stateDir string, st *upState) error {
	service := systemdBooted()
	if service {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		if err := installService(ctx, out, stateDir, exe, st.DaemonArgs); err != nil {
			return err
		}
	} else if pid := daemonPID(stateDir); pid != 0 {
		fmt.Fprintf(out, "==> daemon running (pid %d)\n", pid)
	} else {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		logFile := filepath.Join(stateDir, "daemon.log")
		lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer lf.Close()
		c := exec.Command(exe, st.DaemonArgs...)
		c.Stdout, c.Stderr = lf, lf
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := c.Start(); err != nil {
			return fmt.Errorf("start the daemon: %w", err)
		}
		pid := c.Process.Pid
		c.Process.Release()
		if err := os.WriteFile(filepath.Join(stateDir, "daemon.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "==> daemon started (pid %d, log %s)\n", pid, logFile)
	}
	hc, err := daemon.LoadHostConfig(stateDir)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var status api.GridStatus
		err := (&httpclient.Client{URL: st.DiscoverdURL, Key: hc.Token}).Do(cctx, "GET", "/grid/status", nil, &status)
		if err == nil {
			_, err = hostclient.New(st.HostURL, hc.Token).Status(cctx)
			if err == nil && len(status.Hosts) == 0 {
				err = errors.New("the host has not registered yet")
			}
		}
		cancel()
		if err == nil {
			return nil
		}
		// (systemd restarts a daemon that exits; a background one is gone.)
		if time.Now().After(deadline) || (!service && daemonPID(stateDir) == 0) {
			return fmt.Errorf("the daemon did not come up: %v (see %s)", err, filepath.Join(stateDir, "daemon.log"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// findFlynnCLI finds the flynn CLI next to this flynn-host, else in $PATH.
func findFlynnCLI() (string, error) {
	exe, _ := os.Executable()
	bin := filepath.Join(filepath.Dir(exe), "flynn")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	return exec.LookPath("flynn")
}

// addToCLI adds the cluster to the flynn CLI config of the user who ran
// up (through sudo: $SUDO_USER), as the default cluster.
func addToCLI(ctx context.Context, env Env, flynnBin, name string, res *bootstrap.Result) (string, error) {
	getenv := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return env.Getenv(k)
	}
	if flynnBin == "" {
		var err error
		if flynnBin, err = findFlynnCLI(); err != nil {
			return "", errors.New("cannot find the flynn CLI next to flynn-host or in $PATH: build it with make, or pass --no-cli")
		}
	}
	uid, gid := 0, 0
	home := "/root"
	if u := getenv("SUDO_USER"); u != "" && u != "root" {
		pw, err := user.Lookup(u)
		if err != nil {
			return "", fmt.Errorf("look up $SUDO_USER %s: %w", u, err)
		}
		home = pw.HomeDir
		uid, _ = strconv.Atoi(pw.Uid)
		gid, _ = strconv.Atoi(pw.Gid)
	} else if h := getenv("HOME"); h != "" {
		home = h
	}
	rc := filepath.Join(home, ".flynnrc")
	if p := getenv("FLYNNRC"); p != "" {
		rc = p
	}
	args := append([]string{"cluster", "add", "-f", "-d"}, res.ClusterAddArgs(name)...)
	c := exec.CommandContext(ctx, flynnBin, args...)
	c.Env = append(os.Environ(), "FLYNNRC="+rc, "HOME="+home)
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("flynn cluster add: %w\n%s", err, buf.String())
	}
	if uid != 0 {
		os.Chown(rc, uid, gid)
	}
	return rc, nil
}

func newDownCmd(env Env) *cobra.Command {
	var stateDir string
	var keepData bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the cluster `flynn-host up` started and clean the machine",
		Long: `Stop every job, the host daemon, and remove what they made on this machine:
the job bridge, mounts under the state dir, the jobs' cgroups and
iptables rules. The state dir is deleted unless --keep-data.`,
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
	if pid := daemonPID(stateDir); pid != 0 {
		if hc, err := daemon.LoadHostConfig(stateDir); err == nil {
			stopAllJobs(ctx, out, hostclient.New(st.HostURL, hc.Token))
		}
		fmt.Fprintf(out, "==> stopping the daemon (pid %d)\n", pid)
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
	killStateDirProcs(stateDir)
	os.Remove(filepath.Join(stateDir, "daemon.pid"))
	// Mounts under the state dir, deepest first.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == stateDir || strings.HasPrefix(f[4], strings.TrimSuffix(stateDir, "/")+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if st.Bridge != "" {
		if _, err := net.InterfaceByName(st.Bridge); err == nil {
			if b, err := exec.Command("ip", "link", "del", st.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", st.Bridge, err, b))
			}
		}
	}
	removeIptablesRules(st.Subnet)
	if st.CgroupParent != "" {
		removeCgroups(st.CgroupParent)
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

func stopAllJobs(ctx context.Context, out io.Writer, hc *hostclient.Client) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	jobs, err := hc.ListJobs(ctx)
	if err != nil {
		return
	}
	n := 0
	done := make(chan struct{})
	for _, j := range jobs {
		if j.Status != api.HostJobRunning && j.Status != api.HostJobStarting {
			continue
		}
		n++
		go func(id string) {
			hc.StopJob(ctx, id)
			done <- struct{}{}
		}(j.Job.ID)
	}
	for i := 0; i < n; i++ {
		<-done
	}
	fmt.Fprintf(out, "==> stopped %d jobs\n", n)
}

// killStateDirProcs kills processes whose executable or arguments name the
// state dir (job supervisors of a daemon that is gone).
func killStateDirProcs(stateDir string) {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte(filepath.Join(stateDir, "host")+"/")) && bytes.Contains(b, []byte("supervise")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeIptablesRules deletes the nat and filter rules that mention the
// job subnet (left when jobs died without CNI DEL).
func removeIptablesRules(subnet string) {
	if subnet == "" {
		return
	}
	for _, table := range []string{"nat", "filter"} {
		b, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "-A ") || !strings.Contains(line, subnet) {
				continue
			}
			// iptables-save quotes as a shell does (comments have spaces).
			exec.Command("sh", "-c", "iptables -t "+table+" -D "+strings.TrimPrefix(line, "-A ")).Run()
		}
	}
}

// removeCgroups removes the (empty) cgroup directories named parent.
func removeCgroups(parent string) {
	var dirs []string
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if filepath.Base(p) == parent {
			filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, q)
				}
				return nil
			})
			return filepath.SkipDir
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		// Jobs of a daemon that died are still in their cgroups.
		if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for _, d := range dirs {
		for i := 0; i < 50 && os.Remove(d) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// prefixWriter indents each line written through it.
type prefixWriter struct {
	w       io.Writer
	prefix  string
	midline bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !p.midline {
			io.WriteString(p.w, p.prefix)
		}
		p.w.Write(line)
		p.midline = line[len(line)-1] != '\n'
	}
	return len(b), nil
}
