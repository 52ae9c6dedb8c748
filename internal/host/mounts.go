package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AllowedMount is a host path jobs may bind-mount: the path itself or
// anything under it, read-only unless Writable. Any other path on the
// host is out of a job's reach, whoever asks (the platform's named mounts
// aside, see MountPrefix).
type AllowedMount struct {
	Path     string
	Writable bool
}

func (m AllowedMount) String() string {
	if m.Writable {
		return m.Path + ":rw"
	}
	return m.Path
}

// ParseAllowedMount parses "PATH" (read-only) or "PATH:rw".
func ParseAllowedMount(s string) (AllowedMount, error) {
	p, mode, hasMode := strings.Cut(s, ":")
	m := AllowedMount{Path: p}
	switch {
	case hasMode && mode == "rw":
		m.Writable = true
	case hasMode && mode != "ro":
		return m, fmt.Errorf("allowed mount %q: the mode after ':' is ro or rw", s)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return m, fmt.Errorf("allowed mount %q: give a clean absolute host path", s)
	}
	return m, nil
}

// DefaultCABundle is the host's CA bundle, which build jobs mount.
const DefaultCABundle = "/etc/ssl/certs/ca-certificates.crt"

// PlatformMounts are the host paths the platform itself mounts into its
// jobs by path: the flynn-host binary (build and app jobs run it) and the
// host's CA bundle (builds fetch over HTTPS). Its other files (the
// cluster's certificates, the system apps' data) are named mounts
// (MountPrefix), which Config.ResolveMount turns into paths.
func PlatformMounts() []AllowedMount {
	out := []AllowedMount{{Path: DefaultCABundle}}
	if exe, err := os.Executable(); err == nil {
		out = append(out, AllowedMount{Path: exe})
	}
	return out
}

// mountAllowList checks host paths against the allowed mounts.
type mountAllowList []AllowedMount

func newMountAllowList(ms []AllowedMount) mountAllowList {
	var out mountAllowList
	for _, m := range ms {
		out = append(out, m)
		// A root given through a symlink also matches by its target,
		// which is what a resolved location is compared with.
		if r, err := filepath.EvalSymlinks(m.Path); err == nil && r != m.Path {
			out = append(out, AllowedMount{Path: r, Writable: m.Writable})
		}
	}
	return out
}

// check reports why location may not be mounted (writable as asked), or
// "" when it may.
func (l mountAllowList) check(location string, writable bool) string {
	readOnly := false
	for _, m := range l {
		if location == m.Path || m.Path == "/" || strings.HasPrefix(location, m.Path+"/") {
			if !writable || m.Writable {
				return ""
			}
			readOnly = true
		}
	}
	if readOnly {
		return fmt.Sprintf("host path %s may only be mounted read-only", location)
	}
	paths := make([]string, len(l))
	for i, m := range l {
		paths[i] = m.String()
	}
	return fmt.Sprintf("host path %s is not one jobs may mount (allowed: %s; an operator adds paths with --mount-allow)", location, strings.Join(paths, ", "))
}
