// Package httpclient is the small HTTP layer the Flynn Go clients share: it
// sends JSON requests with the cluster key, maps JSON error bodies back to
// api errors (so errors.Is(err, api.ErrNotFound) works), and reads
// Server-Sent Event streams.
package httpclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Client talks JSON to one Flynn server.
type Client struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:1111.
	URL string
	// Key is sent as the HTTP Basic password when not empty.
	Key string
	// HTTP is the client used; http.DefaultClient when nil.
	HTTP *http.Client
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// NewRequest builds a request for path with in encoded as the JSON body
// (no body when in is nil).
func (c *Client) NewRequest(ctx context.Context, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		if r, ok := in.(io.Reader); ok {
			body = r
		} else {
			b, err := json.Marshal(in)
			if err != nil {
				return nil, fmt.Errorf("encode request: %w", err)
			}
			body = bytes.NewReader(b)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.URL, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Key != "" {
		req.SetBasicAuth("", c.Key)
	}
	return req, nil
}

// Do sends a request and decodes a 2xx JSON reply into out (ignored when
// nil). A non-2xx reply is returned as an *api.Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	req, err := c.NewRequest(ctx, method, path, in)
	if err != nil {
		return err
	}
	res, err := c.Send(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if out == nil {
		io.Copy(io.Discard, res.Body)
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, res.Body)
		return err
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s %s: decode reply: %w", method, path, err)
	}
	return nil
}

// Send sends req and returns the response when its status is 2xx or 101;
// otherwise it reads the error body, closes it and returns an *api.Error.
func (c *Client) Send(req *http.Request) (*http.Response, error) {
	res, err := c.http().Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode < 300 || res.StatusCode == http.StatusSwitchingProtocols {
		return res, nil
	}
	defer res.Body.Close()
	return nil, ErrorFromResponse(res)
}

// ErrorFromResponse decodes a JSON error body, or makes one from the status
// when the body is not JSON.
func ErrorFromResponse(res *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	e := &api.Error{}
	if err := json.Unmarshal(b, e); err != nil || e.Code == "" {
		msg := strings.TrimSpace(string(b))
		if msg == "" {
			msg = http.StatusText(res.StatusCode)
		}
		e = &api.Error{Code: api.CodeForStatus(res.StatusCode), Message: msg}
	}
	e.Status = res.StatusCode
	return e
}

// Event is one Server-Sent Event.
type Event struct {
	ID    string
	Event string
	Data  []byte
}

// Stream opens an SSE stream at path and returns a reader of its events.
// The caller closes the reader (or cancels ctx) to end the stream.
func (c *Client) Stream(ctx context.Context, path string) (*EventReader, error) {
	req, err := c.NewRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	res, err := c.Send(req)
	if err != nil {
		return nil, err
	}
	er := NewEventReader(res.Body)
	er.Header = res.Header
	return er, nil
}

// EventReader reads events from an SSE body.
type EventReader struct {
	// Header is the stream's response header (nil from NewEventReader).
	Header http.Header
	body   io.ReadCloser
	r      *bufio.Reader
}

// NewEventReader reads SSE events from body.
func NewEventReader(body io.ReadCloser) *EventReader {
	return &EventReader{body: body, r: bufio.NewReaderSize(body, 64<<10)}
}

// ErrStreamIdle ends a stream that sent nothing, not even a keep-alive
// comment, for longer than its idle timeout (EventReader.WithIdleTimeout).
var ErrStreamIdle = errors.New("the stream sent nothing for too long: its server, or the way to it, is gone")

// WithIdleTimeout makes Next fail with ErrStreamIdle once the stream has
// sent nothing, not even a keep-alive comment, for d. It is for servers
// that send keep-alives: a stream whose server or network path vanished
// (no reset, no close: a host's power or network lost) then ends, and its
// follower opens it again elsewhere, instead of waiting forever. Call it
// before the first Next.
func (er *EventReader) WithIdleTimeout(d time.Duration) *EventReader {
	ib := &idleBody{body: er.body, d: d}
	ib.t = time.AfterFunc(d, func() {
		ib.idle.Store(true)
		ib.body.Close()
	})
	er.body = ib
	er.r = bufio.NewReaderSize(ib, 64<<10)
	return er
}

// idleBody closes body when no byte came for d.
type idleBody struct {
	body io.ReadCloser
	d    time.Duration
	t    *time.Timer
	idle atomic.Bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if n > 0 {
		b.t.Reset(b.d)
	}
	if err != nil && b.idle.Load() {
		return n, ErrStreamIdle
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.t.Stop()
	return b.body.Close()
}

// Next returns the next event. Comments are skipped. It returns io.EOF
// when the stream ends.
func (er *EventReader) Next() (*Event, error) {
	ev := &Event{}
	var data []byte
	seen := false
	for {
		line, err := er.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && seen {
				ev.Data = data
				return ev, nil
			}
			return nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if !seen {
				continue
			}
			ev.Data = data
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		seen = true
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Event = value
		case "data":
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, value...)
		}
	}
}

// Close ends the stream.
func (er *EventReader) Close() error { return er.body.Close() }
