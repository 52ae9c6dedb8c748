package etcdkv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// EventType says what happened to a key.
type EventType int32

const (
	EventTypePut    EventType = 0
	EventTypeDelete EventType = 1
)

// Event is one change of a key. PrevKv is set when the watch asked for it
// (WithPrevKV).
type Event struct {
	Type   EventType
	Kv     *KeyValue
	PrevKv *KeyValue
}

// WatchResponse is one batch of events, all of one revision or more, in
// order. A response with Err() set is the channel's last.
type WatchResponse struct {
	Header          ResponseHeader
	Events          []*Event
	CompactRevision int64
	Canceled        bool
	err             error
}

// Err says why the watch ended: ErrCompacted when the revision it was to
// start from was compacted away, etcd's reason when etcd cancelled it.
func (r *WatchResponse) Err() error { return r.err }

// WatchChan delivers a watch's responses; it is closed when the watch's
// context ends, after a response with Err() set.
type WatchChan <-chan WatchResponse

type wireEvent struct {
	Type   json.RawMessage `json:"type"`
	Kv     *KeyValue       `json:"kv"`
	PrevKv *KeyValue       `json:"prev_kv"`
}

type wireWatchResponse struct {
	Header          *ResponseHeader `json:"header"`
	Created         bool            `json:"created"`
	Canceled        bool            `json:"canceled"`
	CompactRevision int64           `json:"compact_revision,omitempty,string"`
	CancelReason    string          `json:"cancel_reason"`
	Events          []wireEvent     `json:"events"`
}

// eventType reads "DELETE", 1, or nothing (PUT, the zero value, which the
// gateway leaves out).
func eventType(raw json.RawMessage) EventType {
	switch string(raw) {
	case `"DELETE"`, `1`:
		return EventTypeDelete
	}
	return EventTypePut
}

// Watch watches key (a range, with WithPrefix or WithFromKey) from revision
// WithRev (default: the next one) and sends its changes on the returned
// channel until ctx ends. When the stream breaks (the member went away),
// the watch starts again, on the next member, from the revision after the
// last one it delivered, as clientv3's does.
func (c *Client) Watch(ctx context.Context, key string, opts ...OpOption) WatchChan {
	op := OpGet(key, opts...)
	ch := make(chan WatchResponse)
	go c.watch(ctx, &op, ch)
	return ch
}

type watchCreate struct {
	Key           []byte `json:"key"`
	RangeEnd      []byte `json:"range_end,omitempty"`
	StartRevision int64  `json:"start_revision,omitempty,string"`
	PrevKv        bool   `json:"prev_kv,omitempty"`
}

func (c *Client) watch(ctx context.Context, op *Op, ch chan<- WatchResponse) {
	defer close(ch)
	next := op.rev // 0: from now on
	backoff := 50 * time.Millisecond
	send := func(r WatchResponse) bool {
		select {
		case ch <- r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for attempt := 0; ctx.Err() == nil; attempt++ {
		delivered, err := c.watchOnce(ctx, op, next, send)
		if delivered > 0 {
			next = delivered + 1
			backoff = 50 * time.Millisecond
		}
		if ctx.Err() != nil {
			return
		}
		var ee *Error
		if errors.As(err, &ee) || errors.Is(err, errWatchEnded) {
			return
		}
		// The stream broke: resume on the next member.
		i := c.cur.Load()
		c.cur.CompareAndSwap(i, (i+1)%int64(len(c.endpoints)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// errWatchEnded says watchOnce delivered the watch's last response.
var errWatchEnded = errors.New("watch ended")

// watchOnce runs one watch stream from revision from (0: now) and returns
// the last revision it delivered and why the stream ended.
func (c *Client) watchOnce(ctx context.Context, op *Op, from int64, send func(WatchResponse) bool) (int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	body, err := json.Marshal(map[string]watchCreate{"create_request": {
		Key: nsKey(c.ns, op.key), RangeEnd: nsEnd(c.ns, op.end), StartRevision: from, PrevKv: op.prevKV,
	}})
	if err != nil {
		return 0, err
	}
	i := c.cur.Load()
	res, err := c.post(wctx, c.endpoints[int(i)%len(c.endpoints)], "/v3/watch", body)
	if err != nil {
		var ee *Error
		if errors.As(err, &ee) {
			if memberGoing(ee) {
				// A member starting or going away: resume elsewhere.
				return 0, ee.asBroken()
			}
			send(WatchResponse{Canceled: true, err: ee})
			return 0, errWatchEnded
		}
		return 0, err
	}
	defer res.Body.Close()
	dec := json.NewDecoder(res.Body)
	var last int64
	for {
		var msg struct {
			Result *wireWatchResponse `json:"result"`
			Error  json.RawMessage    `json:"error"`
		}
		if err := dec.Decode(&msg); err != nil {
			return last, fmt.Errorf("watch stream: %w", err)
		}
		if len(msg.Error) > 0 {
			b, _ := json.Marshal(map[string]json.RawMessage{"error": msg.Error})
			e := decodeError(b)
			if e == nil {
				e = &Error{Code: 2, Message: string(msg.Error)}
			}
			if memberGoing(e) {
				// The member is going away; resume elsewhere.
				return last, e.asBroken()
			}
			send(WatchResponse{Canceled: true, err: e})
			return last, errWatchEnded
		}
		r := msg.Result
		if r == nil {
			continue
		}
		out := WatchResponse{CompactRevision: r.CompactRevision, Canceled: r.Canceled}
		if r.Header != nil {
			out.Header = *r.Header
		}
		if r.Canceled || r.CompactRevision != 0 {
			switch {
			case r.CompactRevision != 0:
				out.err = ErrCompacted
			case r.CancelReason != "":
				out.err = &Error{Code: 2, Message: r.CancelReason}
			default:
				out.err = errors.New("etcdkv: watch cancelled")
			}
			out.Canceled = true
			send(out)
			return last, errWatchEnded
		}
		if r.Created && from == 0 && last == 0 && r.Header != nil {
			// A watch from "now": should the stream break, resume after
			// the revision it started at.
			last = r.Header.Revision
		}
		if len(r.Events) == 0 {
			// Created, or a progress notification: nothing to deliver.
			continue
		}
		for _, e := range r.Events {
			strip(c.ns, e.Kv, e.PrevKv)
			out.Events = append(out.Events, &Event{Type: eventType(e.Type), Kv: e.Kv, PrevKv: e.PrevKv})
		}
		if !send(out) {
			return last, ctx.Err()
		}
		if kv := out.Events[len(out.Events)-1].Kv; kv != nil {
			last = kv.ModRevision
		}
	}
}

// memberGoing says whether an error ending a watch stream means the
// member is starting or going away, not that etcd refused the watch:
// Unavailable (but "no leader"), or Canceled, which this client's
// watches get only from a member whose gateway is shutting down ("grpc:
// the client connection is closing"): the watch's own context ending is
// told apart before.
func memberGoing(e *Error) bool {
	return (e.Code == codeUnavailable && e.Message != ErrNoLeader.Message) || e.Code == codeCanceled
}

// brokenErr is an etcd error that means the stream broke, not that the
// watch was refused: it is resumed, not ended.
type brokenErr struct{ e *Error }

func (b brokenErr) Error() string { return b.e.Message }

func (e *Error) asBroken() error { return brokenErr{e} }
