package lock_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/trust"
)

// takeoverRounds is how many removals TestTakeoverWaitsOutTheRemovedLease
// makes; the stress build makes more (stress_test.go).
var takeoverRounds = 20

// lockerWith is newLocker with more settings.
func lockerWith(t *testing.T, js jetstream.JetStream, owner string, lease time.Duration, edit func(*lock.Config)) *lock.Locker {
	t.Helper()
	cfg := lock.Config{CreateBucket: true, Owner: owner, Lease: lease, RetryInterval: 50 * time.Millisecond, GiveUpAfter: 4 * lease,
		Logger: natstest.Logger(t)}
	if edit != nil {
		edit(&cfg)
	}
	l, err := lock.New(context.Background(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// publishOnKey writes a raw message on a lock's key, as anyone with the
// rights to the key can (a runner's NATS user, an insider with it).
func publishOnKey(ctx context.Context, js jetstream.JetStream, key string, data []byte, hdr map[string]string, opts ...jetstream.PublishOpt) error {
	m := nats.NewMsg("$KV." + lock.DefaultBucket + "." + key)
	m.Data = data
	for k, v := range hdr {
		m.Header.Set(k, v)
	}
	_, err := js.PublishMsg(ctx, m, opts...)
	return err
}

// acquired is what a waiting Acquire returned, and when.
type acquired struct {
	lease *lock.Lease
	err   error
	at    time.Time // monotonic
}

func acquireInBackground(ctx context.Context, l *lock.Locker, name string) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		lease, err := l.Acquire(ctx, name)
		ch <- acquired{lease, err, time.Now()}
	}()
	return ch
}

// TestTakeoverWaitsOutTheRemovedLease: a live holder's lock is removed
// from under it — its key deleted, purged (a purge marker: the bucket
// refuses real purges), force-released at its current revision, or
// replaced by a release record its holder did not write — while a second
// locker waits for it. The removed holder may act until its lease runs
// out (it learns of the removal only at its next refresh, and one cut off
// from NATS never does), so the waiter's Acquire must return no earlier
// than the removed lease's Expiry — the earliest moment the server could
// have dropped the holder's lock, on this process's monotonic clock — and
// not much later than a lease after the removal. The holder's LostCause
// names the removal. Then the waiter releases normally and the first
// locker takes the lock again at once: a normal release is never waited
// out.
//
// Without the wait (settle) the waiter returns within its retry interval
// of the removal, about 0.7 leases before the Expiry, and the test fails.
func TestTakeoverWaitsOutTheRemovedLease(t *testing.T) {
	const lease = time.Second
	srv := natstest.Start(t)
	ctx := context.Background()
	list := trustList(t)
	edit := func(c *lock.Config) { c.Signer, c.Trust = list.signer, list.list }
	holderL := lockerWith(t, srv.JS, "holder", lease, edit)
	waiterL := lockerWith(t, srv.JS, "waiter", lease, edit)
	ops := lockerWith(t, srv.JS, "ops@bastion", lease, edit)
	kv, err := srv.JS.KeyValue(ctx, lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	bucket, err := srv.JS.Stream(ctx, "KV_"+lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	created := bucket.CachedInfo().Created.Format(time.RFC3339Nano)
	const name = "billing"
	removals := []struct {
		name   string
		kind   lock.LostKind
		remove func(t *testing.T, h *lock.Lease) error
	}{
		{"delete", lock.LostDeleted, func(*testing.T, *lock.Lease) error { return kv.Delete(ctx, name) }},
		{"purge", lock.LostDeleted, func(t *testing.T, _ *lock.Lease) error {
			if err := kv.Purge(ctx, name); err == nil || !strings.Contains(err.Error(), "rollup not permitted") {
				t.Fatalf("KV purge (a rollup) = %v, want refused", err)
			}
			return publishOnKey(ctx, srv.JS, name, nil, map[string]string{"KV-Operation": "PURGE"})
		}},
		{"force release", lock.LostForceReleased, func(t *testing.T, h *lock.Lease) error {
			for {
				cur, err := ops.Holder(ctx, name)
				if err != nil {
					return err
				}
				if err := ops.ForceRelease(ctx, name, cur.Revision); !errors.Is(err, lock.ErrChanged) {
					return err // nil, or a failure; ErrChanged: it refreshed meanwhile, read it again
				}
			}
		}},
		{"forged release", lock.LostDeleted, func(t *testing.T, h *lock.Lease) error {
			cur, err := ops.Holder(ctx, name)
			if err != nil {
				return err
			}
			// What the holder's release would be, but unsigned, written at
			// the right revision: anyone with the key's rights can.
			forged := fmt.Sprintf(`{"name":%q,"owner":"holder","token":%d,"released":{"at":"2026-01-01T00:00:00Z","prev":%d,"bucket":%q}}`,
				name, h.Token(), cur.Revision, created)
			return publishOnKey(ctx, srv.JS, name, []byte(forged), nil, jetstream.WithExpectLastSequencePerSubject(cur.Revision))
		}},
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	h, err := holderL.TryAcquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	for round := range takeoverRounds {
		r := removals[round%len(removals)]
		// Somewhere in the lease's refresh cycle (it refreshes every lease/3).
		time.Sleep(time.Duration(rng.Int64N(int64(lease / 2))))
		wctx, cancel := context.WithTimeout(ctx, 4*lease)
		got := acquireInBackground(wctx, waiterL, name)
		time.Sleep(100 * time.Millisecond) // the waiter is polling a held lock
		removed := time.Now()
		if err := r.remove(t, h); err != nil {
			t.Fatalf("round %d, %s: %v", round, r.name, err)
		}
		a := <-got
		cancel()
		if a.err != nil {
			t.Fatalf("round %d, %s: the waiter's Acquire: %v", round, r.name, a.err)
		}
		select {
		case <-h.Lost():
		case <-time.After(lease):
			t.Fatalf("round %d, %s: the removed holder did not notice", round, r.name)
		}
		expiry := h.Expiry() // frozen: the lost lease refreshes no more
		if a.at.Before(expiry) {
			t.Fatalf("round %d, %s: the waiter got the lock %s before the removed holder's lease ran out (it may still act then)",
				round, r.name, expiry.Sub(a.at).Round(time.Millisecond))
		}
		if late := a.at.Sub(removed); late > lease+500*time.Millisecond {
			t.Errorf("round %d, %s: the waiter got the lock %s after the removal, more than a lease", round, r.name, late.Round(time.Millisecond))
		}
		waits = append(waits, a.at.Sub(removed))
		var lost *lock.LostError
		if cause := h.LostCause(); !errors.As(cause, &lost) || lost.Kind != r.kind || !errors.Is(cause, lock.ErrNotHeld) {
			t.Fatalf("round %d, %s: LostCause = %v, want kind %q", round, r.name, cause, r.kind)
		}
		if r.kind == lock.LostForceReleased && lost.By != "ops@bastion" {
			t.Fatalf("round %d: force release by %q, want ops@bastion", round, lost.By)
		}
		if a.lease.Token() <= h.Token() {
			t.Fatalf("round %d: tokens %d then %d", round, h.Token(), a.lease.Token())
		}
		if err := h.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("round %d: release of the removed lease = %v, want ErrNotHeld", round, err)
		}
		// A normal release hands over at once, to another locker.
		if err := a.lease.Release(ctx); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if h, err = holderL.TryAcquire(ctx, name); err != nil {
			t.Fatalf("round %d: acquire after a normal release: %v", round, err)
		}
		if took := time.Since(start); took > lease/4 {
			t.Fatalf("round %d: acquire after a normal release took %s: a release must not be waited out", round, took.Round(time.Millisecond))
		}
	}
	_ = h.Release(ctx)
	t.Logf("%d removals; the waiter got the lock %v after each", len(waits), waits)
}

// logBuffer keeps what a logger wrote.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCancelledTakeoverLeavesARemoval: a locker that took a removed lock
// over and gives up while it waits for the removed holder's lease (its
// context ends) must not leave a release record behind — that would tell
// the next locker the lock is free while the removed holder may still
// act. The next locker still waits until the removed lease has run out.
func TestCancelledTakeoverLeavesARemoval(t *testing.T) {
	const lease = time.Second
	srv := natstest.Start(t)
	ctx := context.Background()
	h, err := lockerWith(t, srv.JS, "holder", lease, nil).TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := srv.JS.KeyValue(ctx, lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	impatient, cancel := context.WithTimeout(ctx, lease/5)
	defer cancel()
	if _, err := lockerWith(t, srv.JS, "impatient", lease, nil).TryAcquire(impatient, "p"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TryAcquire cancelled while waiting = %v, want the deadline", err)
	}
	next, err := lockerWith(t, srv.JS, "next", lease, nil).Acquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = next.Release(ctx) }()
	<-h.Lost()
	if at := time.Now(); at.Before(h.Expiry()) {
		t.Fatalf("the next locker got the lock %s before the removed holder's lease ran out", h.Expiry().Sub(at))
	}
}

// signing is a runner key and a trust list that trusts it for billing.
type signing struct {
	signer *trust.Signer
	list   *trust.List
}

func trustList(t *testing.T) signing {
	t.Helper()
	s, err := trust.NewKeyFile(t.TempDir() + "/runner.nk")
	if err != nil {
		t.Fatal(err)
	}
	l, err := trust.NewList(trust.Key{Key: s.PublicKey(), Name: "runner-billing", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	return signing{s, l}
}

// TestReleaseIsBelievedOnlyFromItsHolder: a waiting locker takes a
// released lock at once when the release is believed — no trust list, or
// signed by a key the list trusts — and waits out the lease otherwise: an
// unsigned release, or one signed by a key the list does not trust, may
// be anyone's (the rights to a lock's key let one write any value on it).
// Without the signature check, the last two cases hand over at once and
// the test fails; without the release record (a plain delete), the first
// two wait a lease and it fails too.
func TestReleaseIsBelievedOnlyFromItsHolder(t *testing.T) {
	const lease = time.Second
	trusted, stranger := trustList(t), trustList(t)
	for _, c := range []struct {
		name           string
		signer         *trust.Signer
		list           *trust.List
		waitsALease    bool
		notBelievedFor string
	}{
		{"no trust list, unsigned", nil, nil, false, ""},
		{"signed by a trusted key", trusted.signer, trusted.list, false, ""},
		{"unsigned, with a trust list", nil, trusted.list, true, "unsigned"},
		{"signed by an unknown key", stranger.signer, trusted.list, true, "unknown key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := natstest.Start(t)
			ctx := context.Background()
			a := lockerWith(t, srv.JS, "a", lease, func(cfg *lock.Config) { cfg.Signer = c.signer })
			var logs logBuffer
			b := lockerWith(t, srv.JS, "b", lease, func(cfg *lock.Config) {
				cfg.Trust, cfg.Logger = c.list, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
			})
			la, err := a.TryAcquire(ctx, "billing")
			if err != nil {
				t.Fatal(err)
			}
			got := acquireInBackground(ctx, b, "billing")
			time.Sleep(100 * time.Millisecond)
			released := time.Now()
			if err := la.Release(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-got
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer func() { _ = r.lease.Release(ctx) }()
			took := r.at.Sub(released)
			t.Logf("acquired %s after the release", took.Round(time.Millisecond))
			if !c.waitsALease {
				if took > lease/4 {
					t.Fatalf("acquired %s after a believed release, want at once", took)
				}
				return
			}
			if took < lease-50*time.Millisecond {
				t.Fatalf("acquired %s after a release that should not be believed, want a lease (%s)", took, lease)
			}
			if out := logs.String(); strings.Count(out, "lock taken over") != 1 || !strings.Contains(out, c.notBelievedFor) {
				t.Fatalf("the wait was not logged once with why (%q):\n%s", c.notBelievedFor, out)
			}
		})
	}
}

// TestAReplayedReleaseIsNotBelieved: a genuine, signed release record,
// copied and written again over a later holder's live lock (by anyone with
// the key's rights), is not a release: the server checked that the
// original replaced its holder's last revision, and the copy replaced
// another. The next locker waits out the live holder's lease.
func TestAReplayedReleaseIsNotBelieved(t *testing.T) {
	const lease = time.Second
	srv := natstest.Start(t)
	ctx := context.Background()
	s := trustList(t)
	a := lockerWith(t, srv.JS, "a", lease, func(c *lock.Config) { c.Signer, c.Trust = s.signer, s.list })
	b := lockerWith(t, srv.JS, "b", lease, func(c *lock.Config) { c.Signer, c.Trust = s.signer, s.list })
	first, err := a.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	str, err := srv.JS.Stream(ctx, "KV_"+lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := str.GetLastMsgForSubject(ctx, "$KV."+lock.DefaultBucket+".billing")
	if err != nil {
		t.Fatal(err)
	}
	live, err := a.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	got := acquireInBackground(ctx, b, "billing")
	time.Sleep(100 * time.Millisecond)
	replayed := time.Now()
	cur, err := b.Holder(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	hdr := map[string]string{trust.Header: genuine.Header.Get(trust.Header)}
	if err := publishOnKey(ctx, srv.JS, "billing", genuine.Data, hdr, jetstream.WithExpectLastSequencePerSubject(cur.Revision)); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer func() { _ = r.lease.Release(ctx) }()
	<-live.Lost()
	if r.at.Before(live.Expiry()) {
		t.Fatalf("a replayed release handed the lock over %s before the live holder's lease ran out", live.Expiry().Sub(r.at))
	}
	var lost *lock.LostError
	if !errors.As(live.LostCause(), &lost) || lost.Kind != lock.LostDeleted || !strings.Contains(lost.Detail, "not believed") {
		t.Fatalf("LostCause = %v, want deleted by a release record not believed", live.LostCause())
	}
	t.Logf("acquired %s after the replay; the live holder: %v", r.at.Sub(replayed).Round(time.Millisecond), live.LostCause())
}

// TestLostCauseSaysWhy: a lease lost because it could not be refreshed
// says it ran out; one whose lock another holder's value replaced names
// that holder; one forfeited says so. (Deletion and force release:
// TestTakeoverWaitsOutTheRemovedLease.) A runner prints "the lease ran
// out" only for the first.
func TestLostCauseSaysWhy(t *testing.T) {
	const lease = 900 * time.Millisecond
	srv := natstest.Start(t)
	ctx := context.Background()

	nc, js := srv.Connect(t)
	cut, err := lockerWith(t, js, "cut-off", lease, nil).TryAcquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if cut.LostCause() != nil {
		t.Fatal("LostCause of a valid lease is not nil")
	}
	nc.Close()
	<-cut.Lost()
	var lost *lock.LostError
	if !errors.As(cut.LostCause(), &lost) || lost.Kind != lock.LostRanOut || lost.Lock != "a" || lost.Token != cut.Token() {
		t.Fatalf("cut off: LostCause = %#v", cut.LostCause())
	}

	l := lockerWith(t, srv.JS, "first", lease, nil)
	taken, err := l.TryAcquire(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := l.Holder(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	other := fmt.Sprintf(`{"name":"b","owner":"intruder","token":%d}`, cur.Revision+1)
	if err := publishOnKey(ctx, srv.JS, "b", []byte(other), nil); err != nil {
		t.Fatal(err)
	}
	<-taken.Lost()
	if !errors.As(taken.LostCause(), &lost) || lost.Kind != lock.LostTaken || lost.By != "intruder" {
		t.Fatalf("overwritten: LostCause = %v", taken.LostCause())
	}

	f, err := l.TryAcquire(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	f.Forfeit("the lock names another holder")
	if !errors.As(f.LostCause(), &lost) || lost.Kind != lock.LostForfeited || !strings.Contains(lost.Error(), "names another holder") {
		t.Fatalf("forfeited: LostCause = %v", f.LostCause())
	}
	_ = f.Release(ctx)
}

// TestRecreatedBucketTokensAndWait: a bucket created with a token floor
// (the highest token on the audit stream, after the bucket was deleted)
// hands out tokens above it, and is created only a lease after New was
// asked to: until then a holder of the deleted bucket may still act, and
// no lock must be taken beside it. A first bucket (floor 0) is created at
// once: the quickstart's first run does not wait. Without the floor the
// token is 1; without the wait the lock is taken at once.
func TestRecreatedBucketTokensAndWait(t *testing.T) {
	const lease = 1500 * time.Millisecond
	ctx := context.Background()

	srv := natstest.Start(t)
	start := time.Now()
	fresh := lockerWith(t, srv.JS, "first", lease, func(c *lock.Config) {
		c.TokenFloor = func(context.Context) (uint64, error) { return 0, nil }
	})
	l, err := fresh.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > lease/4 || l.Token() != 1 {
		t.Fatalf("first bucket: token %d after %s, want 1 at once", l.Token(), took)
	}
	_ = l.Release(ctx)
	if err := srv.JS.DeleteKeyValue(ctx, lock.DefaultBucket); err != nil {
		t.Fatal(err)
	}

	const floor = 52
	asked := 0
	deleted := time.Now() // after the deletion: the deleted bucket's holders last refreshed before it
	again := lockerWith(t, srv.JS, "after", lease, func(c *lock.Config) {
		c.TokenFloor = func(context.Context) (uint64, error) { asked++; return floor, nil }
	})
	l, err = again.TryAcquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if since := time.Since(deleted); since < lease {
		t.Fatalf("lock taken %s after the bucket was deleted, before a lease (%s): a holder of the deleted bucket may still act", since.Round(time.Millisecond), lease)
	}
	if l.Token() <= floor || asked != 2 {
		t.Fatalf("token %d after the bucket was created again above %d (floor asked %d times, want before and after the wait)", l.Token(), floor, asked)
	}
	_ = l.Release(ctx)
}

// TestBucketRefusesRollupsAndPurges: the bucket New creates refuses a
// rollup (what emptied the whole bucket: Nats-Rollup: all on any key), a
// stream purge and a KV purge, and the lock in it stays; New refuses a
// bucket that allows them (one made by nats.go's CreateKeyValue, as
// auditflow did before) with an error naming auditflow init, and with
// CreateBucket makes it refuse them in place, keeping its locks.
func TestBucketRefusesRollupsAndPurges(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	l := newLocker(t, srv.JS, "holder", time.Second)
	held, err := l.TryAcquire(ctx, "shipping")
	if err != nil {
		t.Fatal(err)
	}
	err = publishOnKey(ctx, srv.JS, "billing", nil, map[string]string{"Nats-Rollup": "all", "KV-Operation": "PURGE"})
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "rollup not permitted") {
		t.Fatalf("rollup of the bucket = %v, want refused", err)
	}
	s, err := srv.JS.Stream(ctx, "KV_"+lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err == nil || !strings.Contains(err.Error(), "purge not permitted") {
		t.Fatalf("stream purge = %v, want refused", err)
	}
	if h, err := l.Holder(ctx, "shipping"); err != nil || h.Token != held.Token() {
		t.Fatalf("the lock after the attempts: %+v %v", h, err)
	}
	_ = held.Release(ctx)

	// A bucket that allows them.
	old := natstest.Start(t)
	kv, err := old.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: lock.DefaultBucket, History: 1, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "billing", []byte(`{"name":"billing","owner":"old-runner"}`)); err != nil {
		t.Fatal(err)
	}
	_, err = lock.New(ctx, old.JS, lock.Config{})
	if !errors.Is(err, lock.ErrUnsafeBucket) || !strings.Contains(err.Error(), "auditflow init") || !strings.Contains(err.Error(), "rollups") {
		t.Fatalf("New over a bucket that allows rollups = %v, want ErrUnsafeBucket naming auditflow init", err)
	}
	if unsafe, err := lock.SecureBucket(ctx, old.JS, lock.DefaultBucket, true); err != nil || len(unsafe) != 2 {
		t.Fatalf("SecureBucket dry run = %v %v, want rollups and purges", unsafe, err)
	}
	if _, err := lock.New(ctx, old.JS, lock.Config{}); !errors.Is(err, lock.ErrUnsafeBucket) {
		t.Fatalf("a dry run changed the bucket: %v", err)
	}
	fixed, err := lock.New(ctx, old.JS, lock.Config{CreateBucket: true, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := fixed.Holder(ctx, "billing"); err != nil || h.Owner != "old-runner" {
		t.Fatalf("the lock after the update: %+v %v", h, err)
	}
	if unsafe, err := lock.SecureBucket(ctx, old.JS, lock.DefaultBucket, false); err != nil || len(unsafe) != 0 {
		t.Fatalf("SecureBucket after the update = %v %v, want nothing left", unsafe, err)
	}
	if err := publishOnKey(ctx, old.JS, "x", nil, map[string]string{"Nats-Rollup": "all"}); err == nil {
		t.Fatal("the updated bucket accepts a rollup")
	}
}
