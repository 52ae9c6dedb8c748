package controller

import (
	"context"
	"testing"

	"github.com/flynnrebuilt/flynn/api"
)

// BenchmarkGetApp measures GET /apps/{app} by name through the Go client
// on one node (embedded etcd, loopback HTTP).
func BenchmarkGetApp(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	app := &api.App{Name: "bench"}
	if err := e.c.CreateApp(ctx, app); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.c.GetApp(ctx, "bench"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkPutFormation measures PUT /apps/{app}/formations/{release}
// (validation, an etcd transaction and an event) on one node.
func BenchmarkPutFormation(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	app := &api.App{Name: "bench"}
	if err := e.c.CreateApp(ctx, app); err != nil {
		b.Fatal(err)
	}
	a := &api.Artifact{Type: api.ArtifactTypeDocker, URI: "docker://busybox"}
	if err := e.c.CreateArtifact(ctx, a); err != nil {
		b.Fatal(err)
	}
	rel := &api.Release{AppID: app.ID, ArtifactIDs: []string{a.ID}, Processes: map[string]*api.ProcessType{"web": {}}}
	if err := e.c.CreateRelease(ctx, rel); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		n := 0
		for pb.Next() {
			n++
			f := &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: map[string]int{"web": n % 10}}
			if err := e.c.PutFormation(ctx, f); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
