package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

func newLogCmd(s *state) *cobra.Command {
	var (
		follow, split, raw bool
		lines              int
		job, typ           string
	)
	c := &cobra.Command{
		Use:   "log [-f] [-n LINES] [-j JOB] [-t TYPE] [-s] [-r]",
		Short: "Show an app's log",
		Long: `Show the app's recent log lines ("TIME TYPE[JOB]: message"); -f keeps
following new lines until interrupted.`,
		Example: `  flynn log
  flynn log -f -t web
  flynn log -n 20 -j host1-5b1a...
  flynn log -s 2>errors.txt`,
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
			path := "/apps/" + url.PathEscape(app.ID) + "/log"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			res, err := s.raw(ctx, http.MethodGet, path, nil, http.Header{"Accept": {"text/event-stream"}})
			if err != nil {
				return err
			}
			er := httpclient.NewEventReader(res.Body)
			defer er.Close()
			for {
				ev, err := er.Next()
				if err != nil {
					if errors.Is(err, io.EOF) || ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("read log: %w", err)
				}
				if ev.Event != "" && ev.Event != "message" {
					continue
				}
				var m api.LogMessage
				if err := json.Unmarshal(ev.Data, &m); err != nil {
					continue
				}
				w := cmd.OutOrStdout()
				if split && m.Stream == api.LogStderr {
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
	return c
}
