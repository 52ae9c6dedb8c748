package logagg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// DefaultFillTimeout bounds copying one peer's buffers at start.
const DefaultFillTimeout = 2 * time.Minute

// DefaultService is the discoverd service log aggregators are registered
// as (by the host agent that runs them), and hosts ship to.
const DefaultService = "logaggregator"

// Peers finds the other instances of the log aggregator.
type Peers interface {
	// Addrs returns the host:port of every other live instance.
	Addrs(ctx context.Context) ([]string, error)
}

// Instances lists a discoverd service's live instances;
// *discoverdclient.Client is one.
type Instances interface {
	Instances(ctx context.Context, service string) ([]*api.Instance, error)
}

// ServicePeers is the instances of service in discoverd but self (this
// instance's registered host:port). Finding itself anyway does no harm: an
// instance listens only after it filled, so it cannot answer itself.
func ServicePeers(d Instances, service, self string) Peers {
	return &servicePeers{d: d, service: service, self: self}
}

type servicePeers struct {
	d             Instances
	service, self string
}

func (p *servicePeers) Addrs(ctx context.Context) ([]string, error) {
	insts, err := p.d.Instances(ctx, p.service)
	if err != nil {
		if errors.Is(err, api.ErrNotFound) {
			return nil, nil // no instance was ever registered
		}
		return nil, fmt.Errorf("list %s instances in discoverd: %w", p.service, err)
	}
	var addrs []string
	for _, in := range insts {
		if in.Addr != p.self {
			addrs = append(addrs, in.Addr)
		}
	}
	return addrs, nil
}

// Fill copies the buffers of the first peer that answers (GET /snapshot)
// into s's store, trying each in turn for at most timeout. It is meant for
// a server that does not serve yet. Without a peer that answers, s starts
// empty: that is the first instance, or every instance restarting at once.
// It fails only when ctx ends.
func (s *Server) Fill(ctx context.Context, peers Peers, key string, timeout time.Duration) error {
	addrs, err := peers.Addrs(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("cannot find peers to copy the logs from; starting empty", "err", err)
		return nil
	}
	for _, addr := range addrs {
		st := NewStore(s.store.size)
		pctx, cancel := context.WithTimeout(ctx, timeout)
		n, err := fetchSnapshot(pctx, addr, key, st)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Info("peer did not give its logs", "peer", addr, "err", err)
			continue
		}
		s.store = st
		s.log.Info("copied the logs of a peer", "peer", addr, "lines", n)
		return nil
	}
	s.log.Info("no peer to copy the logs from; starting empty", "peers", len(addrs))
	return nil
}

// fetchSnapshot reads a peer's GET /snapshot into st and returns how many
// lines it read.
func fetchSnapshot(ctx context.Context, addr, key string, st *Store) (int, error) {
	hc := &httpclient.Client{URL: "http://" + addr, Key: key}
	req, err := hc.NewRequest(ctx, http.MethodGet, "/snapshot", nil)
	if err != nil {
		return 0, err
	}
	res, err := hc.Send(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	dec := json.NewDecoder(res.Body)
	var head api.LogSnapshotHead
	if err := dec.Decode(&head); err != nil {
		return 0, fmt.Errorf("read snapshot head: %w", err)
	}
	n, skipped := 0, 0
	batch := make([]api.LogMessage, 0, ingestBatch)
	for {
		var m api.LogMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read snapshot line %d: %w", n+1, err)
		}
		if m.Validate() != nil {
			skipped++
			continue
		}
		batch = append(batch, m)
		if len(batch) == ingestBatch {
			st.Add(batch)
			n += len(batch)
			batch = batch[:0]
		}
	}
	st.Add(batch)
	n += len(batch)
	if read := n + skipped; read != head.Lines {
		return n, fmt.Errorf("snapshot ended after %d of %d lines", read, head.Lines)
	}
	st.setMarks(head.Shippers)
	return n, nil
}
