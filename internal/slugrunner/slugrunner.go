// Package slugrunner starts an app's processes inside app jobs (as
// `flynn-host slugrunner`) the way Heroku runs a dyno: it runs a Procfile
// process type, or any command, in the slug's directory /app with
// HOME=/app and /app/bin first on PATH, after sourcing the buildpacks'
// .profile.d/*.sh scripts and the app's .profile; a Procfile line (or a
// single-argument command) is run by bash -c (sh when the image has no
// bash), as Heroku does. DYNO (web.1, run.4821) and PORT come from the
// platform. The shell execs the command. As the container's PID 1 (an app
// job), slugrunner stays as a small init that forwards signals to the
// process, because the kernel drops signals to a PID 1 that has no handler
// for them (a plain server would ignore the SIGTERM that stops it);
// otherwise it execs. It also holds the static file server the static
// buildpack uses.
package slugrunner

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/flynnrebuilt/flynn/internal/slug"
)

// DefaultAppDir is where app jobs find the slug.
const DefaultAppDir = slug.AppDir

// Shells are the shells that source the profile and run commands, in
// order of preference: Heroku uses bash, whose syntax buildpacks' profile
// scripts and Procfiles may rely on.
var Shells = []string{"/bin/bash", "/bin/sh"}

// DefaultPath is the PATH when the environment sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// shell is the first of Shells that exists.
func shell() string {
	for _, sh := range Shells {
		if _, err := os.Stat(sh); err == nil {
			return sh
		}
	}
	return Shells[len(Shells)-1]
}

// profileScript sources the profile scripts and then execs "$@".
const profileScript = `cd "$HOME" || exit 1
for f in "$HOME"/.profile.d/*.sh; do
	[ -r "$f" ] && . "$f"
done
unset f
[ -r "$HOME/.profile" ] && . "$HOME/.profile"
exec "$@"`

// Command returns the argv and environment that run args inside appDir
// as Heroku runs a dyno's command: HOME is appDir, PATH starts with
// appDir/bin, and the profile is sourced. With a single argument the
// argument is a shell command line (as in a Procfile), run with
// `bash -c`; with several, they are the program and its arguments.
func Command(appDir string, args []string, environ []string) (argv, env []string, err error) {
	if len(args) == 0 {
		return nil, nil, errors.New("no command given")
	}
	sh := shell()
	if len(args) == 1 {
		args = []string{sh, "-c", execLine(args[0])}
	}
	argv = append([]string{sh, "-c", profileScript, "slugrunner"}, args...)
	path := DefaultPath
	env = slices.DeleteFunc(slices.Clone(environ), func(kv string) bool {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
			return true
		}
		return strings.HasPrefix(kv, "HOME=")
	})
	bin := filepath.Join(appDir, "bin")
	if path != bin && !strings.HasPrefix(path, bin+":") {
		path = bin + ":" + path
	}
	env = append(env, "HOME="+appDir, "PATH="+path)
	return argv, env, nil
}

// execLine returns a shell command line that replaces the shell with the
// command when the line is a simple command ("exec" is inserted after any
// leading variable assignments): dash, Debian's /bin/sh, does not exec the
// last command of `sh -c` itself (nor does bash after assignments), and
// without exec a signal to the job would stop at the shell. Compound lines (;, &&, |, &, subshells,
// keywords) run as they are; such commands should exec their server.
func execLine(line string) string {
	trimmed := strings.TrimSpace(line)
	if trimmed == "" || strings.ContainsAny(redirectRE.ReplaceAllString(trimmed, ""), ";&|()\n") {
		return line
	}
	words := strings.Fields(trimmed)
	i := 0
	for ; i < len(words) && isAssignment(words[i]); i++ {
		if strings.ContainsAny(words[i], "'\"\\`$") {
			return line // a quoted value may span words
		}
	}
	if i == len(words) {
		return line
	}
	switch words[i] {
	case "exec", "if", "for", "while", "until", "case", "{", "!", "[[", "function":
		return line
	}
	rest := trimmed
	for _, w := range words[:i] {
		rest = strings.TrimLeft(rest[len(w):], " \t")
	}
	return strings.Join(append(words[:i:i], "exec", rest), " ")
}

// redirectRE matches the redirections that contain "&" (2>&1, &>).
var redirectRE = regexp.MustCompile(`[0-9]*>&[0-9-]+|&>>?`)

// isAssignment says whether a shell word is NAME=value.
func isAssignment(w string) bool {
	name, _, ok := strings.Cut(w, "=")
	if !ok || name == "" {
		return false
	}
	for i, c := range name {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ProcessCommand looks up a process type in appDir/Procfile.
func ProcessCommand(appDir, typ string) (string, error) { return slug.Command(appDir, typ) }

// Exec replaces the current process with args run as Command describes.
// It returns only on failure.
func Exec(appDir string, args []string, environ []string) error {
	argv, env, err := Command(appDir, args, environ)
	if err != nil {
		return err
	}
	if err := os.Chdir(appDir); err != nil {
		return fmt.Errorf("slugrunner: %w", err)
	}
	if os.Getpid() == 1 {
		return runAsInit(argv, env)
	}
	return fmt.Errorf("slugrunner: exec %s: %w", argv[0], syscall.Exec(argv[0], argv, env))
}

// runAsInit runs argv as a child, forwards every signal to it, and exits
// with its status (128+N when signal N ended it). It returns only when the
// child cannot start.
func runAsInit(argv, env []string) error {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		signal.Stop(sigs)
		return fmt.Errorf("slugrunner: start %s: %w", argv[0], err)
	}
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGCHLD || sig == syscall.SIGURG {
				continue // our own child's news, and Go's preemption signal
			}
			cmd.Process.Signal(sig)
		}
	}()
	err := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	} else if err != nil {
		code = 1
	}
	os.Exit(code)
	return nil
}

// Start replaces the current process with the Procfile process type typ.
func Start(appDir, typ string, environ []string) error {
	cmd, err := ProcessCommand(appDir, typ)
	if err != nil {
		return fmt.Errorf("slugrunner: %w", err)
	}
	if !slices.ContainsFunc(environ, func(kv string) bool { return strings.HasPrefix(kv, "FLYNN_PROCESS_TYPE=") }) {
		environ = append(environ, "FLYNN_PROCESS_TYPE="+typ)
	}
	return Exec(appDir, []string{cmd}, environ)
}
