package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// HostCluster is the Cluster of a real grid: hosts from their etcd
// registrations (EtcdHosts), jobs through each host agent's HTTP API
// (client/hostclient) with the cluster token.
type HostCluster struct {
	EtcdHosts
	// Token is the cluster token the host agents accept.
	Token string
	// RequestTimeout bounds AddJob and StopJob calls (default 3 min: a
	// start may fetch layers).
	RequestTimeout time.Duration

	mu    sync.Mutex
	hosts map[string]*api.Host // by id, as last seen
}

// NewHostCluster returns the Cluster of the hosts registered in etcd.
func NewHostCluster(etcd *etcdkv.Client, token string, log *slog.Logger) *HostCluster {
	return &HostCluster{EtcdHosts: EtcdHosts{Client: etcd, Log: log}, Token: token}
}

// ListHosts returns the registered hosts.
func (c *HostCluster) ListHosts(ctx context.Context) ([]*api.Host, error) {
	hosts, err := c.EtcdHosts.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.hosts = make(map[string]*api.Host, len(hosts))
	for _, h := range hosts {
		c.hosts[h.ID] = h
	}
	c.mu.Unlock()
	return hosts, nil
}

// StreamHosts reports registrations and removals.
func (c *HostCluster) StreamHosts(ctx context.Context, fn func(HostEvent)) error {
	return c.EtcdHosts.StreamHosts(ctx, func(e HostEvent) {
		if e.Up && e.Host != nil {
			c.mu.Lock()
			if c.hosts == nil {
				c.hosts = make(map[string]*api.Host)
			}
			c.hosts[e.Host.ID] = e.Host
			c.mu.Unlock()
		}
		fn(e)
	})
}

// client returns the agent client of a host, reading its registration
// from etcd when it has not been seen yet.
func (c *HostCluster) client(ctx context.Context, hostID string) (*hostclient.Client, error) {
	c.mu.Lock()
	h := c.hosts[hostID]
	c.mu.Unlock()
	if h == nil {
		resp, err := c.Client.Get(ctx, api.KeyHosts+hostID)
		if err != nil {
			return nil, fmt.Errorf("look up host %s: %w", hostID, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("host %s is not registered", hostID)}
		}
		if h = c.decode(resp.Kvs[0].Key, resp.Kvs[0].Value); h == nil {
			return nil, fmt.Errorf("host %s has a bad registration", hostID)
		}
		c.mu.Lock()
		if c.hosts == nil {
			c.hosts = make(map[string]*api.Host)
		}
		c.hosts[hostID] = h
		c.mu.Unlock()
	}
	if h.URL == "" {
		return nil, fmt.Errorf("host %s registered no agent URL", hostID)
	}
	return hostclient.New(h.URL, c.Token), nil
}

func (c *HostCluster) timeout() time.Duration {
	if c.RequestTimeout > 0 {
		return c.RequestTimeout
	}
	return 3 * time.Minute
}

// ListJobs returns the jobs a host knows.
func (c *HostCluster) ListJobs(ctx context.Context, hostID string) ([]*api.ActiveJob, error) {
	hc, err := c.client(ctx, hostID)
	if err != nil {
		return nil, err
	}
	jobs, err := hc.ListJobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list jobs of host %s: %w", hostID, err)
	}
	return jobs, nil
}

// StreamJobs follows a host's job events until ctx ends or the stream
// breaks.
func (c *HostCluster) StreamJobs(ctx context.Context, hostID string, fn func(*api.HostJobEvent)) error {
	hc, err := c.client(ctx, hostID)
	if err != nil {
		return err
	}
	evs, err := hc.StreamEvents(ctx)
	if err != nil {
		return fmt.Errorf("follow jobs of host %s: %w", hostID, err)
	}
	defer evs.Close()
	for {
		ev, err := evs.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("job stream of host %s ended", hostID)
			}
			return fmt.Errorf("job stream of host %s: %w", hostID, err)
		}
		fn(ev)
	}
}

// AddJob starts job on a host. A job the host accepted but could not
// start is an error too (the host also reports it failed).
func (c *HostCluster) AddJob(ctx context.Context, hostID string, job *api.HostJob) error {
	hc, err := c.client(ctx, hostID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	aj, err := hc.AddJob(ctx, job)
	if err != nil {
		return fmt.Errorf("add job %s to host %s: %w", job.ID, hostID, err)
	}
	if aj.Status == api.HostJobFailed {
		msg := "failed to start"
		if aj.Error != nil {
			msg = *aj.Error
		}
		return fmt.Errorf("job %s on host %s: %s", job.ID, hostID, msg)
	}
	return nil
}

// ListVolumes implements VolumeLister.
func (c *HostCluster) ListVolumes(ctx context.Context, hostID string) ([]*api.Volume, error) {
	cl, err := c.client(ctx, hostID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	return cl.ListVolumes(ctx)
}

// StopJob stops a job; api.ErrNotFound when the host does not know it.
func (c *HostCluster) StopJob(ctx context.Context, hostID, jobID string) error {
	hc, err := c.client(ctx, hostID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	if _, err := hc.StopJob(ctx, jobID); err != nil {
		return fmt.Errorf("stop job %s on host %s: %w", jobID, hostID, err)
	}
	return nil
}

// ControllerClient is the Controller of a real controller, over
// client/controllerclient.
type ControllerClient struct {
	C *controllerclient.Client
}

// ListFormations returns every formation, including ones scaled to zero,
// expanded: the initial list of the formation stream.
func (c *ControllerClient) ListFormations(ctx context.Context) ([]*api.ExpandedFormation, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.C.StreamFormations(ctx, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("list formations: %w", err)
	}
	defer s.Close()
	var out []*api.ExpandedFormation
	for {
		f, err := s.Next()
		if err != nil {
			return nil, fmt.Errorf("list formations: %w", err)
		}
		if f.App == nil {
			return out, nil // up to date
		}
		if !f.Deleted {
			out = append(out, f)
		}
	}
}

// StreamFormations reports formations as they change. It replays the
// current ones first, which the scheduler applies idempotently.
func (c *ControllerClient) StreamFormations(ctx context.Context, fn func(*api.ExpandedFormation)) error {
	s, err := c.C.StreamFormations(ctx, time.Time{})
	if err != nil {
		return fmt.Errorf("follow formations: %w", err)
	}
	defer s.Close()
	for {
		f, err := s.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("follow formations: %w", err)
		}
		if f.App == nil || f.Release == nil {
			continue
		}
		fn(f)
	}
}

// PutJob records a job's state. The controller keys jobs by UUID, so
// jobs that are not placed yet (pending, blocked) are recorded too.
func (c *ControllerClient) PutJob(ctx context.Context, job *api.Job) error {
	if job.ID == "" && job.UUID == "" {
		return nil
	}
	cp := *job
	if err := c.C.PutJob(ctx, &cp); err != nil {
		return fmt.Errorf("record job %s: %w", job.ID, err)
	}
	return nil
}

// StoreController is the Controller of the controller's store in etcd
// (internal/controller/ctrlstore), read and written directly: formations
// come from etcd and job states go there, events included, with no
// controller in between. So the scheduler runs, and restores the
// controller's own jobs, while no controller is up (after a power loss).
type StoreController struct {
	S *ctrlstore.Store
}

// errUpToDate ends the listing of ListFormations.
var errUpToDate = errors.New("up to date")

// ListFormations returns every formation whose app and release exist,
// including ones scaled to zero, expanded.
func (c *StoreController) ListFormations(ctx context.Context) ([]*api.ExpandedFormation, error) {
	var out []*api.ExpandedFormation
	err := c.S.FollowFormations(ctx, time.Time{}, func(f *api.ExpandedFormation) error {
		if f.App == nil {
			return errUpToDate
		}
		if !f.Deleted {
			out = append(out, f)
		}
		return nil
	})
	if errors.Is(err, errUpToDate) {
		return out, nil
	}
	return nil, fmt.Errorf("list formations: %w", err)
}

// StreamFormations reports formations as they change, the current ones
// first.
func (c *StoreController) StreamFormations(ctx context.Context, fn func(*api.ExpandedFormation)) error {
	err := c.S.FollowFormations(ctx, time.Time{}, func(f *api.ExpandedFormation) error {
		if f.App != nil && f.Release != nil {
			fn(f)
		}
		return nil
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("follow formations: %w", err)
}

// PutJob records a job's state, as the controller's PUT /apps/{app}/jobs
// does: a job of an app that is gone is not found.
func (c *StoreController) PutJob(ctx context.Context, job *api.Job) error {
	if job.ID == "" && job.UUID == "" {
		return nil
	}
	if _, err := c.S.GetApp(ctx, job.AppID); err != nil {
		return fmt.Errorf("record job %s: %w", job.ID, err)
	}
	cp := *job
	if _, err := c.S.PutJob(ctx, &cp); err != nil {
		return fmt.Errorf("record job %s: %w", job.ID, err)
	}
	return nil
}

// ListActiveJobs returns the job records that are not down.
func (c *StoreController) ListActiveJobs(ctx context.Context) ([]*api.Job, error) {
	return c.S.ListActiveJobs(ctx)
}

var (
	_ JobRecords = (*StoreController)(nil)
	_ Cluster    = (*HostCluster)(nil)
	_ Controller = (*ControllerClient)(nil)
	_ Controller = (*StoreController)(nil)
)
