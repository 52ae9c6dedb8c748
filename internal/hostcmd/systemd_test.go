package hostcmd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnitFile(t *testing.T) {
	u := unitFile("/usr/local/bin/flynn-host", []string{"daemon", "--state-dir", "/var/lib/my flynn", "--tag", "rack=a%1$"}, "/var/lib/my flynn")
	for _, want := range []string{
		"After=network-online.target",
		"Wants=network-online.target",
		"Restart=always",
		"KillMode=process", // supervisors outlive the daemon
		`ExecStart=/usr/local/bin/flynn-host daemon --state-dir "/var/lib/my flynn" --tag rack=a%%1$$`,
		"WantedBy=multi-user.target",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	if unitName("/var/lib/flynn") != "flynn-host.service" || unitName("/var/lib/flynn/") != "flynn-host.service" {
		t.Errorf("default unit name = %s", unitName("/var/lib/flynn"))
	}
	if a, b := unitName("/srv/a"), unitName("/srv/b"); a == b || !strings.HasPrefix(a, "flynn-host-") {
		t.Errorf("unit names of two state dirs: %s, %s", a, b)
	}
}

// TestInstallService: up writes the unit, reloads, enables and starts it;
// the same unit again is only started; a changed one restarts the daemon;
// down disables it and removes the file.
func TestInstallService(t *testing.T) {
	dir := t.TempDir()
	oldDir, oldRun, oldBooted := systemdUnitDir, runSystemctl, systemdBooted
	t.Cleanup(func() { systemdUnitDir, runSystemctl, systemdBooted = oldDir, oldRun, oldBooted })
	systemdUnitDir = dir
	systemdBooted = func() bool { return true }
	var calls []string
	runSystemctl = func(ctx context.Context, args ...string) error {
		calls = append(calls, strings.Join(args, " "))
		return nil
	}
	ctx := context.Background()
	var out strings.Builder
	if err := installService(ctx, &out, "/var/lib/flynn", "/bin/flynn-host", []string{"daemon"}); err != nil {
		t.Fatal(err)
	}
	if err := installService(ctx, &out, "/var/lib/flynn", "/bin/flynn-host", []string{"daemon"}); err != nil {
		t.Fatal(err)
	}
	if err := installService(ctx, &out, "/var/lib/flynn", "/bin/flynn-host", []string{"daemon", "--tag", "x=y"}); err != nil {
		t.Fatal(err)
	}
	want := "daemon-reload|enable flynn-host.service|restart flynn-host.service|" +
		"enable flynn-host.service|start flynn-host.service|" +
		"daemon-reload|enable flynn-host.service|restart flynn-host.service"
	if got := strings.Join(calls, "|"); got != want {
		t.Errorf("systemctl calls:\n got %s\nwant %s", got, want)
	}
	b, err := os.ReadFile(filepath.Join(dir, "flynn-host.service"))
	if err != nil || !strings.Contains(string(b), "--tag x=y") {
		t.Fatalf("unit file: %v\n%s", err, b)
	}
	calls = nil
	if err := removeService(ctx, &out, "/var/lib/flynn"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "flynn-host.service")); !os.IsNotExist(err) {
		t.Errorf("unit file left: %v", err)
	}
	if got := strings.Join(calls, "|"); got != "disable --now flynn-host.service|daemon-reload" {
		t.Errorf("down's systemctl calls: %s", got)
	}
}
