package hostcmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/internal/deployer"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// newComponentCmd is `flynn-host component`: the entrypoints of the
// platform's components, run as jobs.

// schedulerFlags is the configuration of `flynn-host component scheduler`.
type schedulerFlags struct {
	etcd        string
	id          string
	electionTTL time.Duration
	resync      time.Duration
	drain       time.Duration
	logLevel    string
}

// schedulerDeps are the adapters the scheduler and deployer run on.
type schedulerDeps struct {
	cluster    scheduler.Cluster
	controller scheduler.Controller
	drainer    scheduler.Drainer // optional
	deploy     deployer.Controller
	discoverd  deployer.Discoverd // optional
}

// errSchedulerNotWired is returned until the host and controller clients
// are wired into newSchedulerDeps.
var errSchedulerNotWired = errors.New("the scheduler's host and controller adapters are not wired in yet")

// newSchedulerDeps builds the adapters to the host agents (hosts from
// etcd, jobs through each host's API), the controller and discoverd.
func newSchedulerDeps(ctx context.Context, f schedulerFlags, etcd *clientv3.Client, log *slog.Logger) (*schedulerDeps, error) {
	// To wire: the Cluster is scheduler.EtcdHosts{Client: etcd, Log: log}
	// for ListHosts/StreamHosts plus client/hostclient for the job methods;
	// the Controller and deployer.Controller wrap client/controllerclient;
	// Drainer and deployer.Discoverd wrap client/discoverdclient.
	return nil, errSchedulerNotWired
}

func newSchedulerCmd(env Env) *cobra.Command {
	var f schedulerFlags
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler and deployer (one active leader among replicas)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logging.New(env.Stderr, logging.Config{Level: f.logLevel})
			if err != nil {
				return err
			}
			return runScheduler(cmd.Context(), f, log)
		},
	}
	hostname, _ := os.Hostname()
	etcd := "http://127.0.0.1:2379"
	if env.Getenv != nil && env.Getenv("FLYNN_ETCD") != "" {
		etcd = env.Getenv("FLYNN_ETCD")
	}
	fl := cmd.Flags()
	fl.StringVar(&f.etcd, "etcd", etcd, "etcd client URLs, comma-separated ($FLYNN_ETCD)")
	fl.StringVar(&f.id, "id", hostname, "this replica's id in the leader election")
	fl.DurationVar(&f.electionTTL, "election-ttl", 5*time.Second, "how long a dead leader keeps leadership")
	fl.DurationVar(&f.resync, "resync", 30*time.Second, "interval of full resyncs of hosts, jobs and formations")
	fl.DurationVar(&f.drain, "drain-timeout", 10*time.Second, "how long a job may drain before it is stopped")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func runScheduler(ctx context.Context, f schedulerFlags, log *slog.Logger) error {
	if f.id == "" {
		return errors.New("--id is required when the hostname is unknown")
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(f.etcd, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("connect to etcd %s: %w", f.etcd, err)
	}
	defer etcd.Close()
	deps, err := newSchedulerDeps(ctx, f, etcd, log)
	if err != nil {
		return err
	}
	s, err := scheduler.New(scheduler.Config{
		Cluster:        deps.cluster,
		Controller:     deps.controller,
		Drainer:        deps.drainer,
		DrainTimeout:   f.drain,
		ResyncInterval: f.resync,
	}, log)
	if err != nil {
		return err
	}
	d, err := deployer.New(deployer.Config{Controller: deps.deploy, Discoverd: deps.discoverd}, log)
	if err != nil {
		return err
	}
	return scheduler.Lead(ctx, etcd, scheduler.ElectionConfig{ID: f.id, TTL: f.electionTTL}, log, func(ctx context.Context) error {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); s.Run(ctx) }()
		go func() { defer wg.Done(); d.Run(ctx) }()
		wg.Wait()
		return nil
	})
}
