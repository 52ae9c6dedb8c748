// Package monitor is layer 0's watch over layer 1. The scheduler keeps
// every formation running, but it is a job itself and cannot bring itself
// back. So every host daemon runs a monitor; the one elected in etcd
// starts the jobs of the apps marked api.MetaSystemRestore (the scheduler)
// when none of their jobs has run anywhere in the cluster for a grace
// period: after a power loss, after every host restarted, after the
// scheduler's only job was killed. The scheduler then restores every
// other formation from etcd, the controller's included. The monitor backs
// off between attempts, so a crashing release does not spin.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// Config is what a monitor watches and how patiently.
type Config struct {
	// Etcd holds the election and the controller's store.
	Etcd *etcdkv.Client
	// Cluster is the hosts and their jobs (scheduler.NewHostCluster).
	Cluster scheduler.Cluster
	// HostID is this monitor's host (its id in the election).
	HostID string
	// Interval is how often the elected monitor looks (default 2 s).
	Interval time.Duration
	// Grace is how long an app must have no job before it is restored
	// (default 3 s).
	Grace time.Duration
	// MaxBackoff bounds the wait between restore attempts of an app
	// whose jobs keep dying (default 1 min).
	MaxBackoff time.Duration
	// ElectionTTL is how long a dead monitor keeps leadership (default
	// 5 s).
	ElectionTTL time.Duration
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = 2 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 3 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
	if c.ElectionTTL <= 0 {
		c.ElectionTTL = 5 * time.Second
	}
}

// Run campaigns for the cluster's monitor and, while elected, restores
// the marked apps, until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg.defaults()
	if cfg.Etcd == nil || cfg.Cluster == nil || cfg.HostID == "" {
		return errors.New("monitor: Etcd, Cluster and HostID are required")
	}
	log = log.With("component", "monitor")
	// One daemon per host: a leader key with this host's id is from its
	// previous life (a power loss), not worth waiting out.
	el := scheduler.ElectionConfig{Name: "monitor", ID: cfg.HostID, TTL: cfg.ElectionTTL, Unique: true}
	return scheduler.Lead(ctx, cfg.Etcd, el, log, func(ctx context.Context) error {
		m := &monitor{cfg: cfg, log: log, store: ctrlstore.New(cfg.Etcd), apps: map[string]*appWatch{}}
		m.run(ctx)
		return nil
	})
}

// appWatch is what the monitor remembers of one app.
type appWatch struct {
	missingSince time.Time // zero while jobs run
	attempts     int       // restores since the app last ran steadily
	nextTry      time.Time
	runningSince time.Time
}

type monitor struct {
	cfg   Config
	log   *slog.Logger
	store *ctrlstore.Store
	apps  map[string]*appWatch // by app id
	now   func() time.Time
}

func (m *monitor) run(ctx context.Context) {
	if m.now == nil {
		m.now = time.Now
	}
	for {
		if err := m.check(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("check the platform's apps", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.cfg.Interval):
		}
	}
}

// check looks once at every app to restore and restores those whose jobs
// have been gone for the grace period.
func (m *monitor) check(ctx context.Context) error {
	// Two reads of whole prefixes, whatever the number of apps: the
	// formations and apps are listed every Interval, and only a platform
	// app that has to be restored is expanded (its release, artifacts).
	apps, err := m.store.ListApps(ctx)
	if err != nil {
		return err
	}
	forms, err := m.store.ListFormations(ctx, "")
	if err != nil {
		return err
	}
	restorable := map[string]*api.App{}
	for _, a := range apps {
		if a.Meta[api.MetaSystemRestore] == "true" {
			restorable[a.ID] = a
		}
	}
	type platformApp struct {
		app  *api.App
		form *api.Formation
	}
	var want []platformApp
	for _, f := range forms {
		if a := restorable[f.AppID]; a != nil && a.ReleaseID == f.ReleaseID && active(f.Processes) {
			want = append(want, platformApp{a, f})
		}
	}
	if len(want) == 0 {
		return nil
	}
	hosts, err := m.cfg.Cluster.ListHosts(ctx)
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		return errors.New("no host is up")
	}
	// Jobs of each app running anywhere; a host that cannot be listed
	// may run some, so nothing is restored while one cannot be.
	running := map[string]int{}
	snap := &scheduler.Snapshot{Hosts: hosts}
	for _, h := range hosts {
		jobs, err := m.cfg.Cluster.ListJobs(ctx, h.ID)
		if err != nil {
			return fmt.Errorf("list jobs of host %s: %w", h.ID, err)
		}
		for _, j := range scheduler.ActiveJobs(h.ID, jobs) {
			running[j.AppID]++
			snap.Jobs = append(snap.Jobs, j)
		}
	}
	now := m.now()
	for _, p := range want {
		app := p.app
		w := m.apps[app.ID]
		if w == nil {
			w = &appWatch{}
			m.apps[app.ID] = w
		}
		if running[app.ID] > 0 {
			w.missingSince = time.Time{}
			if w.runningSince.IsZero() {
				w.runningSince = now
			}
			if now.Sub(w.runningSince) > m.cfg.MaxBackoff {
				w.attempts = 0 // it runs steadily again
			}
			continue
		}
		w.runningSince = time.Time{}
		if w.missingSince.IsZero() {
			w.missingSince = now
			m.log.Info("no job of a platform app runs", "app", app.Name, "restoring_in", m.cfg.Grace)
		}
		if now.Sub(w.missingSince) < m.cfg.Grace || now.Before(w.nextTry) {
			continue
		}
		w.attempts++
		w.nextTry = now.Add(min(m.cfg.Grace<<min(w.attempts-1, 10), m.cfg.MaxBackoff))
		f, err := m.store.Expand(ctx, p.form)
		if err == nil {
			err = m.restore(ctx, f, snap)
		}
		if err != nil {
			m.log.Error("restore a platform app", "app", app.Name, "attempt", w.attempts, "err", err)
			continue
		}
		m.log.Info("restored a platform app", "app", app.Name, "attempt", w.attempts)
	}
	return nil
}

// restore starts f's formation: omni types on every host, the others
// where the scheduler's rules place them.
func (m *monitor) restore(ctx context.Context, f *api.ExpandedFormation, snap *scheduler.Snapshot) error {
	types := make([]string, 0, len(f.Processes))
	for t := range f.Processes {
		types = append(types, t)
	}
	sort.Strings(types)
	var errs []error
	start := func(h *api.Host, typ string, index int) {
		id, uuid := scheduler.NewJobID(h.ID)
		j := &scheduler.Job{UUID: uuid, ID: id, HostID: h.ID, AppID: f.App.ID, ReleaseID: f.Release.ID, Type: typ, Index: index, State: api.JobStateStarting}
		if err := m.cfg.Cluster.AddJob(ctx, h.ID, scheduler.HostJob(f, j)); err != nil {
			errs = append(errs, fmt.Errorf("start %s/%s on %s: %w", f.App.Name, typ, h.ID, err))
			return
		}
		snap.Jobs = append(snap.Jobs, j)
		m.log.Info("started a platform job", "app", f.App.Name, "type", typ, "job", j.ID)
	}
	for _, typ := range types {
		proc := f.Release.Processes[typ]
		if proc == nil {
			continue
		}
		if proc.Omni {
			for _, h := range snap.Hosts {
				start(h, typ, 0)
			}
			continue
		}
		for i := range f.Processes[typ] {
			h, err := scheduler.PlaceOne(snap, scheduler.Request{Tags: f.Tags[typ], Memory: scheduler.MemoryRequest(proc.Resources)})
			if err != nil {
				errs = append(errs, fmt.Errorf("place %s/%s: %w", f.App.Name, typ, err))
				continue
			}
			start(h, typ, i+1)
		}
	}
	return errors.Join(errs...)
}

// active says whether a formation asks for any process.
func active(procs map[string]int) bool {
	for _, n := range procs {
		if n > 0 {
			return true
		}
	}
	return false
}
