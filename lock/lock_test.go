package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
)

func newLocker(t *testing.T, js jetstream.JetStream, owner string, lease time.Duration) *lock.Locker {
	t.Helper()
	l, err := lock.New(context.Background(), js, lock.Config{
		CreateBucket: true, Owner: owner, Lease: lease, RetryInterval: 50 * time.Millisecond, GiveUpAfter: 5 * time.Second,
		Logger: natstest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAcquireReleaseAndFencingToken(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	a := newLocker(t, srv.JS, "runner-a", time.Second)
	b := newLocker(t, srv.JS, "runner-b", time.Second)
	la, err := a.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryAcquire(ctx, "billing"); !errors.Is(err, lock.ErrHeld) || !strings.Contains(err.Error(), "runner-a") {
		t.Fatalf("second acquire = %v, want ErrHeld naming runner-a", err)
	}
	// Other pipelines are independent.
	lo, err := b.TryAcquire(ctx, "shipping")
	if err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if la.Valid() {
		t.Fatal("a released lease is valid: its holder would believe beside the next one")
	}
	if err := la.Release(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	lb, err := b.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if lb.Token() <= la.Token() || lb.Token() <= lo.Token() {
		t.Fatalf("fencing tokens do not grow: %d then %d (other lock %d)", la.Token(), lb.Token(), lo.Token())
	}
	_ = lb.Release(ctx)
	_ = lo.Release(ctx)
}

func TestRefreshKeepsLeaseBeyondItsDuration(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	a := newLocker(t, srv.JS, "a", 600*time.Millisecond)
	b := newLocker(t, srv.JS, "b", 600*time.Millisecond)
	la, err := a.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second) // more than three leases
	for time.Now().Before(deadline) {
		if _, err := b.TryAcquire(ctx, "p"); !errors.Is(err, lock.ErrHeld) {
			t.Fatalf("lock taken from a live holder: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case <-la.Lost():
		t.Fatal("a live, refreshing lease was reported lost")
	default:
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseExpiresWhenHolderStops kills the holder's connection (a crashed
// runner): the server drops the lock after the lease, another runner gets
// it, and the dead holder's lease reports itself lost and cannot release.
func TestLeaseExpiresWhenHolderStops(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	const lease = 700 * time.Millisecond
	nc, js := srv.Connect(t)
	a := newLocker(t, js, "doomed", lease)
	b := newLocker(t, srv.JS, "survivor", lease)
	la, err := a.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	nc.Close() // the holder stops refreshing
	start := time.Now()
	lb, err := b.Acquire(ctx, "p")
	if err != nil {
		t.Fatalf("lock never expired: %v", err)
	}
	if waited := time.Since(start); waited < lease/2 {
		t.Fatalf("lock taken after %s, before the lease could have expired", waited)
	}
	select {
	case <-la.Lost():
	case <-time.After(2 * lease):
		t.Fatal("the dead holder's lease was not reported lost")
	}
	if err := la.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("release of a lost lease = %v, want ErrNotHeld", err)
	}
	if _, err := a.TryAcquire(ctx, "p"); err == nil {
		t.Fatal("closed connection acquired a lock")
	}
	if _, err := newLocker(t, srv.JS, "third", lease).TryAcquire(ctx, "p"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("the new holder lost the lock: %v", err)
	}
	_ = lb.Release(ctx)
}

func TestAcquireWaitsAndGivesUp(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	a := newLocker(t, srv.JS, "a", time.Second)
	la, err := a.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	impatient, err := lock.New(ctx, srv.JS, lock.Config{Owner: "impatient", Lease: time.Second,
		RetryInterval: 50 * time.Millisecond, GiveUpAfter: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := impatient.Acquire(ctx, "p"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("Acquire past GiveUpAfter = %v, want ErrHeld", err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = la.Release(ctx)
	}()
	lb, err := newLocker(t, srv.JS, "patient", time.Second).Acquire(ctx, "p")
	if err != nil {
		t.Fatalf("Acquire did not wait for the release: %v", err)
	}
	_ = lb.Release(ctx)
	// A cancelled context stops the wait.
	held, _ := a.TryAcquire(ctx, "q")
	cctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	if _, err := newLocker(t, srv.JS, "x", time.Second).Acquire(cctx, "q"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with a deadline = %v", err)
	}
	_ = held.Release(ctx)
}

func TestManyContendersOneWinner(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []*lock.Lease
	for i := range n {
		_, js := srv.Connect(t)
		l := newLocker(t, js, fmt.Sprint("r", i), 2*time.Second)
		wg.Go(func() {
			lease, err := l.TryAcquire(ctx, "p")
			if err == nil {
				mu.Lock()
				won = append(won, lease)
				mu.Unlock()
			} else if !errors.Is(err, lock.ErrHeld) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d winners, want 1", len(won))
	}
	_ = won[0].Release(ctx)
}

func TestListAndForceRelease(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	l := newLocker(t, srv.JS, "ops-runner", 600*time.Millisecond)
	lease, err := l.TryAcquire(ctx, "billing.eu") // a name that needs encoding
	if err != nil {
		t.Fatal(err)
	}
	infos, err := l.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].Name != "billing.eu" || infos[0].Owner != "ops-runner" || infos[0].Token != lease.Token() || infos[0].Revision == 0 {
		t.Fatalf("List = %+v", infos)
	}
	// The holder is alive: by the time the operator acts on what they
	// saw, it has refreshed, and the stale revision removes nothing.
	waitRefreshed(t, l, "billing.eu", infos[0].Revision)
	if err := l.ForceRelease(ctx, "billing.eu", infos[0].Revision); !errors.Is(err, lock.ErrChanged) || !strings.Contains(err.Error(), "ops-runner") {
		t.Fatalf("force release of a refreshed lock = %v, want ErrChanged naming the holder", err)
	}
	select {
	case <-lease.Lost():
		t.Fatal("a refused force release took the lock from its holder")
	default:
	}
	// With the revision just read it goes — unless the holder refreshed
	// in between (it does every 200 ms; a loaded machine can take that
	// long between the two calls): then read it again, as an operator
	// would.
	var cur lock.Info
	for attempt := 0; ; attempt++ {
		if cur, err = l.Holder(ctx, "billing.eu"); err != nil {
			t.Fatal(err)
		}
		err = l.ForceRelease(ctx, "billing.eu", cur.Revision)
		if err == nil {
			break
		}
		if !errors.Is(err, lock.ErrChanged) || attempt == 20 {
			t.Fatal(err)
		}
	}
	select {
	case <-lease.Lost():
	case <-time.After(time.Second):
		t.Fatal("holder did not notice the forced release")
	}
	if err := l.ForceRelease(ctx, "billing.eu", cur.Revision); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("force release of a free lock = %v, want ErrNotHeld", err)
	}
	if infos, _ := l.List(ctx); len(infos) != 0 {
		t.Fatalf("List after release = %+v", infos)
	}
	// A new holder's lock is never removed with the old holder's revision.
	other, err := newLocker(t, srv.JS, "new-holder", 600*time.Millisecond).TryAcquire(ctx, "billing.eu")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.ForceRelease(ctx, "billing.eu", cur.Revision); !errors.Is(err, lock.ErrChanged) || !strings.Contains(err.Error(), "new-holder") {
		t.Fatalf("force release with the previous holder's revision = %v, want ErrChanged naming new-holder", err)
	}
	_ = other.Release(ctx)
}

// TestLostBeforeExpiry: a holder that cannot refresh gives its lease up
// Margin before the server could drop it, so that what it stops on Lost
// has stopped before anyone else can take the lock.
func TestLostBeforeExpiry(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	const lease = 800 * time.Millisecond
	nc, js := srv.Connect(t)
	a := newLocker(t, js, "partitioned", lease)
	la, err := a.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if !la.Valid() {
		t.Fatal("a fresh lease is not valid")
	}
	// The bookkeeping runs on the monotonic clock: a wall-clock step must
	// not move the lease. time.Time prints its monotonic reading as m=.
	if s := la.Expiry().String(); !strings.Contains(s, "m=") {
		t.Fatalf("Expiry() = %s has no monotonic clock reading", s)
	}
	nc.Close() // no refresh can reach the server any more
	select {
	case <-la.Lost():
	case <-time.After(2 * lease):
		t.Fatal("lease not reported lost")
	}
	if la.Valid() {
		t.Fatal("a lost lease is valid")
	}
	if time.Now().After(la.Expiry()) {
		t.Fatalf("Lost closed after the lease could have expired")
	}
	b := newLocker(t, srv.JS, "next", lease)
	if _, err := b.TryAcquire(ctx, "p"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("lock free when the holder gave it up (%v): the margin is gone", err)
	}
	lb, err := b.Acquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	_ = lb.Release(ctx)
}

// TestValidAnswersWhileARefreshWaits: while a refresh waits on a
// partitioned link, Valid, StopBy and Expiry answer at once, from what the
// lease knows, and Valid turns false at StopBy. They used to wait for the
// refresh (the lease's mutex was held across the call, until StopBy), and
// Valid then answered with the time it had read before waiting: true, at
// a moment past StopBy. The chaos test found it.
func TestValidAnswersWhileARefreshWaits(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	part := natstest.NewPartition(t, srv.ClientURL())
	_, js := natstest.ConnectURL(t, part.URL())
	const lease = time.Second
	ctx := context.Background()
	la, err := newLocker(t, js, "cut-off", lease).TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	part.Cut()
	stopBy := la.StopBy()
	time.Sleep(lease/3 + 100*time.Millisecond) // the first refresh is waiting on the cut link now
	for time.Until(stopBy) > 20*time.Millisecond {
		start := time.Now()
		valid := la.Valid()
		if took := time.Since(start); took > lease/10 {
			t.Fatalf("Valid() took %s while a refresh waited", took.Round(time.Millisecond))
		}
		if !valid {
			t.Fatalf("Valid() false %s before StopBy", time.Until(stopBy).Round(time.Millisecond))
		}
		if !la.StopBy().Equal(stopBy) {
			t.Fatalf("StopBy moved from %s to %s without a refresh", stopBy, la.StopBy())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Until(stopBy))
	if la.Valid() {
		t.Fatal("Valid() true at StopBy")
	}
	select {
	case <-la.Lost():
	case <-time.After(lease):
		t.Fatal("lease not reported lost")
	}
	part.Heal()
	if err := la.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("release of a lost lease = %v, want ErrNotHeld", err)
	}
}

func TestConfigChecks(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	newLocker(t, srv.JS, "a", time.Second)
	if _, err := lock.New(ctx, srv.JS, lock.Config{Lease: 2 * time.Second}); !errors.Is(err, lock.ErrInvalidConfig) {
		t.Fatalf("locker with another lease than the bucket = %v, want ErrInvalidConfig", err)
	}
	adopted, err := lock.New(ctx, srv.JS, lock.Config{}) // no lease: the bucket's
	if err != nil {
		t.Fatalf("locker adopting the bucket's lease: %v", err)
	}
	if l, err := adopted.TryAcquire(ctx, "p"); err != nil {
		t.Fatal(err)
	} else {
		_ = l.Release(ctx)
	}
	for _, c := range []lock.Config{{Lease: time.Millisecond}, {Bucket: "a.b"}, {Replicas: 9}, {GiveUpAfter: -1}, {Lease: time.Second, Margin: 600 * time.Millisecond}} {
		if _, err := lock.New(ctx, srv.JS, c); !errors.Is(err, lock.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
	if _, err := newLocker(t, srv.JS, "a", time.Second).TryAcquire(ctx, ""); !errors.Is(err, lock.ErrInvalidName) {
		t.Fatalf("empty name = %v", err)
	}
}

func TestKeyEncoding(t *testing.T) {
	for name, want := range map[string]string{"billing": "billing", "billing.eu": "billing=2Eeu", "a b/c": "a=20b=2Fc", "x=y": "x=3Dy"} {
		if got, _ := lock.Key(name); got != want {
			t.Errorf("Key(%q) = %q, want %q", name, got, want)
		}
	}
}

// waitRefreshed waits until the lock name has a revision after rev: its
// holder refreshed it.
func waitRefreshed(t *testing.T, l *lock.Locker, name string, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, err := l.Holder(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Revision > rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not refreshed after revision %d in 10s", name, rev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
