// Package bootstrap brings a cluster of running flynn-host daemons up to a
// working platform: it runs a manifest of ordered steps that generate the
// cluster's secrets and certificates, start the controller and the
// scheduler as jobs, register every system app in the controller with
// releases and formations (so the scheduler keeps them running), deploy
// the router, blobstore, gitreceive and logaggregator, add the platform's
// routes, wait for health, and record that the cluster is bootstrapped so
// a second run changes nothing.
package bootstrap

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Step actions.
const (
	// ActionGenKeys makes the controller key and the router cookie key.
	ActionGenKeys = "gen-keys"
	// ActionGenTLS makes the cluster CA and the wildcard certificate.
	ActionGenTLS = "gen-tls-cert"
	// ActionRunApp starts an app's jobs directly on the hosts (for the
	// controller and the scheduler, which nothing else can start).
	ActionRunApp = "run-app"
	// ActionWaitController waits until the controller answers.
	ActionWaitController = "wait-controller"
	// ActionAddApp registers an app started by run-app in the controller:
	// app, artifact, release and formation matching the running jobs, so
	// the scheduler adopts them.
	ActionAddApp = "add-app"
	// ActionDeployApp registers an app with its formation and waits for
	// the scheduler to run it.
	ActionDeployApp = "deploy-app"
	// ActionAddRoute adds an HTTP route in the controller.
	ActionAddRoute = "add-route"
	// ActionWaitHTTP waits until a URL answers with one of Status.
	ActionWaitHTTP = "wait-http"
	// ActionUploadStack puts the build stack's layer in the blobstore
	// (once per digest), where every host's build and gitreceive jobs
	// fetch it; gitreceive's STACK_URL names it.
	ActionUploadStack = "upload-stack"
	// ActionAddProvider registers a resource provider (Name, URL) in the
	// controller.
	ActionAddProvider = "add-provider"
)

// Manifest is the ordered list of steps and the system apps they refer to.
type Manifest struct {
	Steps []*Step             `json:"steps"`
	Apps  map[string]*AppSpec `json:"apps"`
}

// Step is one step of a manifest. Strings may refer to the bootstrap's
// variables as ${NAME} (see Vars).
type Step struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	// App names an entry of Manifest.Apps (run-app, add-app, deploy-app,
	// add-route).
	App string `json:"app,omitempty"`
	// Domain and Service describe an add-route step; Type "tcp" makes a
	// TCP route on Port instead of an HTTP route on Domain; Leader sends
	// the traffic to the service's leader only; MaxBodyBytes is an HTTP
	// route's request body limit (0: the router's default, -1: none).
	Domain       string `json:"domain,omitempty"`
	Service      string `json:"service,omitempty"`
	Type         string `json:"type,omitempty"`
	Port         string `json:"port,omitempty"`
	Leader       bool   `json:"leader,omitempty"`
	MaxBodyBytes int64  `json:"max_body_bytes,omitempty"`
	// Name is the provider of an add-provider step; URL its address.
	Name string `json:"name,omitempty"`
	// URL, Host and Status describe a wait-http step (URL also an
	// add-provider step).
	URL    string `json:"url,omitempty"`
	Host   string `json:"host,omitempty"`
	Status []int  `json:"status,omitempty"`
	// Timeout bounds a waiting step (default 2 minutes).
	Timeout api.Duration `json:"timeout,omitempty"`
	// Optional steps may fail with a warning.
	Optional bool `json:"optional,omitempty"`
}

// AppSpec is a system app: its process types and how many of each run.
type AppSpec struct {
	// Critical apps are never scaled to zero (meta flynn-system-critical).
	Critical bool `json:"critical,omitempty"`
	// Spread apps run 2 jobs of each process type (on different hosts)
	// when the cluster has 2 hosts or more.
	Spread bool `json:"spread,omitempty"`
	// Restore apps are started again by the host daemons when none of
	// their jobs runs anywhere (meta flynn-system-restore): the scheduler,
	// which restores every other app. Their run-app step starts one job
	// of each type, and the scheduler starts the rest once add-app has
	// registered its formation: a second job started beside a running
	// scheduler would be stopped by it, as a job of no formation.
	Restore   bool                        `json:"restore,omitempty"`
	Processes map[string]*api.ProcessType `json:"processes"`
	Formation map[string]int              `json:"formation"`
	// Root runs the app's processes as uid 0 (the router binds :80).
	Root bool `json:"root,omitempty"`
	// DataDir mounts <state-dir>/data/<app> writable at /data.
	DataDir bool `json:"data_dir,omitempty"`
	// Etcd apps use etcd: they get the component certificate for its
	// mutual TLS (the flynn-host:etcd-tls mount, at $ETCD_TLS_DIR).
	Etcd bool `json:"etcd,omitempty"`
	// Stack runs the app on the build stack instead of busybox (gitreceive
	// needs git), when the cluster has a stack layer.
	Stack bool `json:"stack,omitempty"`
	// RequiresStack apps run only on the stack: on a cluster without one
	// their steps are skipped.
	RequiresStack bool `json:"requires_stack,omitempty"`
	// Strategy is the app's deploy strategy (default all-at-once); an
	// app with a volume deploys one-down-one-up, so the old job releases
	// the volume before the new one starts.
	Strategy string `json:"strategy,omitempty"`
}

// LoadManifest reads a JSON manifest.
func LoadManifest(file string) (*Manifest, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := &Manifest{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", file, err)
	}
	return m, m.Validate()
}

// Validate checks that the steps are known and refer to known apps.
func (m *Manifest) Validate() error {
	if len(m.Steps) == 0 {
		return fmt.Errorf("manifest has no steps")
	}
	for i, s := range m.Steps {
		if s == nil {
			return fmt.Errorf("manifest step %d is null", i)
		}
		switch s.Action {
		case ActionGenKeys, ActionGenTLS, ActionWaitController, ActionUploadStack:
		case ActionAddProvider:
			if s.Name == "" || s.URL == "" {
				return fmt.Errorf("manifest step %d (add-provider): name and url are required", i)
			}
		case ActionRunApp, ActionAddApp, ActionDeployApp, ActionAddRoute:
			if m.Apps[s.App] == nil {
				return fmt.Errorf("manifest step %d (%s): unknown app %q", i, s.Action, s.App)
			}
			if s.Action == ActionAddRoute && s.Type == api.RouteTCP && (s.Port == "" || s.Service == "") {
				return fmt.Errorf("manifest step %d (add-route): a tcp route needs port and service", i)
			}
			if s.Action == ActionAddRoute && s.Type != api.RouteTCP && (s.Domain == "" || s.Service == "") {
				return fmt.Errorf("manifest step %d (add-route): domain and service are required", i)
			}
		case ActionWaitHTTP:
			if s.URL == "" {
				return fmt.Errorf("manifest step %d (wait-http): url is required", i)
			}
		default:
			return fmt.Errorf("manifest step %d: unknown action %q", i, s.Action)
		}
	}
	for name, a := range m.Apps {
		if a == nil || len(a.Processes) == 0 {
			return fmt.Errorf("manifest app %q has no processes", name)
		}
		for typ := range a.Formation {
			if a.Processes[typ] == nil {
				return fmt.Errorf("manifest app %q: formation names unknown process type %q", name, typ)
			}
		}
	}
	return nil
}

// DefaultManifest is the platform's own manifest. The system components
// all run their own binary, /bin/flynn-NAME (api.ComponentBinaries, which
// does what `flynn-host component NAME` does), with host networking, on the ports of
// Config.Ports, except the controller, whose jobs get a port from their
// host.
func DefaultManifest() *Manifest {
	proc := func(svc, portVar string, args ...string) *api.ProcessType {
		p := &api.ProcessType{Args: append([]string{"/bin/flynn-" + args[0]}, args[1:]...), HostNetwork: true}
		p.Env = map[string]string{}
		if svc != "" {
			// Registered once it accepts connections: nothing is sent
			// to a component that is still starting.
			p.Ports = []api.Port{{Proto: "tcp", Service: &api.Service{Name: svc, Create: true, Check: &api.HealthCheck{Type: "tcp"}}}}
		}
		if portVar != "" {
			// The port number is filled in from the variable at run
			// time; without one the host gives the job a port ($PORT).
			p.Env["PORT"] = "${" + portVar + "}"
		}
		return p
	}
	// What differs between hosts (their address, their discoverd and etcd
	// endpoints) is not in these releases: every host agent gives its
	// host-network jobs EXTERNAL_IP, DISCOVERD and ETCD_ENDPOINTS, and the
	// components find each other through discoverd (NAME.discoverd).
	//
	// The controller's port comes from its host, so several controller
	// jobs can share a host: the others find it through discoverd
	// (http://controller.discoverd), users through the router.
	ctl := proc("controller", "", "controller")
	ctl.Env["AUTH_KEY"] = "${CONTROLLER_KEY}"
	ctl.Env["SYSTEM_KEY"] = "${SYSTEM_KEY}"
	ctl.Env["CLUSTER_DOMAIN"] = "${CLUSTER_DOMAIN}"
	ctl.Env["CA_CERT_FILE"] = "/etc/flynn/ca.crt"
	ctl.Env["LOGAGGREGATOR_URL"] = "http://logaggregator.discoverd"
	ctl.Env["BLOBSTORE_URL"] = "http://blobstore.discoverd"
	ctl.Env["CLUSTER_TOKEN"] = "${CLUSTER_TOKEN}"
	ctl.Env["FLYNN_CLUSTER_TOKEN"] = "${CLUSTER_TOKEN}" // discoverd registration, one-off jobs

	sched := proc("", "", "scheduler")
	sched.Env = map[string]string{
		"CONTROLLER_URL": "http://controller.discoverd",
		"CONTROLLER_KEY": "${CONTROLLER_KEY}",
		"AUTH_KEY":       "${CONTROLLER_KEY}",
		"CLUSTER_TOKEN":  "${CLUSTER_TOKEN}",
		// The scheduler's name for the token the host agents accept.
		"FLYNN_CLUSTER_TOKEN": "${CLUSTER_TOKEN}",
	}

	router := &api.ProcessType{
		Args: []string{"/bin/flynn-router",
			"--http-addr", ":${HTTP_PORT}", "--https-addr", ":${HTTPS_PORT}",
			"--api-addr", ":${ROUTER_API_PORT}",
			"--tls-cert", "/etc/flynn/tls.crt", "--tls-key", "/etc/flynn/tls.key"},
		HostNetwork: true, Omni: true,
		Ports: []api.Port{{Port: 0, Proto: "tcp", Service: &api.Service{Name: "router-api", Create: true, Check: &api.HealthCheck{Type: "tcp"}}}},
		// Secrets in the environment, not on the command line (which
		// any process on the host can read in /proc).
		Env: map[string]string{"PORT": "${ROUTER_API_PORT}", "FLYNN_CLUSTER_TOKEN": "${SERVICE_TOKEN}", "ROUTER_COOKIE_KEY": "${ROUTER_COOKIE_KEY}"},
	}

	blob := proc("blobstore", "BLOBSTORE_PORT", "blobstore", "--dir", "/data")
	blob.Env["FLYNN_AUTH_KEY"] = "${CONTROLLER_KEY}"
	// To find its peers in discoverd: writes go to 2 instances.
	// The service token, not the cluster token: these components need
	// discoverd, not the host agents.
	blob.Env["FLYNN_CLUSTER_TOKEN"] = "${SERVICE_TOKEN}"
	// Host agents fetch layers with the service token: it may read.
	blob.Env["FLYNN_BLOB_READ_KEY"] = "${SERVICE_TOKEN}"
	logagg := proc("logaggregator", "LOGAGG_PORT", "logaggregator")
	// To find its peers: each instance gets every line from the hosts
	// and fills itself from a peer at start.
	logagg.Env["FLYNN_CLUSTER_TOKEN"] = "${SERVICE_TOKEN}"
	// Reads and writes need it: host agents ship with it, the
	// controller reads with it.
	logagg.Env["FLYNN_AUTH_KEY"] = "${SERVICE_TOKEN}"

	git := proc("gitreceive", "GIT_HTTP_PORT", "gitreceive")
	git.Env["SSH_ADDR"] = ":${GIT_SSH_PORT}"
	git.Env["CONTROLLER_URL"] = "http://controller.discoverd"
	git.Env["CONTROLLER_KEY"] = "${CONTROLLER_KEY}"
	git.Env["BLOBSTORE_URL"] = "http://blobstore.discoverd"
	git.Env["STACK_URL"] = "${STACK_URL}"
	git.Env["STACK_SHA256"] = "${STACK_SHA256}"
	git.Env["FLYNN_HOST_TOKEN"] = "${CLUSTER_TOKEN}"
	git.Env["FLYNN_HOST_BIN"] = api.HostMountPrefix + "bin"

	// The PostgreSQL appliance (internal/appliance/postgres): the server
	// on its first port (service "postgres", whose leader apps reach
	// through the routers' TCP route), the provider API on its second.
	// Its data is on a volume, kept on its host.
	pg := &api.ProcessType{
		Args: []string{"/bin/flynn-postgres", "--data-dir", "/data",
			"--public-host", "${PG_PUBLIC_HOST}", "--public-port", "${PG_PUBLIC_PORT}"},
		HostNetwork: true,
		Ports: []api.Port{
			{Proto: "tcp", Service: &api.Service{Name: "postgres", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
			{Proto: "tcp", Service: &api.Service{Name: "postgres-api", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
		},
		Volumes: []api.VolumeReq{{Path: "/data"}},
		Env:     map[string]string{"POSTGRES_API_KEY": "${POSTGRES_API_KEY}"},
	}

	// The MySQL appliance (internal/appliance/mysql), in the same shape;
	// scaled to 0 by default, as Flynn did: flynn -a mysql scale
	// mysql=1 starts it.
	my := &api.ProcessType{
		Args: []string{"/bin/flynn-mysql", "--data-dir", "/data",
			"--public-host", "${MYSQL_PUBLIC_HOST}", "--public-port", "${MYSQL_PUBLIC_PORT}"},
		HostNetwork: true,
		Ports: []api.Port{
			{Proto: "tcp", Service: &api.Service{Name: "mysql", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
			{Proto: "tcp", Service: &api.Service{Name: "mysql-api", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
		},
		Volumes: []api.VolumeReq{{Path: "/data"}},
		Env:     map[string]string{"MYSQL_API_KEY": "${MYSQL_API_KEY}"},
	}

	// The Redis appliance (internal/appliance/redis): a redis-server per
	// database behind one proxy port (service "redis"), the provider API
	// on its second port, the data on a volume. Running by default: with
	// no database it is one small process.
	rd := &api.ProcessType{
		Args: []string{"/bin/flynn-redis", "--data-dir", "/data",
			"--public-host", "${REDIS_PUBLIC_HOST}", "--public-port", "${REDIS_PUBLIC_PORT}"},
		HostNetwork: true,
		Ports: []api.Port{
			{Proto: "tcp", Service: &api.Service{Name: "redis", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
			{Proto: "tcp", Service: &api.Service{Name: "redis-api", Create: true, Check: &api.HealthCheck{Type: "tcp"}}},
		},
		Volumes: []api.VolumeReq{{Path: "/data"}},
		Env:     map[string]string{"REDIS_API_KEY": "${REDIS_API_KEY}"},
	}

	return &Manifest{
		Apps: map[string]*AppSpec{
			"redis": {Stack: true, RequiresStack: true, Strategy: api.StrategyOneDownOneUp,
				Processes: map[string]*api.ProcessType{"redis": rd}, Formation: map[string]int{"redis": 1}},
			"mysql": {Stack: true, RequiresStack: true, Strategy: api.StrategyOneDownOneUp,
				Processes: map[string]*api.ProcessType{"mysql": my}, Formation: map[string]int{"mysql": 0}},
			"postgres": {Stack: true, RequiresStack: true, Strategy: api.StrategyOneDownOneUp,
				Processes: map[string]*api.ProcessType{"postgres": pg}, Formation: map[string]int{"postgres": 1}},
			"controller":    {Critical: true, Spread: true, Etcd: true, Processes: map[string]*api.ProcessType{"web": ctl}, Formation: map[string]int{"web": 1}},
			"scheduler":     {Critical: true, Restore: true, Spread: true, Etcd: true, Processes: map[string]*api.ProcessType{"scheduler": sched}, Formation: map[string]int{"scheduler": 1}},
			"router":        {Critical: true, Root: true, Etcd: true, Processes: map[string]*api.ProcessType{"app": router}, Formation: map[string]int{"app": 1}},
			"blobstore":     {Critical: true, DataDir: true, Spread: true, Processes: map[string]*api.ProcessType{"web": blob}, Formation: map[string]int{"web": 1}},
			"logaggregator": {Spread: true, Processes: map[string]*api.ProcessType{"app": logagg}, Formation: map[string]int{"app": 1}},
			"gitreceive":    {DataDir: true, Stack: true, Spread: true, Etcd: true, Processes: map[string]*api.ProcessType{"app": git}, Formation: map[string]int{"app": 1}},
		},
		Steps: []*Step{
			{ID: "keys", Action: ActionGenKeys},
			{ID: "tls", Action: ActionGenTLS},
			{ID: "controller", Action: ActionRunApp, App: "controller"},
			{ID: "wait-controller", Action: ActionWaitController},
			{ID: "controller-inception", Action: ActionAddApp, App: "controller"},
			{ID: "scheduler", Action: ActionRunApp, App: "scheduler"},
			{ID: "scheduler-app", Action: ActionAddApp, App: "scheduler"},
			{ID: "logaggregator", Action: ActionDeployApp, App: "logaggregator"},
			{ID: "blobstore", Action: ActionDeployApp, App: "blobstore"},
			{ID: "upload-stack", Action: ActionUploadStack},
			{ID: "router", Action: ActionDeployApp, App: "router"},
			{ID: "gitreceive", Action: ActionDeployApp, App: "gitreceive", Optional: true},
			{ID: "route-controller", Action: ActionAddRoute, App: "controller", Domain: "controller.${CLUSTER_DOMAIN}", Service: "controller"},
			{ID: "route-git", Action: ActionAddRoute, App: "gitreceive", Domain: "git.${CLUSTER_DOMAIN}", Service: "gitreceive"},
			// The image registry is served by gitreceive too. An image
			// layer may be larger than the router's default body limit;
			// a stalled upload is still cut off by its idle timeout.
			{ID: "route-images", Action: ActionAddRoute, App: "gitreceive", Domain: "images.${CLUSTER_DOMAIN}", Service: "gitreceive", MaxBodyBytes: -1},
			{ID: "postgres", Action: ActionDeployApp, App: "postgres", Optional: true, Timeout: api.Duration(3 * time.Minute)},
			{ID: "route-postgres", Action: ActionAddRoute, App: "postgres", Type: api.RouteTCP, Port: "${PG_PUBLIC_PORT}", Service: "postgres", Leader: true, Optional: true},
			{ID: "mysql", Action: ActionDeployApp, App: "mysql", Optional: true},
			{ID: "route-mysql", Action: ActionAddRoute, App: "mysql", Type: api.RouteTCP, Port: "${MYSQL_PUBLIC_PORT}", Service: "mysql", Leader: true, Optional: true},
			{ID: "provider-mysql", Action: ActionAddProvider, App: "mysql", Name: "mysql", URL: "http://flynn:${MYSQL_API_KEY}@mysql-api.discoverd/databases", Optional: true},
			{ID: "redis", Action: ActionDeployApp, App: "redis", Optional: true},
			{ID: "route-redis", Action: ActionAddRoute, App: "redis", Type: api.RouteTCP, Port: "${REDIS_PUBLIC_PORT}", Service: "redis", Leader: true, Optional: true},
			{ID: "provider-redis", Action: ActionAddProvider, App: "redis", Name: "redis", URL: "http://flynn:${REDIS_API_KEY}@redis-api.discoverd/databases", Optional: true},
			{ID: "provider-postgres", Action: ActionAddProvider, App: "postgres", Name: "postgres", URL: "http://flynn:${POSTGRES_API_KEY}@postgres-api.discoverd/databases", Optional: true},
			{ID: "wait-controller-route", Action: ActionWaitHTTP, URL: "http://127.0.0.1:${HTTP_PORT}/ping", Host: "controller.${CLUSTER_DOMAIN}", Status: []int{200, 401}},
		},
	}
}
