package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveUser(t *testing.T) {
	base, top := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(base, "etc"), 0o755)
	os.MkdirAll(filepath.Join(top, "etc"), 0o755)
	// The top layer's passwd hides the base layer's.
	os.WriteFile(filepath.Join(base, "etc/passwd"), []byte("web:x:1:1::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(top, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(base, "etc/group"), []byte("staff:x:50:\n"), 0o644)
	layers := []string{base, top}
	tests := []struct {
		user     string
		uid, gid uint32
		wantErr  string
	}{
		{"web", 1000, 1001, ""},
		{"1000", 1000, 1001, ""},
		{"4242", 4242, 4242, ""},
		{"4242:7", 4242, 7, ""},
		{"web:staff", 1000, 50, ""},
		{"nobody", 0, 0, "not in the image's passwd"},
		{"web:nogroup", 0, 0, "not in the image's group"},
		{":1", 0, 0, "want USER[:GROUP]"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			uid, gid, err := ResolveUser(layers, tt.user)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || uid != tt.uid || gid != tt.gid {
				t.Errorf("= %d:%d, %v; want %d:%d", uid, gid, err, tt.uid, tt.gid)
			}
		})
	}
	if _, _, err := ResolveUser([]string{t.TempDir()}, "web"); err == nil || !strings.Contains(err.Error(), "no passwd") {
		t.Errorf("no passwd: err = %v", err)
	}
}
