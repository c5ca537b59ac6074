package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsperm"
)

// Config configures a Locker. The defaults are Flamingock's.
type Config struct {
	Bucket   string // KV bucket, default "auditflow_locks"
	Replicas int    // bucket replicas, default 1; 3 on a cluster
	// Lease is how long a lock outlives its holder's last refresh. It is the
	// bucket's TTL, enforced by the server: a holder that dies loses the
	// lock after at most Lease. All lockers of a bucket must agree on it
	// (New checks). Zero takes the existing bucket's, or 60s for a new one.
	Lease time.Duration
	// RetryInterval is the first wait between attempts on a held lock; it
	// grows by half each time up to 4× (with jitter). Default 1s.
	RetryInterval time.Duration
	// GiveUpAfter bounds how long Acquire waits for a held lock before
	// returning ErrHeld. Default 3m.
	GiveUpAfter time.Duration
	// Margin is how long before the lease could expire on the server its
	// holder already treats it as lost: Lost closes then, so that work
	// stopped on Lost has Margin to wind down before another runner can
	// take the lock. Default a quarter of the lease.
	Margin time.Duration
	// RetryFor bounds how long New retries transient failures (no
	// responders or timeouts while a cluster elects a leader). Default 30s.
	RetryFor time.Duration
	// Owner names the holder in the lock's value (shown by lock list).
	// Default host:pid.
	Owner string
	// CreateBucket lets New create the lock bucket if it is missing, with
	// Lease (default 60s) as its TTL and Replicas. Default false: New
	// fails with ErrNoBucket, so that runners need no right to create
	// buckets and a deleted bucket is recreated only deliberately
	// (`auditflow init`, the embedded mode, tests).
	CreateBucket bool
	Logger       *slog.Logger // nil discards
}

// Defaults.
const (
	DefaultBucket        = "auditflow_locks"
	DefaultLease         = 60 * time.Second
	DefaultRetryInterval = time.Second
	DefaultGiveUpAfter   = 3 * time.Minute
	DefaultRetryFor      = 30 * time.Second
)

// Validate fills in defaults and checks values.
func (c *Config) Validate() error {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	if c.GiveUpAfter == 0 {
		c.GiveUpAfter = DefaultGiveUpAfter
	}
	if c.RetryFor == 0 {
		c.RetryFor = DefaultRetryFor
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	switch {
	case c.Lease != 0 && c.Lease < 100*time.Millisecond:
		return fmt.Errorf("%w: lease %s is shorter than 100ms", ErrInvalidConfig, c.Lease)
	case c.RetryInterval < 0 || c.GiveUpAfter < 0 || c.RetryFor < 0 || c.Margin < 0:
		return fmt.Errorf("%w: negative retry interval, give-up time, retry budget or margin", ErrInvalidConfig)
	case c.Lease != 0 && c.Margin >= c.Lease/2:
		return fmt.Errorf("%w: margin %s must be under half the lease %s", ErrInvalidConfig, c.Margin, c.Lease)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d is outside 1..5", ErrInvalidConfig, c.Replicas)
	case strings.ContainsAny(c.Bucket, " .*>/\\"):
		return fmt.Errorf("%w: bucket name %q", ErrInvalidConfig, c.Bucket)
	}
	return nil
}

// Locker takes named locks (one per pipeline) in a JetStream KV bucket.
type Locker struct {
	kv  jetstream.KeyValue
	cfg Config
	log *slog.Logger
}

// New opens the lock bucket; it creates a missing one only with
// Config.CreateBucket, and otherwise fails with an error wrapping
// ErrNoBucket that says how to create it. Transient failures (a cluster
// electing a leader answers with no responders or not at all) are retried
// for up to Config.RetryFor; a missing right fails at once with an error
// naming the denied subject (wrapping nats.ErrPermissionViolation).
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Locker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(cfg.RetryFor)), ctx)
	kv, err := backoff.RetryNotifyWithData(func() (jetstream.KeyValue, error) {
		kv, err := natsperm.Do(ctx, js.Conn(), natsperm.JetStream, func(ctx context.Context) (jetstream.KeyValue, error) {
			return openBucket(ctx, js, &cfg)
		})
		if err != nil && (ctx.Err() != nil || !transient(err)) {
			return nil, backoff.Permanent(err)
		}
		return kv, err
	}, b, func(err error, wait time.Duration) {
		log.Warn("lock bucket not reachable, retrying", "bucket", cfg.Bucket, "wait", wait.Round(time.Millisecond), "err", err)
	})
	if err != nil {
		return nil, err
	}
	if cfg.Margin == 0 {
		cfg.Margin = cfg.Lease / 4
	}
	if cfg.Margin >= cfg.Lease/2 {
		return nil, fmt.Errorf("%w: margin %s must be under half the lease %s", ErrInvalidConfig, cfg.Margin, cfg.Lease)
	}
	return &Locker{kv: kv, cfg: cfg, log: log}, nil
}

// openBucket opens (or, with cfg.CreateBucket, creates) the bucket and
// settles cfg.Lease with it. The KeyValue it returns reports a missing
// right on a lock's key as an error naming the subject (see permissionKV).
func openBucket(ctx context.Context, js jetstream.JetStream, cfg *Config) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && !cfg.CreateBucket {
		return nil, fmt.Errorf("%w: lock bucket %s (stream KV_%s) does not exist; auditflow creates it only deliberately: run `auditflow init` "+
			"(as the admin user) once for a new deployment, or after the bucket was deleted (then see the README on fencing tokens)", ErrNoBucket, cfg.Bucket, cfg.Bucket)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		lease := cfg.Lease
		if lease == 0 {
			lease = DefaultLease
		}
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      cfg.Bucket,
			Description: "auditflow pipeline locks",
			History:     1,
			TTL:         lease,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket) // created concurrently
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lock: bucket %s: %w", cfg.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock: bucket %s: %w", cfg.Bucket, err)
	}
	if cfg.Lease == 0 {
		cfg.Lease = st.TTL()
	}
	if st.TTL() != cfg.Lease {
		return nil, fmt.Errorf("%w: bucket %s has a lease (TTL) of %s, this locker is configured for %s",
			ErrInvalidConfig, cfg.Bucket, st.TTL(), cfg.Lease)
	}
	return permissionKV{KeyValue: kv, nc: js.Conn()}, nil
}

// transient reports whether a failure may pass if tried again: no answer
// or no responders (a leader election, a reconnect), as opposed to a
// decision the server made or a configuration error.
func transient(err error) bool {
	if errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrNoBucket) || errors.Is(err, nats.ErrPermissionViolation) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503 // JetStream temporarily unavailable
}

// Lease is the lease every lock of this locker's bucket has.
func (l *Locker) Lease() time.Duration { return l.cfg.Lease }

// Info is what a lock's value records about its holder, and the lock's
// current revision.
type Info struct {
	Name        string    `json:"name"`
	Owner       string    `json:"owner"`
	Token       uint64    `json:"token"`
	AcquiredAt  time.Time `json:"acquiredAt"`
	RefreshedAt time.Time `json:"refreshedAt"`
	// ExpiresAt is when the server drops the lock unless it is refreshed
	// (by the holder's clock).
	ExpiresAt time.Time `json:"expiresAt"`
	// Revision is the lock's KV revision when it was read: it changes at
	// every refresh. ForceRelease takes it, so that it removes exactly the
	// lock an operator looked at. Set when read; never stored in the
	// value (the lease's own copy leaves it 0).
	Revision uint64 `json:"revision,omitempty"`
}

// Acquire takes the named lock, waiting with back-off while another holder
// has it, for up to Config.GiveUpAfter; then it returns an error wrapping
// ErrHeld that names the holder.
func (l *Locker) Acquire(ctx context.Context, name string) (*Lease, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(l.cfg.RetryInterval), backoff.WithMultiplier(1.5),
		backoff.WithMaxInterval(4*l.cfg.RetryInterval), backoff.WithMaxElapsedTime(l.cfg.GiveUpAfter))
	lease, err := backoff.RetryNotifyWithData(func() (*Lease, error) {
		lease, err := l.TryAcquire(ctx, name)
		switch {
		case err == nil, errors.Is(err, ErrHeld):
			return lease, err // held: wait and try again
		case errors.Is(err, ErrInvalidName), errors.Is(err, nats.ErrPermissionViolation), ctx.Err() != nil:
			return nil, backoff.Permanent(err) // a missing right does not come with waiting
		}
		return nil, err // a transient failure: try again
	}, backoff.WithContext(b, ctx), func(err error, wait time.Duration) {
		l.log.Info("lock busy, waiting", "lock", name, "wait", wait.Round(time.Millisecond), "reason", err)
	})
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
	}
	return lease, err
}

// TryAcquire makes one attempt: it returns ErrHeld at once if the lock is taken.
func (l *Locker) TryAcquire(ctx context.Context, name string) (*Lease, error) {
	key, err := Key(name)
	if err != nil {
		return nil, err
	}
	// now keeps its monotonic reading: the lease's bookkeeping must not
	// move when the wall clock is stepped. Only the stored value is UTC.
	now := time.Now()
	wall := now.UTC()
	info := Info{Name: name, Owner: l.cfg.Owner, AcquiredAt: wall, RefreshedAt: wall, ExpiresAt: wall.Add(l.cfg.Lease)}
	val, _ := json.Marshal(info)
	rev, err := l.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		if holder, herr := l.holder(ctx, key); herr == nil {
			return nil, fmt.Errorf("%w: %q by %s (token %d) until %s", ErrHeld, name, holder.Owner, holder.Token, holder.ExpiresAt.Format(time.RFC3339))
		}
		return nil, fmt.Errorf("%w: %q", ErrHeld, name)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: acquire %q: %w", name, err)
	}
	info.Token = rev
	lease := &Lease{l: l, name: name, key: key, info: info, rev: rev, refreshed: now,
		lost: make(chan struct{}), stop: make(chan struct{})}
	lease.wg.Go(lease.refreshLoop)
	l.log.Debug("lock acquired", "lock", name, "token", rev)
	return lease, nil
}

func (l *Locker) holder(ctx context.Context, key string) (Info, error) {
	e, err := l.kv.Get(ctx, key)
	if err != nil {
		return Info{}, err
	}
	var info Info
	if err := json.Unmarshal(e.Value(), &info); err != nil {
		return Info{}, fmt.Errorf("lock: value of %s: %w", key, err)
	}
	if info.Token == 0 {
		info.Token = e.Revision() // the first value is written before its revision is known
	}
	info.Revision = e.Revision()
	return info, nil
}

// List returns the locks currently held.
func (l *Locker) List(ctx context.Context) ([]Info, error) {
	lister, err := l.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock: list: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out []Info
	for key := range lister.Keys() {
		info, err := l.holder(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // released or expired since listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// ForceRelease removes a lock whose holder is known to be dead, for an
// operator who does not want to wait out a long lease. It deletes the lock
// only if it is still at revision, the one the operator saw (Info.Revision
// from List or Holder): a live holder refreshes, which changes the
// revision, and a new holder has a new one, so neither is removed by
// mistake. Otherwise it returns an error wrapping ErrChanged that names the
// current holder. A removed holder, if alive after all, notices at its next
// refresh (its Lost channel closes).
func (l *Locker) ForceRelease(ctx context.Context, name string, revision uint64) error {
	key, err := Key(name)
	if err != nil {
		return err
	}
	err = l.kv.Delete(ctx, key, jetstream.LastRevision(revision))
	if err == nil {
		l.log.Warn("lock force-released", "lock", name, "revision", revision)
		return nil
	}
	if !isWrongLastSeq(err) {
		return fmt.Errorf("lock: force release %q: %w", name, err)
	}
	cur, herr := l.holder(ctx, key)
	if errors.Is(herr, jetstream.ErrKeyNotFound) || errors.Is(herr, jetstream.ErrKeyDeleted) {
		return fmt.Errorf("%w: %q", ErrNotHeld, name)
	}
	if herr != nil {
		return fmt.Errorf("%w: %q is no longer at revision %d (%v)", ErrChanged, name, revision, herr)
	}
	what := "refreshed by its holder, which is alive"
	if cur.Token > revision {
		what = "taken by a new holder"
	}
	return fmt.Errorf("%w: %q was %s since revision %d: now %s (token %d, revision %d, until %s); nothing was removed",
		ErrChanged, name, what, revision, cur.Owner, cur.Token, cur.Revision, cur.ExpiresAt.Format(time.RFC3339))
}

// Holder returns the current holder of the named lock, or an error
// wrapping ErrNotHeld if it is free.
func (l *Locker) Holder(ctx context.Context, name string) (Info, error) {
	key, err := Key(name)
	if err != nil {
		return Info{}, err
	}
	info, err := l.holder(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Info{}, fmt.Errorf("%w: %q", ErrNotHeld, name)
	}
	if err != nil {
		return Info{}, fmt.Errorf("lock: read %q: %w", name, err)
	}
	return info, nil
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Lease is a held lock. It refreshes itself in the background at a third
// of the lease until Release. If it cannot refresh in time, Lost closes
// Config.Margin before the lease could expire on the server, and the holder
// must stop its work; Lost also closes as soon as a refresh finds that
// another holder has the lock or that it was force-released.
//
// All lease bookkeeping uses the monotonic clock: stepping the wall clock
// neither shortens nor stretches what the holder believes it has.
type Lease struct {
	l    *Locker
	name string
	key  string
	info Info

	// mu guards these three; it is never held across a call to the
	// server, so that Valid, StopBy and Expiry answer at once while a
	// refresh waits on a partitioned link. Only the refresh loop writes rev
	// and refreshed.
	mu        sync.Mutex
	rev       uint64
	refreshed time.Time // when the last successful refresh (or the acquire) was sent; monotonic
	released  bool

	lost     chan struct{}
	lostOnce sync.Once
	stop     chan struct{}
	wg       sync.WaitGroup
}

// Token is the fencing token: the KV revision at which this lease was
// acquired. It grows with every new holder of any lock in the bucket, so a
// write stamped with an older token can be recognised as stale.
func (ls *Lease) Token() uint64 { return ls.info.Token }

// Name is the lock's name.
func (ls *Lease) Name() string { return ls.name }

// Lost is closed when the lease is lost: it could not be refreshed and is
// within Config.Margin of expiring, another holder took it, or it was
// force-released.
func (ls *Lease) Lost() <-chan struct{} { return ls.lost }

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

// Forfeit gives the lease up as lost (Lost closes) when its holder learns
// by other means that it no longer holds the lock: the lock's value names
// another holder, or is gone. It does not touch the lock.
func (ls *Lease) Forfeit(reason string) { ls.markLost(reason, nil) }

func (ls *Lease) markLost(reason string, err error) {
	ls.lostOnce.Do(func() {
		ls.l.log.Warn("lock lost", "lock", ls.name, "token", ls.info.Token, "reason", reason, "err", err)
		close(ls.lost)
	})
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
	released, refreshed, rev := ls.released, ls.refreshed, ls.rev
	ls.mu.Unlock()
	if released {
		return false
	}
	stopBy := refreshed.Add(ls.l.cfg.Lease - ls.l.cfg.Margin)
	if !time.Now().Before(stopBy) {
		ls.markLost("lease not refreshed in time", nil)
		return false
	}
	if time.Since(refreshed) < ls.l.cfg.Lease/3 {
		return true // woken early (e.g. a timer that fired late); not due yet
	}
	ctx, cancel := context.WithDeadline(context.Background(), stopBy)
	defer cancel()
	now := time.Now()
	info := ls.info
	info.RefreshedAt, info.ExpiresAt = now.UTC(), now.UTC().Add(ls.l.cfg.Lease)
	val, _ := json.Marshal(info)
	newRev, err := ls.l.kv.Update(ctx, ls.key, val, rev)
	if err == nil {
		ls.mu.Lock()
		ls.rev, ls.refreshed = newRev, now
		ls.mu.Unlock()
		return true
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		// On a replicated bucket a stale-revision answer can be spurious
		// (an update whose ack we lost, or code 10164 right after create).
		// The value decides: still our token means still our lease.
		e, gerr := ls.l.kv.Get(ctx, ls.key)
		if gerr == nil {
			var cur Info
			if json.Unmarshal(e.Value(), &cur) == nil && (cur.Token == ls.info.Token || e.Revision() == ls.info.Token) {
				ls.mu.Lock()
				ls.rev = e.Revision()
				ls.mu.Unlock()
				return true // retry the update at the next tick
			}
			ls.markLost("another holder has the lock", err)
			return false
		}
		if errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted) {
			ls.markLost("lock expired or was force-released", err)
			return false
		}
	}
	ls.l.log.Warn("lock refresh failed, retrying", "lock", ls.name, "stopBy", time.Until(stopBy).Round(time.Millisecond), "err", err)
	return true
}

// Release stops refreshing and deletes the lock if this lease still holds
// it, so the next runner need not wait out the lease. Releasing a lost
// lease returns ErrNotHeld (after deleting the lock if it is, after all,
// still at this lease's revision); releasing twice is a no-op.
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
	ls.mu.Unlock()
	// Delete only if the lock is still at our revision: never another's.
	// A leader election answers with silence for seconds; retrying within
	// the lease spares the next runner from waiting it out.
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(ls.l.cfg.Lease)), ctx)
	err := backoff.Retry(func() error {
		err := ls.l.kv.Delete(ctx, ls.key, jetstream.LastRevision(rev))
		if isWrongLastSeq(err) {
			// The lock moved since our last known revision. An earlier
			// attempt that landed unanswered (gone is done), or a refresh
			// we gave up on that landed late (still our token: delete at
			// its revision), are ours; anything else is another holder.
			cur, herr := ls.l.holder(ctx, ls.key)
			switch {
			case errors.Is(herr, jetstream.ErrKeyNotFound) || errors.Is(herr, jetstream.ErrKeyDeleted):
				return nil
			case herr == nil && cur.Token == ls.info.Token && cur.Revision != rev:
				rev = cur.Revision
				return err // try again at the current revision
			}
		}
		if err != nil && (ctx.Err() != nil || !transient(err)) {
			return backoff.Permanent(err)
		}
		return err
	}, b)
	select {
	case <-ls.lost:
		return fmt.Errorf("%w: %q was lost before release", ErrNotHeld, ls.name)
	default:
	}
	if err != nil {
		if isWrongLastSeq(err) {
			return fmt.Errorf("%w: %q is held by another owner now", ErrNotHeld, ls.name)
		}
		return fmt.Errorf("lock: release %q: %w", ls.name, err)
	}
	ls.l.log.Debug("lock released", "lock", ls.name, "token", ls.info.Token)
	return nil
}

// Key maps a lock name (a pipeline) to a KV key. KV keys allow only
// [-/_=.A-Za-z0-9]; letters, digits, '-' and '_' pass unchanged and every
// other byte becomes =XX (hex), so distinct names never share a key.
func Key(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty lock name", ErrInvalidName)
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String(), nil
}
