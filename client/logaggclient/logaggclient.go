// Package logaggclient is the Go client of the Flynn log aggregator: Send
// ships a batch of lines to one instance, Shipper sends lines to every
// instance in the background, numbered so that each instance stores each
// line once and in order, without ever blocking the job that produces
// them, and Read (SSE) and ReadPlain (newline-delimited JSON) read an
// app's buffered lines and follow new ones.
package logaggclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// Client talks to one log aggregator.
type Client struct {
	hc httpclient.Client
}

// New returns a client for the log aggregator at baseURL. key, when not
// empty, is sent as the cluster key. httpClient may be nil for
// http.DefaultClient.
func New(baseURL, key string, httpClient *http.Client) *Client {
	return &Client{hc: httpclient.Client{URL: strings.TrimSuffix(baseURL, "/"), Key: key, HTTP: httpClient}}
}

// Send ships msgs in one request and returns how many were stored. When a
// line is refused the error names it; the lines before it were stored.
func (c *Client) Send(ctx context.Context, msgs []api.LogMessage) (int, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range msgs {
		if err := enc.Encode(&msgs[i]); err != nil {
			return 0, fmt.Errorf("encode log line: %w", err)
		}
	}
	req, err := c.hc.NewRequest(ctx, http.MethodPost, "/log", &buf)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	res, err := c.hc.Send(req)
	if err != nil {
		return 0, fmt.Errorf("ship %d log lines: %w", len(msgs), err)
	}
	defer res.Body.Close()
	var out api.LogIngestResult
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return 0, fmt.Errorf("ship log lines: decode reply: %w", err)
	}
	return out.Accepted, nil
}

// ReadOptions select the lines to read.
type ReadOptions struct {
	// Follow keeps the stream open and delivers new lines as they arrive.
	Follow bool
	// Lines limits the past lines: 0 reads every buffered line, N > 0 the
	// last N, and a negative value none (useful with Follow).
	Lines int
	// JobID, ProcessType and StreamTypes ("stdout", "stderr", "init")
	// filter the lines; empty values match everything.
	JobID       string
	ProcessType string
	StreamTypes []string
}

func (o ReadOptions) path(app string) string {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "true")
	}
	switch {
	case o.Lines > 0:
		q.Set("lines", strconv.Itoa(o.Lines))
	case o.Lines < 0:
		q.Set("lines", "0")
	}
	if o.JobID != "" {
		q.Set("job_id", o.JobID)
	}
	if o.ProcessType != "" {
		q.Set("process_type", o.ProcessType)
	}
	if len(o.StreamTypes) > 0 {
		q.Set("stream_types", strings.Join(o.StreamTypes, ","))
	}
	p := "/log/" + url.PathEscape(app)
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

// Reader reads log lines from a stream.
type Reader struct {
	next  func() (api.LogMessage, error)
	close func() error
}

// Read opens app's log as a stream of Server-Sent Events (one
// api.LogChunk each). The caller closes the reader (or cancels ctx) to
// stop following.
func (c *Client) Read(ctx context.Context, app string, opts ReadOptions) (*Reader, error) {
	er, err := c.hc.Stream(ctx, opts.path(app))
	if err != nil {
		return nil, fmt.Errorf("read log of %s: %w", app, err)
	}
	return NewSSEReader(er), nil
}

// NewSSEReader reads log lines from an SSE log stream (the logaggregator's
// or the controller's GET .../log with Accept: text/event-stream).
func NewSSEReader(er *httpclient.EventReader) *Reader {
	return &Reader{close: er.Close, next: func() (api.LogMessage, error) {
		for {
			ev, err := er.Next()
			if err != nil {
				return api.LogMessage{}, err
			}
			var chunk api.LogChunk
			if err := json.Unmarshal(ev.Data, &chunk); err != nil {
				return api.LogMessage{}, fmt.Errorf("decode log event: %w", err)
			}
			switch chunk.Event {
			case api.LogEventEOF:
				return api.LogMessage{}, io.EOF
			case api.LogEventMessage:
				var m api.LogMessage
				if err := json.Unmarshal(chunk.Data, &m); err != nil {
					return api.LogMessage{}, fmt.Errorf("decode log line: %w", err)
				}
				return m, nil
			}
		}
	}}
}

// ReadPlain opens app's log as newline-delimited JSON messages, the reply
// without Accept: text/event-stream (the one Flynn's clients read).
func (c *Client) ReadPlain(ctx context.Context, app string, opts ReadOptions) (*Reader, error) {
	req, err := c.hc.NewRequest(ctx, http.MethodGet, opts.path(app), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Del("Accept")
	res, err := c.hc.Send(req)
	if err != nil {
		return nil, fmt.Errorf("read log of %s: %w", app, err)
	}
	return NewPlainReader(res.Body), nil
}

// NewPlainReader reads log lines from newline-delimited JSON messages.
func NewPlainReader(body io.ReadCloser) *Reader {
	dec := json.NewDecoder(body)
	return &Reader{close: body.Close, next: func() (api.LogMessage, error) {
		var m api.LogMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return m, io.EOF
			}
			return m, fmt.Errorf("decode log line: %w", err)
		}
		return m, nil
	}}
}

// Next returns the next line. It returns io.EOF when the stream ends
// (after the buffered lines, unless following).
func (r *Reader) Next() (api.LogMessage, error) { return r.next() }

// Close ends the stream.
func (r *Reader) Close() error { return r.close() }

// LastLines reads a job's log (its output and api.LogInit lines, as a
// follow from some lines back returns it) up to the platform's line about
// its exit, or the end of r, and returns the last n lines of the job's
// output followed by the platform's lines about how it ended (an OOM
// kill, a stop, the exit status).
func LastLines(r *Reader, n int) []string {
	var out, ended []string
	for {
		m, err := r.Next()
		if err != nil {
			break
		}
		if m.Stream != api.LogInit {
			if len(out) == n {
				out = append(out[:0], out[1:]...)
			}
			out = append(out, m.Msg)
			continue
		}
		if !strings.HasPrefix(m.Msg, api.LogInitStart) {
			ended = append(ended, m.Msg)
		}
		if strings.HasPrefix(m.Msg, api.LogInitExit) || strings.HasPrefix(m.Msg, api.LogInitFailed) {
			break
		}
	}
	return append(out, ended...)
}
