package etcdserver_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/internal/etcdserver"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func memberConfig(t *testing.T, name, dir string) etcdserver.Config {
	return etcdserver.Config{
		Name:      name,
		DataDir:   dir,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", testslot.Port(t)),
		Token:     "test-cluster",
		Fast:      true,
	}
}

func TestJoinPromoteRemoveRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	first, err := etcdserver.Start(ctx, memberConfig(t, "a", t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	cli := first.Client()
	cfgs := []etcdserver.Config{memberConfig(t, "b", t.TempDir()), memberConfig(t, "c", t.TempDir())}
	var joined []*etcdserver.Server
	for _, cfg := range cfgs {
		s, err := etcdserver.Join(ctx, cli, cfg)
		if err != nil {
			t.Fatalf("join %s: %v", cfg.Name, err)
		}
		defer func() { s.Close() }()
		joined = append(joined, s)
	}
	members := func() []summary {
		t.Helper()
		ms, err := etcdserver.Members(ctx, cli)
		if err != nil {
			t.Fatal(err)
		}
		var out []summary
		for _, m := range ms {
			out = append(out, summary{m.Name, m.IsLearner})
		}
		return out
	}
	want := []summary{{"a", false}, {"b", false}, {"c", false}}
	if diff := cmp.Diff(want, sortSummaries(members())); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}
	// Data written on one member is read on a joined one.
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	res, err := joined[1].Client().Get(ctx, "/k")
	if err != nil || len(res.Kvs) != 1 || string(res.Kvs[0].Value) != "v" {
		t.Fatalf("get on joined member: %v %v", res, err)
	}
	// A joined member restarts from its data, without joining again.
	joined[0].Close()
	if !etcdserver.HasData(cfgs[0].DataDir) {
		t.Fatal("no data after stop")
	}
	again, err := etcdserver.Join(ctx, cli, cfgs[0])
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	joined[0] = again
	res, err = again.Client().Get(ctx, "/k")
	if err != nil || len(res.Kvs) != 1 {
		t.Fatalf("get after restart: %v %v", res, err)
	}
	if diff := cmp.Diff(want, sortSummaries(members())); diff != "" {
		t.Fatalf("members after restart (-want +got):\n%s", diff)
	}
	// Remove c.
	if err := etcdserver.RemoveMember(ctx, cli, joined[1].ID()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[:2], sortSummaries(members())); diff != "" {
		t.Fatalf("members after remove (-want +got):\n%s", diff)
	}
}

type summary struct {
	Name    string
	Learner bool
}

func sortSummaries(in []summary) []summary {
	slices.SortFunc(in, func(a, b summary) int { return strings.Compare(a.Name, b.Name) })
	return in
}
