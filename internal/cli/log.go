package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
	"github.com/flynnrebuilt/flynn/client/logaggclient"
)

func newLogCmd(s *state) *cobra.Command {
	var (
		follow, split, raw, initLog bool
		lines                       int
		job, typ                    string
	)
	c := &cobra.Command{
		Use:   "log [-f] [-n LINES] [-j JOB] [-t TYPE] [-s] [-r] [-i]",
		Short: "Show an app's log",
		Long: `Show the app's recent log lines ("TIME TYPE[JOB]: message"); -f keeps
following new lines until interrupted. -i adds the platform's lines about
each job (start, exit, out of memory) on stderr. The router's lines about
requests it answered itself, as Heroku's router codes them (at=error
code=H14 desc="No web processes running" ...), are of type router.`,
		Example: `  flynn log
  flynn log -f -t web
  flynn log -n 20 -j host1-5b1a...
  flynn log -s 2>errors.txt
  flynn log -i
  flynn log -t router`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if lines < 0 {
				return errors.New("-n must be >= 0")
			}
			_, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			q := url.Values{}
			if follow {
				q.Set("follow", "true")
			}
			if lines > 0 {
				q.Set("lines", strconv.Itoa(lines))
			}
			if job != "" {
				q.Set("job_id", job)
			}
			if typ != "" {
				q.Set("process_type", typ)
			}
			streams := api.LogStdout + "," + api.LogStderr
			if initLog {
				streams += "," + api.LogInit
			}
			q.Set("stream_types", streams)
			path := "/apps/" + url.PathEscape(app.ID) + "/log"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			res, err := s.raw(ctx, http.MethodGet, path, nil, http.Header{"Accept": {"text/event-stream"}})
			if err != nil {
				return err
			}
			lr := logaggclient.NewSSEReader(httpclient.NewEventReader(res.Body))
			defer lr.Close()
			for {
				m, err := lr.Next()
				if err != nil {
					if errors.Is(err, io.EOF) || ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("read log: %w", err)
				}
				w := cmd.OutOrStdout()
				if split && m.Stream == api.LogStderr || m.Stream == api.LogInit {
					w = cmd.ErrOrStderr()
				}
				if raw {
					fmt.Fprintln(w, m.Msg)
					continue
				}
				src := m.ProcessType
				if src == "" {
					src = "app"
				}
				fmt.Fprintf(w, "%s %s[%s]: %s\n", m.Timestamp.Local().Format("2006-01-02T15:04:05.000000Z07:00"), src, m.JobID, m.Msg)
			}
		},
	}
	f := c.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep streaming new lines")
	f.IntVarP(&lines, "number", "n", 0, "show only the last N lines")
	f.StringVarP(&job, "job", "j", "", "only lines of this job")
	f.StringVarP(&typ, "type", "t", "", "only lines of this process type")
	f.BoolVarP(&split, "split-stderr", "s", false, "write the jobs' stderr lines to stderr")
	f.BoolVarP(&raw, "raw-output", "r", false, "print only the messages")
	f.BoolVarP(&initLog, "init", "i", false, "also show the platform's lines about each job, on stderr")
	return c
}

// lastLogLines returns the last n lines an app's process type wrote (its
// jobs' output, with their job ids), or none when the log cannot be read.
// Given a job that ended, it returns that job's last n lines and the
// platform's lines about how it ended, waiting a little for the log to
// reach its exit line (its host ships it in the background).
func (s *state) lastLogLines(ctx context.Context, appID, typ, job string, n int) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	q := url.Values{"lines": {strconv.Itoa(n)}, "stream_types": {api.LogStdout + "," + api.LogStderr}}
	if typ != "" {
		q.Set("process_type", typ)
	}
	if job != "" {
		var wcancel context.CancelFunc
		ctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		q = url.Values{"follow": {"true"}, "lines": {strconv.Itoa(n + 4)}, "job_id": {job},
			"stream_types": {api.LogStdout + "," + api.LogStderr + "," + api.LogInit}}
	}
	res, err := s.raw(ctx, http.MethodGet, "/apps/"+url.PathEscape(appID)+"/log?"+q.Encode(), nil, http.Header{"Accept": {"text/event-stream"}})
	if err != nil {
		return nil
	}
	lr := logaggclient.NewSSEReader(httpclient.NewEventReader(res.Body))
	defer lr.Close()
	if job != "" {
		return logaggclient.LastLines(lr, n)
	}
	var out []string
	for {
		m, err := lr.Next()
		if err != nil {
			return out
		}
		out = append(out, fmt.Sprintf("%s: %s", m.JobID, m.Msg))
	}
}
