package blobstore

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// TestTombstones: deletes are kept across a reopen (the later of two
// for a path), a line cut short by a crash is skipped, and deletes older
// than the ttl are forgotten.
func TestTombstones(t *testing.T) {
	dir := testslot.Dir(t)
	ttl := time.Hour
	now := time.Now().UTC()
	ts, err := openTombstones(dir, ttl, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		name string
		at   time.Time
	}{
		{"a", now.Add(-time.Minute)},
		{"a", now.Add(-2 * time.Minute)}, // older: ignored
		{"b/c", now},
		{"old", now.Add(-2 * ttl)},
	} {
		if err := ts.add(d.name, d.at); err != nil {
			t.Fatal(err)
		}
	}
	if !ts.dead("a", now.Add(-time.Minute)) || ts.dead("a", now.Add(-time.Minute+time.Nanosecond)) {
		t.Fatal("a blob at the delete's version is dead, a later one is not")
	}
	ts.close()
	f, err := os.OpenFile(filepath.Join(dir, tombstoneFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"path":"cut","dele`)
	f.Close()

	ts, err = openTombstones(dir, ttl, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.close()
	want := []Tombstone{{Path: "/a", Deleted: now.Add(-time.Minute)}, {Path: "/b/c", Deleted: now}}
	if diff := cmp.Diff(want, ts.list()); diff != "" {
		t.Fatalf("tombstones after reopen (-want +got):\n%s", diff)
	}
	b, err := os.ReadFile(filepath.Join(dir, tombstoneFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != 2 {
		t.Fatalf("log has %d lines after compaction, want 2:\n%s", n, b)
	}
	if err := ts.expire(now.Add(ttl - 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[1:], ts.list()); diff != "" {
		t.Fatalf("tombstones after expiry (-want +got):\n%s", diff)
	}
}

// TestStampTime: a new write's version is after the delete it follows
// and after the blob it replaces, even when the clock is behind both.
func TestStampTime(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name           string
		notBefore, cur time.Time
		want           time.Time
	}{
		{"nothing before", time.Time{}, time.Time{}, now},
		{"older blob", time.Time{}, now.Add(-time.Second), now},
		{"blob from a clock ahead", time.Time{}, now.Add(time.Second), now.Add(time.Second + 1)},
		{"delete from a clock ahead", now.Add(time.Minute), time.Time{}, now.Add(time.Minute)},
		{"blob newer than the delete", now.Add(time.Minute), now.Add(time.Hour), now.Add(time.Hour + 1)},
	}
	for _, tt := range tests {
		if got := stampTime(now, tt.notBefore, tt.cur); !got.Equal(tt.want) {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestPeersSkipSelf: an instance finds itself among the registered
// instances by its address, or, when that is not known, by asking each
// instance for its id; an instance that does not answer stays a peer.
func TestPeersSkipSelf(t *testing.T) {
	ctx := context.Background()
	down := fmt.Sprintf("127.0.0.1:%d", testslot.Port(t)) // nothing listens there
	var addrs StaticPeers
	var servers []*Server
	for range 2 {
		hs := httptest.NewUnstartedServer(nil)
		addrs = append(addrs, hs.Listener.Addr().String())
		s, err := New(ServerConfig{Backend: NewMem(), Replication: &ReplicationConfig{Peers: &addrs}}, logging.Discard())
		if err != nil {
			t.Fatal(err)
		}
		hs.Config.Handler = s.Handler()
		hs.Start()
		t.Cleanup(hs.Close)
		servers = append(servers, s)
	}
	addrs = append(addrs, down)
	for i, s := range servers {
		var got []string
		for _, p := range s.repl.peers(ctx) {
			got = append(got, p.addr)
		}
		want := []string{addrs[1-i], down}
		if addrs[1-i] > down {
			want = []string{down, addrs[1-i]}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("peers of instance %d (-want +got):\n%s", i, diff)
		}
	}

	// With its listen address, an instance knows itself without asking.
	self := localAddr("0.0.0.0:5380")
	for addr, want := range map[string]bool{"127.0.0.1:5380": true, "127.0.0.1:5381": false, "192.0.2.1:5380": false, "blobstore:5380": false} {
		if got := self(addr); got != want {
			t.Errorf("localAddr(:5380)(%s) = %v, want %v", addr, got, want)
		}
	}
	if localAddr("10.1.2.3:5380")("127.0.0.1:5380") {
		t.Error("an instance listening on one IP took another local IP for itself")
	}
}
