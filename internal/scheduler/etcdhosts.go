package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// EtcdHosts reads host registrations (api.KeyHosts, each under its host's
// lease) from etcd: the ListHosts and StreamHosts half of a Cluster. A
// host whose lease expires is reported down.
type EtcdHosts struct {
	Client *etcdkv.Client
	Log    *slog.Logger
}

// ListHosts returns the registered hosts.
func (e *EtcdHosts) ListHosts(ctx context.Context) ([]*api.Host, error) {
	resp, err := e.Client.Get(ctx, api.KeyHosts, etcdkv.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	hosts := make([]*api.Host, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if h := e.decode(kv.Key, kv.Value); h != nil {
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}

// StreamHosts reports registrations and removals from now on.
func (e *EtcdHosts) StreamHosts(ctx context.Context, fn func(HostEvent)) error {
	ctx, cancel := context.WithCancel(etcdkv.WithRequireLeader(ctx))
	defer cancel()
	for resp := range e.Client.Watch(ctx, api.KeyHosts, etcdkv.WithPrefix()) {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch hosts: %w", err)
		}
		for _, ev := range resp.Events {
			switch ev.Type {
			case etcdkv.EventTypePut:
				if h := e.decode(ev.Kv.Key, ev.Kv.Value); h != nil {
					fn(HostEvent{Up: true, Host: h})
				}
			case etcdkv.EventTypeDelete:
				id := strings.TrimPrefix(string(ev.Kv.Key), api.KeyHosts)
				fn(HostEvent{Host: &api.Host{ID: id}})
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch hosts: watch closed")
}

func (e *EtcdHosts) decode(key, value []byte) *api.Host {
	var h api.Host
	id := strings.TrimPrefix(string(key), api.KeyHosts)
	if err := json.Unmarshal(value, &h); err != nil || h.ID == "" || h.ID != id {
		if e.Log != nil {
			e.Log.Warn("ignoring bad host registration", "key", string(key), "err", err)
		}
		return nil
	}
	return &h
}
