package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// App is a named application. Field names follow Flynn's controller.
type App struct {
	ID            string            `json:"id,omitempty"`
	Name          string            `json:"name,omitempty"`
	Meta          map[string]string `json:"meta,omitempty"`
	Strategy      string            `json:"strategy,omitempty"`
	ReleaseID     string            `json:"release,omitempty"`
	DeployTimeout int32             `json:"deploy_timeout,omitempty"`
	CreatedAt     time.Time         `json:"created_at,omitzero"`
	UpdatedAt     time.Time         `json:"updated_at,omitzero"`
}

// A release that git push made (gitreceive) has MetaReleaseGit "true"
// in its meta; its Procfile's ProcessTypeRelease command is its release
// phase, run once before it is deployed and never scaled, as on Heroku.
const (
	MetaReleaseGit     = "git"
	ProcessTypeRelease = "release"
)

// App meta keys with meaning to the platform.
const (
	MetaSystemApp      = "flynn-system-app"
	MetaSystemCritical = "flynn-system-critical"
	// MetaDeployBatchSize is the batch size of the in-batches strategy
	// (`flynn deployment batch-size`); the number of hosts when unset.
	MetaDeployBatchSize = "flynn-deploy-batch-size"
	// MetaSystemRestore marks the apps the host daemons themselves start
	// again when none of their jobs runs (the scheduler, which restores
	// every other app).
	MetaSystemRestore = "flynn-system-restore"
)

// Deploy strategies, as Flynn names them.
const (
	// StrategyAllAtOnce starts the whole new formation, waits for it,
	// then stops the old one (the default).
	StrategyAllAtOnce = "all-at-once"
	// StrategyOneByOne, per process type, starts one new job, waits for
	// it and stops one old job, until done.
	StrategyOneByOne = "one-by-one"
	// StrategyOneDownOneUp, per process type, stops one old job, then
	// starts one new job and waits for it (for apps that cannot run two
	// of a kind at once).
	StrategyOneDownOneUp = "one-down-one-up"
	// StrategyInBatches is one-by-one with batches of the app's
	// MetaDeployBatchSize jobs (default: the number of hosts).
	StrategyInBatches = "in-batches"
)

// Strategies lists the deploy strategies the platform runs.
var Strategies = []string{StrategyAllAtOnce, StrategyOneByOne, StrategyOneDownOneUp, StrategyInBatches}

// DefaultDeployTimeout is the deploy timeout in seconds when an app sets none.
const DefaultDeployTimeout = 120

// Artifact types.
const (
	ArtifactTypeFlynn  = "flynn"
	ArtifactTypeDocker = "docker"
)

// Meta keys of the artifacts the cluster's image registry (images.DOMAIN)
// makes of the images pushed to it: the repository and the manifest's
// digest ("sha256:...").
const (
	MetaRegistryRepository = "registry.repository"
	MetaRegistryDigest     = "registry.digest"
	// RegistryBlobDir is the blobstore directory the registry keeps
	// images in: the layers of its artifacts are its own, and the
	// controller never deletes them with a release.
	RegistryBlobDir = "/registry/"
)

// Artifact is an immutable image a release runs: a Flynn manifest of
// layers in the blobstore, or an OCI reference.
type Artifact struct {
	ID        string            `json:"id,omitempty"`
	Type      string            `json:"type"`
	URI       string            `json:"uri"`
	Meta      map[string]string `json:"meta,omitempty"`
	Manifest  *ImageManifest    `json:"manifest,omitempty"`
	Hashes    map[string]string `json:"hashes,omitempty"`
	Size      int64             `json:"size,omitempty"`
	CreatedAt time.Time         `json:"created_at,omitzero"`
}

// ImageManifest lists an image's layers, bottom first.
type ImageManifest struct {
	Type        string                 `json:"_type,omitempty"`
	Entrypoints map[string]*Entrypoint `json:"entrypoints,omitempty"`
	Rootfs      []*ImageRootfs         `json:"rootfs,omitempty"`
}

// Entrypoint is an image's default process settings.
type Entrypoint struct {
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"cwd,omitempty"`
	Args       []string          `json:"args,omitempty"`
	Uid        *uint32           `json:"uid,omitempty"`
	Gid        *uint32           `json:"gid,omitempty"`
	// User is an OCI image's user (name or uid, optionally :group), which
	// the host resolves in the image's /etc/passwd and /etc/group when
	// Uid is not set. Root runs as nobody: app jobs do not run as root.
	User string `json:"user,omitempty"`
}

// ImageRootfs is a stack of layers.
type ImageRootfs struct {
	Platform *ImagePlatform `json:"platform,omitempty"`
	Layers   []*ImageLayer  `json:"layers"`
}

// ImagePlatform names the architecture and OS of a rootfs.
type ImagePlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// ImageLayer is one content-addressed layer: a tar (optionally gzipped)
// whose sha256 is in Hashes["sha256"], fetched from URL.
type ImageLayer struct {
	ID     string            `json:"id"`
	Type   string            `json:"type"`
	Length int64             `json:"length"`
	Hashes map[string]string `json:"hashes"`
	URL    string            `json:"url,omitempty"`
	Meta   map[string]string `json:"meta,omitempty"`
}

// Layer media types.
const (
	LayerTypeTar   = "application/vnd.flynn.image.tar.v1"
	LayerTypeTarGz = "application/vnd.flynn.image.tar+gzip.v1"
	ManifestType   = "application/vnd.flynn.image.manifest.v1+json"
)

// Release is an immutable combination of artifacts, config and process types.
type Release struct {
	ID          string                  `json:"id,omitempty"`
	AppID       string                  `json:"app_id,omitempty"`
	ArtifactIDs []string                `json:"artifacts,omitempty"`
	Env         map[string]string       `json:"env,omitempty"`
	Meta        map[string]string       `json:"meta,omitempty"`
	Processes   map[string]*ProcessType `json:"processes,omitempty"`
	CreatedAt   time.Time               `json:"created_at,omitzero"`
}

// ProcessType says how to run one kind of process of a release.
type ProcessType struct {
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Ports       []Port            `json:"ports,omitempty"`
	Omni        bool              `json:"omni,omitempty"`
	HostNetwork bool              `json:"host_network,omitempty"`
	Service     string            `json:"service,omitempty"`
	Resurrect   bool              `json:"resurrect,omitempty"`
	Resources   Resources         `json:"resources,omitempty"`
	Mounts      []Mount           `json:"mounts,omitempty"`
	Volumes     []VolumeReq       `json:"volumes,omitempty"`
}

// Port is a port a process listens on, optionally registered in discoverd.
type Port struct {
	Port    int      `json:"port,omitempty"`
	Proto   string   `json:"proto,omitempty"`
	Service *Service `json:"service,omitempty"`
}

// Service says how a port is registered in discoverd.
type Service struct {
	Name   string       `json:"name"`
	Create bool         `json:"create,omitempty"`
	Check  *HealthCheck `json:"check,omitempty"`
}

// HealthCheck is a process port's health check: an instance is registered
// in discoverd only once it passes.
type HealthCheck struct {
	// Type is tcp, http or https.
	Type         string   `json:"type,omitempty"`
	Interval     Duration `json:"interval,omitempty"`
	Threshold    int      `json:"threshold,omitempty"`
	StartTimeout Duration `json:"start_timeout,omitempty"`
	Path         string   `json:"path,omitempty"`
	Host         string   `json:"host,omitempty"`
	Match        string   `json:"match,omitempty"`
	Status       int      `json:"status,omitempty"`
}

// Duration is a time.Duration that travels in JSON as a number of
// nanoseconds, as Flynn's time.Duration fields do (so Flynn's clients read
// and round-trip releases), and also reads a duration string such as "10s".
type Duration time.Duration

// MarshalJSON writes d as a number of nanoseconds.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(int64(d)) }

// UnmarshalJSON reads a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*d = Duration(n)
	return nil
}

// Resource names.
const (
	ResourceMemory   = "memory"
	ResourceCPU      = "cpu"
	ResourceMaxFD    = "max_fd"
	ResourceMaxProcs = "max_procs"
	ResourceTempDisk = "temp_disk"
)

// Resources maps a resource name to its request and limit. Memory and
// temp_disk are bytes, cpu is milli-cores.
type Resources map[string]ResourceSpec

// DefaultMemoryRequest is the memory a job that asks for none is placed
// with (its limit stays the host's default, 1 GiB): the jobs on a host
// can then commit at most four times its memory.
const DefaultMemoryRequest = 256 << 20

// MemoryRequest is the memory a job with resources r is placed with: its
// request, else its limit, else DefaultMemoryRequest.
func MemoryRequest(r Resources) int64 {
	if spec, ok := r[ResourceMemory]; ok {
		if spec.Request != nil && *spec.Request > 0 {
			return *spec.Request
		}
		if spec.Limit != nil && *spec.Limit > 0 {
			return *spec.Limit
		}
	}
	return DefaultMemoryRequest
}

// ResourceSpec is a request and a limit.
type ResourceSpec struct {
	Request *int64 `json:"request,omitempty"`
	Limit   *int64 `json:"limit,omitempty"`
}

// Mount is a bind mount into a job's container.
type Mount struct {
	Location  string `json:"location"`
	Target    string `json:"target"`
	Writeable bool   `json:"writeable,omitempty"`
}

// VolumeReq asks for a volume at Path.
type VolumeReq struct {
	Path         string `json:"path"`
	DeleteOnStop bool   `json:"delete_on_stop,omitempty"`
}

// Formation is how many processes of each type of a release run, with host
// tag constraints per type.
type Formation struct {
	AppID     string                       `json:"app,omitempty"`
	ReleaseID string                       `json:"release,omitempty"`
	Processes map[string]int               `json:"processes,omitempty"`
	Tags      map[string]map[string]string `json:"tags,omitempty"`
	CreatedAt time.Time                    `json:"created_at,omitzero"`
	UpdatedAt time.Time                    `json:"updated_at,omitzero"`
}

// ExpandedFormation is a formation with its app, release and artifacts,
// as the scheduler consumes it.
type ExpandedFormation struct {
	App       *App                         `json:"app,omitempty"`
	Release   *Release                     `json:"release,omitempty"`
	Artifacts []*Artifact                  `json:"artifacts,omitempty"`
	Processes map[string]int               `json:"processes,omitempty"`
	Tags      map[string]map[string]string `json:"tags,omitempty"`
	Deleted   bool                         `json:"deleted,omitempty"`
	UpdatedAt time.Time                    `json:"updated_at,omitzero"`
}

// Scale request states.
const (
	ScaleRequestPending   = "pending"
	ScaleRequestCancelled = "cancelled"
	ScaleRequestComplete  = "complete"
	// ScaleRequestFailed: the formation could not come up as asked (a
	// process kept crashing); Error says why.
	ScaleRequestFailed = "failed"
)

// ScaleRequest is a request to change a formation, tracked until the
// scheduler has converged on it.
type ScaleRequest struct {
	ID           string                        `json:"id,omitempty"`
	AppID        string                        `json:"app,omitempty"`
	ReleaseID    string                        `json:"release,omitempty"`
	State        string                        `json:"state,omitempty"`
	OldProcesses map[string]int                `json:"old_processes,omitempty"`
	NewProcesses *map[string]int               `json:"new_processes,omitempty"`
	OldTags      map[string]map[string]string  `json:"old_tags,omitempty"`
	NewTags      *map[string]map[string]string `json:"new_tags,omitempty"`
	// Error says why a failed request failed.
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Job states as the controller reports them.
const (
	JobStatePending  = "pending"
	JobStateBlocked  = "blocked"
	JobStateStarting = "starting"
	JobStateUp       = "up"
	JobStateStopping = "stopping"
	JobStateDown     = "down"
)

// Job is a process of an app as the controller tracks it. ID is
// "<host-id>-<uuid>".
type Job struct {
	ID         string            `json:"id,omitempty"`
	UUID       string            `json:"uuid,omitempty"`
	HostID     string            `json:"host_id,omitempty"`
	AppID      string            `json:"app,omitempty"`
	ReleaseID  string            `json:"release,omitempty"`
	Type       string            `json:"type,omitempty"`
	State      string            `json:"state,omitempty"`
	Args       []string          `json:"args,omitempty"`
	Meta       map[string]string `json:"meta,omitempty"`
	ExitStatus *int32            `json:"exit_status,omitempty"`
	HostError  *string           `json:"host_error,omitempty"`
	RunAt      *time.Time        `json:"run_at,omitempty"`
	Restarts   *int32            `json:"restarts,omitempty"`
	CreatedAt  time.Time         `json:"created_at,omitzero"`
	UpdatedAt  time.Time         `json:"updated_at,omitzero"`
}

// End says how a job that went down ended: "exited with status 3", or
// with what its host said.
func (j *Job) End() string {
	msg := "exited"
	if j.ExitStatus != nil {
		msg = fmt.Sprintf("exited with status %d", *j.ExitStatus)
	}
	if j.HostError != nil && *j.HostError != "" {
		msg += ": " + *j.HostError
	}
	return msg
}

// NewJob is a request to run a one-off job.
type NewJob struct {
	ReleaseID string `json:"release,omitempty"`
	// ArtifactIDs, when set, replace the release's artifacts.
	ArtifactIDs []string `json:"artifacts,omitempty"`
	// MountsFrom names a process type of the release whose mounts the
	// job gets.
	MountsFrom string            `json:"mounts_from,omitempty"`
	ReleaseEnv bool              `json:"release_env,omitempty"`
	Args       []string          `json:"args,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Meta       map[string]string `json:"meta,omitempty"`
	TTY        bool              `json:"tty,omitempty"`
	Columns    int               `json:"tty_columns,omitempty"`
	Lines      int               `json:"tty_lines,omitempty"`
	DisableLog bool              `json:"disable_log,omitempty"`
	Resources  Resources         `json:"resources,omitempty"`
}

// Deployment states.
const (
	DeploymentPending  = "pending"
	DeploymentRunning  = "running"
	DeploymentComplete = "complete"
	DeploymentFailed   = "failed"
)

// Deployment moves an app from one release to another.
type Deployment struct {
	ID            string                       `json:"id,omitempty"`
	AppID         string                       `json:"app,omitempty"`
	OldReleaseID  string                       `json:"old_release,omitempty"`
	NewReleaseID  string                       `json:"new_release,omitempty"`
	Strategy      string                       `json:"strategy,omitempty"`
	Status        string                       `json:"status,omitempty"`
	Processes     map[string]int               `json:"processes,omitempty"`
	Tags          map[string]map[string]string `json:"tags,omitempty"`
	DeployTimeout int32                        `json:"deploy_timeout,omitempty"`
	// DeployBatchSize is the in-batches strategy's batch size, when the
	// app sets one (MetaDeployBatchSize).
	DeployBatchSize *int `json:"deploy_batch_size,omitempty"`
	// ReleasePhaseJob is the job that ran the new release's release
	// command before the deployment was made, when its client ran it
	// itself: the deployer then does not run it again.
	ReleasePhaseJob string     `json:"release_phase_job,omitempty"`
	CreatedAt       time.Time  `json:"created_at,omitzero"`
	FinishedAt      *time.Time `json:"finished_at,omitempty"`
}

// DeploymentEvent is a step of a deployment's progress.
type DeploymentEvent struct {
	AppID        string `json:"app,omitempty"`
	DeploymentID string `json:"deployment,omitempty"`
	ReleaseID    string `json:"release,omitempty"`
	Status       string `json:"status,omitempty"`
	JobType      string `json:"job_type,omitempty"`
	JobState     string `json:"job_state,omitempty"`
	// JobID names the job of the event, for the release command's.
	JobID string `json:"job_id,omitempty"`
	Error string `json:"error,omitempty"`
}

// AppDeletion is what deleting an app removed: the data of its
// app_deletion event, as {"app_deletion": AppDeletion}.
type AppDeletion struct {
	AppID            string      `json:"app"`
	DeletedRoutes    []*Route    `json:"deleted_routes"`
	DeletedResources []*Resource `json:"deleted_resources"`
	DeletedReleases  []*Release  `json:"deleted_releases"`
}

// AppDeletionEvent is the data of an app_deletion event.
type AppDeletionEvent struct {
	AppDeletion *AppDeletion `json:"app_deletion"`
	Error       string       `json:"error,omitempty"`
}

// ReleaseDeletion is what deleting a release removed: the data of its
// release_deletion event, as {"release_deletion": ReleaseDeletion}.
type ReleaseDeletion struct {
	AppID     string `json:"app"`
	ReleaseID string `json:"release"`
	// RemainingApps are other apps that still use the release (it is
	// then only scaled down for this app); none here, as a release
	// belongs to one app.
	RemainingApps []string `json:"remaining_apps"`
	// DeletedFiles are the blobs deleted with the release.
	DeletedFiles []string `json:"deleted_files"`
}

// ReleaseDeletionEvent is the data of a release_deletion event.
type ReleaseDeletionEvent struct {
	ReleaseDeletion *ReleaseDeletion `json:"release_deletion"`
	Error           string           `json:"error,omitempty"`
}

// Provider is a resource provider (e.g. a database appliance's API).
type Provider struct {
	ID        string    `json:"id,omitempty"`
	URL       string    `json:"url,omitempty"`
	Name      string    `json:"name,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Resource is something a provider provisioned, with env for apps.
type Resource struct {
	ID         string            `json:"id,omitempty"`
	ProviderID string            `json:"provider,omitempty"`
	ExternalID string            `json:"external_id,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Apps       []string          `json:"apps,omitempty"`
	CreatedAt  time.Time         `json:"created_at,omitzero"`
}

// Key is an SSH public key allowed to git push.
type Key struct {
	ID          string    `json:"id,omitempty"`
	Key         string    `json:"key,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	Comment     string    `json:"comment,omitempty"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
}

// Event object types.
const (
	EventTypeApp             = "app"
	EventTypeAppDeletion     = "app_deletion"
	EventTypeAppRelease      = "app_release"
	EventTypeArtifact        = "artifact"
	EventTypeRelease         = "release"
	EventTypeReleaseDeletion = "release_deletion"
	EventTypeScaleRequest    = "scale_request"
	// EventTypeScaleRequestCancelation is a pending scale request
	// replaced by a newer one for the same formation.
	EventTypeScaleRequestCancelation = "scale_request_cancelation"
	EventTypeFormation               = "formation"
	EventTypeDeployment              = "deployment"
	EventTypeJob                     = "job"
	EventTypeRoute                   = "route"
	EventTypeRouteDeletion           = "route_deletion"
	EventTypeProvider                = "provider"
	EventTypeResource                = "resource"
	EventTypeResourceDeletion        = "resource_deletion"
	EventTypeKey                     = "key"
	EventTypeKeyDeletion             = "key_deletion"
)

// EventSinceHeader is the response header in which the controller tells
// an event stream's reader the id it streams from (events after it), so a
// reader that has not seen an event yet can still resume exactly.
const EventSinceHeader = "Flynn-Since-Id"

// Event is a change to a controller object. IDs increase monotonically, so
// a follower resumes with since_id.
type Event struct {
	ID         int64           `json:"id,omitempty"`
	AppID      string          `json:"app,omitempty"`
	ObjectType string          `json:"object_type,omitempty"`
	ObjectID   string          `json:"object_id,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
	CreatedAt  time.Time       `json:"created_at,omitzero"`
}
