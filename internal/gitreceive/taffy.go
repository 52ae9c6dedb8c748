package gitreceive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Deploying from a git URL (Flynn's Taffy): gitreceive fetches the
// repository into the app's repository itself and runs the Receiver as a
// push of the fetched commit would, streaming the same output as
// api.GitDeployEvent lines.

// taffyRefs is where fetched branches are kept while a deploy runs.
const taffyRefs = "refs/taffy/"

var hexRevRE = regexp.MustCompile(`^[0-9a-f]{7,64}$`)

// sourceURL checks a repository URL for a git deploy and returns it as it
// may be shown (without a password) and whether it is an SSH URL. Only
// http, https and ssh are allowed: file and other local transports would
// read the server's own repositories.
func sourceURL(raw string) (display string, isSSH bool, err error) {
	if raw == "" || strings.HasPrefix(raw, "-") || strings.ContainsAny(raw, " \t\r\n") {
		return "", false, api.Validation("url", "invalid repository URL %q", raw)
	}
	if u, perr := url.Parse(raw); perr == nil && u.Scheme != "" {
		switch u.Scheme {
		case "http", "https", "ssh":
		default:
			return "", false, api.Validation("url", "repository URL scheme %q is not supported: use https://, http:// or ssh://", u.Scheme)
		}
		if u.Host == "" {
			return "", false, api.Validation("url", "repository URL %q has no host", raw)
		}
		return u.Redacted(), u.Scheme == "ssh", nil
	}
	// scp-like: [user@]host:path, the host without a slash.
	host, path, ok := strings.Cut(raw, ":")
	if !ok || host == "" || path == "" || strings.Contains(host, "/") {
		return "", false, api.Validation("url", "invalid repository URL %q: use https://HOST/PATH, ssh://HOST/PATH or USER@HOST:PATH", raw)
	}
	return raw, true, nil
}

// checkDeployRequest validates req and returns its URL as it may be shown.
func checkDeployRequest(ctx context.Context, req *api.GitDeployRequest, sshOK bool) (string, error) {
	display, isSSH, err := sourceURL(req.URL)
	if err != nil {
		return "", err
	}
	if isSSH && !sshOK {
		return "", api.Validation("url", "this gitreceive cannot fetch over SSH: use an https:// URL")
	}
	if !isSSH && (req.SSHKey != "" || req.KnownHosts != "") {
		return "", api.Validation("ssh_key", "an SSH key is only used with an ssh:// or USER@HOST:PATH URL")
	}
	if req.Branch != "" {
		out, err := exec.CommandContext(ctx, "git", "check-ref-format", "--branch", req.Branch).Output()
		if err != nil || strings.HasPrefix(req.Branch, "-") || strings.TrimSpace(string(out)) != req.Branch {
			return "", api.Validation("branch", "invalid branch name %q", req.Branch)
		}
	}
	if req.Rev != "" && !hexRevRE.MatchString(req.Rev) {
		return "", api.Validation("rev", "invalid revision %q: give a commit ID (at least 7 hex digits)", req.Rev)
	}
	return display, nil
}

// serveDeploy handles POST /<app>.git/deploy.
func (s *Server) serveDeploy(w http.ResponseWriter, r *http.Request, app string) error {
	var req api.GitDeployRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	display, err := checkDeployRequest(r.Context(), &req, len(s.cfg.SSHCommand) > 0)
	if err != nil {
		return err
	}
	if err := s.cfg.Receiver.Authorize(r.Context(), app); err != nil {
		return err
	}
	unlock := s.lock(app)
	defer unlock()
	dir, err := s.prepare(r.Context(), app)
	if err != nil {
		return err
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := &eventWriter{w: w, enc: json.NewEncoder(w)}
	rev, err := s.deploy(r.Context(), app, dir, display, &req, out)
	ev := api.GitDeployEvent{Done: true, Rev: rev}
	if err != nil {
		s.log.Info("git deploy failed", "app", app, "url", display, "err", err)
		ev.Error = strings.ReplaceAll(err.Error(), "\n", " ")
	} else {
		s.afterPush(r.Context(), app, dir)
	}
	out.send(ev)
	return nil
}

// deploy fetches req's commit into the app's repository dir, runs the
// Receiver on it as a push to the default branch, and on success moves
// the branch to it. It returns the deployed commit.
func (s *Server) deploy(ctx context.Context, app, dir, display string, req *api.GitDeployRequest, out io.Writer) (string, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir", dir}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		return strings.TrimSpace(string(b)), nil
	}
	clearRefs := func() {
		refs, _ := git("for-each-ref", "--format=%(refname)", taffyRefs)
		for _, ref := range strings.Fields(refs) {
			git("update-ref", "-d", ref)
		}
	}
	clearRefs()
	defer clearRefs()

	what := display
	if req.Branch != "" {
		what += " (branch " + req.Branch + ")"
	}
	fmt.Fprintf(out, "-----> Fetching %s...\n", what)
	refspec := "+HEAD:" + taffyRefs + "head"
	switch {
	case req.Branch != "":
		refspec = "+refs/heads/" + req.Branch + ":" + taffyRefs + "head"
	case req.Rev != "":
		refspec = "+refs/heads/*:" + taffyRefs + "heads/*"
	}
	if err := s.fetch(ctx, dir, display, req, refspec); err != nil {
		return "", fmt.Errorf("fetch %s: %w", what, err)
	}

	newRev, err := git("rev-parse", "--verify", "--quiet", taffyRefs+"head^{commit}")
	if req.Rev != "" {
		newRev, err = git("rev-parse", "--verify", "--quiet", req.Rev+"^{commit}")
		if err == nil {
			// The commit must come from the fetched branches, not from
			// what was pushed to the app before.
			var on string
			on, err = git("for-each-ref", "--contains", newRev, "--format=%(refname)", taffyRefs)
			if err == nil && on == "" {
				err = errors.New("not on the fetched branches")
			}
		}
		if err != nil {
			return "", fmt.Errorf("revision %s is not in %s", req.Rev, what)
		}
	} else if err != nil {
		return "", fmt.Errorf("%s has no commit to deploy", what)
	}

	ref := "refs/heads/main"
	if _, err := git("rev-parse", "--verify", "--quiet", ref); err != nil {
		if _, err := git("rev-parse", "--verify", "--quiet", "refs/heads/master"); err == nil {
			ref = "refs/heads/master"
		}
	}
	oldRev, err := git("rev-parse", "--verify", "--quiet", ref)
	if err != nil {
		oldRev = zeroRev
	}
	fmt.Fprintf(out, "-----> Deploying %s\n", newRev)
	if err := s.cfg.Receiver.Receive(ctx, Push{App: app, Ref: ref, OldRev: oldRev, NewRev: newRev, RepoDir: dir}, out); err != nil {
		return newRev, err
	}
	if _, err := git("update-ref", ref, newRev); err != nil {
		return newRev, err
	}
	return newRev, nil
}

// fetch runs git fetch of refspec from req.URL into dir, over SSH with
// req's key through SSHCommand. Its error is the one line of git's (or
// the SSH client's) message that says what went wrong.
func (s *Server) fetch(ctx context.Context, dir, display string, req *api.GitDeployRequest, refspec string) error {
	tmp, err := os.MkdirTemp("", "taffy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	env := append(os.Environ(),
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ALLOW_PROTOCOL=http:https:ssh",
		"GIT_CONFIG_NOSYSTEM=1",
	)
	if len(s.cfg.SSHCommand) > 0 {
		cmd := make([]string, len(s.cfg.SSHCommand))
		for i, a := range s.cfg.SSHCommand {
			cmd[i] = shellQuote(a)
		}
		env = append(env, "GIT_SSH_COMMAND="+strings.Join(cmd, " "), "GIT_SSH_VARIANT=ssh")
		for _, f := range []struct{ env, name, data string }{
			{SSHKeyEnv, "key", req.SSHKey},
			{SSHKnownHostsEnv, "known_hosts", req.KnownHosts},
		} {
			if f.data == "" {
				continue
			}
			p := filepath.Join(tmp, f.name)
			data := f.data
			if !strings.HasSuffix(data, "\n") {
				data += "\n"
			}
			if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
				return err
			}
			env = append(env, f.env+"="+p)
		}
	}
	cmd := exec.CommandContext(ctx, "git", "--git-dir", dir, "-c", "protocol.file.allow=never",
		"fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", req.URL, refspec)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return errors.New(strings.ReplaceAll(fetchError(stderr.String(), err), req.URL, display))
	}
	return nil
}

// fetchError picks the line of git fetch's stderr that says why it
// failed: the SSH client's own message, else git's first fatal line.
func fetchError(stderr string, err error) string {
	var fatal string
	for line := range strings.Lines(stderr) {
		line = strings.TrimSpace(line)
		if msg, ok := strings.CutPrefix(line, gitSSHPrefix); ok {
			return msg
		}
		if msg, ok := strings.CutPrefix(line, "fatal: "); ok && fatal == "" {
			fatal = msg
		}
	}
	if fatal != "" {
		return fatal
	}
	if s := strings.TrimSpace(stderr); s != "" {
		return strings.ReplaceAll(s, "\n", " ")
	}
	return err.Error()
}

// eventWriter sends what is written to it as api.GitDeployEvent output
// lines, each flushed at once.
type eventWriter struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	enc *json.Encoder
}

func (e *eventWriter) Write(p []byte) (int, error) {
	if err := e.send(api.GitDeployEvent{Output: string(p)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (e *eventWriter) send(ev api.GitDeployEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.enc.Encode(ev); err != nil {
		return err
	}
	return http.NewResponseController(e.w).Flush()
}
