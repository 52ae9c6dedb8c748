package ctrlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// EventFilter selects events; empty fields match everything.
type EventFilter struct {
	AppID       string
	ObjectTypes []string
	ObjectID    string
}

// Match reports whether e passes the filter.
func (f EventFilter) Match(e *api.Event) bool {
	return (f.AppID == "" || e.AppID == f.AppID) &&
		(len(f.ObjectTypes) == 0 || slices.Contains(f.ObjectTypes, e.ObjectType)) &&
		(f.ObjectID == "" || e.ObjectID == f.ObjectID)
}

func decodeEvent(kv *etcdkv.KeyValue) (*api.Event, error) {
	var se storedEvent
	if err := json.Unmarshal(kv.Value, &se); err != nil {
		return nil, fmt.Errorf("decode event %s: %w", kv.Key, err)
	}
	e := se.Event
	e.ID = EventID(kv.ModRevision, se.Seq)
	return &e, nil
}

// ListEvents returns the events matching f with sinceID < id < beforeID
// (a zero bound is open), oldest first; with count > 0 only the newest
// count of them. It also returns the etcd revision the list was read at.
func (s *Store) ListEvents(ctx context.Context, f EventFilter, sinceID, beforeID int64, count int) ([]*api.Event, int64, error) {
	opts := []etcdkv.OpOption{etcdkv.WithPrefix()}
	if sinceID > 0 {
		opts = append(opts, etcdkv.WithMinModRev(eventRev(sinceID)))
	}
	if beforeID > 0 {
		opts = append(opts, etcdkv.WithMaxModRev(eventRev(beforeID)))
	}
	res, err := s.cli.Get(ctx, s.key(pEvents), opts...)
	if err != nil {
		return nil, 0, fmt.Errorf("list events: %w", err)
	}
	out := []*api.Event{}
	for _, kv := range res.Kvs {
		e, err := decodeEvent(kv)
		if err != nil {
			return nil, 0, err
		}
		if e.ID <= sinceID || (beforeID > 0 && e.ID >= beforeID) || !f.Match(e) {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if count > 0 && len(out) > count {
		out = out[len(out)-count:]
	}
	return out, res.Header.Revision, nil
}

// GetEvent returns one event by id.
func (s *Store) GetEvent(ctx context.Context, id int64) (*api.Event, error) {
	rev := eventRev(id)
	if rev <= 0 {
		return nil, api.NotFound("event %d not found", id)
	}
	res, err := s.cli.Get(ctx, s.key(pEvents), etcdkv.WithPrefix(), etcdkv.WithMinModRev(rev), etcdkv.WithMaxModRev(rev))
	if err != nil {
		return nil, fmt.Errorf("get event: %w", err)
	}
	for _, kv := range res.Kvs {
		e, err := decodeEvent(kv)
		if err != nil {
			return nil, err
		}
		if e.ID == id {
			return e, nil
		}
	}
	return nil, api.NotFound("event %d not found", id)
}

// HeadEventID returns an id at least as large as that of every event
// committed so far, for followers that start "from now".
func (s *Store) HeadEventID(ctx context.Context) (int64, error) {
	res, err := s.cli.Get(ctx, s.key(pEvents), etcdkv.WithPrefix(), etcdkv.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("head event id: %w", err)
	}
	return EventID(res.Header.Revision, 1<<eventShift-1), nil
}

// FollowEvents calls fn with every event matching f whose id is greater
// than sinceID, oldest first, then with each new one as it is committed,
// until ctx ends or fn fails. (Start from HeadEventID to skip the past.)
func (s *Store) FollowEvents(ctx context.Context, f EventFilter, sinceID int64, fn func(*api.Event) error) error {
	evs, rev, err := s.ListEvents(ctx, f, sinceID, 0, 0)
	if err != nil {
		return err
	}
	for _, e := range evs {
		if err := fn(e); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithCancel(etcdkv.WithRequireLeader(ctx))
	defer cancel()
	wc := s.cli.Watch(wctx, s.key(pEvents), etcdkv.WithPrefix(), etcdkv.WithRev(rev+1))
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch events: %w", err)
		}
		var batch []*api.Event
		for _, ev := range wr.Events {
			if ev.Type != etcdkv.EventTypePut {
				continue
			}
			e, err := decodeEvent(ev.Kv)
			if err != nil {
				return err
			}
			if e.ID > sinceID && f.Match(e) {
				batch = append(batch, e)
			}
		}
		sort.Slice(batch, func(i, j int) bool { return batch[i].ID < batch[j].ID })
		for _, e := range batch {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch events: channel closed")
}

// FollowFormations calls fn with every formation updated at or after
// since (expanded), then with an empty ExpandedFormation marking that the
// caller is up to date, then with each change as it happens. A deleted
// formation comes with Deleted set and only the app and release ids.
func (s *Store) FollowFormations(ctx context.Context, since time.Time, fn func(*api.ExpandedFormation) error) error {
	prefix := s.key(pFormations)
	res, err := s.cli.Get(ctx, prefix, etcdkv.WithPrefix())
	if err != nil {
		return fmt.Errorf("follow formations: %w", err)
	}
	for _, kv := range res.Kvs {
		f := &api.Formation{}
		if err := json.Unmarshal(kv.Value, f); err != nil {
			return fmt.Errorf("decode formation %s: %w", kv.Key, err)
		}
		if f.UpdatedAt.Before(since) {
			continue
		}
		ef, err := s.Expand(ctx, f)
		if err != nil {
			continue // app or release deleted meanwhile; its deletion follows
		}
		if err := fn(ef); err != nil {
			return err
		}
	}
	if err := fn(&api.ExpandedFormation{}); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(etcdkv.WithRequireLeader(ctx))
	defer cancel()
	wc := s.cli.Watch(wctx, prefix, etcdkv.WithPrefix(), etcdkv.WithRev(res.Header.Revision+1), etcdkv.WithPrevKV())
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch formations: %w", err)
		}
		for _, ev := range wr.Events {
			var ef *api.ExpandedFormation
			if ev.Type == etcdkv.EventTypeDelete {
				if ev.PrevKv == nil {
					continue
				}
				f := &api.Formation{}
				if err := json.Unmarshal(ev.PrevKv.Value, f); err != nil {
					return fmt.Errorf("decode formation: %w", err)
				}
				ef = &api.ExpandedFormation{
					App:     &api.App{ID: f.AppID},
					Release: &api.Release{ID: f.ReleaseID, AppID: f.AppID},
					Deleted: true, UpdatedAt: s.now(),
				}
			} else {
				f := &api.Formation{}
				if err := json.Unmarshal(ev.Kv.Value, f); err != nil {
					return fmt.Errorf("decode formation: %w", err)
				}
				if ef, err = s.Expand(ctx, f); err != nil {
					continue
				}
			}
			if err := fn(ef); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch formations: channel closed")
}
