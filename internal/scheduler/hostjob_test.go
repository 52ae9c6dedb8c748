package scheduler

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

func TestHostJobFromFormation(t *testing.T) {
	mem := int64(64 << 20)
	art := &api.Artifact{ID: "art1", Type: api.ArtifactTypeFlynn, URI: "file:///layer"}
	f := &api.ExpandedFormation{
		App: &api.App{ID: "app1", Name: "web-app"},
		Release: &api.Release{ID: "rel1", Env: map[string]string{"A": "release", "B": "release"}, Processes: map[string]*api.ProcessType{
			"web": {
				Args:      []string{"httpd", "-f"},
				Env:       map[string]string{"B": "process"},
				Ports:     []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "web-app-web"}}},
				Resources: api.Resources{api.ResourceMemory: {Limit: &mem}},
			},
		}},
		Artifacts: []*api.Artifact{art},
		Processes: map[string]int{"web": 1},
	}
	j := &Job{UUID: "u1", ID: "h1-u1", HostID: "h1", AppID: "app1", ReleaseID: "rel1", Type: "web", Restarts: 2}
	want := &api.HostJob{
		ID:        "h1-u1",
		Artifacts: []*api.Artifact{art},
		Metadata: map[string]string{
			api.JobMetaApp: "app1", api.JobMetaAppName: "web-app", api.JobMetaRelease: "rel1",
			api.JobMetaProcessType: "web", JobMetaRestarts: "2",
		},
		Config: api.HostJobConfig{
			Args: []string{"httpd", "-f"},
			Env: map[string]string{
				"A": "release", "B": "process",
				"FLYNN_APP_ID": "app1", "FLYNN_APP_NAME": "web-app", "FLYNN_RELEASE_ID": "rel1", "FLYNN_PROCESS_TYPE": "web",
			},
			Ports: []api.Port{{Port: 8080, Proto: "tcp", Service: &api.Service{Name: "web-app-web"}}},
		},
		Resources: api.Resources{api.ResourceMemory: {Limit: &mem}},
	}
	if diff := cmp.Diff(want, HostJob(f, j)); diff != "" {
		t.Fatalf("HostJob (-want +got):\n%s", diff)
	}
}
