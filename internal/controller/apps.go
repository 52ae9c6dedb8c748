package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net/http"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

var (
	nameAdjectives = []string{"amber", "brave", "calm", "dusty", "eager", "fuzzy", "gentle", "happy", "icy", "jolly", "keen", "lucky", "misty", "noble", "odd", "proud", "quiet", "rapid", "shiny", "tidy", "urban", "vivid", "witty", "young", "zesty"}
	nameNouns      = []string{"otter", "falcon", "maple", "river", "comet", "badger", "cedar", "dune", "ember", "fjord", "glade", "heron", "island", "jaguar", "koala", "lagoon", "meadow", "nebula", "orchid", "pebble", "quartz", "raven", "summit", "tundra", "willow"}
)

func pick(words []string) string {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(words))))
	return words[n.Int64()]
}

// generateName returns a random app name such as "brave-otter-4821".
func generateName() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(9000))
	return fmt.Sprintf("%s-%s-%d", pick(nameAdjectives), pick(nameNouns), 1000+n.Int64())
}

// decodeApp reads and validates an app creation request.
func decodeApp(r *http.Request) (*api.App, error) {
	app := &api.App{}
	if err := httpapi.DecodeJSON(r, app); err != nil {
		return nil, err
	}
	if app.ID != "" {
		if err := validateID("id", app.ID); err != nil {
			return nil, err
		}
	}
	if app.Name != "" {
		if err := validateAppName("name", app.Name); err != nil {
			return nil, err
		}
	}
	// A new app has no release: one given (Flynn's import sends the
	// exported app's) is ignored, as Flynn's controller did; set it with
	// PUT /apps/{app}/release or a deploy.
	app.ReleaseID = ""
	return app, validateApp(app)
}

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) error {
	app, err := decodeApp(r)
	if err != nil {
		return err
	}
	if err := checkSystemMeta(r, nil, app.Meta); err != nil {
		return err
	}
	if app.ID == "" {
		app.ID = ctrlstore.NewID()
	}
	if app.Strategy == "" {
		app.Strategy = api.StrategyAllAtOnce
	}
	if app.DeployTimeout == 0 {
		app.DeployTimeout = api.DefaultDeployTimeout
	}
	app.CreatedAt = now()
	app.UpdatedAt = app.CreatedAt
	generated := app.Name == ""
	for attempt := 0; ; attempt++ {
		if generated {
			app.Name = generateName()
		}
		var route *api.Route
		if s.cfg.ClusterDomain != "" && app.Meta[api.MetaSystemApp] != "true" {
			route = &api.Route{
				Type: api.RouteHTTP, ID: ctrlstore.NewID(), ParentRef: ctrlstore.ParentRef(app.ID),
				Service: app.Name + "-web", Domain: app.Name + "." + s.cfg.ClusterDomain,
				CreatedAt: app.CreatedAt, UpdatedAt: app.CreatedAt,
			}
		}
		err := s.store.CreateApp(r.Context(), app, route)
		if err == nil {
			return ok(w, app)
		}
		if !generated || attempt >= 10 || !errors.Is(err, api.ErrObjectExists) {
			return err
		}
	}
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	return ok(w, app)
}

// appUpdate is the body of POST /apps/{app}: only these fields change.
type appUpdate struct {
	Meta          map[string]string `json:"meta"`
	Strategy      *string           `json:"strategy"`
	DeployTimeout *int32            `json:"deploy_timeout"`
	// Flynn clients send the whole app; these fields are accepted and ignored.
	ID        string `json:"id"`
	Name      string `json:"name"`
	ReleaseID string `json:"release"`
	CreatedAt any    `json:"created_at"`
	UpdatedAt any    `json:"updated_at"`
}

func decodeAppUpdate(r *http.Request) (*appUpdate, error) {
	u := &appUpdate{}
	if err := httpapi.DecodeJSONStrict(r, u); err != nil {
		return nil, err
	}
	probe := &api.App{Meta: u.Meta}
	if u.Strategy != nil {
		probe.Strategy = *u.Strategy
		if probe.Strategy == "" {
			return nil, api.Validation("strategy", "strategy must not be empty")
		}
	}
	if u.DeployTimeout != nil {
		probe.DeployTimeout = *u.DeployTimeout
		if probe.DeployTimeout <= 0 {
			return nil, api.Validation("deploy_timeout", "deploy_timeout must be positive")
		}
	}
	return u, validateApp(probe)
}

func (s *Server) updateApp(w http.ResponseWriter, r *http.Request) error {
	u, err := decodeAppUpdate(r)
	if err != nil {
		return err
	}
	app, err := s.store.UpdateApp(r.Context(), r.PathValue("app"), func(a *api.App) error {
		if u.Meta != nil {
			if err := checkSystemMeta(r, a.Meta, u.Meta); err != nil {
				return err
			}
			a.Meta = u.Meta
		}
		if u.Strategy != nil {
			a.Strategy = *u.Strategy
		}
		if u.DeployTimeout != nil {
			a.DeployTimeout = *u.DeployTimeout
		}
		return nil
	})
	if err != nil {
		return err
	}
	return ok(w, app)
}

// deleteApp deletes an app and the layer blobs only its releases used,
// and replies with what it removed (also the app_deletion event's data).
func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	if isSystemApp(app) {
		return errSystemApp(app, "deleted")
	}
	rels, err := s.store.ListReleases(r.Context(), app.ID)
	if err != nil {
		return err
	}
	files, err := s.unusedLayerBlobs(r.Context(), rels)
	if err != nil {
		return err
	}
	_, del, err := s.store.DeleteApp(r.Context(), app.ID)
	if err != nil {
		return err
	}
	s.deleteBlobs(context.WithoutCancel(r.Context()), files)
	s.deleteBuildCacheVolumes(context.WithoutCancel(r.Context()), app.ID)
	return ok(w, del)
}

// deleteBuildCacheVolumes deletes the app's build cache volumes on the
// hosts that answer. One a build still uses, or one on a host that is
// down, stays (an operator deletes it with flynn volume delete).
func (s *Server) deleteBuildCacheVolumes(ctx context.Context, appID string) {
	vr, isVR := s.cfg.Runner.(VolumeRunner)
	if !isVR {
		return
	}
	vols, err := vr.ListVolumes(ctx)
	if err != nil {
		s.log.Warn("list volumes of a deleted app", "app", appID, "err", err)
		return
	}
	for _, v := range vols {
		if v.ID != api.BuildCacheVolumeID(appID) {
			continue
		}
		if err := vr.DeleteVolume(ctx, v.HostID, v.ID); err != nil && !errors.Is(err, api.ErrNotFound) {
			s.log.Warn("delete build cache volume of a deleted app", "app", appID, "host", v.HostID, "volume", v.ID, "err", err)
		}
	}
}

// idBody is {"id": "..."}, the body of PUT /apps/{app}/release and deploy.
type idBody struct {
	ID string `json:"id"`
}

func decodeIDBody(r *http.Request) (string, error) {
	var b idBody
	if err := httpapi.DecodeJSON(r, &b); err != nil {
		return "", err
	}
	if b.ID == "" {
		return "", api.Validation("id", "id is required")
	}
	return b.ID, validateID("id", b.ID)
}

func (s *Server) setAppRelease(w http.ResponseWriter, r *http.Request) error {
	id, err := decodeIDBody(r)
	if err != nil {
		return err
	}
	app, err := s.app(r)
	if err != nil {
		return err
	}
	if err := s.checkReleaseID(r, app, id); err != nil {
		return err
	}
	if _, err := s.store.SetAppRelease(r.Context(), app.ID, id); err != nil {
		if errors.Is(err, api.ErrNotFound) {
			return api.Validation("id", "release %q not found", id)
		}
		return err
	}
	rel, err := s.store.GetRelease(r.Context(), id)
	if err != nil {
		return err
	}
	return ok(w, rel)
}

func (s *Server) getAppRelease(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	if app.ReleaseID == "" {
		return api.NotFound("app %s has no release yet", app.Name)
	}
	rel, err := s.store.GetRelease(r.Context(), app.ReleaseID)
	if err != nil {
		return err
	}
	return ok(w, rel)
}

func (s *Server) listAppReleases(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	rels, err := s.store.ListReleases(r.Context(), app.ID)
	if err != nil {
		return err
	}
	return ok(w, rels)
}

// deleteRelease deletes a release that is not the app's current one, its
// formation (stopping its jobs) and the layer blobs no other release uses,
// and replies with an api.ReleaseDeletion (also the release_deletion
// event's data).
func (s *Server) deleteRelease(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	rel, err := s.store.GetRelease(r.Context(), r.PathValue("release"))
	if err != nil {
		return err
	}
	if rel.AppID != app.ID {
		return api.NotFound("release %q not found in app %s", rel.ID, app.Name)
	}
	files, err := s.unusedLayerBlobs(r.Context(), []*api.Release{rel})
	if err != nil {
		return err
	}
	if _, err := s.store.DeleteRelease(r.Context(), app, rel.ID, files); err != nil {
		return err
	}
	s.deleteBlobs(context.WithoutCancel(r.Context()), files)
	if files == nil {
		files = []string{}
	}
	return ok(w, &api.ReleaseDeletion{AppID: app.ID, ReleaseID: rel.ID, RemainingApps: []string{}, DeletedFiles: files})
}

func decodeArtifact(r *http.Request) (*api.Artifact, error) {
	a := &api.Artifact{}
	if err := httpapi.DecodeJSON(r, a); err != nil {
		return nil, err
	}
	return a, validateArtifact(a)
}

func (s *Server) createArtifact(w http.ResponseWriter, r *http.Request) error {
	a, err := decodeArtifact(r)
	if err != nil {
		return err
	}
	if a.ID == "" {
		a.ID = ctrlstore.NewID()
	}
	a.CreatedAt = now()
	if err := s.store.CreateArtifact(r.Context(), a); err != nil {
		return err
	}
	return ok(w, a)
}

func decodeRelease(r *http.Request) (*api.Release, error) {
	rel := &api.Release{}
	if err := httpapi.DecodeJSON(r, rel); err != nil {
		return nil, err
	}
	return rel, validateRelease(rel)
}

func (s *Server) createRelease(w http.ResponseWriter, r *http.Request) error {
	rel, err := decodeRelease(r)
	if err != nil {
		return err
	}
	var app *api.App
	if rel.AppID != "" {
		if app, err = s.store.GetApp(r.Context(), rel.AppID); err != nil {
			return api.Validation("app_id", "app %q not found", rel.AppID)
		}
		rel.AppID = app.ID
	}
	if rel.ID == "" {
		rel.ID = ctrlstore.NewID()
	}
	if err := s.checkRelease(r, app, rel, nil); err != nil {
		return err
	}
	rel.CreatedAt = now()
	if err := s.store.CreateRelease(r.Context(), rel); err != nil {
		return err
	}
	return ok(w, rel)
}

func decodeFormation(r *http.Request) (*api.Formation, error) {
	f := &api.Formation{}
	if err := httpapi.DecodeJSON(r, f); err != nil {
		return nil, err
	}
	if err := validateProcesses("processes", f.Processes); err != nil {
		return nil, err
	}
	return f, validateTags("tags", f.Tags)
}

// appRelease loads the {app} and the {release} of it.
func (s *Server) appRelease(r *http.Request) (*api.App, *api.Release, error) {
	app, err := s.app(r)
	if err != nil {
		return nil, nil, err
	}
	rel, err := s.store.GetRelease(r.Context(), r.PathValue("release"))
	if err != nil {
		return nil, nil, err
	}
	if rel.AppID != "" && rel.AppID != app.ID {
		return nil, nil, api.NotFound("release %s not found in app %s", rel.ID, app.Name)
	}
	if err := s.checkRelease(r, app, rel, nil); err != nil {
		return nil, nil, err
	}
	return app, rel, nil
}

// checkProcessTypes refuses counts for process types the release lacks,
// and for a pushed release's release phase (the Procfile's release type,
// which gitreceive runs once before the release is deployed), as Heroku
// does.
func checkProcessTypes(rel *api.Release, procs map[string]int) error {
	for typ, n := range procs {
		if _, ok := rel.Processes[typ]; !ok && n > 0 {
			return api.Validation("processes", "release %s has no process type %q", rel.ID, typ)
		}
		if typ == api.ProcessTypeRelease && n > 0 && rel.Meta[api.MetaReleaseGit] == "true" {
			return api.Validation("processes", "the release type is the release phase: it runs once before each deploy of its release, and is not scaled")
		}
	}
	return nil
}

func (s *Server) putFormation(w http.ResponseWriter, r *http.Request) error {
	f, err := decodeFormation(r)
	if err != nil {
		return err
	}
	app, rel, err := s.appRelease(r)
	if err != nil {
		return err
	}
	if err := checkProcessTypes(rel, f.Processes); err != nil {
		return err
	}
	f.AppID, f.ReleaseID = app.ID, rel.ID
	f, err = s.store.PutFormation(r.Context(), f)
	if err != nil {
		return err
	}
	return ok(w, f)
}

func (s *Server) getFormation(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	f, err := s.store.GetFormation(r.Context(), app.ID, r.PathValue("release"))
	if err != nil {
		return err
	}
	if r.URL.Query().Get("expand") == "true" {
		ef, err := s.store.Expand(r.Context(), f)
		if err != nil {
			return err
		}
		return ok(w, ef)
	}
	return ok(w, f)
}

func (s *Server) deleteFormation(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	f, err := s.store.GetFormation(r.Context(), app.ID, r.PathValue("release"))
	if err != nil {
		return err
	}
	if err := s.store.DeleteFormation(r.Context(), app.ID, f.ReleaseID); err != nil {
		return err
	}
	return ok(w, f)
}

func (s *Server) listFormations(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	fs, err := s.store.ListFormations(r.Context(), app.ID)
	if err != nil {
		return err
	}
	return ok(w, fs)
}

func decodeScaleRequest(r *http.Request) (*api.ScaleRequest, error) {
	req := &api.ScaleRequest{}
	if err := httpapi.DecodeJSON(r, req); err != nil {
		return nil, err
	}
	switch req.State {
	case "", api.ScaleRequestPending:
	case api.ScaleRequestComplete, api.ScaleRequestCancelled, api.ScaleRequestFailed:
		if req.ID == "" {
			return nil, api.Validation("id", "id is required to update a scale request")
		}
	default:
		return nil, api.Validation("state", "unknown scale request state %q", req.State)
	}
	if req.ID != "" {
		if err := validateID("id", req.ID); err != nil {
			return nil, err
		}
	}
	if req.NewProcesses != nil {
		if err := validateProcesses("new_processes", *req.NewProcesses); err != nil {
			return nil, err
		}
	}
	if req.NewTags != nil {
		if err := validateTags("new_tags", *req.NewTags); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func (s *Server) scale(w http.ResponseWriter, r *http.Request) error {
	req, err := decodeScaleRequest(r)
	if err != nil {
		return err
	}
	app, rel, err := s.appRelease(r)
	if err != nil {
		return err
	}
	if req.State == api.ScaleRequestComplete || req.State == api.ScaleRequestCancelled || req.State == api.ScaleRequestFailed {
		out, err := s.store.EndScaleRequest(r.Context(), app.ID, req.ID, req.State, req.Error)
		if err != nil {
			return err
		}
		return ok(w, out)
	}
	if req.NewProcesses != nil {
		if err := checkProcessTypes(rel, *req.NewProcesses); err != nil {
			return err
		}
	}
	req.ID = ctrlstore.NewID()
	req.AppID, req.ReleaseID = app.ID, rel.ID
	out, err := s.store.CreateScaleRequest(r.Context(), req)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (s *Server) listScaleRequests(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	reqs, err := s.store.ListScaleRequests(r.Context(), app.ID)
	if err != nil {
		return err
	}
	return ok(w, reqs)
}

// listPendingScaleRequests serves GET /scale-requests?state=pending:
// every app's pending scale requests (the deployer completes them).
func (s *Server) listPendingScaleRequests(w http.ResponseWriter, r *http.Request) error {
	if st := r.URL.Query().Get("state"); st != api.ScaleRequestPending {
		return api.Validation("state", "give state=pending: only pending scale requests are listed across apps (GET /apps/{app}/scale lists an app's)")
	}
	reqs, err := s.store.ListPendingScaleRequests(r.Context())
	if err != nil {
		return err
	}
	return ok(w, reqs)
}

// deployBody is the body of POST /apps/{app}/deploy: the release (id, as
// Flynn's) and, from a push that ran the release's release command
// itself, that command's job.
type deployBody struct {
	ID              string `json:"id"`
	ReleasePhaseJob string `json:"release_phase_job,omitempty"`
}

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) error {
	var b deployBody
	if err := httpapi.DecodeJSON(r, &b); err != nil {
		return err
	}
	if b.ID == "" {
		return api.Validation("id", "id is required")
	}
	if err := validateID("id", b.ID); err != nil {
		return err
	}
	id := b.ID
	app, err := s.app(r)
	if err != nil {
		return err
	}
	if app.ReleaseID == id {
		return api.Validation("id", "release %s is already deployed", id)
	}
	if err := s.checkReleaseID(r, app, id); err != nil {
		return err
	}
	if b.ReleasePhaseJob != "" {
		if err := validateID("release_phase_job", b.ReleasePhaseJob); err != nil {
			return err
		}
		j, err := s.store.GetJob(r.Context(), app.ID, b.ReleasePhaseJob)
		if errors.Is(err, api.ErrNotFound) {
			return api.Validation("release_phase_job", "app %s has no job %s", app.Name, b.ReleasePhaseJob)
		}
		if err != nil {
			return err
		}
		if j.Meta[api.JobMetaReleasePhase] != "true" || j.ReleaseID != id {
			return api.Validation("release_phase_job", "job %s is not a release command of release %s", b.ReleasePhaseJob, id)
		}
	}
	d, err := s.store.CreateDeploymentAfterReleasePhase(r.Context(), app.ID, id, b.ReleasePhaseJob)
	if err != nil {
		return err
	}
	return ok(w, d)
}

func (s *Server) listAppDeployments(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	ds, err := s.store.ListDeployments(r.Context(), app.ID, r.URL.Query().Get("status"))
	if err != nil {
		return err
	}
	return ok(w, ds)
}

func (s *Server) listDeployments(w http.ResponseWriter, r *http.Request) error {
	ds, err := s.store.ListDeployments(r.Context(), r.URL.Query().Get("app"), r.URL.Query().Get("status"))
	if err != nil {
		return err
	}
	return ok(w, ds)
}

// DeploymentUpdate is the body of PUT /deployments/{id}, which a deployer
// sends to move a deployment through running to complete or failed.
type DeploymentUpdate struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

func decodeDeploymentUpdate(r *http.Request) (*DeploymentUpdate, error) {
	u := &DeploymentUpdate{}
	if err := httpapi.DecodeJSONStrict(r, u); err != nil {
		return nil, err
	}
	switch u.Status {
	case api.DeploymentRunning, api.DeploymentComplete, api.DeploymentFailed:
	default:
		return nil, api.Validation("status", "status must be running, complete or failed")
	}
	return u, nil
}

func (s *Server) updateDeployment(w http.ResponseWriter, r *http.Request) error {
	u, err := decodeDeploymentUpdate(r)
	if err != nil {
		return err
	}
	d, err := s.store.UpdateDeployment(r.Context(), r.PathValue("id"), u.Status, u.Error)
	if err != nil {
		return err
	}
	return ok(w, d)
}

func (s *Server) addDeploymentEvent(w http.ResponseWriter, r *http.Request) error {
	ev := &api.DeploymentEvent{}
	if err := httpapi.DecodeJSON(r, ev); err != nil {
		return err
	}
	if ev.JobType != "" {
		if err := validateProcType("job_type", ev.JobType); err != nil {
			return err
		}
	}
	if ev.JobState != "" && !jobStates[ev.JobState] {
		return api.Validation("job_state", "unknown job state %q", ev.JobState)
	}
	if err := s.store.AddDeploymentEvent(r.Context(), r.PathValue("id"), ev); err != nil {
		return err
	}
	return ok(w, ev)
}
