// Package hostclient is the Go client of the host agent's HTTP API: jobs,
// job events, logs and attach sessions.
package hostclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// Client talks to one host agent.
type Client struct {
	c *httpclient.Client
}

// New returns a client for the agent at url (e.g. http://10.0.0.1:1113)
// using the cluster token key.
func New(url, key string) *Client {
	return &Client{c: &httpclient.Client{URL: url, Key: key}}
}

// Status returns the host's status.
func (c *Client) Status(ctx context.Context) (*api.HostStatus, error) {
	var s api.HostStatus
	return &s, c.c.Do(ctx, http.MethodGet, "/host/status", nil, &s)
}

// AddJob starts a job. The reply's Status is running, or failed with Error
// set when the runtime could not start it.
func (c *Client) AddJob(ctx context.Context, j *api.HostJob) (*api.ActiveJob, error) {
	var aj api.ActiveJob
	return &aj, c.c.Do(ctx, http.MethodPut, "/host/jobs/"+url.PathEscape(j.ID), j, &aj)
}

// ListJobs returns every job the host knows.
func (c *Client) ListJobs(ctx context.Context) ([]*api.ActiveJob, error) {
	var out []*api.ActiveJob
	return out, c.c.Do(ctx, http.MethodGet, "/host/jobs", nil, &out)
}

// GetJob returns one job.
func (c *Client) GetJob(ctx context.Context, id string) (*api.ActiveJob, error) {
	var aj api.ActiveJob
	return &aj, c.c.Do(ctx, http.MethodGet, "/host/jobs/"+url.PathEscape(id), nil, &aj)
}

// StopJob stops a job (SIGTERM, then SIGKILL after the host's grace
// period) and returns its final state.
func (c *Client) StopJob(ctx context.Context, id string) (*api.ActiveJob, error) {
	var aj api.ActiveJob
	return &aj, c.c.Do(ctx, http.MethodDelete, "/host/jobs/"+url.PathEscape(id), nil, &aj)
}

// SignalJob sends a signal, by number or name (TERM, SIGHUP, 9).
func (c *Client) SignalJob(ctx context.Context, id, sig string) error {
	return c.c.Do(ctx, http.MethodPut, "/host/jobs/"+url.PathEscape(id)+"/signal/"+url.PathEscape(sig), nil, nil)
}

// ListVolumes returns the host's persistent volumes.
func (c *Client) ListVolumes(ctx context.Context) ([]*api.Volume, error) {
	var out []*api.Volume
	return out, c.c.Do(ctx, http.MethodGet, "/host/volumes", nil, &out)
}

// GetVolume returns one volume, with its size and whether a job uses it.
func (c *Client) GetVolume(ctx context.Context, id string) (*api.Volume, error) {
	var v api.Volume
	return &v, c.c.Do(ctx, http.MethodGet, "/host/volumes/"+url.PathEscape(id), nil, &v)
}

// DeleteVolume deletes a volume and its files; a volume a running job
// uses is api.ErrConflict.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	return c.c.Do(ctx, http.MethodDelete, "/host/volumes/"+url.PathEscape(id), nil, nil)
}

// Events is a stream of job events.
type Events struct{ er *httpclient.EventReader }

// Next returns the next event.
func (e *Events) Next() (*api.HostJobEvent, error) {
	ev, err := e.er.Next()
	if err != nil {
		return nil, err
	}
	out := &api.HostJobEvent{}
	if err := json.Unmarshal(ev.Data, out); err != nil {
		return nil, fmt.Errorf("decode job event: %w", err)
	}
	return out, nil
}

// Close ends the stream.
func (e *Events) Close() error { return e.er.Close() }

// StreamEvents follows the host's job events (create, start, stop, error).
func (c *Client) StreamEvents(ctx context.Context) (*Events, error) {
	er, err := c.c.Stream(ctx, "/host/jobs")
	if err != nil {
		return nil, err
	}
	return &Events{er: er}, nil
}

// Log reads a job's log lines.
type Log struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// Next returns the next line, or io.EOF at the end.
func (l *Log) Next() (*api.HostLogLine, error) {
	var line api.HostLogLine
	if err := l.dec.Decode(&line); err != nil {
		return nil, err
	}
	return &line, nil
}

// Close ends the log stream.
func (l *Log) Close() error { return l.body.Close() }

// JobLog opens a job's log. With follow it goes on until the job ends.
func (c *Client) JobLog(ctx context.Context, id string, follow bool) (*Log, error) {
	p := "/host/jobs/" + url.PathEscape(id) + "/log"
	if follow {
		p += "?follow=true"
	}
	req, err := c.c.NewRequest(ctx, http.MethodGet, p, nil)
	if err != nil {
		return nil, err
	}
	res, err := c.c.Send(req)
	if err != nil {
		return nil, err
	}
	return &Log{body: res.Body, dec: json.NewDecoder(bufio.NewReader(res.Body))}, nil
}

// Attach is an attach session with a job.
type Attach struct {
	rwc io.ReadWriteCloser
	wmu sync.Mutex
}

// Attach opens an attach session (POST /attach, upgraded to
// api.AttachUpgrade).
func (c *Client) Attach(ctx context.Context, req *api.AttachRequest) (*Attach, error) {
	r, err := c.c.NewRequest(ctx, http.MethodPost, "/attach", req)
	if err != nil {
		return nil, err
	}
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", api.AttachUpgrade)
	res, err := c.c.Send(r)
	if err != nil {
		return nil, err
	}
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if res.StatusCode != http.StatusSwitchingProtocols || !ok {
		res.Body.Close()
		return nil, fmt.Errorf("attach: unexpected reply %s", res.Status)
	}
	return &Attach{rwc: rwc}, nil
}

func (a *Attach) write(typ byte, p []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return api.WriteFrame(a.rwc, typ, p)
}

// Write sends p to the job's stdin.
func (a *Attach) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for off := 0; off < len(p); off += api.MaxFrame {
		end := min(off+api.MaxFrame, len(p))
		if err := a.write(api.FrameStdin, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// CloseStdin sends EOF to the job's stdin.
func (a *Attach) CloseStdin() error { return a.write(api.FrameStdin, nil) }

// Resize sets the job's TTY size.
func (a *Attach) Resize(height, width uint16) error {
	p := make([]byte, 4)
	binary.BigEndian.PutUint16(p[0:2], height)
	binary.BigEndian.PutUint16(p[2:4], width)
	return a.write(api.FrameResize, p)
}

// Close ends the session (the job keeps running).
func (a *Attach) Close() error { return a.rwc.Close() }

// ErrDetached is returned by Receive when the stream ends without an exit.
var ErrDetached = errors.New("attach stream ended before the job exited")

// Receive copies the job's output to stdout and stderr until it exits, and
// returns how it exited.
func (a *Attach) Receive(stdout, stderr io.Writer) (*api.HostJobExit, error) {
	for {
		typ, p, err := api.ReadFrame(a.rwc)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, ErrDetached
			}
			return nil, err
		}
		switch typ {
		case api.FrameStdout:
			if stdout != nil {
				stdout.Write(p)
			}
		case api.FrameStderr:
			if stderr != nil {
				stderr.Write(p)
			}
		case api.FrameExit:
			e := &api.HostJobExit{}
			if err := json.Unmarshal(p, e); err != nil {
				return nil, fmt.Errorf("attach: bad exit frame: %w", err)
			}
			return e, nil
		case api.FrameError:
			return nil, fmt.Errorf("attach: %s", p)
		}
	}
}

// Raw returns the attach session's underlying stream: api frames in both
// directions. Use it to relay the session (the controller does) instead of
// the typed methods; do not mix the two.
func (a *Attach) Raw() io.ReadWriteCloser { return a.rwc }
