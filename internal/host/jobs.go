package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/image"
)

// startTimeout bounds how long the runtime may take to start a job.
const startTimeout = 2 * time.Minute

// AddJob validates, prepares and starts a job. Invalid specs (including
// images that cannot be resolved) return a validation error and leave
// nothing behind. A job that fails in the runtime is recorded as failed.
func (a *Agent) AddJob(ctx context.Context, hj *api.HostJob) (*api.ActiveJob, error) {
	t0 := time.Now()
	if err := a.validate(hj); err != nil {
		return nil, err
	}
	a.mu.Lock()
	if _, ok := a.jobs[hj.ID]; ok {
		a.mu.Unlock()
		return nil, api.Exists("job %q exists on this host", hj.ID)
	}
	if err := a.admitLocked(hj); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	// Reserve the id while the image is fetched.
	j := &job{active: &api.ActiveJob{Job: hj, HostID: a.cfg.ID, Status: api.HostJobStarting, CreatedAt: time.Now().UTC()}, done: make(chan struct{})}
	a.jobs[hj.ID] = j
	a.mu.Unlock()

	var phases runtime.Phases
	t := time.Now()
	phases.Mark("admit", &t)
	spec, err := a.resolve(ctx, hj)
	if err != nil {
		a.mu.Lock()
		delete(a.jobs, hj.ID)
		a.mu.Unlock()
		return nil, err
	}
	phases.Mark("resolve", &t)
	a.mu.Lock()
	a.emit(api.HostEventCreate, j.active)
	a.mu.Unlock()
	if err := a.persist(j.active); err != nil {
		a.mu.Lock()
		delete(a.jobs, hj.ID)
		a.mu.Unlock()
		return nil, fmt.Errorf("add job %s: %w", hj.ID, err)
	}

	// Starting is not cancelled with the request: a container half
	// started when the client went away would be orphaned.
	phases.Mark("persist", &t)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startTimeout)
	st, err := a.rt.Start(sctx, spec)
	cancel()
	t = time.Now()
	a.mu.Lock()
	aj := j.active
	if err != nil {
		msg := err.Error()
		aj.Status, aj.Error, aj.EndedAt = api.HostJobFailed, &msg, time.Now().UTC()
		a.releaseVolumes(aj.Job)
		close(j.done)
		a.log.Warn("job failed to start", "job", hj.ID, "err", err)
		a.emit(api.HostEventError, aj)
		written := a.queuePersist(aj)
		out := copyActive(aj)
		a.mu.Unlock()
		if perr := written(); perr != nil {
			a.log.Error("persist job", "job", hj.ID, "err", perr)
		}
		a.collect()
		return out, nil
	}
	aj.Status, aj.PID, aj.InternalIP, aj.HostPorts, aj.StartedAt = api.HostJobRunning, st.PID, st.IP, st.HostPorts, time.Now().UTC()
	written := a.queuePersist(aj)
	a.emit(api.HostEventStart, aj)
	a.watch(hj.ID, j)
	a.registerJob(aj)
	out := copyActive(aj)
	a.mu.Unlock()
	if err := written(); err != nil {
		a.log.Error("persist job", "job", hj.ID, "err", err)
	}
	phases = append(phases, st.Phases...)
	phases.Mark("record", &t)
	a.log.Debug("job started", "job", hj.ID, "took", time.Since(t0), "phases", phases)
	return out, nil
}

// admitLocked refuses a job whose memory request does not fit beside
// those of the host's running jobs; the caller holds a.mu.
func (a *Agent) admitLocked(hj *api.HostJob) error {
	if a.cfg.MemoryCapacity <= 0 {
		return nil
	}
	var used int64
	for _, j := range a.jobs {
		if running(j.active.Status) {
			used += api.MemoryRequest(j.active.Job.Resources)
		}
	}
	want := api.MemoryRequest(hj.Resources)
	if used+want > a.cfg.MemoryCapacity {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf(
			"host %s cannot take the job: it asks for %d bytes of memory and the host's jobs hold %d of its %d; place it on another host or ask for less",
			a.cfg.ID, want, used, a.cfg.MemoryCapacity)}
	}
	return nil
}

// watch follows a running job until it ends; the caller holds a.mu.
func (a *Agent) watch(id string, j *job) {
	if a.ship != nil {
		a.ship.follow(id, j.active.Job, j.active.CreatedAt)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		exit, err := a.rt.Wait(a.runCtx, id)
		if err != nil {
			if a.runCtx.Err() == nil {
				a.log.Error("wait for job", "job", id, "err", err)
			}
			return // the agent is stopping; the job keeps running
		}
		a.deregisterJob(id)
		if j.adopted && exit.Error != "" {
			// It died with its supervisor (a power loss): its instances
			// from before may outlive it. Gone before its port is
			// released for another job.
			a.removeInstances(j.active)
		}
		cerr := a.rt.Cleanup(context.Background(), id)
		// Its delete_on_stop volumes go before it is marked ended, as
		// its writable layer does, and outside a.mu: a large tree there
		// can take a second or more to remove. (j.active.Job is never
		// reassigned.)
		a.releaseVolumes(j.active.Job)
		a.mu.Lock()
		defer a.mu.Unlock()
		aj := j.active
		aj.ExitStatus, aj.OOM, aj.EndedAt = &exit.ExitStatus, exit.OOM, time.Now().UTC()
		switch {
		case exit.Error != "":
			aj.Status, aj.Error = api.HostJobFailed, &exit.Error
		case exit.ExitStatus == 0 || j.stopping:
			aj.Status = api.HostJobDone
		default:
			aj.Status = api.HostJobCrashed
		}
		if exit.OOM {
			msg := "out of memory: the job was killed for using more than its memory limit"
			aj.Error = &msg
		}
		if cerr != nil {
			a.log.Error("clean up job", "job", id, "err", cerr)
		}
		written := a.queuePersist(aj)
		close(j.done)
		a.emit(api.HostEventStop, aj)
		a.log.Info("job ended", "job", id, "status", aj.Status, "exit_status", exit.ExitStatus, "oom", exit.OOM)
		a.mu.Unlock()
		if err := written(); err != nil {
			a.log.Error("persist job", "job", id, "err", err)
		}
		a.collect()
		a.mu.Lock() // for the deferred unlock
	}()
}

// resolve turns a job's artifacts into layers (fetching what is missing)
// and its config into a runtime spec.
func (a *Agent) resolve(ctx context.Context, hj *api.HostJob) (*runtime.Spec, error) {
	c := hj.Config
	spec := &runtime.Spec{
		ID: hj.ID, Args: c.Args, WorkingDir: c.WorkingDir, TTY: c.TTY, Stdin: c.Stdin || c.TTY,
		HostNetwork: c.HostNetwork, System: c.System, ReachPorts: c.ReachPorts, UID: runtime.NobodyID, GID: runtime.NobodyID,
	}
	env := map[string]string{}
	for i, art := range hj.Artifacts {
		f := fmt.Sprintf("artifacts[%d]", i)
		switch art.Type {
		case api.ArtifactTypeDocker:
			img, err := a.images.Pull(ctx, art.URI)
			if err != nil {
				return nil, api.Validation(f+".uri", "cannot pull image: %v", err)
			}
			var dirs []string
			for _, l := range img.Layers {
				dirs = append(dirs, a.images.Path(l))
			}
			spec.Layers = append(spec.Layers, dirs...)
			// The image's user, unless it is root or in root's group:
			// app jobs do not run as either; an image without a user
			// runs as nobody. The job's config may name another.
			if img.User != "" {
				uid, gid, err := image.ResolveUser(dirs, img.User)
				if err != nil {
					return nil, api.Validation(f+".uri", "image %s: %v", art.URI, err)
				}
				if uid != 0 && gid != 0 {
					spec.UID, spec.GID = uid, gid
				}
			}
			if len(spec.Args) == 0 {
				spec.Args = append(append([]string(nil), img.Entrypoint...), img.Cmd...)
			}
			if spec.WorkingDir == "" {
				spec.WorkingDir = img.WorkingDir
			}
			for _, kv := range img.Env {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
		case api.ArtifactTypeFlynn:
			for k, l := range art.Manifest.Rootfs[0].Layers {
				digest := l.Hashes["sha256"]
				dir := a.images.Path(digest)
				if l.URL == LocalBusyboxLayer {
					var err error
					if dir, err = a.busyboxLayer(ctx); err != nil {
						return nil, fmt.Errorf("build the busybox layer: %w", err)
					}
				} else if l.URL != "" {
					var err error
					dir, err = a.images.Fetch(ctx, l.URL, digest)
					if err != nil {
						return nil, api.Validation(fmt.Sprintf("%s.manifest.rootfs[0].layers[%d]", f, k), "unknown layer: %v", err)
					}
				}
				spec.Layers = append(spec.Layers, dir)
			}
			if ep := art.Manifest.Entrypoints["_default"]; ep != nil {
				if len(spec.Args) == 0 {
					spec.Args = ep.Args
				}
				if spec.WorkingDir == "" {
					spec.WorkingDir = ep.WorkingDir
				}
				for k, v := range ep.Env {
					env[k] = v
				}
				// The image's user (e.g. a slug's app user) unless the
				// job's config names one.
				if ep.Uid != nil {
					spec.UID, spec.GID = *ep.Uid, *ep.Uid
				} else if ep.User != "" {
					uid, gid, err := image.ResolveUser(spec.Layers, ep.User)
					if err != nil {
						return nil, api.Validation(f+".manifest", "image user: %v", err)
					}
					// Not root, nor root's group: an image user
					// with either runs as nobody.
					if uid != 0 && gid != 0 {
						spec.UID, spec.GID = uid, gid
					}
				}
				if ep.Gid != nil {
					spec.GID = *ep.Gid
				}
			}
		}
	}
	if len(spec.Args) == 0 {
		return nil, api.Validation("config.args", "the job has no command and its image gives none")
	}
	if c.Uid != nil {
		spec.UID = *c.Uid
		spec.GID = *c.Uid
	}
	if c.Gid != nil {
		spec.GID = *c.Gid
	}
	for _, p := range c.Ports {
		spec.Ports = append(spec.Ports, runtime.Port{Port: p.Port, Proto: p.Proto})
	}
	for i, m := range c.Mounts {
		f := fmt.Sprintf("config.mounts[%d].location", i)
		loc := m.Location
		named := strings.HasPrefix(loc, MountPrefix)
		if named {
			if a.cfg.ResolveMount == nil {
				return nil, api.Validation(f, "this host has no %s mounts", MountPrefix)
			}
			var err error
			if loc, err = a.cfg.ResolveMount(ctx, m.Location); err != nil {
				return nil, api.Validation(f, "%s: %v", m.Location, err)
			}
		}
		// The runtime mounts what the path resolves to now. A named
		// location is the platform's own; any other must be allowed as
		// it resolves too: a symlink under an allowed dir leads nowhere
		// else.
		src, err := filepath.EvalSymlinks(loc)
		if err != nil {
			return nil, api.Validation(f, "mount location %s does not exist on this host", loc)
		}
		if why := a.mounts.check(src, m.Writeable); !named && why != "" {
			return nil, api.Validation(f, "%s resolves to %s: %s", m.Location, src, why)
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: src, Target: m.Target, Writeable: m.Writeable})
	}
	if err := a.prepareVolumes(hj, spec); err != nil {
		return nil, err
	}
	limit := func(name string) int64 {
		r, ok := hj.Resources[name]
		if !ok {
			return 0
		}
		if r.Limit != nil {
			return *r.Limit
		}
		if r.Request != nil {
			return *r.Request
		}
		return 0
	}
	spec.Memory = limit(api.ResourceMemory)
	spec.TempDisk = limit(api.ResourceTempDisk)
	if cpu := limit(api.ResourceCPU); cpu > 0 {
		spec.CPUShares = runtime.CPUShares(cpu)
	}
	spec.MaxFD = uint64(limit(api.ResourceMaxFD))
	spec.MaxProcs = limit(api.ResourceMaxProcs)

	if c.HostNetwork && a.cfg.SystemEnv != nil {
		for k, v := range a.cfg.SystemEnv() {
			env[k] = v
		}
	}
	for k, v := range c.Env {
		env[k] = v
	}
	env["FLYNN_JOB_ID"] = hj.ID
	if a.cfg.Discoverd != "" {
		env["DISCOVERD"] = a.cfg.Discoverd
	}
	env["HOSTNAME"] = hj.ID
	for k, meta := range map[string]string{
		"FLYNN_APP_ID": api.JobMetaApp, "FLYNN_APP_NAME": api.JobMetaAppName,
		"FLYNN_RELEASE_ID": api.JobMetaRelease, "FLYNN_PROCESS_TYPE": api.JobMetaProcessType,
	} {
		if v, ok := hj.Metadata[meta]; ok {
			env[k] = v
		}
	}
	for k, v := range env {
		spec.Env = append(spec.Env, k+"="+v)
	}
	sort.Strings(spec.Env)
	return spec, nil
}

// busyboxLayer is the directory of this host's busybox layer
// (LocalBusyboxLayer), built from its own busybox binary once.
func (a *Agent) busyboxLayer(ctx context.Context) (string, error) {
	a.busyboxOnce.Lock()
	defer a.busyboxOnce.Unlock()
	if a.busyboxDir != "" {
		return a.busyboxDir, nil
	}
	f, err := os.CreateTemp(a.cfg.StateDir, "busybox-*.tar.gz")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if err := image.WriteBusyboxLayer(f, image.DefaultBusybox); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	_, dir, err := a.images.ImportFile(ctx, f.Name(), "")
	if err != nil {
		return "", err
	}
	a.busyboxDir = dir
	return dir, nil
}

// StopJob sends SIGTERM, and SIGKILL after the grace period, and waits for
// the job to end.
func (a *Agent) StopJob(ctx context.Context, id string) (*api.ActiveJob, error) {
	a.mu.Lock()
	j, ok := a.jobs[id]
	if !ok {
		a.mu.Unlock()
		return nil, api.NotFound("job %q not found on host %s", id, a.cfg.ID)
	}
	j.stopping = true
	a.mu.Unlock()
	select {
	case <-j.done:
		return a.Get(id)
	default:
	}
	a.drain(ctx, id)
	// Said in the job's log, as Heroku says it.
	a.rt.Note(id, "Stopping process with SIGTERM")
	if err := a.rt.Signal(ctx, id, unix.SIGTERM); err != nil && !errors.Is(err, runtime.ErrNotRunning) {
		if errors.Is(err, runtime.ErrNotFound) {
			return nil, api.Conflict("job %q is still starting; stop it once it runs", id)
		}
		return nil, fmt.Errorf("stop job %s: %w", id, err)
	}
	select {
	case <-j.done:
		return a.Get(id)
	case <-time.After(a.cfg.StopGrace):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.rt.Note(id, fmt.Sprintf("Process did not exit within %s of SIGTERM: stopping it with SIGKILL", a.cfg.StopGrace))
	if err := a.rt.Signal(ctx, id, unix.SIGKILL); err != nil && !errors.Is(err, runtime.ErrNotRunning) {
		return nil, fmt.Errorf("stop job %s: %w", id, err)
	}
	select {
	case <-j.done:
		return a.Get(id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// SignalJob sends a signal (a number or a name like TERM or SIGTERM).
func (a *Agent) SignalJob(ctx context.Context, id, signame string) error {
	sig, ok := parseSignal(signame)
	if !ok {
		return api.Validation("signal", "unknown signal %q", signame)
	}
	a.mu.Lock()
	j, ok := a.jobs[id]
	a.mu.Unlock()
	if !ok {
		return api.NotFound("job %q not found on host %s", id, a.cfg.ID)
	}
	select {
	case <-j.done:
		return api.Conflict("job %q is not running", id)
	default:
	}
	if err := a.rt.Signal(ctx, id, sig); err != nil {
		if errors.Is(err, runtime.ErrNotRunning) {
			return api.Conflict("job %q is not running", id)
		}
		return err
	}
	return nil
}

func parseSignal(s string) (unix.Signal, bool) {
	if n, err := strconv.Atoi(s); err == nil {
		if n > 0 && n < 65 {
			return unix.Signal(n), true
		}
		return 0, false
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	return sig, sig != 0
}
