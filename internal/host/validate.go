package host

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/image"
)

var jobIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Limits on resources a job may ask for.
const (
	minMemory   = 4 << 20
	minTempDisk = 1 << 20
	maxMaxFD    = 1 << 20
	maxMaxProcs = 1 << 22
	maxPorts    = 64
)

// forbiddenTargets are container paths a mount may not cover.
var forbiddenTargets = []string{"/", "/proc", "/sys", "/dev"}

// validate checks a job spec before anything is created for it.
func (a *Agent) validate(j *api.HostJob) error {
	if !jobIDRe.MatchString(j.ID) {
		return api.Validation("id", "job id %q must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", j.ID)
	}
	if len(j.Artifacts) == 0 {
		return api.Validation("artifacts", "a job needs an image: give at least one artifact")
	}
	for i, art := range j.Artifacts {
		f := fmt.Sprintf("artifacts[%d]", i)
		if art == nil {
			return api.Validation(f, "artifact is null")
		}
		switch art.Type {
		case api.ArtifactTypeDocker:
			if art.URI == "" {
				return api.Validation(f+".uri", "a docker artifact needs an image reference in uri")
			}
		case api.ArtifactTypeFlynn:
			if art.Manifest == nil || len(art.Manifest.Rootfs) == 0 || art.Manifest.Rootfs[0] == nil || len(art.Manifest.Rootfs[0].Layers) == 0 {
				return api.Validation(f+".manifest", "a flynn artifact needs a manifest with at least one rootfs layer")
			}
			for k, l := range art.Manifest.Rootfs[0].Layers {
				lf := fmt.Sprintf("%s.manifest.rootfs[0].layers[%d]", f, k)
				if l == nil {
					return api.Validation(lf, "layer is null")
				}
				if l.URL == LocalBusyboxLayer {
					continue // built by this host; its digest is the host's own
				}
				if !image.ValidDigest(l.Hashes["sha256"]) {
					return api.Validation(lf+".hashes.sha256", "layer needs a hex sha256 in hashes.sha256")
				}
				if l.URL == "" {
					if !a.images.Has(l.Hashes["sha256"]) {
						return api.Validation(lf, "unknown layer %s: it is not on this host and has no url", l.Hashes["sha256"])
					}
					continue
				}
				u, err := url.Parse(l.URL)
				if err != nil || (u.Scheme != "file" && u.Scheme != "http" && u.Scheme != "https") {
					return api.Validation(lf+".url", "layer url must be file, http or https")
				}
			}
		default:
			return api.Validation(f+".type", "artifact type must be %q or %q", api.ArtifactTypeFlynn, api.ArtifactTypeDocker)
		}
	}
	c := &j.Config
	for i, s := range c.Args {
		if strings.ContainsRune(s, 0) {
			return api.Validation(fmt.Sprintf("config.args[%d]", i), "argument contains a NUL byte")
		}
	}
	for k, v := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return api.Validation("config.env", "invalid environment variable %q", k)
		}
	}
	if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
		return api.Validation("config.working_dir", "working_dir must be an absolute path")
	}
	if len(c.Ports) > maxPorts {
		return api.Validation("config.ports", "at most %d ports", maxPorts)
	}
	for i, p := range c.Ports {
		f := fmt.Sprintf("config.ports[%d]", i)
		if p.Port < 0 || p.Port > 65535 || (p.Port == 0 && !c.HostNetwork) {
			return api.Validation(f+".port", "port %d is not between 1 and 65535", p.Port)
		}
		if p.Proto != "" && p.Proto != "tcp" && p.Proto != "udp" {
			return api.Validation(f+".proto", "proto must be tcp or udp")
		}
	}
	if len(c.ReachPorts) > maxPorts {
		return api.Validation("config.reach_ports", "at most %d ports", maxPorts)
	}
	for i, p := range c.ReachPorts {
		if p < 1 || p > 65535 {
			return api.Validation(fmt.Sprintf("config.reach_ports[%d]", i), "port %d is not between 1 and 65535", p)
		}
	}
	if len(c.ReachPorts) > 0 && c.HostNetwork {
		return api.Validation("config.reach_ports", "reach_ports is for jobs on the job network, not host_network ones")
	}
	for i, m := range c.Mounts {
		f := fmt.Sprintf("config.mounts[%d]", i)
		if strings.HasPrefix(m.Location, MountPrefix) {
			// Resolved to this host's path when the job starts.
		} else if !cleanAbs(m.Location) {
			return api.Validation(f+".location", "mount location must be a clean absolute host path without '..', or "+MountPrefix+"NAME")
		}
		if !cleanAbs(m.Target) {
			return api.Validation(f+".target", "mount target must be a clean absolute path without '..'")
		}
		for _, t := range forbiddenTargets {
			if m.Target == t || (t != "/" && strings.HasPrefix(m.Target, t+"/")) {
				return api.Validation(f+".target", "cannot mount over %s", t)
			}
		}
		if name, named := strings.CutPrefix(m.Location, MountPrefix); named {
			// The platform's own files: only its data dirs are
			// writable.
			if m.Writeable && !strings.HasPrefix(name, "data/") {
				return api.Validation(f+".location", "%s may only be mounted read-only", m.Location)
			}
		} else if why := a.mounts.check(m.Location, m.Writeable); why != "" {
			return api.Validation(f+".location", "%s", why)
		}
	}
	if err := validateVolumes(c); err != nil {
		return err
	}
	for name, r := range j.Resources {
		f := "resources." + name
		if r.Limit != nil && *r.Limit <= 0 || r.Request != nil && *r.Request < 0 {
			return api.Validation(f, "%s must be positive", name)
		}
		var lim int64
		if r.Limit != nil {
			lim = *r.Limit
		} else if r.Request != nil {
			lim = *r.Request
		}
		switch name {
		case api.ResourceMemory:
			if lim != 0 && lim < minMemory {
				return api.Validation(f, "memory must be at least %d bytes", minMemory)
			}
		case api.ResourceCPU:
		case api.ResourceMaxFD:
			if lim > maxMaxFD {
				return api.Validation(f, "max_fd must be at most %d", maxMaxFD)
			}
		case api.ResourceMaxProcs:
			if lim > maxMaxProcs {
				return api.Validation(f, "max_procs must be at most %d", maxMaxProcs)
			}
		case api.ResourceTempDisk:
			if lim != 0 && lim < minTempDisk {
				return api.Validation(f, "temp_disk must be at least %d bytes", minTempDisk)
			}
		default:
			return api.Validation(f, "unknown resource %q", name)
		}
	}
	return nil
}

func cleanAbs(p string) bool {
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) || strings.ContainsAny(p, ",:") {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return false
		}
	}
	return path.Clean(p) == p
}
