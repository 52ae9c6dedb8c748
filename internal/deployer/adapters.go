package deployer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
)

// ControllerClient is the Controller of a real controller, over
// client/controllerclient. Deployments and jobs are followed through the
// controller's event stream (object types deployment and job), after a
// listing of the current ones.
type ControllerClient struct {
	C *controllerclient.Client
}

// follow opens an event stream and, once it is open (so nothing
// committed afterwards is missed), calls list, then fn for each event.
func (c *ControllerClient) follow(ctx context.Context, o controllerclient.EventOptions, list func() error, fn func(*api.Event) error) error {
	s, err := c.C.StreamEvents(ctx, o)
	if err != nil {
		return fmt.Errorf("follow %v events: %w", o.ObjectTypes, err)
	}
	defer s.Close()
	if err := list(); err != nil {
		return err
	}
	for {
		e, err := s.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%v event stream ended", o.ObjectTypes)
			}
			return fmt.Errorf("follow %v events: %w", o.ObjectTypes, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

// StreamDeployments reports deployments to run: those running (left by a
// deployer that stopped) or pending when the stream opens, then each one
// created.
func (c *ControllerClient) StreamDeployments(ctx context.Context, fn func(*api.Deployment)) error {
	o := controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeDeployment}}
	return c.follow(ctx, o, func() error {
		for _, status := range []string{api.DeploymentRunning, api.DeploymentPending} {
			ds, err := c.C.ListDeployments(ctx, status)
			if err != nil {
				return fmt.Errorf("list %s deployments: %w", status, err)
			}
			// Oldest first: an app's deployments run in order.
			for _, d := range slices.Backward(ds) {
				fn(d)
			}
		}
		return nil
	}, func(e *api.Event) error {
		var de api.DeploymentEvent
		if err := json.Unmarshal(e.Data, &de); err != nil || de.Status != api.DeploymentPending {
			return nil
		}
		d, err := c.C.GetDeployment(ctx, e.ObjectID)
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get deployment %s: %w", e.ObjectID, err)
		}
		if d.Status == api.DeploymentPending {
			fn(d)
		}
		return nil
	})
}

// GetRelease returns a release.
func (c *ControllerClient) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	return c.C.GetRelease(ctx, id)
}

// GetFormation returns the formation of an app's release.
func (c *ControllerClient) GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error) {
	return c.C.GetFormation(ctx, appID, releaseID)
}

// PutFormation creates or replaces a formation.
func (c *ControllerClient) PutFormation(ctx context.Context, f *api.Formation) error {
	return c.C.PutFormation(ctx, f)
}

// StreamJobs reports the app's jobs as recorded, then every change.
func (c *ControllerClient) StreamJobs(ctx context.Context, appID string, fn func(*api.Job)) error {
	o := controllerclient.EventOptions{AppID: appID, ObjectTypes: []string{api.EventTypeJob}}
	return c.follow(ctx, o, func() error {
		jobs, err := c.C.JobList(ctx, appID)
		if err != nil {
			return fmt.Errorf("list jobs of app %s: %w", appID, err)
		}
		for _, j := range jobs {
			fn(j)
		}
		return nil
	}, func(e *api.Event) error {
		j := &api.Job{}
		if err := json.Unmarshal(e.Data, j); err != nil {
			return fmt.Errorf("decode job event %d: %w", e.ID, err)
		}
		fn(j)
		return nil
	})
}

// ListJobs returns the app's jobs.
func (c *ControllerClient) ListJobs(ctx context.Context, appID string) ([]*api.Job, error) {
	return c.C.JobList(ctx, appID)
}

// RunJob starts a one-off job of the app.
func (c *ControllerClient) RunJob(ctx context.Context, appID string, j *api.NewJob) (*api.Job, error) {
	return c.C.RunJob(ctx, appID, j)
}

// DeleteJob stops a job of the app.
func (c *ControllerClient) DeleteJob(ctx context.Context, appID, jobID string) error {
	return c.C.DeleteJob(ctx, appID, jobID)
}

// UpdateDeployment records a deployment's status.
func (c *ControllerClient) UpdateDeployment(ctx context.Context, d *api.Deployment) error {
	_, err := c.C.UpdateDeployment(ctx, d.ID, d.Status, "")
	return err
}

// AddDeploymentEvent records a step of a deployment.
func (c *ControllerClient) AddDeploymentEvent(ctx context.Context, e *api.DeploymentEvent) error {
	return c.C.AddDeploymentEvent(ctx, e.DeploymentID, e)
}

// SetAppRelease makes a release the app's current one.
func (c *ControllerClient) SetAppRelease(ctx context.Context, appID, releaseID string) error {
	return c.C.SetAppRelease(ctx, appID, releaseID)
}

// InstanceMetaJobID is the discoverd instance meta key that carries the
// host job id of the job that registered the instance (host agents set
// it).
const InstanceMetaJobID = "FLYNN_JOB_ID"

// DiscoverdWaiter is the Discoverd of a real discoverd: it watches a
// service for an instance whose meta FLYNN_JOB_ID is the job.
type DiscoverdWaiter struct {
	C *discoverdclient.Client
}

// WaitInstance returns once the job's instance is registered in service,
// or with ctx's error. A watch that cannot be opened (discoverd restarting,
// the service not there until its first registration) or that breaks is
// opened again: the caller counts on this returning only once the job
// serves.
func (w *DiscoverdWaiter) WaitInstance(ctx context.Context, service, jobID string) error {
	for {
		err := w.watchInstance(ctx, service, jobID)
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-time.After(waitInstanceRetry):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitInstanceRetry is the wait before WaitInstance watches again.
const waitInstanceRetry = 500 * time.Millisecond

// watchInstance watches service until the job's instance is registered,
// the watch fails or ctx ends.
func (w *DiscoverdWaiter) watchInstance(ctx context.Context, service, jobID string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wt, err := w.C.Watch(ctx, service)
	if err != nil {
		return fmt.Errorf("watch service %s: %w", service, err)
	}
	defer wt.Close()
	for {
		for _, inst := range wt.Instances() {
			if inst.Meta[InstanceMetaJobID] == jobID {
				return nil
			}
		}
		select {
		case _, ok := <-wt.Events():
			if !ok {
				if err := wt.Err(); err != nil {
					return fmt.Errorf("watch service %s: %w", service, err)
				}
				return fmt.Errorf("watch service %s ended", service)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var (
	_ Controller = (*ControllerClient)(nil)
	_ JobLister  = (*ControllerClient)(nil)
	_ Discoverd  = (*DiscoverdWaiter)(nil)
)
