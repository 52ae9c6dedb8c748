package ctrlstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
)

// TCP ports handed out to tcp routes that ask for none.
const (
	TCPPortMin = 3000
	TCPPortMax = 3500
)

// ParentRef is the parent_ref of an app's routes.
func ParentRef(appID string) string { return "controller/apps/" + appID }

// routeIndex is the key that makes a route's listener unique: the domain,
// port and path of an http route, or the port of a tcp route.
func (s *Store) routeIndex(r *api.Route) string {
	if r.Type == api.RouteTCP {
		return s.key(pRouteIndex, "tcp", strconv.Itoa(int(r.Port)))
	}
	path := r.Path
	if path == "" {
		path = "/"
	}
	host := r.Domain
	if r.Port != 0 {
		host += ":" + strconv.Itoa(int(r.Port))
	}
	return s.key(pRouteIndex, "http", host+path)
}

// addRoute adds the writes that create r to t. Routes are stored at
// api.KeyRoutes + id, where every router watches them.
func (s *Store) addRoute(t *txn, r *api.Route) {
	idx := s.routeIndex(r)
	t.missing(idx)
	t.missing(s.key(pRoutes, r.ID))
	t.put(s.key(pRoutes, r.ID), r)
	t.putRaw(idx, r.ID)
	t.event(strings.TrimPrefix(r.ParentRef, "controller/apps/"), api.EventTypeRoute, r.ID, r)
}

func routeTaken(r *api.Route) error {
	if r.Type == api.RouteTCP {
		return api.Exists("tcp port %d is taken by another route", r.Port)
	}
	return api.Exists("a route for %s%s already exists", r.Domain, r.Path)
}

// CreateRoute stores a new route. A tcp route without a port gets a free
// one between TCPPortMin and TCPPortMax.
func (s *Store) CreateRoute(ctx context.Context, r *api.Route) error {
	allocate := r.Type == api.RouteTCP && r.Port == 0
	for range maxRetries {
		if allocate {
			port, err := s.freeTCPPort(ctx)
			if err != nil {
				return err
			}
			r.Port = port
		}
		t := s.txn()
		s.addRoute(t, r)
		ok, err := t.commit(ctx)
		if err != nil {
			return fmt.Errorf("create route: %w", err)
		}
		if ok {
			return nil
		}
		if !allocate {
			return routeTaken(r)
		}
	}
	return errRetry
}

func (s *Store) freeTCPPort(ctx context.Context) (int32, error) {
	used := map[int]bool{}
	res, err := s.cli.Get(ctx, s.key(pRouteIndex, "tcp")+"/", clientKeysOnlyPrefix()...)
	if err != nil {
		return 0, fmt.Errorf("list tcp ports: %w", err)
	}
	for _, kv := range res.Kvs {
		p, _ := strconv.Atoi(string(kv.Key[strings.LastIndexByte(string(kv.Key), '/')+1:]))
		used[p] = true
	}
	for p := TCPPortMin; p <= TCPPortMax; p++ {
		if !used[p] {
			return int32(p), nil
		}
	}
	return 0, api.Conflict("all tcp route ports %d-%d are taken; give a port outside that range", TCPPortMin, TCPPortMax)
}

// GetRoute returns a route of an app.
func (s *Store) GetRoute(ctx context.Context, appID, id string) (*api.Route, error) {
	r, _, err := s.getRoute(ctx, appID, id)
	return r, err
}

func (s *Store) getRoute(ctx context.Context, appID, id string) (*api.Route, int64, error) {
	r := &api.Route{}
	rev, err := s.getObj(ctx, s.key(pRoutes, id), "route", id, r)
	if err != nil {
		return nil, 0, err
	}
	if appID != "" && r.ParentRef != ParentRef(appID) {
		return nil, 0, api.NotFound("route %q not found", id)
	}
	return r, rev, nil
}

// ListRoutes returns every route, or those of one app.
func (s *Store) ListRoutes(ctx context.Context, appID string) ([]*api.Route, error) {
	return listOf(ctx, s, s.key(pRoutes), func(r *api.Route) bool {
		return appID == "" || r.ParentRef == ParentRef(appID)
	})
}

// UpdateRoute replaces a route, keeping its id, type, parent and creation
// time.
func (s *Store) UpdateRoute(ctx context.Context, appID string, r *api.Route) (*api.Route, error) {
	for range maxRetries {
		old, rev, err := s.getRoute(ctx, appID, r.ID)
		if err != nil {
			return nil, err
		}
		r.Type, r.ParentRef, r.CreatedAt = old.Type, old.ParentRef, old.CreatedAt
		r.UpdatedAt = s.now()
		t := s.txn()
		t.unchanged(s.key(pRoutes, r.ID), rev)
		if oldIdx, idx := s.routeIndex(old), s.routeIndex(r); oldIdx != idx {
			t.missing(idx)
			t.del(oldIdx)
			t.putRaw(idx, r.ID)
		}
		t.put(s.key(pRoutes, r.ID), r)
		t.event(appID, api.EventTypeRoute, r.ID, r)
		ok, err := t.commit(ctx)
		if err != nil {
			return nil, fmt.Errorf("update route: %w", err)
		}
		if ok {
			return r, nil
		}
		if cur, _, err := s.getRoute(ctx, appID, r.ID); err == nil && s.routeIndex(cur) != s.routeIndex(r) {
			if res, err := s.cli.Get(ctx, s.routeIndex(r)); err == nil && len(res.Kvs) > 0 && string(res.Kvs[0].Value) != r.ID {
				return nil, routeTaken(r)
			}
		}
	}
	return nil, errRetry
}

// DeleteRoute deletes a route of an app.
func (s *Store) DeleteRoute(ctx context.Context, appID, id string) (*api.Route, error) {
	r, rev, err := s.getRoute(ctx, appID, id)
	if err != nil {
		return nil, err
	}
	t := s.txn()
	t.unchanged(s.key(pRoutes, id), rev)
	t.del(s.key(pRoutes, id))
	t.del(s.routeIndex(r))
	t.event(appID, api.EventTypeRouteDeletion, id, r)
	ok, err := t.commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("delete route: %w", err)
	}
	if !ok {
		return nil, errRetry
	}
	return r, nil
}
