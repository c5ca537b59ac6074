package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/trust"
)

// Lease is a held lock. It refreshes itself in the background at a third
// of the lease until Release. If it cannot refresh in time, Lost closes
// Config.Margin before the lease could expire on the server, and the holder
// must stop its work; Lost also closes as soon as a refresh finds that
// another holder has the lock or that it was removed. LostCause says which.
//
// All lease bookkeeping uses the monotonic clock: stepping the wall clock
// neither shortens nor stretches what the holder believes it has.
type Lease struct {
	l    *Locker
	name string
	key  string
	rec  record // the value; its Token is set

	// mu guards these; it is never held across a call to the server, so
	// that Valid, StopBy and Expiry answer at once while a refresh waits
	// on a partitioned link. Only the refresh loop writes rev, refreshed
	// and lastErr.
	mu        sync.Mutex
	rev       uint64
	refreshed time.Time // when the last successful refresh (or the acquire) was sent; monotonic
	released  bool
	lastErr   error // the last failed refresh's error
	// notBefore: until then the previous holder of a lock taken over may
	// still act (monotonic; zero if none). A Release before it leaves a
	// removal, not a release record, so the next holder waits too.
	notBefore time.Time

	lost     chan struct{}
	lostOnce sync.Once
	cause    atomic.Pointer[LostError]
	stop     chan struct{}
	wg       sync.WaitGroup
}

// Token is the fencing token: the KV revision at which this lease was
// acquired. It grows with every new holder of any lock in the bucket, so a
// write stamped with an older token can be recognised as stale.
func (ls *Lease) Token() uint64 { return ls.rec.Token }

// Name is the lock's name.
func (ls *Lease) Name() string { return ls.name }

// Lost is closed when the lease is lost: it could not be refreshed and is
// within Config.Margin of expiring, another holder took it, it was
// removed, or its holder forfeited it. LostCause says which.
func (ls *Lease) Lost() <-chan struct{} { return ls.lost }

// LostCause says why the lease was lost: a *LostError (wrapping
// ErrNotHeld) whose Kind is LostRanOut only when the lease ran out
// because it could not be refreshed in time; LostDeleted,
// LostForceReleased or LostTaken when a refresh found the lock removed or
// another's; LostForfeited after Forfeit. It is nil until Lost is closed.
func (ls *Lease) LostCause() error {
	select {
	case <-ls.lost:
		return ls.cause.Load()
	default:
		return nil
	}
}

// Expiry is the earliest moment the server may drop the lock: the lease's
// duration after the last successful refresh was sent. It carries a
// monotonic clock reading: compare it with time.Now, never store it.
func (ls *Lease) Expiry() time.Time {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.refreshed.Add(ls.l.cfg.Lease)
}

// StopBy is when Lost closes unless the lease is refreshed first: Margin
// before Expiry.
func (ls *Lease) StopBy() time.Time { return ls.Expiry().Add(-ls.l.cfg.Margin) }

// Valid reports whether the lease is still held as far as this holder can
// tell: not lost, and not past StopBy. Check it right before an action
// that needs the lock; a process paused between the check and the action
// is what fencing tokens are for.
func (ls *Lease) Valid() bool {
	select {
	case <-ls.lost:
		return false
	case <-ls.stop: // released: the next holder may have it
		return false
	default:
	}
	stopBy := ls.StopBy()
	return time.Now().Before(stopBy) // the time after StopBy, never a reading from before
}

// Forfeit gives the lease up as lost (Lost closes; LostCause is
// LostForfeited with reason) when its holder learns by other means that it
// no longer holds the lock: the lock's value names another holder, or is
// gone. It does not touch the lock.
func (ls *Lease) Forfeit(reason string) {
	ls.markLost(&LostError{Kind: LostForfeited, Detail: reason})
}

func (ls *Lease) markLost(cause *LostError) {
	ls.lostOnce.Do(func() {
		cause.Lock, cause.Token = ls.name, ls.rec.Token
		ls.cause.Store(cause)
		ls.l.log.Warn("lock lost", "lock", ls.name, "token", ls.rec.Token, "kind", string(cause.Kind), "cause", cause.Error())
		close(ls.lost)
	})
}

// settle returns once the previous holder of the lock, as prev shows it,
// can no longer act: at once if it released the lock, the lock expired
// or was never taken; otherwise when its lease has run out by the server's
// clock. Only server facts count: the server's time of the removal (the
// previous holder's last refresh came before it) compared with the
// server's time of this lease's own write — never the local clock with
// the server's.
func (ls *Lease) settle(ctx context.Context, prev entry) error {
	if prev.state != stateRemoved {
		// Released by its holder, expired (its last write is a lease old)
		// or never taken. (A bucket deleted and created again is created
		// a lease after its holders could last act: see Config.TokenFloor.)
		return nil
	}
	l := ls.l
	// Until it is known when, a Release must not say the lock is free.
	ls.mu.Lock()
	ls.notBefore = time.Now().Add(l.cfg.Lease)
	ls.mu.Unlock()
	var own entry
	err := l.guard(ctx, ls.key, func(ctx context.Context) (err error) {
		own, err = l.read(ctx, ls.key)
		return err
	})
	if err != nil {
		return fmt.Errorf("lock: acquire %q: read the lock back: %w", ls.name, err)
	}
	if own.rec.ID != ls.rec.ID {
		return fmt.Errorf("%w: %q: taken over again before this acquisition was read back", ErrHeld, ls.name)
	}
	// By the server's clock: when the removal and this lease's own write
	// were stored.
	until, now := prev.at.Add(l.cfg.Lease), own.at
	why := fmt.Sprintf("the previous holder's lock was %s (at %s); that holder may act until its lease has run out",
		prev.what, prev.at.UTC().Format(time.RFC3339Nano))
	wait := until.Sub(now)
	ls.mu.Lock()
	ls.notBefore = time.Now().Add(wait)
	ls.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	l.log.Info("lock taken over: waiting until the previous holder's lease has run out", "lock", ls.name, "token", ls.rec.Token,
		"why", why, "until", until.UTC().Format(time.RFC3339Nano), "wait", wait.Round(time.Millisecond))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("lock: acquire %q: waiting until the previous holder's lease has run out: %w", ls.name, ctx.Err())
	case <-ls.lost:
		return fmt.Errorf("%w: %q was lost while waiting for the previous holder's lease to run out: %w", ErrHeld, ls.name, ls.LostCause())
	}
}

func (ls *Lease) refreshLoop() {
	interval := ls.l.cfg.Lease / 3
	t := time.NewTimer(min(interval, time.Until(ls.StopBy())))
	defer t.Stop()
	for {
		select {
		case <-ls.stop:
			return
		case <-t.C:
		}
		if ok := ls.refresh(); !ok {
			return
		}
		// Next: the regular refresh, or sooner after a failed attempt so a
		// brief outage does not eat the lease, but never later than StopBy,
		// when the lease is given up.
		ls.mu.Lock()
		next := interval - time.Since(ls.refreshed)
		if next <= 0 {
			next = interval/4 + time.Millisecond
		}
		next = min(next, time.Until(ls.refreshed.Add(ls.l.cfg.Lease-ls.l.cfg.Margin)))
		ls.mu.Unlock()
		t.Reset(max(next, time.Millisecond))
	}
}

// refresh renews the lease if it is due; it returns false when the lease
// is lost.
func (ls *Lease) refresh() bool {
	ls.mu.Lock()
	released, refreshed, rev, lastErr := ls.released, ls.refreshed, ls.rev, ls.lastErr
	ls.mu.Unlock()
	if released {
		return false
	}
	stopBy := refreshed.Add(ls.l.cfg.Lease - ls.l.cfg.Margin)
	if !time.Now().Before(stopBy) {
		ls.markLost(&LostError{Kind: LostRanOut, Detail: "not refreshed in time", Err: lastErr})
		return false
	}
	if time.Since(refreshed) < ls.l.cfg.Lease/3 {
		return true // woken early (e.g. a timer that fired late); not due yet
	}
	ctx, cancel := context.WithDeadline(context.Background(), stopBy)
	defer cancel()
	now := time.Now()
	rec := ls.rec
	rec.RefreshedAt, rec.ExpiresAt = now.UTC(), now.UTC().Add(ls.l.cfg.Lease)
	val, _ := json.Marshal(rec)
	var newRev uint64
	var cur entry
	rerr := errors.New("not read")
	err := ls.l.guard(ctx, ls.key, func(ctx context.Context) (err error) {
		newRev, err = ls.l.put(ctx, ls.key, val, nil, rev)
		if isWrongLastSeq(err) {
			cur, rerr = ls.l.read(ctx, ls.key)
		}
		return err
	})
	if err == nil {
		ls.mu.Lock()
		ls.rev, ls.refreshed, ls.lastErr = newRev, now, nil
		ls.mu.Unlock()
		return true
	}
	if isWrongLastSeq(err) {
		// On a replicated bucket a stale-revision answer can be spurious
		// (an update whose ack we lost, or code 10164 right after create).
		// The value decides: still this acquisition's means still ours.
		if rerr == nil {
			if cur.state == stateHeld && cur.rec.ID == ls.rec.ID {
				ls.mu.Lock()
				ls.rev = cur.rev
				ls.mu.Unlock()
				return true // retry the update at the next tick
			}
			ls.markLost(ls.lostTo(cur, err))
			return false
		}
	}
	ls.mu.Lock()
	ls.lastErr = err
	ls.mu.Unlock()
	ls.l.log.Warn("lock refresh failed, retrying", "lock", ls.name, "stopBy", time.Until(stopBy).Round(time.Millisecond), "err", err)
	return true
}

// lostTo says what took the lock from this lease, from what is on its key.
func (ls *Lease) lostTo(cur entry, err error) *LostError {
	le := &LostError{At: cur.at, Err: err}
	switch cur.state {
	case stateHeld:
		le.Kind, le.By, le.OtherToken = LostTaken, cur.rec.Owner, cur.rec.Token
		ls.mu.Lock()
		rev := ls.rev
		ls.mu.Unlock()
		if o := cur.rec.Over; o != nil && o.Rev > rev {
			// Removed after this lease's last refresh, then taken over: the
			// removal is why (as the new holder recorded it).
			le.Kind, le.By, le.At = LostDeleted, "", o.At
			le.Detail = fmt.Sprintf("then taken over by %s (token %d)", cur.rec.Owner, cur.rec.Token)
			if o.What != string(LostDeleted) {
				le.Detail = o.What + "; " + le.Detail
			}
			if o.Forced {
				le.Kind, le.By = LostForceReleased, o.By
				le.Detail = fmt.Sprintf("then taken over by %s (token %d)", cur.rec.Owner, cur.rec.Token)
			}
		}
	case stateReleased:
		if cur.rec.Token == ls.rec.Token {
			le.Kind, le.Detail = LostDeleted, "replaced by a release record this lease did not write"
		} else {
			le.Kind, le.By, le.OtherToken, le.Detail = LostTaken, cur.rec.Owner, cur.rec.Token, "which has released it since"
		}
	case stateRemoved:
		le.Kind, le.Detail = LostDeleted, cur.what
		if cur.forced {
			le.Kind, le.By, le.Detail = LostForceReleased, cur.by, ""
		}
	default:
		le.Kind, le.Detail = LostDeleted, "the lock's key has no entry any more (the bucket was emptied, or deleted and created again)"
	}
	return le
}

// Release stops refreshing and frees the lock if this lease still holds
// it, so the next runner takes it at once: it replaces the lock with a
// release record (signed with Config.Signer, if set), which tells the next
// holder that this one has stopped. Call it only once the work done under
// the lease has stopped. Releasing a lost lease returns ErrNotHeld (after
// freeing the lock if it is, after all, still at this lease's revision);
// releasing twice is a no-op. A lease taken over from a removed holder and
// released before that holder's lease ran out leaves a removal instead, so
// that the next holder waits for it too.
func (ls *Lease) Release(ctx context.Context) error {
	ls.mu.Lock()
	if ls.released {
		ls.mu.Unlock()
		return nil
	}
	ls.released = true
	close(ls.stop)
	ls.mu.Unlock()
	ls.wg.Wait()
	ls.mu.Lock()
	rev := ls.rev // read once the refresh loop is done: a refresh in flight may move it
	settled := !time.Now().Before(ls.notBefore)
	ls.mu.Unlock()
	// Only if the lock is still at our revision: never another's. A leader
	// election answers with silence for seconds; retrying within the lease
	// spares the next runner from waiting it out.
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(ls.l.cfg.Lease)), ctx)
	var released uint64
	err := backoff.Retry(func() error {
		var cur entry
		herr := errors.New("not read")
		err := ls.l.guard(ctx, ls.key, func(ctx context.Context) (err error) {
			if settled {
				released, err = ls.writeRelease(ctx, rev)
			} else {
				err = ls.l.remove(ctx, ls.key, rev, "")
			}
			if isWrongLastSeq(err) {
				cur, herr = ls.l.read(ctx, ls.key)
			}
			return err
		})
		if isWrongLastSeq(err) {
			// The lock moved since our last known revision. An earlier
			// attempt that landed unanswered (done), or a refresh we gave
			// up on that landed late (still our acquisition: release at
			// its revision), are ours; anything else is another's.
			switch {
			case herr == nil && cur.rec.ID == ls.rec.ID && cur.rec.Released != nil:
				released = cur.rev
				return nil
			case herr == nil && cur.state == stateHeld && cur.rec.ID == ls.rec.ID && cur.rev != rev:
				rev = cur.rev
				return err // try again at the current revision
			}
		}
		if err != nil && (ctx.Err() != nil || !transient(err)) {
			return backoff.Permanent(err)
		}
		return err
	}, b)
	if err == nil && released != 0 {
		ls.l.released.Store(ls.key, released)
	}
	select {
	case <-ls.lost:
		return fmt.Errorf("%w: %q was lost before release: %w", ErrNotHeld, ls.name, ls.LostCause())
	default:
	}
	if err != nil {
		if isWrongLastSeq(err) {
			return fmt.Errorf("%w: %q is held by another owner now", ErrNotHeld, ls.name)
		}
		return fmt.Errorf("lock: release %q: %w", ls.name, err)
	}
	ls.l.log.Debug("lock released", "lock", ls.name, "token", ls.rec.Token)
	return nil
}

// writeRelease replaces the lock at rev with a release record.
func (ls *Lease) writeRelease(ctx context.Context, rev uint64) (uint64, error) {
	rec := ls.rec // without its times: a release holds nothing until any time
	rec.AcquiredAt, rec.RefreshedAt, rec.ExpiresAt, rec.Over = time.Time{}, time.Time{}, time.Time{}, nil
	rec.Released = &release{At: time.Now().UTC(), Prev: rev, Bucket: ls.l.created}
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	var hdr nats.Header
	if s := ls.l.cfg.Signer; s != nil {
		hdr = nats.Header{}
		hdr.Set(trust.Header, s.SignHash(releaseHash(val)))
	}
	return ls.l.put(ctx, ls.key, val, hdr, rev)
}
