package discoverdclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"
)

// ServiceDomain is the pseudo-domain of services: a URL whose host is
// SERVICE.discoverd (e.g. http://controller.discoverd) reaches one of the
// service's live instances when dialled through DialContext.
const ServiceDomain = ".discoverd"

// ErrNoLiveInstance is the error of a dial of a service that has no live
// instance (errors.Is).
var ErrNoLiveInstance = errors.New("no live instance")

// DialContext dials addr like net.Dialer, except that a host named
// SERVICE.discoverd (any port) dials one of the service's live instances,
// trying them in random order until one answers. Instances are looked up
// at each dial, so a client whose connection broke reaches a live
// instance on its next request.
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	host, _, err := net.SplitHostPort(addr)
	if err != nil || !strings.HasSuffix(host, ServiceDomain) {
		return d.DialContext(ctx, network, addr)
	}
	service := strings.TrimSuffix(host, ServiceDomain)
	insts, err := c.Instances(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("dial %s: look up service %s: %w", addr, service, err)
	}
	if len(insts) == 0 {
		return nil, fmt.Errorf("dial %s: service %s has %w", addr, service, ErrNoLiveInstance)
	}
	var errs []error
	for _, i := range rand.Perm(len(insts)) {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := d.DialContext(dctx, network, insts[i].Addr)
		cancel()
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dial %s: %w", addr, errors.Join(errs...))
}

// HTTPClient returns an HTTP client that reaches SERVICE.discoverd hosts
// through DialContext (and every other host as usual).
func (c *Client) HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = c.DialContext
	return &http.Client{Transport: tr}
}
