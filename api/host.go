package api

import (
	"strings"
	"time"
)

// Host job statuses, as the host agent reports them.
const (
	HostJobStarting = "starting"
	HostJobRunning  = "running"
	HostJobDone     = "done"
	HostJobCrashed  = "crashed"
	HostJobFailed   = "failed"
)

// Host job event kinds on GET /host/jobs (SSE).
const (
	HostEventCreate = "create"
	HostEventStart  = "start"
	HostEventStop   = "stop"
	HostEventError  = "error"
)

// Job metadata keys the platform sets on host jobs.
const (
	JobMetaApp         = "flynn-controller.app"
	JobMetaAppName     = "flynn-controller.app_name"
	JobMetaRelease     = "flynn-controller.release"
	JobMetaProcessType = "flynn-controller.type"
)

// HostJob is a job as given to a host agent: PUT /host/jobs/{id}.
type HostJob struct {
	ID string `json:"id"`
	// Artifacts are the image layers, bottom first (e.g. stack, slug).
	Artifacts []*Artifact       `json:"artifacts,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Config    HostJobConfig     `json:"config"`
	Resources Resources         `json:"resources,omitempty"`
	Resurrect bool              `json:"resurrect,omitempty"`
}

// HostJobConfig is how to run a job's process.
type HostJobConfig struct {
	Args       []string          `json:"args,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	Uid        *uint32           `json:"uid,omitempty"`
	Gid        *uint32           `json:"gid,omitempty"`
	TTY        bool              `json:"tty,omitempty"`
	Stdin      bool              `json:"stdin,omitempty"`
	Ports      []Port            `json:"ports,omitempty"`
	Mounts     []Mount           `json:"mounts,omitempty"`
	// Volumes are the host's persistent volumes mounted into the job,
	// each made on first use (see VolumeBinding).
	Volumes     []VolumeBinding `json:"volumes,omitempty"`
	HostNetwork bool            `json:"host_network,omitempty"`
	DisableLog  bool            `json:"disable_log,omitempty"`
	// System marks a job of the platform's own that runs on the job
	// network: the host's firewall lets it reach the host's ports, which
	// other jobs on the network do not reach. Like HostNetwork, a uid 0
	// job or a host mount, it is for the platform's components only.
	System bool `json:"system,omitempty"`
	// ReachPorts are TCP ports a job on the job network reaches at any
	// address, its host's included, through the host's firewall: a build
	// reaches the blobstore its signed URLs name and nothing else of the
	// platform. Like System, it is for the platform's components only.
	ReachPorts []int `json:"reach_ports,omitempty"`
}

// BuildCacheVolumeID is the id of the host volume that keeps an app's
// build cache unpacked between its builds on a host: gitreceive binds it
// to the app's build jobs only, and the controller deletes it with the
// app.
func BuildCacheVolumeID(appID string) string { return "buildcache-" + appID }

// VolumeBinding mounts the host volume VolumeID at Target in a job. The
// host makes the volume (an empty directory owned by the job's user) the
// first time a job names it and keeps it across job restarts and host
// restarts until it is deleted, or until the job ends when DeleteOnStop
// is set.
type VolumeBinding struct {
	Target       string `json:"target"`
	VolumeID     string `json:"volume_id"`
	Writeable    bool   `json:"writeable,omitempty"`
	DeleteOnStop bool   `json:"delete_on_stop,omitempty"`
}

// Volume is a persistent volume on a host: GET /host/volumes, and the
// controller's GET /volumes (the hosts' lists merged).
type Volume struct {
	ID     string `json:"id"`
	HostID string `json:"host_id,omitempty"`
	// Type is "data": a directory under the host's state dir.
	Type string `json:"type"`
	// Path is where the volume is mounted in its jobs.
	Path         string `json:"path,omitempty"`
	AppID        string `json:"app_id,omitempty"`
	AppName      string `json:"app_name,omitempty"`
	ReleaseID    string `json:"release_id,omitempty"`
	JobType      string `json:"job_type,omitempty"`
	DeleteOnStop bool   `json:"delete_on_stop,omitempty"`
	// JobID is the job that last mounted the volume; InUse says whether
	// it still runs.
	JobID string `json:"job_id,omitempty"`
	InUse bool   `json:"in_use,omitempty"`
	// Size is the bytes the volume's files take, as last measured.
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// VolumeTypeData is the one volume type: a directory on the host.
const VolumeTypeData = "data"

// ActiveJob is a job's state on its host.
type ActiveJob struct {
	Job        *HostJob `json:"job"`
	HostID     string   `json:"host_id"`
	InternalIP string   `json:"internal_ip,omitempty"`
	// HostPorts maps each requested port, in order, to the published host port.
	HostPorts  []int     `json:"host_ports,omitempty"`
	Status     string    `json:"status"`
	PID        int       `json:"pid,omitempty"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	EndedAt    time.Time `json:"ended_at,omitzero"`
	ExitStatus *int      `json:"exit_status,omitempty"`
	OOM        bool      `json:"oom,omitempty"`
	Error      *string   `json:"error,omitempty"`
}

// HostJobEvent is an event of the host's job stream.
type HostJobEvent struct {
	Event string     `json:"event"`
	JobID string     `json:"job_id"`
	Job   *ActiveJob `json:"job,omitempty"`
}

// HostMountPrefix starts the mount locations a host agent turns into its
// own paths: "flynn-host:bin" (its flynn-host binary),
// "flynn-host:component/NAME" (the component binary flynn-NAME next to it,
// see ComponentBinary), "flynn-host:tls", "flynn-host:tls-public" (the
// cluster's TLS files) and "flynn-host:data/NAME" (a data dir). The
// platform's jobs mount these instead of any host's paths.
const HostMountPrefix = "flynn-host:"

// ComponentBinaries maps the platform's components that run from a binary
// other than flynn-host to that binary, installed next to flynn-host:
// flynn-control links the components that work on etcd, flynn-data the
// others, so that neither pays for what it does not run and the jobs
// running one share its pages. A system job runs /bin/flynn-NAME, which
// its host mounts from "flynn-host:component/NAME": the binary, called by
// the component's name, runs that component. A host without the binary
// mounts flynn-host in its place, which does the same.
var ComponentBinaries = map[string]string{
	"controller":    "flynn-control",
	"scheduler":     "flynn-control",
	"router":        "flynn-control",
	"gitreceive":    "flynn-control",
	"blobstore":     "flynn-data",
	"logaggregator": "flynn-data",
	"postgres":      "flynn-data",
	"mysql":         "flynn-data",
	"redis":         "flynn-data",
}

// ComponentBinary returns the component NAME of a job's command
// /bin/flynn-NAME (or of a bare flynn-NAME), and whether it is one of
// ComponentBinaries.
func ComponentBinary(path string) (string, bool) {
	name, ok := strings.CutPrefix(path, "/bin/flynn-")
	if !ok {
		name, ok = strings.CutPrefix(path, "flynn-")
	}
	return name, ok && ComponentBinaries[name] != ""
}

// LocalBusyboxLayer is the layer URL of a busybox rootfs each host builds
// from its own busybox binary: the image the platform's components run
// on, which no host has to fetch (the blobstore itself runs on it).
const LocalBusyboxLayer = "flynn-host:busybox"

// Host is a host's registration: /flynn/hosts/<id> in etcd, under a lease.
type Host struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// URL is the host agent's HTTP API, e.g. http://10.0.0.1:1113.
	URL  string            `json:"url"`
	Tags map[string]string `json:"tags,omitempty"`
	// Memory is the host's total memory in bytes; CPUs its core count.
	Memory int64 `json:"memory,omitempty"`
	CPUs   int   `json:"cpus,omitempty"`
	// EtcdMember is true when the host runs an etcd member.
	EtcdMember bool      `json:"etcd_member,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
}

// HostStatus is GET /host/status.
type HostStatus struct {
	ID      string            `json:"id"`
	Tags    map[string]string `json:"tags,omitempty"`
	PID     int               `json:"pid"`
	URL     string            `json:"url"`
	Version string            `json:"version"`
}
