package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestStartPutGet(t *testing.T) {
	cli := Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/flynn/test", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	res, err := cli.Get(ctx, "/flynn/test")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(res.Kvs) != 1 || string(res.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, want one key with value v", res.Kvs)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := Client(t), Client(t)
	ctx := context.Background()
	if _, err := a.Put(ctx, "k", "a"); err != nil {
		t.Fatal(err)
	}
	res, err := b.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Kvs) != 0 {
		t.Fatalf("second server sees the first one's key: %v", res.Kvs)
	}
}
