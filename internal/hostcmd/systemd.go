package hostcmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/flynnrebuilt/flynn/internal/daemon"
)

// On a machine whose init is systemd, `up` runs the host daemon as a
// systemd service (restarted when it dies, started at boot after the
// network is up); elsewhere (containers, CI) as a background process.

// systemdUnitDir is where up installs the daemon's unit.
var systemdUnitDir = "/etc/systemd/system"

// systemdBooted reports whether systemd is the init of this machine, as
// sd_booted(3) tells.
var systemdBooted = func() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// unitName is the daemon's unit for stateDir: flynn-host.service for the
// default state dir, else one named after the dir (several clusters can
// share a machine in development).
func unitName(stateDir string) string {
	if filepath.Clean(stateDir) == daemon.DefaultStateDir {
		return "flynn-host.service"
	}
	h := sha256.Sum256([]byte(filepath.Clean(stateDir)))
	return "flynn-host-" + hex.EncodeToString(h[:4]) + ".service"
}

// unitFile is the systemd unit that runs `exe args...` as the host
// daemon. KillMode=process: stopping or restarting the daemon must not
// kill the job supervisors, which outlive it by design.
func unitFile(exe string, args []string, stateDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[Unit]
Description=Flynn host daemon (%s)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=%s
Restart=always
RestartSec=2
KillMode=process
LimitNOFILE=1048576
StandardOutput=append:%s
StandardError=append:%s

[Install]
WantedBy=multi-user.target
`, stateDir, systemdCommand(append([]string{exe}, args...)), filepath.Join(stateDir, "daemon.log"), filepath.Join(stateDir, "daemon.log"))
	return b.String()
}

// systemdCommand quotes a command line for ExecStart: each word in double
// quotes when it needs them, with systemd's specifiers (%) and variable
// expansion ($) escaped.
func systemdCommand(words []string) string {
	out := make([]string, len(words))
	for i, w := range words {
		w = strings.ReplaceAll(w, "%", "%%")
		w = strings.ReplaceAll(w, "$", "$$")
		if w == "" || strings.ContainsAny(w, " \t\"'\\;") {
			w = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(w) + `"`
		}
		out[i] = w
	}
	return strings.Join(out, " ")
}

// runSystemctl runs systemctl args.
var runSystemctl = func(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// installService writes the daemon's unit for stateDir and starts it,
// restarting it when the unit changed; it reports what it did on out.
func installService(ctx context.Context, out io.Writer, stateDir, exe string, args []string) error {
	name := unitName(stateDir)
	file := filepath.Join(systemdUnitDir, name)
	unit := unitFile(exe, args, stateDir)
	old, err := os.ReadFile(file)
	changed := err != nil || string(old) != unit
	if changed {
		if err := os.WriteFile(file, []byte(unit), 0o644); err != nil {
			return fmt.Errorf("install the systemd unit: %w", err)
		}
		if err := runSystemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	if err := runSystemctl(ctx, "enable", name); err != nil {
		return err
	}
	verb := "start"
	if changed {
		verb = "restart" // a running daemon with the old unit's arguments
	}
	if err := runSystemctl(ctx, verb, name); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> daemon runs as the systemd service %s (%s, log %s)\n", name, file, filepath.Join(stateDir, "daemon.log"))
	return nil
}

// removeService stops and removes the daemon's unit for stateDir, if up
// installed one.
func removeService(ctx context.Context, out io.Writer, stateDir string) error {
	name := unitName(stateDir)
	file := filepath.Join(systemdUnitDir, name)
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	if systemdBooted() {
		errs = append(errs, runSystemctl(ctx, "disable", "--now", name))
	}
	if err := os.Remove(file); err != nil {
		errs = append(errs, err)
	}
	if systemdBooted() {
		errs = append(errs, runSystemctl(ctx, "daemon-reload"))
	}
	fmt.Fprintf(out, "==> removed the systemd service %s\n", name)
	return errors.Join(errs...)
}
