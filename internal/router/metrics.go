package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the router's Prometheus collectors, in its own registry.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	noRoute  prometheus.Counter
	handoffs prometheus.Counter
	refused  prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "router_requests_total",
			Help: "Requests (http) and connections (tcp) per route, by status class.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "router_request_duration_seconds",
			Help:    "Time from request start to the end of the response, per route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		noRoute: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "router_requests_no_route_total",
			Help: "Requests that matched no route.",
		}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "router_http_handoffs_total",
			Help: "HTTP/1.1 connections (plain or HTTPS) the fast path handed to the general net/http path.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "router_connections_refused_total",
			Help: "Connections closed at once because their client held MaxConnsPerClient already.",
		}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.noRoute, m.handoffs, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// routeMetrics are one route's collectors, resolved once so the hot path
// does no label lookups.
type routeMetrics struct {
	codes [6]prometheus.Counter // by status/100; 0 for "no reply"
	dur   prometheus.Observer
}

var codeLabels = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

func (m *metrics) forRoute(id string) *routeMetrics {
	rm := &routeMetrics{dur: m.duration.WithLabelValues(id)}
	for i, c := range codeLabels {
		rm.codes[i] = m.requests.WithLabelValues(id, c)
	}
	return rm
}

func (m *metrics) deleteRoute(id string) {
	m.duration.DeleteLabelValues(id)
	for _, c := range codeLabels {
		m.requests.DeleteLabelValues(id, c)
	}
}

func (rm *routeMetrics) observe(status int, d time.Duration) {
	i := status / 100
	if i < 0 || i > 5 {
		i = 0
	}
	rm.codes[i].Inc()
	rm.dur.Observe(d.Seconds())
}
