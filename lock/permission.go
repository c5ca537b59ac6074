package lock

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsperm"
)

// permissionKV reports a missing right on a lock's key — a runner user
// scoped to another pipeline's lock, say — as an error naming the subject
// (a *natsperm.Error, wrapping nats.ErrPermissionViolation), as soon as the
// server refuses it. Without it, the refused request waits for its
// context: Acquire would take it for a busy lock and wait out
// GiveUpAfter, and a refresh would be retried until the lease is lost.
type permissionKV struct {
	jetstream.KeyValue
	nc *nats.Conn
}

func (k permissionKV) match(key string) natsperm.Match {
	return natsperm.Subjects("$KV." + k.Bucket() + "." + key)
}

func (k permissionKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return natsperm.Do(ctx, k.nc, k.match(key), func(ctx context.Context) (jetstream.KeyValueEntry, error) {
		return k.KeyValue.Get(ctx, key)
	})
}

func (k permissionKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return natsperm.Do(ctx, k.nc, k.match(key), func(ctx context.Context) (uint64, error) {
		return k.KeyValue.Create(ctx, key, value, opts...)
	})
}

func (k permissionKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return natsperm.Do(ctx, k.nc, k.match(key), func(ctx context.Context) (uint64, error) {
		return k.KeyValue.Update(ctx, key, value, revision)
	})
}

func (k permissionKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := natsperm.Do(ctx, k.nc, k.match(key), func(ctx context.Context) (struct{}, error) {
		return struct{}{}, k.KeyValue.Delete(ctx, key, opts...)
	})
	return err
}
