package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// System apps (meta flynn-system-app=true) run the platform itself: only
// they may run privileged releases (host network, host mounts beyond the
// read-only ones every app job gets, uid or gid 0), they cannot be
// deleted, and only a caller holding a system key (Config.SystemKeys: the
// bootstrap) may set, change or remove flynn-system-* meta. So a tenant
// app cannot be made to run as root on a host through the controller,
// whoever holds the cluster key.

// SystemMetaPrefix starts the app and release meta keys that only a
// system-key holder may set.
const SystemMetaPrefix = "flynn-system-"

// TenantMounts are the mount locations any app's processes may ask for,
// read-only: the flynn-host binary (slugs run through its slugrunner), by
// name or where it is installed, the cluster's public TLS files and the
// host's CA bundle. Anything else is for system apps only.
var TenantMounts = []string{
	api.HostMountPrefix + "bin",
	api.HostMountPrefix + "tls-public",
	"/usr/local/bin/flynn-host",
	"/usr/bin/flynn-host",
	"/etc/ssl/certs/ca-certificates.crt",
}

type systemCallerKey struct{}

// systemAuth accepts the cluster keys and the system keys; a request with
// a system key is marked so that isSystemCaller reports it.
type systemAuth struct {
	users, system *httpapi.KeyAuth
}

func (a systemAuth) require(open func(*http.Request) bool, next http.Handler) http.Handler {
	users := a.users.Require(open, next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.system != nil && a.system.Check(r) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), systemCallerKey{}, true)))
			return
		}
		users.ServeHTTP(w, r)
	})
}

// isSystemCaller reports whether r carries a system key.
func isSystemCaller(r *http.Request) bool {
	v, _ := r.Context().Value(systemCallerKey{}).(bool)
	return v
}

func isSystemApp(app *api.App) bool { return app.Meta[api.MetaSystemApp] == "true" }

func systemMeta(meta map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range meta {
		if strings.HasPrefix(k, SystemMetaPrefix) {
			out[k] = v
		}
	}
	return out
}

// checkSystemMeta refuses a change of the flynn-system-* entries from old
// to new meta unless r carries a system key.
func checkSystemMeta(r *http.Request, old, new map[string]string) error {
	if isSystemCaller(r) || maps.Equal(systemMeta(old), systemMeta(new)) {
		return nil
	}
	return api.Forbidden("%s* meta marks the platform's own apps: it cannot be set, changed or removed with the cluster key", SystemMetaPrefix)
}

// errSystemApp is what deleting or pushing to a system app gets.
func errSystemApp(app *api.App, what string) error {
	return api.Forbidden("%s is a system app (it runs part of the platform): it cannot be %s", app.Name, what)
}

// privilege reports why rel (with its artifacts, and extra ones a
// one-off job names) may only run in a system app, or "" when any app may
// run it.
func (s *Server) privilege(ctx context.Context, rel *api.Release, extraArtifacts []string) (string, error) {
	if k := firstSystemKey(rel.Meta); k != "" {
		return fmt.Sprintf("its meta sets %s", k), nil
	}
	for _, typ := range slices.Sorted(maps.Keys(rel.Processes)) {
		p := rel.Processes[typ]
		if p == nil {
			continue
		}
		if p.HostNetwork {
			return fmt.Sprintf("process type %s asks for the host's network (host_network)", typ), nil
		}
		for _, m := range p.Mounts {
			if m.Writeable || !(slices.Contains(TenantMounts, m.Location) || slices.Contains(s.cfg.TenantMounts, m.Location)) {
				return fmt.Sprintf("process type %s mounts host path %s (apps may mount %s, read-only)", typ, m.Location, strings.Join(TenantMounts, ", ")), nil
			}
		}
	}
	for _, id := range slices.Concat(rel.ArtifactIDs, extraArtifacts) {
		a, err := s.store.GetArtifact(ctx, id)
		if errors.Is(err, api.ErrNotFound) {
			continue // reported where the artifact is needed
		}
		if err != nil {
			return "", err
		}
		if why := artifactPrivilege(a); why != "" {
			return why, nil
		}
	}
	return "", nil
}

// artifactPrivilege reports why a runs its processes as root, or "".
func artifactPrivilege(a *api.Artifact) string {
	if a.Manifest == nil {
		return ""
	}
	for name, ep := range a.Manifest.Entrypoints {
		if ep != nil && ((ep.Uid != nil && *ep.Uid == 0) || (ep.Gid != nil && *ep.Gid == 0)) {
			return fmt.Sprintf("artifact %s runs entrypoint %s as uid or gid 0", a.ID, name)
		}
	}
	return ""
}

func firstSystemKey(meta map[string]string) string {
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		if strings.HasPrefix(k, SystemMetaPrefix) {
			return k
		}
	}
	return ""
}

// checkRelease refuses to give a privileged release to an app that is not
// a system app (app nil: a release not bound to an app, which only a
// system-key holder may create privileged).
func (s *Server) checkRelease(r *http.Request, app *api.App, rel *api.Release, extraArtifacts []string) error {
	if app != nil && isSystemApp(app) {
		return nil
	}
	if app == nil && isSystemCaller(r) {
		return nil
	}
	why, err := s.privilege(r.Context(), rel, extraArtifacts)
	if err != nil || why == "" {
		return err
	}
	if app == nil {
		return api.Forbidden("release is privileged (%s): only system apps run such releases; create it with the app_id of one", why)
	}
	return api.Forbidden("app %s may not run release %s: %s, which only system apps (the platform's own) may", app.Name, rel.ID, why)
}

// checkReleaseID is checkRelease for the release with id, when there is
// one (a missing release is reported by the caller's own lookup).
func (s *Server) checkReleaseID(r *http.Request, app *api.App, id string) error {
	rel, err := s.store.GetRelease(r.Context(), id)
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.checkRelease(r, app, rel, nil)
}
