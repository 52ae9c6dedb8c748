package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

// HostRunner is the JobRunner that talks to real host agents with
// client/hostclient, authenticating with the cluster token.
type HostRunner struct {
	Token string
	// Cluster is the hosts and their jobs, to place jobs on
	// (scheduler.NewHostCluster).
	Cluster scheduler.Cluster
}

// Place implements JobRunner with the scheduler's placement.
func (h *HostRunner) Place(ctx context.Context, req scheduler.Request) (*api.Host, error) {
	if h.Cluster == nil {
		return nil, errors.New("this controller has no view of the hosts")
	}
	return scheduler.PlaceOnCluster(ctx, h.Cluster, req)
}

func (h *HostRunner) client(host *api.Host) *hostclient.Client {
	return hostclient.New(host.URL, h.Token)
}

// AddJob implements JobRunner.
func (h *HostRunner) AddJob(ctx context.Context, host *api.Host, job *api.HostJob) error {
	aj, err := h.client(host).AddJob(ctx, job)
	if err != nil {
		return err
	}
	if aj != nil && aj.Status == api.HostJobFailed {
		msg := "job failed to start"
		if aj.Error != nil {
			if missingCommand(*aj.Error) {
				return api.Validation("args", "the job's command does not exist: %s", *aj.Error)
			}
			msg += ": " + *aj.Error
		}
		return errors.New(msg)
	}
	return nil
}

// missingCommand says whether a host's start error is a command missing
// from the job's image (which the runtime checks before it starts the
// container): the caller's mistake, not the platform's.
func missingCommand(msg string) bool {
	return strings.Contains(msg, "exec: ") && (strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "not found"))
}

// SignalJob implements JobRunner.
func (h *HostRunner) SignalJob(ctx context.Context, host *api.Host, jobID string, sig int) error {
	return h.client(host).SignalJob(ctx, jobID, strconv.Itoa(sig))
}

// StopJob implements JobRunner.
func (h *HostRunner) StopJob(ctx context.Context, host *api.Host, jobID string) error {
	_, err := h.client(host).StopJob(ctx, jobID)
	return err
}

// Attach implements JobRunner. The host agent can only attach to a job it
// knows, and the controller attaches before it adds the job, so the
// session is opened on first use (after AddJob). Output is not lost: the
// session replays the job's log, and stdin/TTY jobs wait for their first
// attach before they start.
func (h *HostRunner) Attach(ctx context.Context, host *api.Host, req AttachRequest) (io.ReadWriteCloser, error) {
	return &lazyAttach{ctx: ctx, c: h.client(host), req: &api.AttachRequest{
		JobID: req.JobID, Stdin: req.Stdin || req.TTY, Logs: true,
		Height: uint16(req.Height), Width: uint16(req.Width),
	}}, nil
}

type lazyAttach struct {
	ctx  context.Context
	c    *hostclient.Client
	req  *api.AttachRequest
	once sync.Once
	rwc  io.ReadWriteCloser
	err  error
}

func (l *lazyAttach) open() error {
	l.once.Do(func() {
		a, err := l.c.Attach(l.ctx, l.req)
		if err != nil {
			l.err = fmt.Errorf("attach to job %s: %w", l.req.JobID, err)
			return
		}
		l.rwc = a.Raw()
	})
	return l.err
}

func (l *lazyAttach) Read(p []byte) (int, error) {
	if err := l.open(); err != nil {
		return 0, err
	}
	return l.rwc.Read(p)
}

func (l *lazyAttach) Write(p []byte) (int, error) {
	if err := l.open(); err != nil {
		return 0, err
	}
	return l.rwc.Write(p)
}

func (l *lazyAttach) Close() error {
	l.once.Do(func() { l.err = errors.New("attach session closed") })
	if l.rwc != nil {
		return l.rwc.Close()
	}
	return nil
}

// ListVolumes implements VolumeRunner.
func (h *HostRunner) ListVolumes(ctx context.Context) ([]*api.Volume, error) {
	if h.Cluster == nil {
		return nil, errors.New("this controller has no view of the hosts")
	}
	hosts, err := h.Cluster.ListHosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := []*api.Volume{}
	for _, host := range hosts {
		vs, err := h.client(host).ListVolumes(ctx)
		if err != nil {
			continue // a host that does not answer lists nothing
		}
		for _, v := range vs {
			v.HostID = host.ID
			out = append(out, v)
		}
	}
	return out, nil
}

// DeleteVolume implements VolumeRunner.
func (h *HostRunner) DeleteVolume(ctx context.Context, hostID, id string) error {
	if h.Cluster == nil {
		return errors.New("this controller has no view of the hosts")
	}
	hosts, err := h.Cluster.ListHosts(ctx)
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	for _, host := range hosts {
		if host.ID == hostID {
			return h.client(host).DeleteVolume(ctx, id)
		}
	}
	return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("host %s of volume %s is not up", hostID, id)}
}
