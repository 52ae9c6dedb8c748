package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
)

// gitRemoteURL returns the URL of a git remote in the repo at dir, or ""
// when dir is not in a git repo or has no such remote.
func gitRemoteURL(ctx context.Context, dir, remote string) string {
	cmd := exec.CommandContext(ctx, "git", "config", "--get", "remote."+remote+".url")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// appFromGitURL extracts the app name from a Flynn git remote URL:
// https://git.DOMAIN/APP.git, ssh://git@HOST:PORT/APP.git, git@HOST:APP.git.
func appFromGitURL(raw string) string {
	var p string
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" && u.Host != "" {
		p = u.Path
	} else if _, after, ok := strings.Cut(raw, ":"); ok && strings.Contains(raw, "@") {
		p = after
	} else {
		return ""
	}
	p = strings.Trim(p, "/")
	if i := strings.LastIndex(p, "/"); i >= 0 {
		p = p[i+1:]
	}
	p = strings.TrimSuffix(p, ".git")
	if !validAppName(p) {
		return ""
	}
	return p
}

func validAppName(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	prevDash := true
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			prevDash = false
		case c == '-':
			if prevDash {
				return false
			}
			prevDash = true
		default:
			return false
		}
	}
	return !prevDash
}

// inGitRepo reports whether dir is inside a git work tree.
func inGitRepo(ctx context.Context, dir string) bool {
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "--is-inside-work-tree")
	cmd.Dir = dir
	out, err := cmd.Output()
	return err == nil && bytes.Equal(bytes.TrimSpace(out), []byte("true"))
}

// git runs a git command in dir and returns a one-line error on failure.
func git(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return fmt.Errorf("git %s: %s", strings.Join(args, " "), msg)
	}
	return nil
}
