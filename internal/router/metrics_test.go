package router

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestMetricsExposition: the text format's lines for counters and
// histograms, as Prometheus reads them: cumulative buckets, a count equal
// to the +Inf bucket, label values escaped, deleted routes gone.
func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	a := m.forRoute("a")
	a.observe(200, 300*time.Microsecond) // first bucket
	a.observe(204, 2*time.Millisecond)   // le 0.0025
	a.observe(503, time.Minute)          // +Inf only
	a.observe(0, time.Millisecond)       // exactly a bound: le 0.001
	if m.forRoute("a") != a {
		t.Fatal("a route's collectors are not kept by id")
	}
	m.forRoute(`q"\`+"\n").observe(404, time.Millisecond)
	m.forRoute("gone").observe(200, time.Millisecond)
	m.deleteRoute("gone")
	m.refused.Inc()

	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	m.write(w)
	w.Flush()
	out := buf.String()
	for _, want := range []string{
		`router_requests_total{code="2xx",route="a"} 2`,
		`router_requests_total{code="5xx",route="a"} 1`,
		`router_requests_total{code="none",route="a"} 1`,
		`router_request_duration_seconds_bucket{route="a",le="0.0005"} 1`,
		`router_request_duration_seconds_bucket{route="a",le="0.001"} 2`,
		`router_request_duration_seconds_bucket{route="a",le="0.0025"} 3`,
		`router_request_duration_seconds_bucket{route="a",le="30"} 3`,
		`router_request_duration_seconds_bucket{route="a",le="+Inf"} 4`,
		`router_request_duration_seconds_count{route="a"} 4`,
		`router_request_duration_seconds_sum{route="a"} 60.00`,
		`router_requests_total{code="4xx",route="q\"\\\n"} 1`,
		"router_connections_refused_total 1",
		"# TYPE router_request_duration_seconds histogram",
		"process_resident_memory_bytes ",
		"go_goroutines ",
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
			t.Errorf("no line %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, `route="gone"`) {
		t.Error("a deleted route is still exposed")
	}
	// Every sample line is "name{labels} value" or "name value".
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "# ") {
			continue
		}
		if i := strings.LastIndexByte(l, ' '); i < 0 || strings.ContainsAny(l[i+1:], "{} ") {
			t.Errorf("malformed line %q", l)
		}
	}
}
