package cli

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/flynnrebuilt/flynn/api"
)

func TestCheckImageCommand(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	push := func(repo string, cmd []string) string {
		img := empty.Image
		cf, _ := img.ConfigFile()
		cf.Config.Cmd = cmd
		img, _ = mutate.ConfigFile(img, cf)
		ref := reg + "/" + repo + ":v1"
		r, _ := name.ParseReference(ref)
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		return "docker://" + ref
	}
	withCmd, noCmd := push("web", []string{"/server"}), push("nocmd", nil)
	web := &api.Release{Processes: map[string]*api.ProcessType{"web": webProcess("app")}}
	withArgs := &api.Release{Processes: map[string]*api.ProcessType{"web": {Args: []string{"/x"}}}}
	tests := []struct {
		name, uri string
		rel       *api.Release
		wantErr   string
		wantNote  bool
	}{
		{"image with a command", withCmd, web, "", false},
		{"image without a command", noCmd, web, "has no command", false},
		{"args given", noCmd, withArgs, "", false},
		{"missing image", "docker://" + reg + "/nope:v1", web, "is not in its registry", false},
		{"bad reference", "docker://UPPER/Case", web, "invalid image reference", false},
		{"unreachable registry", "docker://127.0.0.1:1/web:v1", web, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := checkImageCommand(context.Background(), &out, tt.uri, tt.rel)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
			if got := strings.Contains(out.String(), "note:"); got != tt.wantNote {
				t.Errorf("output %q, want a note: %v", out.String(), tt.wantNote)
			}
		})
	}
}
