// Package logaggcmd is the entrypoint of the log aggregator: its command, flags and
// wiring, run by flynn-data (cmd/flynn-data, what the system job runs) and by
// `flynn-host component`.
package logaggcmd

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/logagg"
)

// logaggPeerFlags are how a log aggregator finds the other instances, to
// copy their logs when it starts.
type logaggPeerFlags struct {
	discoverd, token, service, advertise string
	fillTimeout                          time.Duration
}

func (p *logaggPeerFlags) register(cmd *cobra.Command, env component.Env) {
	f := cmd.Flags()
	f.StringVar(&p.discoverd, "discoverd", env.Get("DISCOVERD"), "discoverd URL, to find the other instances and copy their logs at start (default $DISCOVERD; empty: this instance stands alone)")
	f.StringVar(&p.token, "discoverd-token", component.OrDefault(env.Get("FLYNN_CLUSTER_TOKEN"), env.Get("CLUSTER_TOKEN")), "cluster token for discoverd (default $FLYNN_CLUSTER_TOKEN or $CLUSTER_TOKEN)")
	f.StringVar(&p.service, "service", logagg.DefaultService, "discoverd service the instances are registered as")
	f.StringVar(&p.advertise, "advertise", "", "host:port this instance is registered as, so it does not ask itself (default $EXTERNAL_IP with the --listen port)")
	f.DurationVar(&p.fillTimeout, "fill-timeout", logagg.DefaultFillTimeout, "longest time to copy one peer's logs at start")
}

// apply sets cfg.Peers from the flags; cfg.Listen must be set.
func (p *logaggPeerFlags) apply(cfg *logagg.Config, env component.Env, log *slog.Logger) {
	cfg.FillTimeout = p.fillTimeout
	if p.discoverd == "" {
		return
	}
	if p.token == "" {
		log.Warn("no discoverd token (--discoverd-token, $FLYNN_CLUSTER_TOKEN): discoverd will refuse to list the other instances, so this one starts without their logs")
	}
	self := p.advertise
	if self == "" {
		self = component.AdvertiseAddr("", cfg.Listen, env.Get("EXTERNAL_IP"))
	}
	cfg.Peers = logagg.ServicePeers(discoverdclient.New(p.discoverd, p.token), p.service, self)
}

// New is `flynn-host component logaggregator`.
func New(env component.Env) *cobra.Command {
	var (
		flags component.ServerFlags
		cfg   logagg.Config
		peers logaggPeerFlags
	)
	cmd := &cobra.Command{
		Use:   "logaggregator",
		Short: "Run the log aggregator: per-app ring buffers of job output",
		Long: `Receive job output lines from hosts (POST /log, newline-delimited JSON
api.LogMessage values), keep the last --buffer-lines lines of every app in
memory, and serve them on GET /log/{app} with follow, lines, job_id,
process_type and stream_types, as newline-delimited JSON or Server-Sent Events.
With --auth-key every request but GET /.well-known/status needs the key.

Every host ships each line to every instance of the discoverd service
logaggregator, numbered, so that each instance holds every line once and
in order. With --discoverd, a starting instance first copies the logs of
a live instance of --service (GET /snapshot), then listens.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := flags.Logger(env, "logaggregator")
			if err != nil {
				return err
			}
			cfg.Listen = flags.Listen
			cfg.Keys = flags.Keys
			peers.apply(&cfg, env, log)
			return component.Exit(cmd.Context(), logagg.Run(cmd.Context(), cfg, log))
		},
	}
	flags.Register(cmd, env, "5381")
	cmd.Flags().IntVar(&cfg.BufferLines, "buffer-lines", logagg.DefaultBufferLines, "lines kept per app")
	peers.register(cmd, env)
	return cmd
}
