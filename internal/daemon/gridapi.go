package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/discoverd"
	"github.com/flynnrebuilt/flynn/internal/etcdserver"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// gridAPI serves the cluster's own endpoints on the discoverd port:
// GET /grid/cluster (what a joining host needs) and GET /grid/status.
type gridAPI struct {
	cli   *clientv3.Client
	store *discoverd.Store
	hc    *HostConfig
}

func (g *gridAPI) routes(mux *http.ServeMux) {
	mux.Handle("GET /grid/cluster", httpapi.HandlerFunc(g.cluster))
	mux.Handle("GET /grid/status", httpapi.HandlerFunc(g.status))
	mux.Handle("GET /grid/hosts", httpapi.HandlerFunc(g.hosts))
}

// hosts lists every host that ever joined: its state, etcd role and how
// many jobs it runs.
func (g *gridAPI) hosts(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	byID := map[string]*api.HostListing{}
	recs, err := g.cli.Get(ctx, api.KeyHostRecords, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	live, err := g.cli.Get(ctx, api.KeyHosts, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	for i, res := range []*clientv3.GetResponse{recs, live} {
		for _, kv := range res.Kvs {
			h := &api.Host{}
			if json.Unmarshal(kv.Value, h) != nil || h.ID == "" {
				continue
			}
			l := &api.HostListing{Host: h, State: api.HostStateDown, EtcdRole: "client", Jobs: -1}
			if i == 1 {
				l.State = api.HostStateUp
			}
			byID[h.ID] = l
		}
	}
	if members, err := etcdserver.Members(ctx, g.cli); err == nil {
		leader := uint64(0)
		if s, err := g.cli.Status(ctx, g.cli.Endpoints()[0]); err == nil {
			leader = s.Leader
		}
		for _, m := range members {
			l := byID[m.Name]
			if l == nil {
				continue
			}
			switch {
			case m.IsLearner:
				l.EtcdRole = "learner"
			case m.ID == leader:
				l.EtcdRole = "leader"
			default:
				l.EtcdRole = "member"
			}
		}
	}
	var wg sync.WaitGroup
	out := make([]*api.HostListing, 0, len(byID))
	for _, l := range byID {
		out = append(out, l)
		if l.State != api.HostStateUp {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			jobs, err := hostclient.New(l.Host.URL, g.hc.Token).ListJobs(jctx)
			if err != nil {
				return
			}
			l.Jobs = 0
			for _, j := range jobs {
				if j.Status == api.HostJobRunning || j.Status == api.HostJobStarting {
					l.Jobs++
				}
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b *api.HostListing) int { return strings.Compare(a.Host.ID, b.Host.ID) })
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

func (g *gridAPI) cluster(w http.ResponseWriter, r *http.Request) error {
	rec, err := readClusterRecord(r.Context(), g.cli)
	if err != nil {
		return err
	}
	members, err := etcdserver.Members(r.Context(), g.cli)
	if err != nil {
		return err
	}
	info := &api.ClusterInfo{ID: rec.ID, MaxEtcdMembers: rec.MaxEtcdMembers, EtcdEndpoints: []string{}}
	for _, m := range members {
		info.EtcdEndpoints = append(info.EtcdEndpoints, m.ClientURLs...)
	}
	return httpapi.WriteJSON(w, http.StatusOK, info)
}

func (g *gridAPI) status(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	st := &api.GridStatus{ClusterID: g.hc.ClusterID, HostID: g.hc.HostID, Hosts: []*api.Host{}, Members: []*api.EtcdMember{}, Services: []*api.ServiceSummary{}}
	res, err := g.cli.Get(ctx, api.KeyHosts, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	for _, kv := range res.Kvs {
		h := &api.Host{}
		if json.Unmarshal(kv.Value, h) == nil {
			st.Hosts = append(st.Hosts, h)
		}
	}
	members, err := etcdserver.Members(ctx, g.cli)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, m := range members {
		em := &api.EtcdMember{ID: fmt.Sprintf("%x", m.ID), Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
		st.Members = append(st.Members, em)
		if len(m.ClientURLs) == 0 {
			em.Error = "not started"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			s, err := g.cli.Status(sctx, m.ClientURLs[0])
			if err != nil {
				em.Error = err.Error()
				return
			}
			em.Healthy = len(s.Errors) == 0
			em.IsLeader = s.Leader == m.ID
			if len(s.Errors) > 0 {
				em.Error = strings.Join(s.Errors, "; ")
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(st.Members, func(a, b *api.EtcdMember) int { return strings.Compare(a.Name, b.Name) })
	names, err := g.store.Services(ctx)
	if err != nil {
		return err
	}
	for _, n := range names {
		insts, err := g.store.Instances(ctx, n)
		if err != nil {
			continue // removed meanwhile
		}
		s := &api.ServiceSummary{Name: n, Instances: insts}
		if len(insts) > 0 {
			s.Leader = insts[0].ID
		}
		st.Services = append(st.Services, s)
	}
	return httpapi.WriteJSON(w, http.StatusOK, st)
}
