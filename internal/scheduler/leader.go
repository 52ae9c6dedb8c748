package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/etcdkv"
)

// ElectionConfig names a leader election.
type ElectionConfig struct {
	// Name is the election under api.KeyElections (default "scheduler").
	Name string
	// ID identifies this replica (e.g. the host id); it is the leader
	// key's value.
	ID string
	// TTL is how long a dead leader keeps leadership (default 5 s).
	TTL time.Duration
	// Unique says no two live replicas ever share ID (a host id, for a
	// per-host daemon): a key holding ID is then from a dead incarnation
	// of this replica, and is removed before campaigning instead of
	// waiting out its TTL.
	Unique bool
}

// ElectionKey is the etcd prefix of the election cfg names.
func (cfg ElectionConfig) ElectionKey() string {
	if cfg.Name == "" {
		cfg.Name = "scheduler"
	}
	return api.KeyElections + cfg.Name
}

// Lead campaigns in an etcd election and calls run with a context that
// ends when leadership is lost, until ctx ends. Any number of replicas may
// call Lead; one runs at a time. When the leader's ctx ends it resigns, so
// a standby takes over at once; when it dies, within TTL. It returns nil
// when ctx is cancelled.
func Lead(ctx context.Context, cli *etcdkv.Client, cfg ElectionConfig, log *slog.Logger, run func(context.Context) error) error {
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	ttl := max(int(cfg.TTL/time.Second), 1)
	key := cfg.ElectionKey()
	for ctx.Err() == nil {
		if err := leadOnce(ctx, cli, key, cfg.ID, cfg.Unique, ttl, log, run); err != nil && ctx.Err() == nil {
			log.Warn("leader election", "election", key, "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// removeOwnKeys deletes the election keys under prefix whose value is id.
func removeOwnKeys(ctx context.Context, cli *etcdkv.Client, prefix, id string) error {
	res, err := cli.Get(ctx, prefix+"/", etcdkv.WithPrefix())
	if err != nil {
		return fmt.Errorf("list election keys: %w", err)
	}
	for _, kv := range res.Kvs {
		if string(kv.Value) != id {
			continue
		}
		// Only that key as it is: a newer campaign is not touched.
		if _, err := cli.Txn(ctx).If(etcdkv.Compare(etcdkv.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(etcdkv.OpDelete(string(kv.Key))).Commit(); err != nil {
			return fmt.Errorf("remove a stale election key: %w", err)
		}
	}
	return nil
}

func leadOnce(ctx context.Context, cli *etcdkv.Client, key, id string, unique bool, ttl int, log *slog.Logger, run func(context.Context) error) error {
	sess, err := etcdkv.NewSession(ctx, cli, ttl)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer sess.Close() // revokes the lease: resigns
	if unique {
		if err := removeOwnKeys(ctx, cli, key, id); err != nil {
			return err
		}
	}
	if err := sess.Campaign(ctx, key, id); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	log.Info("elected leader", "election", key, "id", id)
	lctx, cancel := context.WithCancel(ctx)
	watched := make(chan struct{})
	defer func() {
		cancel()
		<-watched
	}()
	go func() {
		defer close(watched)
		select {
		case <-sess.Done():
			log.Warn("lost leadership", "election", key, "id", id)
			cancel()
		case <-lctx.Done():
		}
	}()
	err = run(lctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
