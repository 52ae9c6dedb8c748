package host

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"sync"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /host/status", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return httpapi.WriteJSON(w, http.StatusOK, a.Status())
	}))
	mux.Handle("GET /host/jobs", httpapi.HandlerFunc(a.listJobs))
	mux.Handle("PUT /host/jobs/{id}", httpapi.HandlerFunc(a.putJob))
	mux.Handle("GET /host/jobs/{id}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		aj, err := a.Get(r.PathValue("id"))
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, aj)
	}))
	mux.Handle("DELETE /host/jobs/{id}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		aj, err := a.StopJob(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, aj)
	}))
	mux.Handle("PUT /host/jobs/{id}/signal/{signal}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if err := a.SignalJob(r.Context(), r.PathValue("id"), r.PathValue("signal")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	mux.Handle("GET /host/jobs/{id}/log", httpapi.HandlerFunc(a.jobLog))
	mux.Handle("GET /host/volumes", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		vs, err := a.ListVolumes()
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, vs)
	}))
	mux.Handle("GET /host/volumes/{id}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		v, err := a.Volume(r.PathValue("id"))
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, v)
	}))
	mux.Handle("DELETE /host/volumes/{id}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if err := a.DeleteVolume(r.PathValue("id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	mux.Handle("POST /attach", httpapi.HandlerFunc(a.attach))
	// The daemon's profiles (it runs etcd, discoverd and this agent), for
	// ops with the host token: go tool pprof -H "Authorization: ..." is not
	// a flag, so fetch with curl and read the file.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("/", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return api.NotFound("no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

func (a *Agent) putJob(w http.ResponseWriter, r *http.Request) error {
	hj := &api.HostJob{}
	if err := httpapi.DecodeJSONStrict(r, hj); err != nil {
		return err
	}
	id := r.PathValue("id")
	if hj.ID == "" {
		hj.ID = id
	}
	if hj.ID != id {
		return api.Validation("id", "job id %q does not match the URL's %q", hj.ID, id)
	}
	aj, err := a.AddJob(r.Context(), hj)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, aj)
}

func (a *Agent) listJobs(w http.ResponseWriter, r *http.Request) error {
	if !httpapi.WantsSSE(r) {
		return httpapi.WriteJSON(w, http.StatusOK, a.List())
	}
	c := a.subscribe()
	defer a.unsubscribe(c)
	s, err := httpapi.NewSSE(w)
	if err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-c:
			if !ok {
				return nil
			}
			if err := s.Send(ev.Event, "", ev); err != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		}
	}
}

func (a *Agent) jobLog(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if _, err := a.Get(id); err != nil {
		return err
	}
	follow := r.URL.Query().Get("follow") == "true"
	rc, err := a.rt.Log(r.Context(), id, follow)
	if errors.Is(err, runtime.ErrNotFound) {
		return api.NotFound("job %q has no log", id)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc2 := http.NewResponseController(w)
	rc2.SetWriteDeadline(noDeadline)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			rc2.Flush()
		}
		if err != nil {
			return nil
		}
	}
}

// attach upgrades the connection to the framed attach protocol and
// relays frames between the client and the job's supervisor.
func (a *Agent) attach(w http.ResponseWriter, r *http.Request) error {
	var req api.AttachRequest
	if err := httpapi.DecodeJSONStrict(r, &req); err != nil {
		return err
	}
	aj, err := a.Get(req.JobID)
	if err != nil {
		return err
	}
	var stream io.ReadWriteCloser
	if running(aj.Status) {
		stream, err = a.rt.Attach(r.Context(), req.JobID, runtime.AttachOptions{Stdin: req.Stdin, Logs: req.Logs, Height: req.Height, Width: req.Width})
		if err != nil && !errors.Is(err, runtime.ErrNotRunning) {
			return err
		}
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		if stream != nil {
			stream.Close()
		}
		return err
	}
	defer conn.Close()
	conn.SetDeadline(noDeadline)
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + api.AttachUpgrade + "\r\nConnection: Upgrade\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return nil
	}
	if stream == nil {
		// The job has ended: replay its log if asked, then its exit.
		a.replayEnded(conn, req)
		return nil
	}
	defer stream.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(stream, brw.Reader) // client frames to the supervisor
		// The client went away: end the session (the job runs on).
		stream.Close()
	}()
	io.Copy(conn, stream) // supervisor frames to the client, up to its exit frame
	conn.Close()
	stream.Close()
	wg.Wait()
	return nil
}

func (a *Agent) replayEnded(w io.Writer, req api.AttachRequest) {
	if req.Logs {
		if rc, err := a.rt.Log(noCancel, req.JobID, false); err == nil {
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var l api.HostLogLine
				if json.Unmarshal(sc.Bytes(), &l) != nil || l.Stream == api.LogInit {
					continue // the platform's lines are not the job's output
				}
				typ := api.FrameStdout
				if l.Stream == "stderr" {
					typ = api.FrameStderr
				}
				api.WriteFrame(w, typ, []byte(l.Msg+"\n"))
			}
			rc.Close()
		}
	}
	aj, err := a.Get(req.JobID)
	if err != nil {
		return
	}
	e := api.HostJobExit{ExitStatus: -1, OOM: aj.OOM}
	if aj.ExitStatus != nil {
		e.ExitStatus = *aj.ExitStatus
	}
	if aj.Error != nil {
		e.Error = *aj.Error
	}
	p, _ := json.Marshal(e)
	api.WriteFrame(w, api.FrameExit, p)
}
