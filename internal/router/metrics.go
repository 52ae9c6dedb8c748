package router

import (
	"bufio"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The router's metrics, served in Prometheus's text format (version
// 0.0.4) on GET /metrics. They are a few counters and one histogram per
// route, written here rather than with client_golang, whose protobuf
// dependency cost each router process about 4 MB of memory; the hot path
// is one atomic add per counter and two per histogram observation.

// counter is a monotonic count.
type counter struct{ n atomic.Uint64 }

func (c *counter) Inc()          { c.n.Add(1) }
func (c *counter) value() uint64 { return c.n.Load() }

// durationBuckets are the request duration histogram's upper bounds, in
// seconds.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// histogram counts observations per bucket (not cumulative; the
// exposition sums them) and their sum.
type histogram struct {
	counts  [16]atomic.Uint64 // len(durationBuckets)+1, the last is +Inf
	sumBits atomic.Uint64     // float64 bits
}

func (h *histogram) Observe(v float64) {
	i, _ := slices.BinarySearch(durationBuckets, v) // first bound >= v
	h.counts[i].Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// metrics are the router's collectors.
type metrics struct {
	start    time.Time
	noRoute  counter
	handoffs counter
	refused  counter

	mu     sync.Mutex
	routes map[string]*routeMetrics
}

func newMetrics() *metrics {
	return &metrics{start: time.Now(), routes: map[string]*routeMetrics{}}
}

// routeMetrics are one route's collectors, resolved once so the hot path
// does no lookups.
type routeMetrics struct {
	codes [6]counter // by status/100; 0 for "no reply"
	dur   histogram
}

var codeLabels = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// forRoute returns route id's collectors; a route that is replaced (same
// id) keeps counting where it was.
func (m *metrics) forRoute(id string) *routeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	rm := m.routes[id]
	if rm == nil {
		rm = &routeMetrics{}
		m.routes[id] = rm
	}
	return rm
}

func (m *metrics) deleteRoute(id string) {
	m.mu.Lock()
	delete(m.routes, id)
	m.mu.Unlock()
}

func (rm *routeMetrics) observe(status int, d time.Duration) {
	i := status / 100
	if i < 0 || i > 5 {
		i = 0
	}
	rm.codes[i].Inc()
	rm.dur.Observe(d.Seconds())
}

// ServeHTTP writes the metrics in Prometheus's text format.
func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	m.write(bw)
}

func (m *metrics) write(w *bufio.Writer) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.routes))
	for id := range m.routes {
		ids = append(ids, id)
	}
	routes := make([]*routeMetrics, len(ids))
	slices.Sort(ids)
	for i, id := range ids {
		routes[i] = m.routes[id]
	}
	m.mu.Unlock()

	header(w, "router_requests_total", "counter", "Requests (http) and connections (tcp) per route, by status class.")
	for i, id := range ids {
		for c, label := range codeLabels {
			w.WriteString(`router_requests_total{code="` + label + `",route="` + escape(id) + `"} `)
			w.WriteString(strconv.FormatUint(routes[i].codes[c].value(), 10) + "\n")
		}
	}
	header(w, "router_request_duration_seconds", "histogram", "Time from request start to the end of the response, per route.")
	for i, id := range ids {
		h := &routes[i].dur
		var cum uint64
		for b := range h.counts {
			cum += h.counts[b].Load()
			le := "+Inf"
			if b < len(durationBuckets) {
				le = strconv.FormatFloat(durationBuckets[b], 'g', -1, 64)
			}
			w.WriteString(`router_request_duration_seconds_bucket{route="` + escape(id) + `",le="` + le + `"} ` + strconv.FormatUint(cum, 10) + "\n")
		}
		sum := math.Float64frombits(h.sumBits.Load())
		w.WriteString(`router_request_duration_seconds_sum{route="` + escape(id) + `"} ` + strconv.FormatFloat(sum, 'g', -1, 64) + "\n")
		w.WriteString(`router_request_duration_seconds_count{route="` + escape(id) + `"} ` + strconv.FormatUint(cum, 10) + "\n")
	}
	one := func(name, typ, help string, v float64) {
		header(w, name, typ, help)
		w.WriteString(name + " " + strconv.FormatFloat(v, 'g', -1, 64) + "\n")
	}
	one("router_requests_no_route_total", "counter", "Requests that matched no route.", float64(m.noRoute.value()))
	one("router_http_handoffs_total", "counter", "HTTP/1.1 connections (plain or HTTPS) the fast path handed to the general net/http path.", float64(m.handoffs.value()))
	one("router_connections_refused_total", "counter", "Connections closed at once because their client held MaxConnsPerClient already.", float64(m.refused.value()))

	// The process, under the names client_golang's collectors use.
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	one("go_goroutines", "gauge", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	one("go_memstats_alloc_bytes", "gauge", "Number of bytes allocated and still in use.", float64(ms.HeapAlloc))
	one("go_memstats_heap_inuse_bytes", "gauge", "Number of heap bytes that are in use.", float64(ms.HeapInuse))
	one("go_memstats_sys_bytes", "gauge", "Number of bytes obtained from system.", float64(ms.Sys))
	one("go_gc_cycles_total", "counter", "Number of completed GC cycles.", float64(ms.NumGC))
	one("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", float64(m.start.Unix()))
	if rss, cpu, ok := procStat(); ok {
		one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss)
		one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		one("process_open_fds", "gauge", "Number of open file descriptors.", float64(len(fds)))
	}
}

func header(w *bufio.Writer, name, typ, help string) {
	w.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

// escape quotes a label value: backslash, double quote and newline.
func escape(v string) string {
	if !strings.ContainsAny(v, "\\\"\n") {
		return v
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

// procStat reads the process's resident memory (bytes) and CPU time
// (seconds) from /proc/self/stat (Linux; ok is false elsewhere).
func procStat() (rss, cpu float64, ok bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0, false
	}
	// Fields after the command, which is in parentheses and may hold
	// spaces: state is field 3; utime 14, stime 15, rss 24.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return 0, 0, false
	}
	const clk = 100 // USER_HZ, 100 on every Linux the router runs on
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseFloat(f[21], 64)
	return pages * float64(os.Getpagesize()), (ut + st) / clk, true
}
