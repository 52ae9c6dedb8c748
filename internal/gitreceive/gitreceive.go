// Package gitreceive accepts git pushes of apps, over SSH and over smart
// HTTP, by wrapping the real git-receive-pack and git http-backend. A push
// that updates the default branch (main or master) runs the Receiver (the
// build) from git's pre-receive hook, so the build's output streams live to
// the pusher as "remote:" lines and a failed build rejects the push.
//
// A deploy from a git URL (Taffy, POST /<app>.git/deploy) fetches the
// repository into the app's repository and runs the Receiver as a push of
// the fetched commit to the default branch would.
//
// BuildReceiver is the cluster's Receiver: it archives the pushed tree to
// the blobstore, runs `flynn-host slugbuilder` as a job on a host agent
// (HostJobRunner), turns the slug into a layer, creates the artifact and
// release through the controller and deploys it. BlobRepoCache keeps the
// repositories in the blobstore and ControllerKeys checks SSH keys against
// the controller's key list.
package gitreceive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// Receiver is told about a push to an app's default branch. It runs the
// build and deploy, writing progress to out, and returns an error to
// reject the push. Authorize is called before git runs at all.
type Receiver interface {
	Authorize(ctx context.Context, app string) error
	Receive(ctx context.Context, p Push, out io.Writer) error
}

// Push is one accepted update of an app's default branch.
type Push struct {
	App string
	// Ref is the updated ref, e.g. refs/heads/main.
	Ref    string
	OldRev string
	NewRev string
	// RepoDir is the bare repository holding NewRev.
	RepoDir string
	// GitEnv must be set on git commands that read the pushed objects
	// (they are quarantined until the push is accepted). Use Git.
	GitEnv []string
}

// Git returns a git command on the pushed repository that sees the pushed
// objects.
func (p Push) Git(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir", p.RepoDir}, args...)...)
	cmd.Env = append(os.Environ(), p.GitEnv...)
	return cmd
}

// Archive writes a tar of the pushed tree (NewRev) to w.
func (p Push) Archive(ctx context.Context, w io.Writer) error {
	cmd := p.Git(ctx, "archive", "--format=tar", p.NewRev)
	cmd.Stdout = w
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("git archive %s: %v: %s", p.NewRev, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// RepoCache keeps app repositories somewhere shared (the blobstore), so any
// gitreceive instance has the previous objects and a push sends only new
// ones. Restore is a no-op when there is nothing cached.
type RepoCache interface {
	Restore(ctx context.Context, app, dir string) error
	Save(ctx context.Context, app, dir string) error
}

// Config configures a Server.
type Config struct {
	// RepoDir holds one bare repository per app (<app>.git).
	RepoDir string
	// HookBin is the executable git runs as the pre-receive hook; it must
	// call HookMain (flynn-host does, as "flynn-host gitreceive-hook").
	HookBin  string
	HookArgs []string
	Receiver Receiver
	// SSHCommand is the program and arguments git runs as ssh to fetch a
	// deploy from an SSH URL: one that calls GitSSHMain (flynn-host
	// git-ssh). Without it only HTTP(S) URLs deploy.
	SSHCommand []string
	// Cache is optional.
	Cache RepoCache
}

// Server accepts pushes. Serve SSH with ServeSSH and HTTP with Handler.
type Server struct {
	cfg  Config
	log  *slog.Logger
	hook *hookServer

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// New returns a Server. Call Run to start the hook listener.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.RepoDir == "" || cfg.HookBin == "" || cfg.Receiver == nil {
		return nil, errors.New("gitreceive: RepoDir, HookBin and Receiver are required")
	}
	if err := os.MkdirAll(cfg.RepoDir, 0o700); err != nil {
		return nil, fmt.Errorf("repo dir: %w", err)
	}
	s := &Server{cfg: cfg, log: log, locks: map[string]*sync.Mutex{}}
	h, err := newHookServer(filepath.Join(cfg.RepoDir, ".hook.sock"), cfg.Receiver, log)
	if err != nil {
		return nil, err
	}
	s.hook = h
	return s, nil
}

// Run serves the hook socket until ctx ends.
func (s *Server) Run(ctx context.Context) error { return s.hook.run(ctx) }

var appPathRE = regexp.MustCompile(`^/?([a-z0-9]+(?:-[a-z0-9]+)*)(?:\.git)?/?$`)

// appFromPath extracts the app from a repo path like "/myapp.git".
func appFromPath(p string) (string, error) {
	p = strings.Trim(p, "'\"")
	m := appPathRE.FindStringSubmatch(p)
	if m == nil || len(m[1]) > 100 {
		return "", fmt.Errorf("invalid repository %q: push to <app>.git", p)
	}
	return m[1], nil
}

// lock serialises pushes to one app.
func (s *Server) lock(app string) func() {
	s.mu.Lock()
	l, ok := s.locks[app]
	if !ok {
		l = &sync.Mutex{}
		s.locks[app] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// prepare makes sure the app's bare repo exists with our hook installed,
// restoring it from the cache when it is not on disk.
func (s *Server) prepare(ctx context.Context, app string) (string, error) {
	dir := filepath.Join(s.cfg.RepoDir, app+".git")
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); err != nil {
		if s.cfg.Cache != nil {
			if err := s.cfg.Cache.Restore(ctx, app, dir); err != nil {
				s.log.Warn("restore repo cache", "app", app, "err", err)
				os.RemoveAll(dir)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); err != nil {
		out, err := exec.CommandContext(ctx, "git", "init", "-q", "--bare", dir).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("git init: %v: %s", err, out)
		}
	}
	for _, kv := range [][2]string{{"http.receivepack", "true"}, {"receive.denyNonFastForwards", "false"}, {"gc.auto", "0"}} {
		if out, err := exec.CommandContext(ctx, "git", "--git-dir", dir, "config", kv[0], kv[1]).CombinedOutput(); err != nil {
			return "", fmt.Errorf("git config: %v: %s", err, out)
		}
	}
	hook := "#!/bin/sh\nexec " + shellQuote(s.cfg.HookBin)
	for _, a := range s.cfg.HookArgs {
		hook += " " + shellQuote(a)
	}
	hook += "\n"
	if err := os.MkdirAll(filepath.Join(dir, "hooks"), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "hooks", "pre-receive"), []byte(hook), 0o755); err != nil {
		return "", fmt.Errorf("write hook: %w", err)
	}
	return dir, nil
}

// hookEnv is the environment git-receive-pack gets, so the hook can reach us.
func (s *Server) hookEnv(app string) []string {
	return []string{
		"FLYNN_HOOK_SOCKET=" + s.hook.path,
		"FLYNN_HOOK_APP=" + app,
	}
}

// afterPush saves the repo to the cache.
func (s *Server) afterPush(ctx context.Context, app, dir string) {
	if s.cfg.Cache == nil {
		return
	}
	if err := s.cfg.Cache.Save(ctx, app, dir); err != nil {
		s.log.Warn("save repo cache", "app", app, "err", err)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// listenUnix listens on a fresh unix socket at path.
func listenUnix(path string) (net.Listener, error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("hook socket: %w", err)
	}
	os.Chmod(path, 0o600)
	return ln, nil
}
