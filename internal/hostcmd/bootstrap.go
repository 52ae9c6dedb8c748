package hostcmd

import (
	"bufio"
	"bytes"
	"context"
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
	"github.com/flynnrebuilt/flynn/internal/backup"
	"github.com/flynnrebuilt/flynn/internal/bootstrap"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/pki"
)

// The cluster set-up commands: bootstrap, up, down.

// bootstrapFlags are the flags bootstrap and up share.
type bootstrapFlags struct {
	domain    string
	ports     bootstrap.Ports
	pgHost    string
	myHost    string
	redisHost string
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
	f.IntVar(&b.ports.Postgres, "postgres-port", p.Postgres, "routers' TCP route port of the postgres appliance (within 3000-3500)")
	f.StringVar(&b.pgHost, "postgres-host", bootstrap.DefaultPostgresHost, "host name (or address) apps get for the postgres appliance (PGHOST)")
	f.IntVar(&b.ports.MySQL, "mysql-port", p.MySQL, "routers' TCP route port of the mysql appliance (within 3000-3500)")
	f.StringVar(&b.myHost, "mysql-host", "leader.mysql.discoverd", "host name (or address) apps get for the mysql appliance (MYSQL_HOST)")
	f.IntVar(&b.ports.Redis, "redis-port", p.Redis, "routers' TCP route port of the redis appliance (within 3000-3500)")
	f.StringVar(&b.redisHost, "redis-host", "leader.redis.discoverd", "host name (or address) apps get for the redis appliance (REDIS_HOST)")
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
		Ports: b.ports, StartJobs: b.startJobs, Out: out, StackLayer: stackLayer, PostgresHost: b.pgHost, MySQLHost: b.myHost, RedisHost: b.redisHost,
	}
	if pkiDir := daemon.PKIDir(stateDir); pki.HasCA(pkiDir) {
		if cfg.EtcdTLS, err = pki.TLSConfig(pkiDir, pki.HostCert, pki.HostKey); err != nil {
			return nil, err
		}
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
		// As the cluster's own artifacts name the blobstore (gitreceive's
		// and the controller's BLOBSTORE_URL): the host agents send their
		// read token there only.
		BlobURL:  "http://blobstore" + discoverdclient.ServiceDomain,
		Progress: out,
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
// state dir (job supervisors of a daemon that is gone: flynn-supervisor, or
// flynn-host supervise).
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
		if bytes.Contains(b, []byte(filepath.Join(stateDir, "host")+"/")) && bytes.Contains(b, []byte("supervis")) {
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
	// Jobs of a daemon that died are still in their cgroups; a killed
	// process leaves its cgroup only once it has exited, which takes
	// seconds on a busy machine. Kill and remove until all are gone.
	deadline := time.Now().Add(15 * time.Second)
	for len(dirs) > 0 {
		var left []string
		for _, d := range dirs {
			if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				left = append(left, d)
			}
		}
		dirs = left
		if len(dirs) == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
