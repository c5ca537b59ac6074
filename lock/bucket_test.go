package lock_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
)

// TestNewNeverCreatesTheBucket: without Config.CreateBucket, New reports a
// missing bucket as ErrNoBucket, naming auditflow init, and creates nothing.
func TestNewNeverCreatesTheBucket(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	_, err := lock.New(ctx, srv.JS, lock.Config{})
	if !errors.Is(err, lock.ErrNoBucket) || !strings.Contains(err.Error(), "auditflow init") {
		t.Fatalf("New without a bucket = %v, want ErrNoBucket naming auditflow init", err)
	}
	if _, err := srv.JS.KeyValue(ctx, lock.DefaultBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("bucket after New: %v, want none", err)
	}
	if _, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	if l, err := lock.New(ctx, srv.JS, lock.Config{}); err != nil || l.Lease() != time.Second {
		t.Fatalf("New once the bucket exists: %v", err)
	}
}

// TestAcquireWithoutTheRightFailsAtOnce: a user who may not write a lock's
// key (a runner user scoped to another pipeline) gets an error naming the
// key's subject within moments, not ErrHeld after GiveUpAfter: the server
// refuses the write asynchronously, and a refused Create used to look like
// a busy lock.
func TestAcquireWithoutTheRightFailsAtOnce(t *testing.T) {
	s, err := server.NewServer(&server.Options{
		JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoSigs: true,
		Users: []*server.User{{Username: "billing", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"$KV.auditflow_locks.orders"}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	_, js := natstest.ConnectURL(t, "nats://127.0.0.1:"+strconv.Itoa(s.Addr().(*net.TCPAddr).Port), nats.UserInfo("billing", "pw"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	ctx := context.Background()
	l, err := lock.New(ctx, js, lock.Config{CreateBucket: true, GiveUpAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = l.Acquire(ctx, "orders")
	var pe *natsperm.Error
	if !errors.As(err, &pe) || pe.Subject != "$KV.auditflow_locks.orders" || !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Acquire without the right = %v, want a permission error naming the key's subject", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Acquire took %s to report a missing right", took)
	}
	own, err := l.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	_ = own.Release(ctx)
}
