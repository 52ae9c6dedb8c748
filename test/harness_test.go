package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The plumbing every test here shares: background processes whose exit
// ends a wait at once, and waits whose failure says what was awaited, what
// was seen last and what the processes logged.

// bgProc is a flynn-host process (daemon, component) running in the
// background with its output in a log file.
type bgProc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has exited
}

// startBg starts flynn-host args in the background, logging to logPath,
// and stops it (SIGINT, then SIGKILL after 20 s) when the test ends.
func startBg(t *testing.T, name, logPath string, args ...string) *bgProc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(filepath.Join(binDir, "flynn-host"), args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &bgProc{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(p.stop)
	return p
}

// stop interrupts the process and waits for it (kills it after 20 s).
func (p *bgProc) stop() {
	if p == nil || !p.alive() {
		return
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// kill SIGKILLs the process and waits until it is gone.
func (p *bgProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *bgProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *bgProc) log() string { b, _ := os.ReadFile(p.logPath); return string(b) }

// tail is the end of a log: its last n lines.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// watch is what a wait reports when it fails: the processes whose exit
// ends it early and whose log tails it prints, and any other state.
type watch struct {
	procs []*bgProc
	dump  func() string
	// dead, when set, says why the wait cannot succeed any more (a
	// process started elsewhere is gone), or "".
	dead func() string
}

func watching(procs ...*bgProc) watch { return watch{procs: procs} }

// String is the failure report: each process's state and log tail, then
// the dump.
func (w watch) String() string {
	var sb strings.Builder
	for _, p := range w.procs {
		if p == nil {
			continue
		}
		state := "running"
		if !p.alive() {
			state = "exited: " + p.cmd.ProcessState.String()
		}
		fmt.Fprintf(&sb, "==== %s (%s), %s:\n%s\n", p.name, state, p.logPath, tail(p.log(), 60))
	}
	if w.dump != nil {
		sb.WriteString(w.dump())
	}
	return sb.String()
}

// waitFor polls cond every 100 ms until it reports done. It fails the
// test when ctx ends or a watched process exits, saying what it waited
// for, the last state cond reported (its error) and the watch's report.
func waitFor(t *testing.T, ctx context.Context, what string, w watch, cond func() (bool, error)) {
	t.Helper()
	start := time.Now()
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		for _, p := range w.procs {
			if p != nil && !p.alive() {
				t.Fatalf("waiting for %s: %s exited (%v) after %s; last seen: %v\n%s",
					what, p.name, p.cmd.ProcessState, time.Since(start).Round(time.Millisecond), last, w)
			}
		}
		if w.dead != nil {
			if why := w.dead(); why != "" {
				t.Fatalf("waiting for %s: %s after %s; last seen: %v\n%s", what, why, time.Since(start).Round(time.Millisecond), last, w)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s; last seen: %v\n%s", time.Since(start).Round(time.Second), what, last, w)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// within is a context for one wait.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
