package hostcmd

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/logagg"
)

// logaggPeerFlags are how a log aggregator finds the other instances, to
// copy their logs when it starts.
type logaggPeerFlags struct {
	discoverd, token, service, advertise string
	fillTimeout                          time.Duration
}

func (p *logaggPeerFlags) register(cmd *cobra.Command, env Env) {
	f := cmd.Flags()
	f.StringVar(&p.discoverd, "discoverd", blobGetenv(env, "DISCOVERD"), "discoverd URL, to find the other instances and copy their logs at start (default $DISCOVERD; empty: this instance stands alone)")
	f.StringVar(&p.token, "discoverd-token", blobOrDefault(blobGetenv(env, "FLYNN_CLUSTER_TOKEN"), blobGetenv(env, "CLUSTER_TOKEN")), "cluster token for discoverd (default $FLYNN_CLUSTER_TOKEN or $CLUSTER_TOKEN)")
	f.StringVar(&p.service, "service", logagg.DefaultService, "discoverd service the instances are registered as")
	f.StringVar(&p.advertise, "advertise", "", "host:port this instance is registered as, so it does not ask itself (default $EXTERNAL_IP with the --listen port)")
	f.DurationVar(&p.fillTimeout, "fill-timeout", logagg.DefaultFillTimeout, "longest time to copy one peer's logs at start")
}

// apply sets cfg.Peers from the flags; cfg.Listen must be set.
func (p *logaggPeerFlags) apply(cfg *logagg.Config, env Env, log *slog.Logger) {
	cfg.FillTimeout = p.fillTimeout
	if p.discoverd == "" {
		return
	}
	if p.token == "" {
		log.Warn("no discoverd token (--discoverd-token, $FLYNN_CLUSTER_TOKEN): discoverd will refuse to list the other instances, so this one starts without their logs")
	}
	self := p.advertise
	if self == "" {
		self = advertiseAddr("", cfg.Listen, blobGetenv(env, "EXTERNAL_IP"))
	}
	cfg.Peers = logagg.ServicePeers(discoverdclient.New(p.discoverd, p.token), p.service, self)
}
