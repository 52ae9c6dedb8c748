package hostcmd

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/flynnrebuilt/flynn/internal/component"
)

func TestComponentCmd(t *testing.T) {
	for _, tt := range []struct {
		argv0 string
		want  string // the command's name; "" for none
	}{
		{"/bin/flynn-router", "router"},
		{"flynn-gitreceive", "gitreceive"},
		{"/bin/flynn-postgres", "postgres"},
		{"/usr/local/bin/flynn-host", ""},
		{"/bin/flynn-control", ""},
		{"/bin/flynn-nosuch", ""},
		{"/bin/router", ""},
	} {
		c, ok := ComponentCmd(tt.argv0)
		got := ""
		if ok {
			got = c(component.Env{}).Name()
		}
		if got != tt.want {
			t.Errorf("ComponentCmd(%q) = %q, want %q", tt.argv0, got, tt.want)
		}
	}
}

func TestComponentBinary(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "flynn-host")
	control := filepath.Join(dir, "flynn-control")
	for _, f := range []string{self, control} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Not executable: not installed.
	if err := os.WriteFile(filepath.Join(dir, "flynn-data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, want string }{
		{"router", control},
		{"controller", control},
		{"blobstore", self},
		{"postgres", self},
	} {
		if got, err := componentBinary(self, tt.name); err != nil || got != tt.want {
			t.Errorf("componentBinary(%s) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	m := &hostMounts{stateDir: dir}
	for _, bad := range []string{"flynn-host:component/host", "flynn-host:component/../bin", "flynn-host:component/", "flynn-host:component/redis-restore"} {
		if got, err := m.resolve(t.Context(), bad); err == nil {
			t.Errorf("resolve %s = %q, want an error", bad, got)
		}
	}
}
