// Package healthcheck probes a job's port, by TCP connect or HTTP request,
// and reports when it turns healthy or unhealthy. The host side uses it to
// register a job's instance in discoverd only once it passes, and to take
// it out when it fails.
package healthcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// Defaults for checks that leave fields unset.
const (
	DefaultInterval  = 10 * time.Second
	DefaultThreshold = 2
	// Until a job is first healthy its checks run FirstInterval apart,
	// the gap doubling after each failure up to StartInterval: a new job
	// gets traffic within a few tens of milliseconds of serving, and one
	// that takes longer (a Node.js app under npm start listens after
	// 0.3-0.4 s) within 100 ms of it: it is probed ten times a second, a
	// refused connection each, until it listens.
	FirstInterval = 25 * time.Millisecond
	StartInterval = 100 * time.Millisecond
	// DefaultProbeTimeout bounds one probe when the interval is longer.
	DefaultProbeTimeout = 2 * time.Second
)

// Checker probes one address. Create it with New.
type Checker struct {
	typ          string
	addr         string
	path         string
	host         string
	match        string
	status       int
	interval     time.Duration
	threshold    int
	startTimeout time.Duration
	client       *http.Client
}

// New returns a Checker for check against addr (host:port). Type defaults
// to tcp; http and https request Path (default /) and want Status (default
// 200) and, when set, a body containing Match.
func New(check *api.HealthCheck, addr string) (*Checker, error) {
	if check == nil {
		check = &api.HealthCheck{}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("health check address %q: %w", addr, err)
	}
	c := &Checker{
		typ:          check.Type,
		addr:         addr,
		path:         check.Path,
		host:         check.Host,
		match:        check.Match,
		status:       check.Status,
		interval:     time.Duration(check.Interval),
		threshold:    check.Threshold,
		startTimeout: time.Duration(check.StartTimeout),
	}
	switch c.typ {
	case "":
		c.typ = "tcp"
	case "tcp", "http", "https":
	default:
		return nil, fmt.Errorf("health check type %q: want tcp, http or https", c.typ)
	}
	if c.interval < 0 || c.threshold < 0 || c.startTimeout < 0 {
		return nil, errors.New("health check interval, threshold and start_timeout must not be negative")
	}
	if c.interval == 0 {
		c.interval = DefaultInterval
	}
	if c.threshold == 0 {
		c.threshold = DefaultThreshold
	}
	if c.path == "" {
		c.path = "/"
	}
	if !strings.HasPrefix(c.path, "/") {
		return nil, fmt.Errorf("health check path %q must start with /", c.path)
	}
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if c.typ != "tcp" {
		c.client = &http.Client{
			Transport: &http.Transport{
				// Jobs serve the cluster's certificates, not the address's.
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
				DisableKeepAlives: true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

func (c *Checker) probeTimeout() time.Duration { return min(c.interval, DefaultProbeTimeout) }

// Check probes once and returns why it failed, or nil.
func (c *Checker) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.probeTimeout())
	defer cancel()
	if c.typ == "tcp" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.typ+"://"+c.addr+c.path, nil)
	if err != nil {
		return err
	}
	if c.host != "" {
		req.Host = c.host
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != c.status {
		return fmt.Errorf("%s: status %d, want %d", req.URL, resp.StatusCode, c.status)
	}
	if c.match != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		if !strings.Contains(string(body), c.match) {
			return fmt.Errorf("%s: body does not contain %q", req.URL, c.match)
		}
	}
	return nil
}

// Monitor probes every interval until ctx ends, calling fn(true) once the
// check passes threshold times in a row and fn(false) once it then fails
// threshold times in a row (and again on every later change). A check
// that has not passed within start_timeout (when set) is reported
// unhealthy once. Monitor returns ctx's error.
func (c *Checker) Monitor(ctx context.Context, fn func(healthy bool, err error)) error {
	var startDeadline <-chan time.Time
	if c.startTimeout > 0 {
		t := time.NewTimer(c.startTimeout)
		defer t.Stop()
		startDeadline = t.C
	}
	healthy := false
	passes, fails := 0, 0
	// Until the first time it is healthy, check often, so a new job gets
	// traffic as soon as it serves; then at the configured interval.
	starting := true
	gap := min(c.interval, FirstInterval)
	tick := time.NewTimer(gap)
	defer tick.Stop()
	for {
		err := c.Check(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			passes, fails = passes+1, 0
			if !healthy && passes >= c.threshold {
				healthy = true
				startDeadline = nil
				starting = false
				fn(true, nil)
			}
		} else {
			passes, fails = 0, fails+1
			if healthy && fails >= c.threshold {
				healthy = false
				fn(false, err)
			}
		}
		switch {
		case !starting:
			gap = c.interval
		case err == nil:
			// Passed, not yet threshold times: the next pass soon.
			gap = min(c.interval, FirstInterval)
		default:
			gap = min(c.interval, StartInterval, 2*gap)
		}
		tick.Reset(gap)
		select {
		case <-tick.C:
		case <-startDeadline:
			startDeadline = nil
			fn(false, fmt.Errorf("not healthy within %s", c.startTimeout))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitHealthy returns nil once the check has passed threshold times in a
// row, or an error when ctx ends or start_timeout passes first.
func (c *Checker) WaitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := errors.New("healthy")
	err := c.Monitor(ctx, func(healthy bool, err error) {
		if healthy {
			cancel(done)
		} else {
			cancel(err)
		}
	})
	if cause := context.Cause(ctx); cause == done {
		return nil
	} else if cause != nil {
		return cause
	}
	return err
}
