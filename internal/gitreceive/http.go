package gitreceive

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Handler serves git's smart HTTP protocol for pushes
// (/<app>.git/info/refs and /<app>.git/git-receive-pack) through the real
// git http-backend, and deploys from a git URL (POST /<app>.git/deploy, an
// api.GitDeployRequest; see serveDeploy). auth checks the cluster key
// (HTTP Basic password).
func (s *Server) Handler(auth *httpapi.KeyAuth) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !auth.Check(r) {
			httpapi.WriteError(w, r, api.Unauthorized("invalid key: use the cluster key as the password (flynn configures this for you)"))
			return
		}
		repo, rest, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if !ok {
			httpapi.WriteError(w, r, api.NotFound("no repository at %s", r.URL.Path))
			return
		}
		app, err := appFromPath(repo)
		if err != nil {
			httpapi.WriteError(w, r, api.Validation("path", "%v", err))
			return
		}
		switch {
		case rest == "deploy" && r.Method == http.MethodPost:
			if err := s.serveDeploy(w, r, app); err != nil {
				httpapi.WriteError(w, r, err)
			}
			return
		case rest == "info/refs" && r.URL.Query().Get("service") == "git-receive-pack":
		case rest == "git-receive-pack" && r.Method == http.MethodPost:
		default:
			httpapi.WriteError(w, r, &api.Error{Code: api.CodeNotFound, Message: "only git push is served here"})
			return
		}
		if err := s.cfg.Receiver.Authorize(r.Context(), app); err != nil {
			// git shows a text/plain error body to the user as "remote: ...".
			status := 500
			if e, ok := api.AsError(err); ok {
				status = e.HTTPStatus()
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(status)
			fmt.Fprintln(w, err.Error())
			return
		}
		var unlock func()
		if rest == "git-receive-pack" {
			// A push's pack is streamed to git: no size limit but the
			// server's idle deadline.
			httpapi.SetMaxBody(r, -1)
			unlock = s.lock(app)
			defer unlock()
		}
		dir, err := s.prepare(r.Context(), app)
		if err != nil {
			httpapi.WriteError(w, r, err)
			return
		}
		gitBin, err := exec.LookPath("git")
		if err != nil {
			httpapi.WriteError(w, r, err)
			return
		}
		h := &cgi.Handler{
			Path: gitBin,
			Args: []string{"http-backend"},
			Env: append([]string{
				"GIT_PROJECT_ROOT=" + s.cfg.RepoDir,
				"GIT_HTTP_EXPORT_ALL=1",
				"REMOTE_USER=flynn",
				"PATH=" + os.Getenv("PATH"),
			}, s.hookEnv(app)...),
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + app + ".git/" + rest
		h.ServeHTTP(flushingResponse{w}, r2)
		if unlock != nil {
			s.afterPush(r.Context(), app, dir)
		}
	})
}

// flushingResponse sends each write at once, so build output reaches the
// pusher live: the hook's relay of the build, and git http-backend's
// output through the net/http CGI handler, which never flushes.
type flushingResponse struct{ http.ResponseWriter }

func (f flushingResponse) Write(p []byte) (int, error) {
	n, err := f.ResponseWriter.Write(p)
	if n > 0 {
		http.NewResponseController(f.ResponseWriter).Flush()
	}
	return n, err
}

func (f flushingResponse) Unwrap() http.ResponseWriter { return f.ResponseWriter }
