package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/flynnrebuilt/flynn/api"
)

func newRunCmd(s *state) *cobra.Command {
	var (
		detached, enableLog bool
		entrypoint          string
		release             string
		limits              string
		env                 []string
	)
	c := &cobra.Command{
		Use:   "run [-d] [-l] [-e ENTRYPOINT] [-r RELEASE] [--limits LIMITS] [--env KEY=VALUE] [--] COMMAND [ARG...]",
		Short: "Run a one-off job",
		Long: `Run a command as a one-off job of the app's current release (with its env).
A release built by git push runs the command as Heroku does: in /app, with
the buildpacks' profile sourced (so the app's bin is on $PATH). By default it
attaches: the job's output streams here, input is sent to it, and flynn exits
with the job's exit status. When stdin is a terminal the job gets a TTY (the
terminal is put in raw mode, so Ctrl-C goes to the job); otherwise Ctrl-C
sends the job SIGINT and a second Ctrl-C stops it. -d starts the job detached
and prints its ID; its output goes to the app's log (flynn log -j ID), as an
attached job's does with -l. --limits sets resource limits as flynn limit
takes them, comma-separated.`,
		Example: `  flynn run bash
  flynn run -d -- ./worker --once
  flynn run --limits memory=256MB,cpu=500 -- rake db:migrate
  flynn run -e /bin/sh -- -c 'echo $PATH'
  echo 'select 1' | flynn run psql`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			if release == "" && app.ReleaseID == "" {
				return fmt.Errorf("app %s has no release yet: deploy code first (git push flynn main), or give -r RELEASE", app.Name)
			}
			if entrypoint != "" {
				args = append([]string{entrypoint}, args...)
			}
			nj := &api.NewJob{ReleaseID: release, ReleaseEnv: true, Args: args, DisableLog: !detached && !enableLog}
			if limits != "" {
				res, err := parseLimitList(limits)
				if err != nil {
					return err
				}
				nj.Resources = res
			}
			if len(env) > 0 {
				kv, err := parseKeyValues(env, "--env value")
				if err != nil {
					return err
				}
				nj.Env = kv
			}
			if detached {
				job, err := c.RunJob(ctx, app.ID, nj)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), job.ID)
				return nil
			}
			return s.runAttached(ctx, cmd, app, nj)
		},
	}
	c.Flags().SetInterspersed(false)
	f := c.Flags()
	f.BoolVarP(&detached, "detached", "d", false, "run detached and print the job ID (output goes to the log)")
	f.BoolVarP(&enableLog, "enable-log", "l", false, "also send an attached job's output to the app's log")
	f.StringVarP(&entrypoint, "entrypoint", "e", "", "program to run COMMAND with")
	f.StringVarP(&release, "release", "r", "", "release to run (default: the current one)")
	f.StringVar(&limits, "limits", "", "resource limits, e.g. memory=512MB,cpu=500 (see flynn limit)")
	f.StringArrayVar(&env, "env", nil, "set KEY=VALUE in the job's environment (repeatable)")
	return c
}

type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) do(f func(io.Writer) error) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return f(fw.w)
}

// runAttached runs nj attached to this terminal and returns the job's
// exit status as an exitError. The controller's attach stream speaks
// Flynn's attach protocol (api.JobAttachUpgrade).
func (s *state) runAttached(ctx context.Context, cmd *cobra.Command, app *api.App, nj *api.NewJob) error {
	return s.runAttachedIO(ctx, cmd, app, nj, cmd.InOrStdin(), cmd.OutOrStdout())
}

// runAttachedIO is runAttached with the job's stdin read from stdin and
// its stdout written to stdout (a TTY only when stdin is a terminal); a
// write to stdout that fails ends the job's run with that error.
func (s *state) runAttachedIO(ctx context.Context, cmd *cobra.Command, app *api.App, nj *api.NewJob, stdin io.Reader, stdout io.Writer) error {
	stderr := cmd.ErrOrStderr()
	inFile, _ := stdin.(*os.File)
	tty := inFile != nil && term.IsTerminal(int(inFile.Fd()))
	if tty {
		nj.TTY = true
		if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
			nj.Columns, nj.Lines = w, h
		}
	}
	res, err := s.raw(ctx, http.MethodPost, "/apps/"+url.PathEscape(app.ID)+"/jobs", nj, http.Header{
		"Connection": {"Upgrade"},
		"Upgrade":    {api.JobAttachUpgrade},
	})
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		res.Body.Close()
		return errors.New("the controller did not attach to the job (it may be too old): use flynn run -d")
	}
	conn, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		return errors.New("attach stream is not writable")
	}
	defer conn.Close()
	jobID := res.Header.Get("Flynn-Job-Id")
	fw := &frameWriter{w: conn}

	if tty {
		old, err := term.MakeRaw(int(inFile.Fd()))
		if err != nil {
			return fmt.Errorf("set terminal raw mode: %w", err)
		}
		defer term.Restore(int(inFile.Fd()), old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
					fw.do(func(w2 io.Writer) error { return api.WriteAttachResize(w2, uint16(h), uint16(w)) })
				}
			}
		}()
	} else {
		// Without a TTY, Ctrl-C cannot travel as a byte: send the job
		// SIGINT, and stop it on a second Ctrl-C.
		intr := make(chan os.Signal, 2)
		signal.Notify(intr, os.Interrupt)
		defer signal.Stop(intr)
		go func() {
			if _, ok := <-intr; !ok {
				return
			}
			fw.do(func(w io.Writer) error { return api.WriteAttachValue(w, api.AttachSignal, int(syscall.SIGINT)) })
			if _, ok := <-intr; !ok {
				return
			}
			c, _, err := s.client()
			if err == nil && jobID != "" {
				c.DeleteJob(context.WithoutCancel(ctx), app.ID, jobID)
			}
		}()
	}

	// Copy stdin to the job. A read from a terminal cannot be interrupted,
	// so this goroutine may outlive the command; it ends with the process.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if fw.do(func(w io.Writer) error { return api.WriteAttachData(w, api.AttachStdin, buf[:n]) }) != nil {
					return
				}
			}
			if err != nil {
				fw.do(func(w io.Writer) error { return api.WriteAttachData(w, api.AttachStdin, nil) }) // EOF
				return
			}
		}
	}()

	for {
		f, err := api.ReadAttachFrame(conn)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("job %s: connection lost before it exited: %v (see flynn ps -a and flynn log -j %s)", jobID, err, jobID)
		}
		switch f.Type {
		case api.AttachData:
			switch f.Stream {
			case api.AttachStdout:
				if _, err := stdout.Write(f.Data); err != nil {
					if jobID != "" {
						if c, _, cerr := s.client(); cerr == nil {
							c.DeleteJob(context.WithoutCancel(ctx), app.ID, jobID)
						}
					}
					return fmt.Errorf("write the job's output: %w", err)
				}
			case api.AttachStderr, api.AttachInitLog:
				stderr.Write(f.Data)
			}
		case api.AttachExit:
			if f.Value != 0 {
				return exitError{code: f.Value}
			}
			return nil
		case api.AttachError:
			return fmt.Errorf("job %s failed: %s", jobID, f.Data)
		}
	}
}
