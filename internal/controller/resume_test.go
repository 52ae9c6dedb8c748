package controller

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/internal/etcdtest"
)

// switchProxy is a TCP proxy to one of several replicas, as a router in
// front of a scaled controller is: drop cuts every open connection and
// sends new ones to the next replica.
type switchProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	targets []string
	cur     int
	conns   []net.Conn
}

func newSwitchProxy(t *testing.T, targets ...string) *switchProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &switchProxy{ln: ln, targets: targets}
	t.Cleanup(func() { ln.Close(); p.drop() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			target := p.targets[p.cur]
			p.mu.Unlock()
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *switchProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.cur = (p.cur + 1) % len(p.targets)
}

// TestEventStreamResumesOnAnotherReplica: a follower whose connection
// breaks reconnects through the same URL, reaching another replica, and
// sees every event once, in order, both before it has seen any event (it
// resumes from the position the stream told it) and after.
func TestEventStreamResumesOnAnotherReplica(t *testing.T) {
	cli := etcdtest.KV(t)
	cfg := Config{Etcd: cli, AuthKeys: []string{testKey}}
	c1, u1 := newServer(t, cfg)
	_, u2 := newServer(t, cfg)
	hostOf := func(s string) string { u, _ := url.Parse(s); return u.Host }
	p := newSwitchProxy(t, hostOf(u1), hostOf(u2))
	via := controllerclient.New("http://"+p.ln.Addr().String(), testKey)
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	stream, err := via.StreamEvents(c, controllerclient.EventOptions{ObjectTypes: []string{api.EventTypeApp}})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var created, seen []string
	create := func(i int) {
		app := &api.App{Name: fmt.Sprintf("resume-%d", i)}
		if err := c1.CreateApp(c, app); err != nil {
			t.Fatal(err)
		}
		created = append(created, app.ID)
	}
	next := func() {
		t.Helper()
		ev, err := stream.Next()
		if err != nil {
			t.Fatalf("after %d events: %v", len(seen), err)
		}
		seen = append(seen, ev.ObjectID)
	}
	// Broken before the first event; created while disconnected.
	p.drop()
	create(0)
	create(1)
	next()
	next()
	// Broken after some events.
	p.drop()
	create(2)
	next()
	create(3)
	p.drop()
	next()
	if diff := cmp.Diff(created, seen); diff != "" {
		t.Fatalf("events seen (-want +got):\n%s", diff)
	}
	// A closed stream does not come back.
	stream.Close()
	if _, err := stream.Next(); err == nil {
		t.Error("Next after Close returned an event")
	}
}
