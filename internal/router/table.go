package router

import (
	"crypto/tls"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// routeEntry is a route ready for the hot path.
type routeEntry struct {
	route   api.Route
	path    string // "/" or "/prefix/"
	svc     *service
	metrics *routeMetrics
	// maxBody (-1: none) and bodyIdle are the route's body limits.
	maxBody  int64
	bodyIdle time.Duration
}

// table is an immutable snapshot of the routes; the router swaps in a new
// one on every change.
type table struct {
	exact    map[string][]*routeEntry // domain → routes, longest path first
	wildcard map[string][]*routeEntry // "example.com" for "*.example.com"
	tcp      map[int]*routeEntry
	certs    map[string]*tls.Certificate // domain or "*.domain" → cert
}

func newTable() *table {
	return &table{
		exact:    map[string][]*routeEntry{},
		wildcard: map[string][]*routeEntry{},
		tcp:      map[int]*routeEntry{},
		certs:    map[string]*tls.Certificate{},
	}
}

func (t *table) addHTTP(e *routeEntry) {
	d := e.route.Domain
	m := t.exact
	if strings.HasPrefix(d, "*.") {
		d, m = d[2:], t.wildcard
	}
	list := append(m[d], e)
	sort.SliceStable(list, func(i, j int) bool { return len(list[i].path) > len(list[j].path) })
	m[d] = list
}

// lookup finds the route for a request's host and path: an exact domain
// first, then wildcards from the most specific, then the longest matching
// path prefix within the domain.
func (t *table) lookup(host, path string) *routeEntry {
	host = normalizeHost(host)
	if list, ok := t.exact[host]; ok {
		if e := matchPath(list, path); e != nil {
			return e
		}
	}
	for h := host; ; {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return nil
		}
		h = h[i+1:]
		if list, ok := t.wildcard[h]; ok {
			if e := matchPath(list, path); e != nil {
				return e
			}
		}
	}
}

func matchPath(list []*routeEntry, path string) *routeEntry {
	for _, e := range list {
		p := e.path
		if p == "/" || strings.HasPrefix(path, p) || path == p[:len(p)-1] {
			return e
		}
	}
	return nil
}

// normalizeHost strips a port and a trailing dot and lower-cases, without
// allocating when the host is already lower case.
func normalizeHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// certificate picks the certificate for a TLS server name.
func (t *table) certificate(name string) *tls.Certificate {
	name = normalizeHost(name)
	if c := t.certs[name]; c != nil {
		return c
	}
	for h := name; ; {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return nil
		}
		h = h[i+1:]
		if c := t.certs["*."+h]; c != nil {
			return c
		}
	}
}

// normalizePath makes a route path "/" or "/prefix/".
func normalizePath(p string) string {
	if p == "" || p == "/" {
		return "/"
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p
}

// validateRoute checks a route read from etcd before it is used.
func validateRoute(r *api.Route, tcpMin, tcpMax int) error {
	if r.ID == "" {
		return fmt.Errorf("route has no id")
	}
	if r.Service == "" {
		return fmt.Errorf("route %s has no service", r.ID)
	}
	switch r.Type {
	case api.RouteHTTP, "":
		d := strings.ToLower(strings.TrimSuffix(r.Domain, "."))
		if d == "" || strings.ContainsAny(d, " /:") {
			return fmt.Errorf("route %s has an invalid domain %q", r.ID, r.Domain)
		}
		if strings.Contains(d[min(len(d), 2):], "*") || (strings.HasPrefix(d, "*") && !strings.HasPrefix(d, "*.")) {
			return fmt.Errorf("route %s: a wildcard domain must look like *.example.com, not %q", r.ID, r.Domain)
		}
		r.Domain = d
		r.Type = api.RouteHTTP
		if r.MaxBodyBytes < -1 || r.BodyTimeout < 0 {
			return fmt.Errorf("route %s: max_body_bytes must be -1 (no limit), 0 (the default) or positive, body_timeout not negative", r.ID)
		}
	case api.RouteTCP:
		if int(r.Port) < tcpMin || int(r.Port) > tcpMax {
			return fmt.Errorf("route %s: tcp port %d is outside %d-%d", r.ID, r.Port, tcpMin, tcpMax)
		}
	default:
		return fmt.Errorf("route %s has unknown type %q", r.ID, r.Type)
	}
	return nil
}

// parseCert turns a route certificate into a tls.Certificate.
func parseCert(c *api.Certificate) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair([]byte(c.Cert), []byte(c.Key))
	if err != nil {
		return nil, err
	}
	return &cert, nil
}
