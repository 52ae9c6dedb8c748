package controller

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
)

var (
	appNameRe     = regexp.MustCompile(`^[a-z\d]+(-[a-z\d]+)*$`)
	envKeyRe      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	procTypeRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	domainLabelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	idRe          = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)
)

// Limits on request fields.
const (
	maxNameLen      = 100
	maxProcesses    = 10000
	maxDeployTime   = 24 * 3600
	maxMetaEntries  = 256
	maxEnvEntries   = 1024
	maxArgs         = 1024
	maxIDLen        = 200
	maxServiceLen   = 200
	maxDomainLength = 253
)

func validateAppName(field, name string) error {
	if len(name) > maxNameLen {
		return api.Validation(field, "app name is %d characters long; the limit is %d", len(name), maxNameLen)
	}
	if !appNameRe.MatchString(name) {
		return api.Validation(field, "app name %q is invalid: use lower-case letters and digits, separated by single dashes", name)
	}
	return nil
}

func validateID(field, id string) error {
	if len(id) > maxIDLen || !idRe.MatchString(id) {
		return api.Validation(field, "%q is not a valid id", id)
	}
	return nil
}

func validateMeta(field string, meta map[string]string) error {
	if len(meta) > maxMetaEntries {
		return api.Validation(field, "too many meta entries (%d, limit %d)", len(meta), maxMetaEntries)
	}
	for k := range meta {
		if k == "" || len(k) > 256 {
			return api.Validation(field, "meta key %q must have 1-256 characters", k)
		}
	}
	return nil
}

func validateEnv(field string, env map[string]string) error {
	if len(env) > maxEnvEntries {
		return api.Validation(field, "too many env entries (%d, limit %d)", len(env), maxEnvEntries)
	}
	for k, v := range env {
		if len(k) > 256 || !envKeyRe.MatchString(k) {
			return api.Validation(field, "env key %q is invalid: use letters, digits and underscores, not starting with a digit", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return api.Validation(field, "env value of %s contains a NUL byte", k)
		}
	}
	return nil
}

func validateArgs(field string, args []string) error {
	if len(args) > maxArgs {
		return api.Validation(field, "too many arguments (%d, limit %d)", len(args), maxArgs)
	}
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return api.Validation(field, "argument contains a NUL byte")
		}
	}
	return nil
}

func validateProcType(field, name string) error {
	if len(name) > maxNameLen || !procTypeRe.MatchString(name) {
		return api.Validation(field, "process type %q is invalid: use letters, digits, dashes and underscores", name)
	}
	return nil
}

func validateProcesses(field string, procs map[string]int) error {
	for typ, n := range procs {
		if err := validateProcType(field, typ); err != nil {
			return err
		}
		if n < 0 || n > maxProcesses {
			return api.Validation(field, "process count %s=%d is out of range 0-%d", typ, n, maxProcesses)
		}
	}
	return nil
}

func validateTags(field string, tags map[string]map[string]string) error {
	for typ, kv := range tags {
		if err := validateProcType(field, typ); err != nil {
			return err
		}
		if err := validateMeta(field, kv); err != nil {
			return err
		}
	}
	return nil
}

func validateResources(field string, res api.Resources) error {
	for name, spec := range res {
		switch name {
		case api.ResourceMemory, api.ResourceCPU, api.ResourceMaxFD, api.ResourceMaxProcs, api.ResourceTempDisk:
		default:
			return api.Validation(field, "unknown resource %q", name)
		}
		if (spec.Request != nil && *spec.Request < 0) || (spec.Limit != nil && *spec.Limit < 0) {
			return api.Validation(field, "resource %s must not be negative", name)
		}
		if spec.Request != nil && spec.Limit != nil && *spec.Request > *spec.Limit {
			return api.Validation(field, "resource %s request exceeds its limit", name)
		}
	}
	return nil
}

func validateApp(app *api.App) error {
	if app.Strategy != "" && !slices.Contains(api.Strategies, app.Strategy) {
		return api.Validation("strategy", "unknown deploy strategy %q: use one of %s", app.Strategy, strings.Join(api.Strategies, ", "))
	}
	if v, ok := app.Meta[api.MetaDeployBatchSize]; ok {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > maxProcesses {
			return api.Validation("meta", "%s must be a whole number of jobs from 1 to %d, not %q", api.MetaDeployBatchSize, maxProcesses, v)
		}
	}
	if app.DeployTimeout < 0 || app.DeployTimeout > maxDeployTime {
		return api.Validation("deploy_timeout", "deploy_timeout must be 0-%d seconds", maxDeployTime)
	}
	return validateMeta("meta", app.Meta)
}

func validateArtifact(a *api.Artifact) error {
	if a.ID != "" {
		if err := validateID("id", a.ID); err != nil {
			return err
		}
	}
	switch a.Type {
	case api.ArtifactTypeFlynn, api.ArtifactTypeDocker, "file":
	case "":
		return api.Validation("type", "type is required (flynn or docker)")
	default:
		return api.Validation("type", "unknown artifact type %q (want flynn or docker)", a.Type)
	}
	if a.URI == "" && a.Manifest == nil {
		return api.Validation("uri", "uri is required")
	}
	if len(a.URI) > 4096 {
		return api.Validation("uri", "uri is too long")
	}
	if a.Size < 0 {
		return api.Validation("size", "size must not be negative")
	}
	if a.Manifest != nil {
		for i, rf := range a.Manifest.Rootfs {
			if rf == nil {
				return api.Validation("manifest", "rootfs[%d] is null", i)
			}
			for j, l := range rf.Layers {
				if l == nil || l.ID == "" || l.Length < 0 {
					return api.Validation("manifest", "rootfs[%d].layers[%d] needs an id and a non-negative length", i, j)
				}
			}
		}
		for name, ep := range a.Manifest.Entrypoints {
			if ep == nil {
				return api.Validation("manifest", "entrypoint %q is null", name)
			}
			if err := validateEnv("manifest", ep.Env); err != nil {
				return err
			}
		}
	}
	return validateMeta("meta", a.Meta)
}

func validateRelease(r *api.Release) error {
	if r.ID != "" {
		if err := validateID("id", r.ID); err != nil {
			return err
		}
	}
	if r.AppID != "" {
		if err := validateID("app_id", r.AppID); err != nil {
			return err
		}
	}
	for i, id := range r.ArtifactIDs {
		if err := validateID(fmt.Sprintf("artifacts[%d]", i), id); err != nil {
			return err
		}
	}
	if err := validateEnv("env", r.Env); err != nil {
		return err
	}
	if err := validateMeta("meta", r.Meta); err != nil {
		return err
	}
	for typ, p := range r.Processes {
		field := "processes." + typ
		if err := validateProcType("processes", typ); err != nil {
			return err
		}
		if p == nil {
			return api.Validation(field, "process type %s is null", typ)
		}
		if err := validateArgs(field+".args", p.Args); err != nil {
			return err
		}
		if err := validateEnv(field+".env", p.Env); err != nil {
			return err
		}
		if err := validateResources(field+".resources", p.Resources); err != nil {
			return err
		}
		for i, port := range p.Ports {
			if port.Port < 0 || port.Port > 65535 {
				return api.Validation(fmt.Sprintf("%s.ports[%d].port", field, i), "port %d is out of range", port.Port)
			}
			switch port.Proto {
			case "", "tcp", "udp":
			default:
				return api.Validation(fmt.Sprintf("%s.ports[%d].proto", field, i), "proto must be tcp or udp")
			}
			if port.Service != nil && port.Service.Name == "" {
				return api.Validation(fmt.Sprintf("%s.ports[%d].service.name", field, i), "service name is required")
			}
		}
		for i, v := range p.Volumes {
			if !strings.HasPrefix(v.Path, "/") {
				return api.Validation(fmt.Sprintf("%s.volumes[%d].path", field, i), "volume path must be absolute")
			}
		}
	}
	return nil
}

// validateDomain checks a route domain: DNS labels, optionally a leading
// "*." wildcard.
func validateDomain(field, d string) error {
	if d == "" {
		return api.Validation(field, "domain is required for an http route")
	}
	if len(d) > maxDomainLength {
		return api.Validation(field, "domain is longer than %d characters", maxDomainLength)
	}
	labels := strings.Split(strings.TrimPrefix(d, "*."), ".")
	for _, l := range labels {
		if len(l) > 63 || !domainLabelRe.MatchString(l) {
			return api.Validation(field, "domain %q is invalid: use lower-case DNS labels, optionally starting with *.", d)
		}
	}
	return nil
}

// validateCertificate checks that cert and key are PEM, parse, and match.
func validateCertificate(c *api.Certificate) error {
	if c == nil {
		return nil
	}
	block, _ := pem.Decode([]byte(c.Cert))
	if block == nil || block.Type != "CERTIFICATE" {
		return api.Validation("certificate.cert", "certificate is not a PEM CERTIFICATE block")
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return api.Validation("certificate.cert", "certificate does not parse: %v", err)
	}
	if c.Key == "" {
		return api.Validation("certificate.key", "certificate key is required")
	}
	if kb, _ := pem.Decode([]byte(c.Key)); kb == nil {
		return api.Validation("certificate.key", "key is not PEM")
	}
	if _, err := tls.X509KeyPair([]byte(c.Cert), []byte(c.Key)); err != nil {
		return api.Validation("certificate.key", "key does not match the certificate: %v", err)
	}
	return nil
}

func validateRoute(r *api.Route) error {
	switch r.Type {
	case api.RouteHTTP:
		if err := validateDomain("domain", r.Domain); err != nil {
			return err
		}
		if r.Path != "" && (!strings.HasPrefix(r.Path, "/") || strings.ContainsAny(r.Path, " ?#\x00")) {
			return api.Validation("path", "path must start with / and contain no spaces, ? or #")
		}
		if err := validateCertificate(r.Certificate); err != nil {
			return err
		}
	case api.RouteTCP:
		if r.Domain != "" || r.Certificate != nil || r.Sticky || r.Path != "" {
			return api.Validation("type", "domain, certificate, sticky and path apply only to http routes")
		}
	case "":
		return api.Validation("type", "type is required (http or tcp)")
	default:
		return api.Validation("type", "unknown route type %q (want http or tcp)", r.Type)
	}
	if r.Port < 0 || r.Port > 65535 {
		return api.Validation("port", "port %d is out of range", r.Port)
	}
	if len(r.Service) > maxServiceLen || (r.Service != "" && !appNameRe.MatchString(r.Service)) {
		return api.Validation("service", "service %q is invalid: use lower-case letters, digits and dashes", r.Service)
	}
	return nil
}

func validateNewJob(j *api.NewJob) error {
	if j.ReleaseID != "" {
		if err := validateID("release", j.ReleaseID); err != nil {
			return err
		}
	}
	if err := validateArgs("args", j.Args); err != nil {
		return err
	}
	if err := validateEnv("env", j.Env); err != nil {
		return err
	}
	if err := validateMeta("meta", j.Meta); err != nil {
		return err
	}
	if j.Columns < 0 || j.Columns > 10000 || j.Lines < 0 || j.Lines > 10000 {
		return api.Validation("tty_columns", "tty size out of range")
	}
	return validateResources("resources", j.Resources)
}

var jobStates = map[string]bool{
	api.JobStatePending: true, api.JobStateBlocked: true, api.JobStateStarting: true,
	api.JobStateUp: true, api.JobStateStopping: true, api.JobStateDown: true,
}

func validateJob(j *api.Job) error {
	if j.ID == "" && j.UUID == "" {
		return api.Validation("id", "a job needs an id or, before it is placed, a uuid")
	}
	if j.ID != "" {
		if err := validateID("id", j.ID); err != nil {
			return err
		}
	}
	if j.UUID != "" {
		if err := validateID("uuid", j.UUID); err != nil {
			return err
		}
	}
	if !jobStates[j.State] {
		return api.Validation("state", "unknown job state %q", j.State)
	}
	if j.ReleaseID != "" {
		if err := validateID("release", j.ReleaseID); err != nil {
			return err
		}
	}
	if j.Type != "" {
		if err := validateProcType("type", j.Type); err != nil {
			return err
		}
	}
	if err := validateArgs("args", j.Args); err != nil {
		return err
	}
	return validateMeta("meta", j.Meta)
}
