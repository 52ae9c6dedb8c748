package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Member is one member of an etcd cluster.
type Member struct {
	ID         uint64
	Name       string // empty while the member has not started
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

func fromPB(m *etcdserverpb.Member) *Member {
	return &Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
}

// Members lists the members of the cluster cli talks to.
func Members(ctx context.Context, cli *clientv3.Client) ([]*Member, error) {
	res, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	var out []*Member
	for _, m := range res.Members {
		out = append(out, fromPB(m))
	}
	return out, nil
}

// AddMember adds a member with peerURL to the cluster, as a voting member
// or (learner true) as a learner that must be promoted with PromoteMember.
// It returns the new member's id.
func AddMember(ctx context.Context, cli *clientv3.Client, peerURL string, learner bool) (uint64, error) {
	var res *clientv3.MemberAddResponse
	var err error
	if learner {
		res, err = cli.MemberAddAsLearner(ctx, []string{peerURL})
	} else {
		res, err = cli.MemberAdd(ctx, []string{peerURL})
	}
	if err != nil {
		return 0, fmt.Errorf("add etcd member %s: %w", peerURL, err)
	}
	return res.Member.ID, nil
}

// PromoteMember makes a learner a voting member, waiting (until ctx is
// done) for it to catch up with the leader.
func PromoteMember(ctx context.Context, cli *clientv3.Client, id uint64) error {
	for {
		_, err := cli.MemberPromote(ctx, id)
		if err == nil || errors.Is(err, rpctypes.ErrMemberNotLearner) {
			return nil
		}
		if !errors.Is(err, rpctypes.ErrMemberLearnerNotReady) {
			return fmt.Errorf("promote etcd member %x: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote etcd member %x: %w", id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RemoveMember removes a member from the cluster. etcd refuses to remove a
// member while the cluster has not been healthy for 5 s; RemoveMember
// waits and retries until ctx is done.
func RemoveMember(ctx context.Context, cli *clientv3.Client, id uint64) error {
	for {
		_, err := cli.MemberRemove(ctx, id)
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpctypes.ErrUnhealthy) {
			return fmt.Errorf("remove etcd member %x: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove etcd member %x: %w", id, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Join starts cfg as a new member of the running cluster cli talks to: it
// adds the member as a learner (or reuses a membership with the same peer
// URL left by an interrupted join), starts it, and promotes it to a voting
// member once it has caught up, so the cluster keeps its quorum all along.
// When cfg.DataDir already holds the member's data, Join just restarts it.
func Join(ctx context.Context, cli *clientv3.Client, cfg Config) (*Server, error) {
	if HasData(cfg.DataDir) {
		return Start(ctx, cfg)
	}
	members, err := Members(ctx, cli)
	if err != nil {
		return nil, err
	}
	var id uint64
	for _, m := range members {
		if slices.Contains(m.PeerURLs, cfg.PeerURL) {
			if m.Name != "" && m.Name != cfg.Name {
				return nil, fmt.Errorf("join etcd: peer URL %s belongs to member %q", cfg.PeerURL, m.Name)
			}
			id = m.ID
		}
	}
	for id == 0 {
		// etcd allows one learner at a time, and refuses a new member for
		// 5 s after the last one joined (strict reconfiguration check):
		// wait and retry.
		id, err = AddMember(ctx, cli, cfg.PeerURL, true)
		if errors.Is(err, rpctypes.ErrTooManyLearners) || errors.Is(err, rpctypes.ErrUnhealthy) {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("join etcd: another member is joining: %w", ctx.Err())
			case <-time.After(200 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			return nil, err
		}
		if members, err = Members(ctx, cli); err != nil {
			return nil, err
		}
	}
	var parts []string
	for _, m := range members {
		name := m.Name
		if m.ID == id {
			name = cfg.Name
		} else if name == "" {
			name = fmt.Sprintf("%x", m.ID) // another member still joining
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	cfg.InitialCluster = strings.Join(parts, ",")
	cfg.Existing = true
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := PromoteMember(ctx, cli, id); err != nil {
		s.Close()
		return nil, err
	}
	// The member applies its own promotion a moment after the leader
	// does; until then it refuses linearizable requests as a learner.
	for {
		_, err := s.client.MemberList(ctx)
		if err == nil {
			return s, nil
		}
		if !strings.Contains(err.Error(), "not supported for learner") {
			s.Close()
			return nil, fmt.Errorf("join etcd: %w", err)
		}
		select {
		case <-ctx.Done():
			s.Close()
			return nil, fmt.Errorf("join etcd: wait for promotion: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
