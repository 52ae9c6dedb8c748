package discoverd_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

func putInstance(ctx context.Context, hc *httpclient.Client, svc, addr string) error {
	id := discoverdclient.InstanceID("tcp", addr)
	return hc.Do(ctx, "PUT", "/services/"+svc+"/instances/"+id, api.Instance{Addr: addr, Proto: "tcp"}, nil)
}

func benchAddr(i int) string { return fmt.Sprintf("10.%d.%d.%d:80", (i>>16)&255, (i>>8)&255, i&255) }

// BenchmarkRegisterToUp measures the time from the start of a registration
// (HTTP PUT) to the up event at a watcher (SSE through the Go client), on
// one node (embedded etcd, fast ticks, no fsync).
func BenchmarkRegisterToUp(b *testing.B) {
	e := start(b, 30*time.Second)
	ctx := context.Background()
	if err := e.c.AddService(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	w, err := e.c.Watch(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	if err := w.WaitCurrent(ctx); err != nil {
		b.Fatal(err)
	}
	<-w.Events() // current
	hc := &httpclient.Client{URL: e.url, Key: token}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		addr := benchAddr(i)
		t0 := time.Now()
		if err := putInstance(ctx, hc, "bench", addr); err != nil {
			b.Fatal(err)
		}
		for ev := range w.Events() {
			if ev.Kind == api.EventKindUp && ev.Instance.Addr == addr {
				break
			}
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

// BenchmarkRegistrations measures new registrations per second on one node
// with concurrent clients (HTTP PUT of a new instance each).
func BenchmarkRegistrations(b *testing.B) {
	e := start(b, 30*time.Second)
	ctx := context.Background()
	if err := e.c.AddService(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	hc := &httpclient.Client{URL: e.url, Key: token}
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := putInstance(ctx, hc, "bench", benchAddr(int(n.Add(1)))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(t0).Seconds(), "regs/s")
}
