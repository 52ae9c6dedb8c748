package controller

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/scheduler"
)

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	jobs, err := s.store.ListJobs(r.Context(), app.ID)
	if err != nil {
		return err
	}
	return ok(w, jobs)
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	j, err := s.store.GetJob(r.Context(), app.ID, r.PathValue("job"))
	if err != nil {
		return err
	}
	return ok(w, j)
}

func (s *Server) activeJobs(w http.ResponseWriter, r *http.Request) error {
	jobs, err := s.store.ListActiveJobs(r.Context())
	if err != nil {
		return err
	}
	return ok(w, jobs)
}

func decodeJob(r *http.Request) (*api.Job, error) {
	j := &api.Job{}
	if err := httpapi.DecodeJSON(r, j); err != nil {
		return nil, err
	}
	return j, validateJob(j)
}

func (s *Server) putJob(w http.ResponseWriter, r *http.Request) error {
	j, err := decodeJob(r)
	if err != nil {
		return err
	}
	if pv := r.PathValue("job"); pv != j.ID && (j.ID != "" || pv != j.UUID) {
		return api.Validation("id", "job id %q does not match the path", j.ID)
	}
	app, err := s.app(r)
	if err != nil {
		return err
	}
	j.AppID = app.ID
	j, err = s.store.PutJob(r.Context(), j)
	if err != nil {
		return err
	}
	return ok(w, j)
}

func (s *Server) host(r *http.Request, id string) (*api.Host, error) {
	hosts, err := s.store.ListHosts(r.Context())
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if h.ID == id {
			return h, nil
		}
	}
	return nil, &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("host %s is not registered", id)}
}

func (s *Server) killJob(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	j, err := s.store.GetJob(r.Context(), app.ID, r.PathValue("job"))
	if err != nil {
		return err
	}
	if j.State == api.JobStateDown {
		return ok(w, j)
	}
	if s.cfg.Runner == nil {
		return &api.Error{Code: api.CodeUnavailable, Message: "this controller cannot reach host agents"}
	}
	h, err := s.host(r, j.HostID)
	if err != nil {
		return err
	}
	// Record "stopping" before stopping: the host stops the job at once
	// and the scheduler records it down, which must not be overwritten.
	prevState := j.State
	j.State = api.JobStateStopping
	if j, err = s.store.PutJob(r.Context(), j); err != nil {
		return err
	}
	// The host answers once the job has ended, which can take its whole
	// stop grace period, and the job may be this request's own path (a
	// router, this controller): reply once the host has answered or after
	// a moment, whichever is first, and let the stop go on. The scheduler
	// records the job down when it ends.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), stopJobTimeout)
		defer cancel()
		err := s.cfg.Runner.StopJob(ctx, h, j.ID)
		if err != nil {
			// Unless the scheduler saw it end meanwhile, the job is as it was.
			if cur, gerr := s.store.GetJob(ctx, app.ID, j.ID); gerr == nil && cur.State == api.JobStateStopping {
				cur.State = prevState
				s.store.PutJob(ctx, cur)
			}
			s.log.Warn("stop job failed", "job", j.ID, "err", err)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("stop job %s: %w", j.ID, err)
		}
	case <-time.After(stopJobReplyAfter):
	}
	return ok(w, j)
}

// A kill waits this long for the host before replying "stopping", and the
// stop itself gets stopJobTimeout.
const (
	stopJobReplyAfter = 2 * time.Second
	stopJobTimeout    = 5 * time.Minute
)

func decodeNewJob(r *http.Request) (*api.NewJob, error) {
	j := &api.NewJob{}
	if err := httpapi.DecodeJSON(r, j); err != nil {
		return nil, err
	}
	return j, validateNewJob(j)
}

// runJob runs a one-off job on a random host, bypassing the scheduler.
// With "Upgrade: flynn-attach/0" it attaches to the job first and, after
// a 101 reply, relays Flynn's attach protocol (see api.JobAttachUpgrade).
func (s *Server) runJob(w http.ResponseWriter, r *http.Request) error {
	nj, err := decodeNewJob(r)
	if err != nil {
		return err
	}
	app, err := s.app(r)
	if err != nil {
		return err
	}
	relID := nj.ReleaseID
	if relID == "" {
		relID = app.ReleaseID
	}
	if relID == "" {
		return api.Validation("release", "app %s has no release; give one", app.Name)
	}
	rel, err := s.store.GetRelease(r.Context(), relID)
	if err != nil {
		return api.Validation("release", "release %q not found", relID)
	}
	if rel.AppID != "" && rel.AppID != app.ID {
		return api.Validation("release", "release %s belongs to another app", relID)
	}
	if err := s.checkRelease(r, app, rel, nj.ArtifactIDs); err != nil {
		return err
	}
	if nj.MountsFrom != "" && rel.Processes[nj.MountsFrom] == nil {
		return api.Validation("mounts_from", "release %s has no process type %q", rel.ID, nj.MountsFrom)
	}
	if s.cfg.Runner == nil {
		return &api.Error{Code: api.CodeUnavailable, Message: "this controller cannot reach host agents"}
	}
	// Placed as every job is: by the scheduler's rules (tags, free
	// memory, the least busy host).
	host, err := s.cfg.Runner.Place(r.Context(), scheduler.Request{Memory: scheduler.MemoryRequest(nj.Resources)})
	if err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: "no host can run the job: " + err.Error()}
	}

	attach := strings.Contains(r.Header.Get("Upgrade"), api.JobAttachUpgrade)
	hj, job, err := s.buildJob(r, app, rel, nj, host, attach)
	if err != nil {
		return err
	}
	var stream io.ReadWriteCloser
	if attach {
		stream, err = s.cfg.Runner.Attach(r.Context(), host, AttachRequest{
			JobID: hj.ID, TTY: nj.TTY, Stdin: true, Height: nj.Lines, Width: nj.Columns,
		})
		if err != nil {
			return fmt.Errorf("attach to job %s: %w", hj.ID, err)
		}
		defer stream.Close()
	}
	// Recorded before it starts: the scheduler's report of its start,
	// which may come before AddJob returns, then comes after this.
	if job, err = s.store.PutJob(r.Context(), job); err != nil {
		return err
	}
	if err := s.cfg.Runner.AddJob(r.Context(), host, hj); err != nil {
		msg := err.Error()
		job.State, job.HostError = api.JobStateDown, &msg
		s.store.PutJob(context.WithoutCancel(r.Context()), job)
		if e, ok := api.AsError(err); ok && e.HTTPStatus() < 500 {
			return err
		}
		// Not the caller's fault, but say what went wrong.
		return &api.Error{Code: api.CodeUnknown, Message: fmt.Sprintf("host %s could not start job %s: %v", host.ID, hj.ID, err)}
	}
	if !attach {
		return ok(w, job)
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fmt.Errorf("hijack for attach: %w", err)
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\nFlynn-Job-Id: %s\r\n\r\n", api.JobAttachUpgrade, job.ID)
	if err := buf.Flush(); err != nil {
		return nil
	}
	s.relayAttach(r.Context(), buf, stream, host, job.ID)
	return nil
}

// relayAttach translates between a client speaking Flynn's attach
// protocol (rw) and a host agent's attach stream until the job ends or
// either side goes away. Signals the client sends are delivered through
// the host agent's API.
func (s *Server) relayAttach(ctx context.Context, rw *bufio.ReadWriter, stream io.ReadWriteCloser, host *api.Host, jobID string) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // client → job
		defer wg.Done()
		for {
			f, err := api.ReadAttachFrame(rw)
			if err != nil {
				stream.Close() // the client is gone: end the relay
				return
			}
			switch f.Type {
			case api.AttachData:
				if f.Stream != api.AttachStdin {
					continue
				}
				err = api.WriteFrame(stream, api.FrameStdin, f.Data)
			case api.AttachResize:
				var p [4]byte
				binary.BigEndian.PutUint16(p[0:2], f.Height)
				binary.BigEndian.PutUint16(p[2:4], f.Width)
				err = api.WriteFrame(stream, api.FrameResize, p[:])
			case api.AttachSignal:
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				if serr := s.cfg.Runner.SignalJob(sctx, host, jobID, f.Value); serr != nil {
					s.log.Warn("signal attached job", "job", jobID, "signal", f.Value, "err", serr)
				}
				cancel()
			}
			if err != nil {
				return
			}
		}
	}()
	// job → client
	for {
		typ, p, err := api.ReadFrame(stream)
		if err != nil {
			api.WriteAttachError(rw, fmt.Sprintf("job %s: attach stream ended before the job exited: %v", jobID, err))
			rw.Flush()
			break
		}
		switch typ {
		case api.FrameStdout:
			err = api.WriteAttachData(rw, api.AttachStdout, p)
		case api.FrameStderr:
			err = api.WriteAttachData(rw, api.AttachStderr, p)
		case api.FrameError:
			err = api.WriteAttachError(rw, string(p))
		case api.FrameExit:
			var e api.HostJobExit
			if jerr := json.Unmarshal(p, &e); jerr != nil {
				e.Error = "bad exit frame from the host: " + jerr.Error()
			}
			switch {
			case e.Error != "":
				err = api.WriteAttachError(rw, e.Error)
			default:
				if e.OOM {
					api.WriteAttachData(rw, api.AttachInitLog, []byte("out of memory: the job was killed for using more than its memory limit\n"))
				}
				err = api.WriteAttachValue(rw, api.AttachExit, e.ExitStatus)
			}
		default:
			continue
		}
		if ferr := rw.Flush(); err == nil {
			err = ferr
		}
		if err != nil || typ == api.FrameExit || typ == api.FrameError {
			break
		}
	}
	stream.Close()
	wg.Wait()
}

// buildJob makes the host job and the controller's record of it. A
// release built from a slug runs its one-off jobs through its slug runner
// (as Heroku and Flynn do: the profile is sourced, $PATH holds the app's
// bin), and Flynn's runner path /runner/init at the start of the command
// is taken to mean that runner.
func (s *Server) buildJob(r *http.Request, app *api.App, rel *api.Release, nj *api.NewJob, host *api.Host, attach bool) (*api.HostJob, *api.Job, error) {
	id, uuid := scheduler.NewJobID(host.ID)
	env := map[string]string{}
	if nj.ReleaseEnv {
		maps.Copy(env, rel.Env)
	}
	maps.Copy(env, nj.Env)
	maps.Copy(env, scheduler.JobEnv(app, rel.ID, ""))
	env["FLYNN_JOB_ID"] = id
	meta := maps.Clone(nj.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	maps.Copy(meta, scheduler.JobMetadata(app, rel.ID, ""))
	args := nj.Args
	var mounts []api.Mount
	if nj.MountsFrom != "" {
		mounts = slices.Clone(rel.Processes[nj.MountsFrom].Mounts)
	}
	if runner, mount := slugRunner(rel); runner != nil {
		if len(args) > 0 && args[0] == FlynnRunnerPath {
			args = args[1:]
		}
		if len(args) == 0 {
			return nil, nil, api.Validation("args", "give a command to run, e.g. bash")
		}
		args = append(slices.Clone(runner), args...)
		if !slices.ContainsFunc(mounts, func(m api.Mount) bool { return m.Target == mount.Target }) {
			mounts = append(mounts, mount)
		}
		if _, ok := env["DYNO"]; !ok {
			n, _ := rand.Int(rand.Reader, big.NewInt(9000))
			env["DYNO"] = "run." + strconv.FormatInt(1000+n.Int64(), 10)
		}
	} else if len(args) > 0 && args[0] == FlynnRunnerPath {
		return nil, nil, api.Validation("args", "release %s was not built from a slug, so it has no slug runner (%s): give the command itself", rel.ID, FlynnRunnerPath)
	}
	hj := &api.HostJob{
		ID:       id,
		Metadata: meta,
		Config: api.HostJobConfig{
			Args: args, Env: env, TTY: nj.TTY, Stdin: attach,
			DisableLog: nj.DisableLog, Mounts: mounts,
		},
		Resources: nj.Resources,
	}
	artifactIDs := rel.ArtifactIDs
	if len(nj.ArtifactIDs) > 0 {
		artifactIDs = nj.ArtifactIDs
	}
	for i, aid := range artifactIDs {
		a, err := s.store.GetArtifact(r.Context(), aid)
		if errors.Is(err, api.ErrNotFound) {
			return nil, nil, api.Validation(fmt.Sprintf("artifacts[%d]", i), "artifact %q not found", aid)
		}
		if err != nil {
			return nil, nil, err
		}
		hj.Artifacts = append(hj.Artifacts, a)
	}
	job := &api.Job{
		ID: id, UUID: uuid, HostID: host.ID, AppID: app.ID, ReleaseID: rel.ID,
		State: api.JobStateStarting, Args: nj.Args, Meta: meta,
	}
	return hj, job, nil
}

// FlynnRunnerPath is the slug runner of Flynn's slug images. Flynn's CLI
// puts it before the command of every one-off job of a slug release.
const FlynnRunnerPath = "/runner/init"

// slugRunner returns the command prefix that runs a command through the
// release's slug runner (e.g. [/usr/local/bin/flynn-host slugrunner]) and
// the mount that provides it, or nil when the release's processes are not
// run by one.
func slugRunner(rel *api.Release) ([]string, api.Mount) {
	for _, typ := range slices.Sorted(maps.Keys(rel.Processes)) {
		p := rel.Processes[typ]
		if p == nil || len(p.Args) < 2 || p.Args[1] != "slugrunner" {
			continue
		}
		for _, m := range p.Mounts {
			if m.Target == p.Args[0] {
				return p.Args[:2:2], m
			}
		}
	}
	return nil, api.Mount{}
}
