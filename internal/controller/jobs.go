package controller

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// AttachUpgrade is the Upgrade header value that asks POST
// /apps/{app}/jobs to attach to the new job's stdio.
const AttachUpgrade = "flynn-attach/0"

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
// With "Upgrade: flynn-attach/0" it attaches to the job first and relays
// the raw attach stream after a 101 reply.
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
	if s.cfg.Runner == nil {
		return &api.Error{Code: api.CodeUnavailable, Message: "this controller cannot reach host agents"}
	}
	hosts, err := s.store.ListHosts(r.Context())
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		return &api.Error{Code: api.CodeUnavailable, Message: "no hosts are registered to run the job"}
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(hosts))))
	host := hosts[n.Int64()]

	hj, job, err := s.buildJob(r, app, rel, nj, host)
	if err != nil {
		return err
	}
	attach := strings.EqualFold(r.Header.Get("Upgrade"), AttachUpgrade)
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
	if err := s.cfg.Runner.AddJob(r.Context(), host, hj); err != nil {
		return fmt.Errorf("add job %s to host %s: %w", hj.ID, host.ID, err)
	}
	if job, err = s.store.PutJob(r.Context(), job); err != nil {
		return err
	}
	if !attach {
		return ok(w, job)
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fmt.Errorf("hijack for attach: %w", err)
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\nFlynn-Job-Id: %s\r\n\r\n", AttachUpgrade, job.ID)
	if err := buf.Flush(); err != nil {
		return nil
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(stream, buf) // client → job (buffered bytes first)
		if cw, ok := stream.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	io.Copy(conn, stream) // job → client
	conn.Close()
	stream.Close()
	wg.Wait()
	return nil
}

// buildJob makes the host job and the controller's record of it.
func (s *Server) buildJob(r *http.Request, app *api.App, rel *api.Release, nj *api.NewJob, host *api.Host) (*api.HostJob, *api.Job, error) {
	uuid := ctrlstore.NewID()
	id := host.ID + "-" + uuid
	env := map[string]string{}
	if nj.ReleaseEnv {
		maps.Copy(env, rel.Env)
	}
	maps.Copy(env, nj.Env)
	env["FLYNN_APP_ID"] = app.ID
	env["FLYNN_APP_NAME"] = app.Name
	env["FLYNN_RELEASE_ID"] = rel.ID
	env["FLYNN_JOB_ID"] = id
	meta := maps.Clone(nj.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	meta[api.JobMetaApp] = app.ID
	meta[api.JobMetaAppName] = app.Name
	meta[api.JobMetaRelease] = rel.ID
	hj := &api.HostJob{
		ID:       id,
		Metadata: meta,
		Config: api.HostJobConfig{
			Args: nj.Args, Env: env, TTY: nj.TTY, Stdin: strings.EqualFold(r.Header.Get("Upgrade"), AttachUpgrade),
			DisableLog: nj.DisableLog,
		},
		Resources: nj.Resources,
	}
	for _, aid := range rel.ArtifactIDs {
		a, err := s.store.GetArtifact(r.Context(), aid)
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
