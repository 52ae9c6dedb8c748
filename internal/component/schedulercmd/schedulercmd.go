// Package schedulercmd is the entrypoint of the scheduler and deployer: its command, flags and
// wiring, run by flynn-control (cmd/flynn-control, what the system job runs) and by
// `flynn-host component`.
package schedulercmd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/etcdconn"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/deployer"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// schedulerFlags is the configuration of the scheduler command.
type schedulerFlags struct {
	etcd          string
	etcdTLS       string
	controller    string
	controllerKey string
	discoverd     string
	token         string
	id            string
	electionTTL   time.Duration
	resync        time.Duration
	logLevel      string
}

// schedulerDeps are the adapters the scheduler and deployer run on.
type schedulerDeps struct {
	cluster    scheduler.Cluster
	controller scheduler.Controller
	deploy     deployer.Controller
	discoverd  deployer.Discoverd // optional
}

// newSchedulerDeps builds the adapters to the host agents (hosts from
// etcd, jobs through each host's API), the controller and discoverd.
// Jobs are drained by their host agents when stopped (they deregister
// from discoverd and wait for routers first), so the scheduler has no
// Drainer of its own.
func newSchedulerDeps(f schedulerFlags, etcd *etcdkv.Client, log *slog.Logger) (*schedulerDeps, error) {
	if f.controller == "" {
		return nil, errors.New("--controller URL is required")
	}
	if f.controllerKey == "" {
		return nil, errors.New("--controller-key is required")
	}
	if f.token == "" {
		return nil, errors.New("--token (the cluster token host agents accept) is required")
	}
	var disc *discoverdclient.Client
	if f.discoverd != "" {
		disc = discoverdclient.New(f.discoverd, f.token)
	}
	cc := controllerclient.NewWithHTTP(f.controller, f.controllerKey, component.ServiceHTTP(disc))
	deps := &schedulerDeps{
		cluster: scheduler.NewHostCluster(etcd, f.token, log),
		// Formations and job states straight from etcd: the scheduler
		// restores the controller's jobs too when none runs.
		controller: &scheduler.StoreController{S: ctrlstore.New(etcd)},
		deploy:     &deployer.ControllerClient{C: cc},
	}
	if disc != nil {
		deps.discoverd = &deployer.DiscoverdWaiter{C: disc}
	}
	return deps, nil
}

// New is `flynn-host component scheduler`.
func New(env component.Env) *cobra.Command {
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
	get := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return env.Getenv(k)
	}
	hostname, _ := os.Hostname()
	etcd := "http://127.0.0.1:2379"
	if get("FLYNN_ETCD") != "" {
		etcd = get("FLYNN_ETCD")
	}
	fl := cmd.Flags()
	fl.StringVar(&f.etcd, "etcd", etcd, "etcd client URLs, comma-separated ($FLYNN_ETCD)")
	etcdconn.TLSFlag(fl, &f.etcdTLS, env.Getenv)
	fl.StringVar(&f.id, "id", hostname, "this replica's id in the leader election")
	fl.DurationVar(&f.electionTTL, "election-ttl", 5*time.Second, "how long a dead leader keeps leadership")
	fl.DurationVar(&f.resync, "resync", 30*time.Second, "interval of full resyncs of hosts, jobs and formations")
	fl.StringVar(&f.controller, "controller", get("CONTROLLER_URL"), "controller URL ($CONTROLLER_URL)")
	fl.StringVar(&f.controllerKey, "controller-key", get("CONTROLLER_KEY"), "controller auth key ($CONTROLLER_KEY)")
	fl.StringVar(&f.discoverd, "discoverd", get("DISCOVERD"), "discoverd URL, to wait for new jobs' service registrations in deploys ($DISCOVERD)")
	fl.StringVar(&f.token, "token", get("FLYNN_CLUSTER_TOKEN"), "cluster token the host agents accept ($FLYNN_CLUSTER_TOKEN)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func runScheduler(ctx context.Context, f schedulerFlags, log *slog.Logger) error {
	if f.id == "" {
		return errors.New("--id is required when the hostname is unknown")
	}
	etcd, err := etcdconn.Client(f.etcd, f.etcdTLS)
	if err != nil {
		return err
	}
	defer etcd.Close()
	deps, err := newSchedulerDeps(f, etcd, log)
	if err != nil {
		return err
	}
	s, err := scheduler.New(scheduler.Config{
		Cluster:        deps.cluster,
		Controller:     deps.controller,
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
