// Package controllerclient is the Go client of the Flynn controller API:
// apps, artifacts, releases, formations, scale requests, jobs,
// deployments, routes, providers and resources, SSH keys, events and
// logs. Errors come back as api errors, so errors.Is(err, api.ErrNotFound)
// works.
package controllerclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// Client talks to one controller.
type Client struct {
	c *httpclient.Client
}

// New returns a client of the controller at baseURL using the cluster key.
func New(baseURL, key string) *Client {
	return &Client{c: &httpclient.Client{URL: baseURL, Key: key}}
}

// NewWithHTTP is New with a specific http.Client (e.g. with a pinned TLS
// config).
func NewWithHTTP(baseURL, key string, hc *http.Client) *Client {
	return &Client{c: &httpclient.Client{URL: baseURL, Key: key, HTTP: hc}}
}

func p(format string, args ...any) string {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = url.PathEscape(s)
		}
	}
	return fmt.Sprintf(format, args...)
}

// Ping checks that the controller is up.
func (c *Client) Ping(ctx context.Context) error { return c.c.Do(ctx, "GET", "/ping", nil, nil) }

// CACert returns the cluster CA certificate in PEM.
func (c *Client) CACert(ctx context.Context) ([]byte, error) {
	var sb strings.Builder
	if err := c.c.Do(ctx, "GET", "/ca-cert", nil, &sb); err != nil {
		return nil, err
	}
	return []byte(sb.String()), nil
}

// CreateApp creates an app; an empty name gets a generated one. The
// created app (with its id and name) is stored back into app.
func (c *Client) CreateApp(ctx context.Context, app *api.App) error {
	return c.c.Do(ctx, "POST", "/apps", app, app)
}

// GetApp returns an app by id or name.
func (c *Client) GetApp(ctx context.Context, idOrName string) (*api.App, error) {
	var app api.App
	return &app, c.c.Do(ctx, "GET", p("/apps/%s", idOrName), nil, &app)
}

// ListApps returns all apps.
func (c *Client) ListApps(ctx context.Context) ([]*api.App, error) {
	var out []*api.App
	return out, c.c.Do(ctx, "GET", "/apps", nil, &out)
}

// UpdateApp updates an app's meta, strategy and deploy_timeout (fields
// left empty are unchanged) and stores the result into app.
func (c *Client) UpdateApp(ctx context.Context, app *api.App) error {
	body := map[string]any{}
	if app.Meta != nil {
		body["meta"] = app.Meta
	}
	if app.Strategy != "" {
		body["strategy"] = app.Strategy
	}
	if app.DeployTimeout != 0 {
		body["deploy_timeout"] = app.DeployTimeout
	}
	id := app.ID
	if id == "" {
		id = app.Name
	}
	return c.c.Do(ctx, "POST", p("/apps/%s", id), body, app)
}

// UpdateAppMeta replaces an app's meta.
func (c *Client) UpdateAppMeta(ctx context.Context, appID string, meta map[string]string) (*api.App, error) {
	var app api.App
	return &app, c.c.Do(ctx, "POST", p("/apps/%s/meta", appID), map[string]any{"meta": meta}, &app)
}

// DeleteApp deletes an app with its formations, routes and releases and
// returns what was removed.
func (c *Client) DeleteApp(ctx context.Context, appID string) (*api.AppDeletion, error) {
	var out api.AppDeletion
	return &out, c.c.Do(ctx, "DELETE", p("/apps/%s", appID), nil, &out)
}

// CreateArtifact creates an artifact and stores the result into a.
func (c *Client) CreateArtifact(ctx context.Context, a *api.Artifact) error {
	return c.c.Do(ctx, "POST", "/artifacts", a, a)
}

// GetArtifact returns an artifact.
func (c *Client) GetArtifact(ctx context.Context, id string) (*api.Artifact, error) {
	var a api.Artifact
	return &a, c.c.Do(ctx, "GET", p("/artifacts/%s", id), nil, &a)
}

// ListArtifacts returns all artifacts.
func (c *Client) ListArtifacts(ctx context.Context) ([]*api.Artifact, error) {
	var out []*api.Artifact
	return out, c.c.Do(ctx, "GET", "/artifacts", nil, &out)
}

// CreateRelease creates a release and stores the result into r.
func (c *Client) CreateRelease(ctx context.Context, r *api.Release) error {
	return c.c.Do(ctx, "POST", "/releases", r, r)
}

// GetRelease returns a release.
func (c *Client) GetRelease(ctx context.Context, id string) (*api.Release, error) {
	var r api.Release
	return &r, c.c.Do(ctx, "GET", p("/releases/%s", id), nil, &r)
}

// ListReleases returns all releases.
func (c *Client) ListReleases(ctx context.Context) ([]*api.Release, error) {
	var out []*api.Release
	return out, c.c.Do(ctx, "GET", "/releases", nil, &out)
}

// AppReleaseList returns an app's releases.
func (c *Client) AppReleaseList(ctx context.Context, appID string) ([]*api.Release, error) {
	var out []*api.Release
	return out, c.c.Do(ctx, "GET", p("/apps/%s/releases", appID), nil, &out)
}

// SetAppRelease makes a release the app's current one (without deploying).
func (c *Client) SetAppRelease(ctx context.Context, appID, releaseID string) error {
	return c.c.Do(ctx, "PUT", p("/apps/%s/release", appID), map[string]string{"id": releaseID}, nil)
}

// GetAppRelease returns the app's current release.
func (c *Client) GetAppRelease(ctx context.Context, appID string) (*api.Release, error) {
	var r api.Release
	return &r, c.c.Do(ctx, "GET", p("/apps/%s/release", appID), nil, &r)
}

// DeleteRelease deletes a release of an app that is not its current one
// (and the layer blobs no other release uses) and returns what was
// removed.
func (c *Client) DeleteRelease(ctx context.Context, appID, releaseID string) (*api.ReleaseDeletion, error) {
	var out api.ReleaseDeletion
	return &out, c.c.Do(ctx, "DELETE", p("/apps/%s/releases/%s", appID, releaseID), nil, &out)
}

// PutFormation creates or replaces the formation of (f.AppID,
// f.ReleaseID) and stores the result into f.
func (c *Client) PutFormation(ctx context.Context, f *api.Formation) error {
	return c.c.Do(ctx, "PUT", p("/apps/%s/formations/%s", f.AppID, f.ReleaseID), f, f)
}

// GetFormation returns the formation of (app, release).
func (c *Client) GetFormation(ctx context.Context, appID, releaseID string) (*api.Formation, error) {
	var f api.Formation
	return &f, c.c.Do(ctx, "GET", p("/apps/%s/formations/%s", appID, releaseID), nil, &f)
}

// GetExpandedFormation returns the formation of (app, release) with its
// app, release and artifacts.
func (c *Client) GetExpandedFormation(ctx context.Context, appID, releaseID string) (*api.ExpandedFormation, error) {
	var f api.ExpandedFormation
	return &f, c.c.Do(ctx, "GET", p("/apps/%s/formations/%s", appID, releaseID)+"?expand=true", nil, &f)
}

// DeleteFormation deletes the formation of (app, release).
func (c *Client) DeleteFormation(ctx context.Context, appID, releaseID string) error {
	return c.c.Do(ctx, "DELETE", p("/apps/%s/formations/%s", appID, releaseID), nil, nil)
}

// FormationList returns an app's formations.
func (c *Client) FormationList(ctx context.Context, appID string) ([]*api.Formation, error) {
	var out []*api.Formation
	return out, c.c.Do(ctx, "GET", p("/apps/%s/formations", appID), nil, &out)
}

// FormationListActive returns every formation that runs a process, expanded.
func (c *Client) FormationListActive(ctx context.Context) ([]*api.ExpandedFormation, error) {
	var out []*api.ExpandedFormation
	return out, c.c.Do(ctx, "GET", "/formations?active=true", nil, &out)
}

// ScaleAppRelease creates a scale request that sets the counts (and tags,
// when not nil) of the process types it names in the formation of (app,
// release); other types keep theirs. The deployer completes the request
// once the formation runs and serves.
func (c *Client) ScaleAppRelease(ctx context.Context, appID, releaseID string, processes map[string]int, tags map[string]map[string]string) (*api.ScaleRequest, error) {
	req := &api.ScaleRequest{State: api.ScaleRequestPending, NewProcesses: &processes}
	if tags != nil {
		req.NewTags = &tags
	}
	var out api.ScaleRequest
	return &out, c.c.Do(ctx, "PUT", p("/apps/%s/scale/%s", appID, releaseID), req, &out)
}

// UpdateScaleRequest marks a scale request complete or cancelled.
func (c *Client) UpdateScaleRequest(ctx context.Context, appID, releaseID, id, state string) (*api.ScaleRequest, error) {
	var out api.ScaleRequest
	return &out, c.c.Do(ctx, "PUT", p("/apps/%s/scale/%s", appID, releaseID), &api.ScaleRequest{ID: id, State: state}, &out)
}

// FailScaleRequest ends a pending scale request as failed, saying why.
func (c *Client) FailScaleRequest(ctx context.Context, appID, releaseID, id, reason string) (*api.ScaleRequest, error) {
	var out api.ScaleRequest
	return &out, c.c.Do(ctx, "PUT", p("/apps/%s/scale/%s", appID, releaseID), &api.ScaleRequest{ID: id, State: api.ScaleRequestFailed, Error: reason}, &out)
}

// ScaleRequestList returns an app's scale requests.
func (c *Client) ScaleRequestList(ctx context.Context, appID string) ([]*api.ScaleRequest, error) {
	var out []*api.ScaleRequest
	return out, c.c.Do(ctx, "GET", p("/apps/%s/scale", appID), nil, &out)
}

// RunJob starts a one-off job of an app on some host.
func (c *Client) RunJob(ctx context.Context, appID string, job *api.NewJob) (*api.Job, error) {
	var out api.Job
	return &out, c.c.Do(ctx, "POST", p("/apps/%s/jobs", appID), job, &out)
}

// RunJobAttached starts a one-off job and returns its stdio stream, which
// speaks Flynn's attach protocol (api.ReadAttachFrame and the
// api.WriteAttach functions), and the job's ID. The caller closes the
// stream; the job runs on if it is closed first (DeleteJob stops it).
func (c *Client) RunJobAttached(ctx context.Context, appID string, job *api.NewJob) (io.ReadWriteCloser, string, error) {
	req, err := c.c.NewRequest(ctx, "POST", p("/apps/%s/jobs", appID), job)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.JobAttachUpgrade)
	hc := c.c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, "", err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		defer res.Body.Close()
		if res.StatusCode/100 == 2 {
			return nil, "", fmt.Errorf("run attached job: got %s instead of an upgrade", res.Status)
		}
		return nil, "", httpclient.ErrorFromResponse(res)
	}
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		return nil, "", fmt.Errorf("run attached job: upgraded body is not writable")
	}
	return rwc, res.Header.Get("Flynn-Job-Id"), nil
}

// JobList returns an app's jobs.
func (c *Client) JobList(ctx context.Context, appID string) ([]*api.Job, error) {
	var out []*api.Job
	return out, c.c.Do(ctx, "GET", p("/apps/%s/jobs", appID), nil, &out)
}

// GetJob returns a job of an app.
func (c *Client) GetJob(ctx context.Context, appID, jobID string) (*api.Job, error) {
	var out api.Job
	return &out, c.c.Do(ctx, "GET", p("/apps/%s/jobs/%s", appID, jobID), nil, &out)
}

// PutJob records a job's state (the scheduler reports jobs this way).
func (c *Client) PutJob(ctx context.Context, job *api.Job) error {
	id := job.ID
	if id == "" {
		id = job.UUID // not placed yet
	}
	return c.c.Do(ctx, "PUT", p("/apps/%s/jobs/%s", job.AppID, id), job, job)
}

// DeleteJob stops a job.
func (c *Client) DeleteJob(ctx context.Context, appID, jobID string) error {
	return c.c.Do(ctx, "DELETE", p("/apps/%s/jobs/%s", appID, jobID), nil, nil)
}

// ActiveJobs returns every job that is not down.
func (c *Client) ActiveJobs(ctx context.Context) ([]*api.Job, error) {
	var out []*api.Job
	return out, c.c.Do(ctx, "GET", "/active-jobs", nil, &out)
}

// CreateDeployment deploys a release to an app. A second deployment while
// one runs is an api.ErrConflict.
func (c *Client) CreateDeployment(ctx context.Context, appID, releaseID string) (*api.Deployment, error) {
	var out api.Deployment
	return &out, c.c.Do(ctx, "POST", p("/apps/%s/deploy", appID), map[string]string{"id": releaseID}, &out)
}

// CreateDeploymentAfterReleasePhase deploys a release whose release
// command (api.ReleasePhaseJob) the caller has run, as job releaseJob:
// the deployer does not run it again. An empty releaseJob is
// CreateDeployment.
func (c *Client) CreateDeploymentAfterReleasePhase(ctx context.Context, appID, releaseID, releaseJob string) (*api.Deployment, error) {
	if releaseJob == "" {
		return c.CreateDeployment(ctx, appID, releaseID)
	}
	var out api.Deployment
	body := map[string]string{"id": releaseID, "release_phase_job": releaseJob}
	return &out, c.c.Do(ctx, "POST", p("/apps/%s/deploy", appID), body, &out)
}

// GetDeployment returns a deployment.
func (c *Client) GetDeployment(ctx context.Context, id string) (*api.Deployment, error) {
	var out api.Deployment
	return &out, c.c.Do(ctx, "GET", p("/deployments/%s", id), nil, &out)
}

// VolumeList returns the hosts' persistent volumes, an app's when appID
// is not empty.
func (c *Client) VolumeList(ctx context.Context, appID string) ([]*api.Volume, error) {
	var out []*api.Volume
	path := "/volumes"
	if appID != "" {
		path = p("/apps/%s/volumes", appID)
	}
	return out, c.c.Do(ctx, "GET", path, nil, &out)
}

// GetVolume returns one volume.
func (c *Client) GetVolume(ctx context.Context, id string) (*api.Volume, error) {
	var out api.Volume
	return &out, c.c.Do(ctx, "GET", p("/volumes/%s", id), nil, &out)
}

// DeleteVolume deletes a volume with its data; one a job uses is
// api.ErrConflict.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	return c.c.Do(ctx, "DELETE", p("/volumes/%s", id), nil, nil)
}

// DeploymentList returns an app's deployments.
func (c *Client) DeploymentList(ctx context.Context, appID string) ([]*api.Deployment, error) {
	var out []*api.Deployment
	return out, c.c.Do(ctx, "GET", p("/apps/%s/deployments", appID), nil, &out)
}

// ListDeployments returns deployments with the given status (all when
// empty), e.g. api.DeploymentPending for a deployer.
func (c *Client) ListDeployments(ctx context.Context, status string) ([]*api.Deployment, error) {
	var out []*api.Deployment
	path := "/deployments"
	if status != "" {
		path += "?status=" + url.QueryEscape(status)
	}
	return out, c.c.Do(ctx, "GET", path, nil, &out)
}

// UpdateDeployment moves a deployment to running, complete or failed
// (errMsg says why it failed). Completing it makes its release current.
func (c *Client) UpdateDeployment(ctx context.Context, id, status, errMsg string) (*api.Deployment, error) {
	var out api.Deployment
	body := map[string]string{"status": status}
	if errMsg != "" {
		body["error"] = errMsg
	}
	return &out, c.c.Do(ctx, "PUT", p("/deployments/%s", id), body, &out)
}

// AddDeploymentEvent records a step of a deployment.
func (c *Client) AddDeploymentEvent(ctx context.Context, id string, ev *api.DeploymentEvent) error {
	return c.c.Do(ctx, "POST", p("/deployments/%s/events", id), ev, nil)
}

// CreateRoute adds a route to an app and stores the result into r.
func (c *Client) CreateRoute(ctx context.Context, appID string, r *api.Route) error {
	return c.c.Do(ctx, "POST", p("/apps/%s/routes", appID), r, r)
}

// GetRoute returns a route of an app.
func (c *Client) GetRoute(ctx context.Context, appID, typ, id string) (*api.Route, error) {
	var out api.Route
	return &out, c.c.Do(ctx, "GET", p("/apps/%s/routes/%s/%s", appID, typ, id), nil, &out)
}

// UpdateRoute replaces a route and stores the result into r.
func (c *Client) UpdateRoute(ctx context.Context, appID string, r *api.Route) error {
	return c.c.Do(ctx, "PUT", p("/apps/%s/routes/%s/%s", appID, r.Type, r.ID), r, r)
}

// DeleteRoute deletes a route of an app.
func (c *Client) DeleteRoute(ctx context.Context, appID, typ, id string) error {
	return c.c.Do(ctx, "DELETE", p("/apps/%s/routes/%s/%s", appID, typ, id), nil, nil)
}

// RouteList returns an app's routes.
func (c *Client) RouteList(ctx context.Context, appID string) ([]*api.Route, error) {
	var out []*api.Route
	return out, c.c.Do(ctx, "GET", p("/apps/%s/routes", appID), nil, &out)
}

// ListAllRoutes returns every route.
func (c *Client) ListAllRoutes(ctx context.Context) ([]*api.Route, error) {
	var out []*api.Route
	return out, c.c.Do(ctx, "GET", "/routes", nil, &out)
}

// CreateProvider registers a resource provider and stores the result into pr.
func (c *Client) CreateProvider(ctx context.Context, pr *api.Provider) error {
	return c.c.Do(ctx, "POST", "/providers", pr, pr)
}

// GetProvider returns a provider by id or name.
func (c *Client) GetProvider(ctx context.Context, idOrName string) (*api.Provider, error) {
	var out api.Provider
	return &out, c.c.Do(ctx, "GET", p("/providers/%s", idOrName), nil, &out)
}

// ProviderList returns all providers.
func (c *Client) ProviderList(ctx context.Context) ([]*api.Provider, error) {
	var out []*api.Provider
	return out, c.c.Do(ctx, "GET", "/providers", nil, &out)
}

// ProvisionResource asks a provider for a new resource; each of apps gets
// a new release with the resource's env.
func (c *Client) ProvisionResource(ctx context.Context, providerID string, apps []string, config json.RawMessage) (*api.Resource, error) {
	var out api.Resource
	body := map[string]any{"apps": apps}
	if len(config) > 0 {
		body["config"] = config
	}
	return &out, c.c.Do(ctx, "POST", p("/providers/%s/resources", providerID), body, &out)
}

// PutResource creates or replaces a resource record (import/restore).
func (c *Client) PutResource(ctx context.Context, r *api.Resource) error {
	return c.c.Do(ctx, "PUT", p("/providers/%s/resources/%s", r.ProviderID, r.ID), r, r)
}

// GetResource returns a resource of a provider.
func (c *Client) GetResource(ctx context.Context, providerID, id string) (*api.Resource, error) {
	var out api.Resource
	return &out, c.c.Do(ctx, "GET", p("/providers/%s/resources/%s", providerID, id), nil, &out)
}

// DeleteResource deprovisions a resource.
func (c *Client) DeleteResource(ctx context.Context, providerID, id string) error {
	return c.c.Do(ctx, "DELETE", p("/providers/%s/resources/%s", providerID, id), nil, nil)
}

// ResourceListProvider returns a provider's resources.
func (c *Client) ResourceListProvider(ctx context.Context, providerID string) ([]*api.Resource, error) {
	var out []*api.Resource
	return out, c.c.Do(ctx, "GET", p("/providers/%s/resources", providerID), nil, &out)
}

// ResourceList returns every resource.
func (c *Client) ResourceList(ctx context.Context) ([]*api.Resource, error) {
	var out []*api.Resource
	return out, c.c.Do(ctx, "GET", "/resources", nil, &out)
}

// AppResourceList returns an app's resources.
func (c *Client) AppResourceList(ctx context.Context, appID string) ([]*api.Resource, error) {
	var out []*api.Resource
	return out, c.c.Do(ctx, "GET", p("/apps/%s/resources", appID), nil, &out)
}

// AddResourceApp links a resource to an app.
func (c *Client) AddResourceApp(ctx context.Context, providerID, resourceID, appID string) (*api.Resource, error) {
	var out api.Resource
	return &out, c.c.Do(ctx, "PUT", p("/providers/%s/resources/%s/apps/%s", providerID, resourceID, appID), nil, &out)
}

// DeleteResourceApp unlinks a resource from an app.
func (c *Client) DeleteResourceApp(ctx context.Context, providerID, resourceID, appID string) (*api.Resource, error) {
	var out api.Resource
	return &out, c.c.Do(ctx, "DELETE", p("/providers/%s/resources/%s/apps/%s", providerID, resourceID, appID), nil, &out)
}

// CreateKey adds an SSH public key (authorized_keys format).
func (c *Client) CreateKey(ctx context.Context, pubKey string) (*api.Key, error) {
	var out api.Key
	return &out, c.c.Do(ctx, "POST", "/keys", &api.Key{Key: pubKey}, &out)
}

// KeyList returns the SSH keys.
func (c *Client) KeyList(ctx context.Context) ([]*api.Key, error) {
	var out []*api.Key
	return out, c.c.Do(ctx, "GET", "/keys", nil, &out)
}

// DeleteKey removes an SSH key.
func (c *Client) DeleteKey(ctx context.Context, id string) error {
	return c.c.Do(ctx, "DELETE", p("/keys/%s", id), nil, nil)
}

// EventOptions filter events.
type EventOptions struct {
	AppID       string
	ObjectTypes []string
	ObjectID    string
	// SinceID resumes after this event id.
	SinceID int64
	// BeforeID and Count page backwards (ListEvents only).
	BeforeID int64
	Count    int
	// Past replays all past events before following (StreamEvents only).
	Past bool
}

func (o EventOptions) query() string {
	q := url.Values{}
	if o.AppID != "" {
		q.Set("app_id", o.AppID)
	}
	if len(o.ObjectTypes) > 0 {
		q.Set("object_types", strings.Join(o.ObjectTypes, ","))
	}
	if o.ObjectID != "" {
		q.Set("object_id", o.ObjectID)
	}
	if o.SinceID > 0 {
		q.Set("since_id", strconv.FormatInt(o.SinceID, 10))
	}
	if o.BeforeID > 0 {
		q.Set("before_id", strconv.FormatInt(o.BeforeID, 10))
	}
	if o.Count > 0 {
		q.Set("count", strconv.Itoa(o.Count))
	}
	if o.Past {
		q.Set("past", "true")
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// ListEvents returns past events, oldest first.
func (c *Client) ListEvents(ctx context.Context, o EventOptions) ([]*api.Event, error) {
	var out []*api.Event
	return out, c.c.Do(ctx, "GET", "/events"+o.query(), nil, &out)
}

// GetEvent returns one event.
func (c *Client) GetEvent(ctx context.Context, id int64) (*api.Event, error) {
	var out api.Event
	return &out, c.c.Do(ctx, "GET", "/events/"+strconv.FormatInt(id, 10), nil, &out)
}

// EventStream is a stream of controller events. When the connection ends
// early (the controller instance serving it stopped, a network blip) it
// reconnects, through the same URL, from the last event it returned, so
// its reader misses nothing and sees nothing twice.
type EventStream struct {
	c      *Client
	ctx    context.Context
	opts   EventOptions
	mu     sync.Mutex
	er     *httpclient.EventReader
	lastID int64
	closed bool
}

// reconnectFor is how long an EventStream keeps trying to reconnect.
const reconnectFor = 30 * time.Second

// Next returns the next event; io.EOF when the stream ended and could not
// be resumed.
func (s *EventStream) Next() (*api.Event, error) {
	var deadline time.Time
	for {
		s.mu.Lock()
		er := s.er
		s.mu.Unlock()
		ev, err := er.Next()
		if err == nil {
			e := &api.Event{}
			if err := json.Unmarshal(ev.Data, e); err != nil {
				return nil, fmt.Errorf("decode event: %w", err)
			}
			if e.ID > 0 {
				s.mu.Lock()
				s.lastID = e.ID
				s.mu.Unlock()
			}
			return e, nil
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(reconnectFor)
		}
		if rerr := s.reconnect(deadline); rerr != nil {
			return nil, err
		}
	}
}

// reconnect reopens the stream from the last event, retrying until
// deadline; it fails at once when the stream was closed or its context
// ended, or when the stream cannot resume (no position known).
func (s *EventStream) reconnect(deadline time.Time) error {
	for {
		s.mu.Lock()
		closed, since := s.closed, s.lastID
		s.mu.Unlock()
		if closed || s.ctx.Err() != nil || since == 0 {
			return errors.New("cannot resume")
		}
		o := s.opts
		o.SinceID, o.Past = since, false
		er, err := s.c.c.Stream(s.ctx, "/events"+o.query())
		if err == nil {
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				er.Close()
				return errors.New("closed")
			}
			s.er.Close()
			s.er = er
			s.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Close ends the stream.
func (s *EventStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.er.Close()
}

// StreamIdleTimeout ends an event or formation stream that sent nothing
// for this long (httpclient.ErrStreamIdle): the controller sends a
// keep-alive every 25 seconds, so its instance or the way to it is gone
// (a host cut off), and the follower reconnects to a live one.
const StreamIdleTimeout = 75 * time.Second

// StreamEvents follows events matching o. With o.SinceID it first
// replays every later event, so a follower that reconnects with the last
// id it saw misses nothing.
func (c *Client) StreamEvents(ctx context.Context, o EventOptions) (*EventStream, error) {
	er, err := c.c.Stream(ctx, "/events"+o.query())
	if err != nil {
		return nil, err
	}
	er.WithIdleTimeout(StreamIdleTimeout)
	s := &EventStream{c: c, ctx: ctx, opts: o, er: er, lastID: o.SinceID}
	if v, err := strconv.ParseInt(er.Header.Get(api.EventSinceHeader), 10, 64); err == nil && v > s.lastID {
		s.lastID = v
	}
	return s, nil
}

// FormationStream is a stream of expanded formations.
type FormationStream struct {
	er *httpclient.EventReader
}

// Next returns the next formation; io.EOF when the stream ended. An
// ExpandedFormation whose App is nil marks the end of the initial list.
func (s *FormationStream) Next() (*api.ExpandedFormation, error) {
	ev, err := s.er.Next()
	if err != nil {
		return nil, err
	}
	f := &api.ExpandedFormation{}
	if err := json.Unmarshal(ev.Data, f); err != nil {
		return nil, fmt.Errorf("decode formation: %w", err)
	}
	return f, nil
}

// Close ends the stream.
func (s *FormationStream) Close() error { return s.er.Close() }

// StreamFormations follows formations: first every formation updated at
// or after since (zero: all), then an empty one (App nil) meaning "up to
// date", then each change; deleted ones have Deleted set.
func (c *Client) StreamFormations(ctx context.Context, since time.Time) (*FormationStream, error) {
	path := "/formations"
	if !since.IsZero() {
		path += "?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339Nano))
	}
	er, err := c.c.Stream(ctx, path)
	if err != nil {
		return nil, err
	}
	return &FormationStream{er: er.WithIdleTimeout(StreamIdleTimeout)}, nil
}

// LogOptions select an app's log lines.
type LogOptions struct {
	Follow      bool
	Lines       int
	JobID       string
	ProcessType string
	StreamTypes []string
}

// GetAppLog returns an app's log from the log aggregator: newline-
// delimited JSON api.LogMessages (logaggclient.NewPlainReader reads them).
// The caller closes it.
func (c *Client) GetAppLog(ctx context.Context, appID string, o LogOptions) (io.ReadCloser, error) {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "true")
	}
	if o.Lines > 0 {
		q.Set("lines", strconv.Itoa(o.Lines))
	}
	if o.JobID != "" {
		q.Set("job_id", o.JobID)
	}
	if o.ProcessType != "" {
		q.Set("process_type", o.ProcessType)
	}
	if len(o.StreamTypes) > 0 {
		q.Set("stream_types", strings.Join(o.StreamTypes, ","))
	}
	path := p("/apps/%s/log", appID)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := c.c.NewRequest(ctx, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Del("Accept")
	res, err := c.c.Send(req)
	if err != nil {
		return nil, err
	}
	return res.Body, nil
}

// PendingScaleRequests returns every app's pending scale requests.
func (c *Client) PendingScaleRequests(ctx context.Context) ([]*api.ScaleRequest, error) {
	var out []*api.ScaleRequest
	return out, c.c.Do(ctx, "GET", "/scale-requests?state=pending", nil, &out)
}

// Status returns the controller's health and version.
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var out api.StatusReply
	return &out.Data, c.c.Do(ctx, "GET", api.StatusPath, nil, &out)
}

// GetLayer opens the blob of a layer of a flynn artifact, and returns its
// size. The caller closes it.
func (c *Client) GetLayer(ctx context.Context, artifactID, layerID string) (io.ReadCloser, int64, error) {
	req, err := c.c.NewRequest(ctx, "GET", p("/artifacts/%s/layers/%s", artifactID, layerID), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Del("Accept")
	res, err := c.c.Send(req)
	if err != nil {
		return nil, 0, err
	}
	return res.Body, res.ContentLength, nil
}

// PutLayer stores a layer tar of size bytes whose sha256 (hex) is sum in
// the cluster's blobstore and returns the layer as an artifact lists it.
func (c *Client) PutLayer(ctx context.Context, sum string, r io.Reader, size int64) (*api.ImageLayer, error) {
	req, err := c.c.NewRequest(ctx, "PUT", p("/layers/%s", sum), r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.ContentLength = size
	res, err := c.c.Send(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var out api.ImageLayer
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("put layer %s: decode reply: %w", sum, err)
	}
	return &out, nil
}

// WaitAppDeployments waits while appID has a deployment pending or
// running (a push's, an env change's), so that a caller can build on what
// it deploys rather than be refused: waiting is called once for each
// deployment waited for. It gives up when one outlasts its deploy timeout
// (and, when its release has a release command, that command's
// api.ReleasePhaseTimeout) with 30 s to spare, or when ctx ends. It says
// whether it waited.
func (c *Client) WaitAppDeployments(ctx context.Context, appID string, waiting func(*api.Deployment)) (bool, error) {
	var said string
	var limit time.Duration
	var deadline time.Time
	for {
		deps, err := c.DeploymentList(ctx, appID)
		if err != nil {
			return said != "", fmt.Errorf("list the app's deployments: %w", err)
		}
		var cur *api.Deployment
		for _, d := range deps {
			if d.Status == api.DeploymentPending || d.Status == api.DeploymentRunning {
				cur = d
				break
			}
		}
		if cur == nil {
			return said != "", nil
		}
		if cur.ID != said {
			said = cur.ID
			limit = time.Duration(cur.DeployTimeout)*time.Second + 30*time.Second
			if rel, err := c.GetRelease(ctx, cur.NewReleaseID); err != nil || rel.Processes[api.ProcessTypeRelease] != nil {
				limit += api.ReleasePhaseTimeout
			}
			deadline = time.Now().Add(limit)
			if waiting != nil {
				waiting(cur)
			}
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("deployment %s (release %s) is still running after %s: see flynn deployment", cur.ID, cur.NewReleaseID, limit)
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
