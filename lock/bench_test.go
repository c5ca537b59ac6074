package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
)

// BenchmarkAcquire measures taking and releasing a lock nobody else
// holds, in a loop (one op: TryAcquire + Release), on an in-process
// server:
//
//   - released-by-itself: the same locker takes the lock it released (a
//     runner's loop over pipelines in one process);
//   - released-by-another: two lockers take turns (runs back to back, in
//     separate processes);
//   - never-taken: a new lock each time (a key with no entries).
//
// Run it with go test ./lock -run XXX -bench Acquire.
func BenchmarkAcquire(b *testing.B) {
	ctx := context.Background()
	srv := natstest.Start(b)
	newLocker := func(owner string) *lock.Locker {
		l, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Owner: owner, Lease: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	a, other := newLocker("a"), newLocker("b")
	cycle := func(b *testing.B, l *lock.Locker, name string) {
		lease, err := l.TryAcquire(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		if err := lease.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("released-by-itself", func(b *testing.B) {
		for b.Loop() {
			cycle(b, a, "itself")
		}
	})
	b.Run("released-by-another", func(b *testing.B) {
		lockers := []*lock.Locker{a, other}
		i := 0
		for b.Loop() {
			cycle(b, lockers[i%2], "another")
			i++
		}
	})
	b.Run("never-taken", func(b *testing.B) {
		i := 0
		for b.Loop() {
			cycle(b, a, fmt.Sprint("fresh-", i))
			i++
		}
	})
}
