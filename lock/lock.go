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
	"github.com/auditflow/auditflow/trust"
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
	// TokenFloor, with CreateBucket, is asked when New creates the bucket
	// for the highest fencing token handed out before (the highest lock
	// token recorded on the audit stream): the new bucket's tokens start
	// above it, so that they never go backwards for a target that fences
	// on them, even after the bucket was deleted. A floor above 0 means
	// the bucket existed and was deleted: New then waits a lease (Lease)
	// before creating it, so that no lock is taken while a holder of the
	// deleted bucket may still act, and asks for the floor again. nil: 0.
	TokenFloor func(ctx context.Context) (uint64, error)
	// Signer, if set, signs the release record a lease writes when its
	// holder releases it (Lease.Release), so that lockers with a trust
	// list take the lock at once after it.
	Signer *trust.Signer
	// Trust, if set, is whom a release record must be signed by for the
	// next holder to take the lock without waiting: a key the list trusts
	// for the pipeline, as runner or operator. Anyone with the rights to
	// a lock's key can write a value that says "released"; with a trust
	// list, only a holder with a trusted key can end a lock early. Without
	// one (nil), unsigned release records are believed.
	Trust  *trust.List
	Logger *slog.Logger // nil discards
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
	js      jetstream.JetStream
	nc      *nats.Conn
	stream  jetstream.Stream // the bucket's, KV_<bucket>
	created time.Time        // the bucket's creation, by the server's clock
	cfg     Config
	log     *slog.Logger

	// released maps a key to the revision of the release record this
	// locker wrote on it last: the next acquisition expects it, and so
	// takes a lock it released itself in one request.
	released sync.Map

	kvMu sync.Mutex
	kv   jetstream.KeyValue // for List, opened on first use
}

// New opens the lock bucket; it creates a missing one only with
// Config.CreateBucket, and otherwise fails with an error wrapping
// ErrNoBucket that says how to create it. A bucket that allows rollups,
// purges or message deletes is refused (ErrUnsafeBucket, naming auditflow
// init), or with Config.CreateBucket made to refuse them in place.
// Transient failures (a cluster electing a leader answers with no
// responders or not at all) are retried for up to Config.RetryFor; a
// missing right fails at once with an error naming the denied subject
// (wrapping nats.ErrPermissionViolation).
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
	s, err := backoff.RetryNotifyWithData(func() (jetstream.Stream, error) {
		s, err := natsperm.Do(ctx, js.Conn(), natsperm.JetStream, func(ctx context.Context) (jetstream.Stream, error) {
			return openBucket(ctx, js, &cfg, log)
		})
		if err != nil && (ctx.Err() != nil || !transient(err)) {
			return nil, backoff.Permanent(err)
		}
		return s, err
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
	return &Locker{js: js, nc: js.Conn(), stream: s, created: s.CachedInfo().Created, cfg: cfg, log: log}, nil
}

// transient reports whether a failure may pass if tried again: no answer
// or no responders (a leader election, a reconnect), as opposed to a
// decision the server made or a configuration error.
func transient(err error) bool {
	if errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrNoBucket) || errors.Is(err, ErrUnsafeBucket) || errors.Is(err, nats.ErrPermissionViolation) {
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
// ErrHeld that names the holder. Like TryAcquire, it returns a lock taken
// over from a removed holder only once that holder's lease has run out.
func (l *Locker) Acquire(ctx context.Context, name string) (*Lease, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(l.cfg.RetryInterval), backoff.WithMultiplier(1.5),
		backoff.WithMaxInterval(4*l.cfg.RetryInterval), backoff.WithMaxElapsedTime(l.cfg.GiveUpAfter))
	lease, err := backoff.RetryNotifyWithData(func() (*Lease, error) {
		lease, err := l.TryAcquire(ctx, name)
		switch {
		case err == nil, errors.Is(err, ErrHeld):
			return lease, err // held: wait and try again
		case errors.Is(err, ErrInvalidName), errors.Is(err, ErrUnsafeBucket), errors.Is(err, nats.ErrPermissionViolation), ctx.Err() != nil:
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

// TryAcquire makes one attempt: it returns ErrHeld at once if a holder has
// the lock.
//
// A lock whose previous holder did not release it itself — its key was
// deleted or purged, it was force-released, or it carries a release
// record that is not believed (unsigned or wrongly signed with a trust
// list configured, or a copy) — may still be used by that holder: a holder
// cut off from NATS acts until its lease runs out, which nothing but the
// holder can shorten. TryAcquire then takes the lock, so that nobody else
// does, and returns only once that lease has run out: a lease after the
// removal, by the server's clock, which bounds the holder's last refresh
// (refreshing meanwhile, and logging why and until when at Info). (A
// bucket deleted and created again is not used before its old holders
// have stopped either: see Config.TokenFloor.) The wait is at most a lease;
// ctx ends it (the lock is then left as a removal, so the next holder
// waits too). A lock released by its holder, expired, or never taken is
// returned at once.
func (l *Locker) TryAcquire(ctx context.Context, name string) (*Lease, error) {
	key, err := Key(name)
	if err != nil {
		return nil, err
	}
	// now keeps its monotonic reading: the lease's bookkeeping must not
	// move when the wall clock is stepped. Only the stored value is UTC.
	// It is read before the write, so it is no later than the server's.
	now := time.Now()
	wall := now.UTC()
	rec := record{Name: name, Owner: l.cfg.Owner, ID: newID(), AcquiredAt: wall, RefreshedAt: wall, ExpiresAt: wall.Add(l.cfg.Lease)}
	var rev uint64
	var prev entry
	err = l.guard(ctx, key, func(ctx context.Context) (err error) {
		rev, prev, err = l.take(ctx, name, key, &rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	rec.Token = rev
	lease := &Lease{l: l, name: name, key: key, rec: rec, rev: rev, refreshed: now,
		lost: make(chan struct{}), stop: make(chan struct{})}
	lease.wg.Go(lease.refreshLoop)
	if err := lease.settle(ctx, prev); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.Lease/3)
		_ = lease.Release(rctx)
		cancel()
		return nil, err
	}
	l.log.Debug("lock acquired", "lock", name, "token", rev)
	return lease, nil
}

// take writes rec on key unless a holder has it, and returns its revision
// and what it replaced. The write is conditional on the key's last
// revision: the one this locker's own release left (one request), else
// what a read finds. A refusal is read again before it counts: on a
// replicated bucket it can be spurious, or answer a write that landed.
// Over a removal, rec records it (rec.Over).
func (l *Locker) take(ctx context.Context, name, key string, rec *record) (uint64, entry, error) {
	prev := entry{state: stateFree}
	if r, ok := l.released.Load(key); ok {
		prev = entry{state: stateReleased, rev: r.(uint64)}
	}
	val, _ := json.Marshal(rec)
	rev, err := l.put(ctx, key, val, nil, prev.rev)
	for range 2 {
		if !isWrongLastSeq(err) {
			break
		}
		cur, rerr := l.read(ctx, key)
		if rerr != nil {
			return 0, prev, fmt.Errorf("lock: acquire %q: %w", name, rerr)
		}
		if cur.state == stateHeld {
			if cur.rec.ID == rec.ID {
				return cur.rev, prev, nil // this attempt's write landed
			}
			return 0, prev, heldError(name, cur)
		}
		if cur.state == stateRemoved || rec.Over != nil {
			rec.Over = nil
			if cur.state == stateRemoved {
				rec.Over = &takeover{Rev: cur.rev, At: cur.at, What: cur.what, By: cur.by, Forced: cur.forced}
			}
			val, _ = json.Marshal(rec)
		}
		prev = cur
		rev, err = l.put(ctx, key, val, nil, cur.rev)
	}
	l.released.Delete(key)
	if isWrongLastSeq(err) {
		return 0, prev, fmt.Errorf("%w: %q: another runner took it at the same moment", ErrHeld, name)
	}
	if err != nil {
		return 0, prev, fmt.Errorf("lock: acquire %q: %w", name, err)
	}
	return rev, prev, nil
}

// List returns the locks currently held.
func (l *Locker) List(ctx context.Context) ([]Info, error) {
	kv, err := l.keyValue(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock: list: %w", err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock: list: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out []Info
	err = l.guard(ctx, "", func(ctx context.Context) error {
		for key := range lister.Keys() {
			e, err := l.read(ctx, key)
			if err != nil {
				return err
			}
			if e.state == stateHeld { // not released, removed or expired since listed
				out = append(out, e.info(key))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lock: list: %w", err)
	}
	return out, nil
}

func (l *Locker) keyValue(ctx context.Context) (jetstream.KeyValue, error) {
	l.kvMu.Lock()
	defer l.kvMu.Unlock()
	if l.kv == nil {
		kv, err := l.js.KeyValue(ctx, l.cfg.Bucket)
		if err != nil {
			return nil, err
		}
		l.kv = kv
	}
	return l.kv, nil
}

// ForceRelease removes a lock, for an operator. It deletes the lock only
// if it is still at revision, the one the operator saw (Info.Revision from
// List or Holder): a live holder refreshes, which changes the revision,
// and a new holder has a new one, so neither is removed by mistake.
// Otherwise it returns an error wrapping ErrChanged that names the current
// holder. The removal records Config.Owner as who released it.
//
// It does not hand the lock over early: the holder, if alive after all
// (paused, or cut off from NATS), may act until its lease runs out, so the
// next holder waits until a lease after the removal (see TryAcquire). A
// removed holder that is alive notices at its next refresh (its Lost
// channel closes; LostCause says force-released, and by whom).
func (l *Locker) ForceRelease(ctx context.Context, name string, revision uint64) error {
	key, err := Key(name)
	if err != nil {
		return err
	}
	var cur entry
	var herr error
	err = l.guard(ctx, key, func(ctx context.Context) error {
		err := l.remove(ctx, key, revision, l.cfg.Owner)
		if isWrongLastSeq(err) {
			cur, herr = l.read(ctx, key)
		}
		return err
	})
	if err == nil {
		l.log.Warn("lock force-released", "lock", name, "revision", revision)
		return nil
	}
	if !isWrongLastSeq(err) {
		return fmt.Errorf("lock: force release %q: %w", name, err)
	}
	if herr != nil {
		return fmt.Errorf("%w: %q is no longer at revision %d (%v)", ErrChanged, name, revision, herr)
	}
	if cur.state != stateHeld {
		return fmt.Errorf("%w: %q", ErrNotHeld, name)
	}
	what := "refreshed by its holder, which is alive"
	if cur.rec.Token > revision {
		what = "taken by a new holder"
	}
	return fmt.Errorf("%w: %q was %s since revision %d: now %s (token %d, revision %d, until %s); nothing was removed",
		ErrChanged, name, what, revision, cur.rec.Owner, cur.rec.Token, cur.rev, cur.rec.ExpiresAt.Format(time.RFC3339))
}

// IdleWatch is how long ForceReleaseIdle watches a holder: a refresh
// interval (a third of the lease), in which a live holder refreshes at
// least once, and a little more for the refresh to arrive.
func (l *Locker) IdleWatch() time.Duration {
	return l.cfg.Lease/3 + max(l.cfg.Lease/10, 250*time.Millisecond)
}

// ForceReleaseIdle removes the named lock if its holder does not refresh
// it while watched for IdleWatch, and returns the holder it removed. A
// holder that refreshes is alive and is not removed: the error wraps
// ErrChanged and names it (owner, token, revision). A free lock is
// ErrNotHeld. See ForceRelease for what the removal does.
func (l *Locker) ForceReleaseIdle(ctx context.Context, name string) (Info, error) {
	seen, err := l.Holder(ctx, name)
	if err != nil {
		return Info{}, err
	}
	poll := min(max(l.cfg.Lease/20, 50*time.Millisecond), 500*time.Millisecond)
	t := time.NewTicker(poll)
	defer t.Stop()
	for deadline := time.Now().Add(l.IdleWatch()); time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return seen, ctx.Err()
		case <-t.C:
		}
		cur, err := l.Holder(ctx, name)
		if errors.Is(err, ErrNotHeld) {
			return seen, fmt.Errorf("%w: %q was released or removed while watched", ErrNotHeld, name)
		}
		if err != nil {
			return seen, err
		}
		if cur.Revision != seen.Revision {
			what := "is alive: it refreshed the lock"
			if cur.Token != seen.Token {
				what = "was replaced by a new holder"
			}
			return cur, fmt.Errorf("%w: the holder of %q, %s (token %d, revision %d), %s while watched for %s (now %s, token %d, revision %d); nothing was removed",
				ErrChanged, name, seen.Owner, seen.Token, seen.Revision, what, l.IdleWatch().Round(time.Millisecond), cur.Owner, cur.Token, cur.Revision)
		}
	}
	return seen, l.ForceRelease(ctx, name, seen.Revision)
}

// Holder returns the current holder of the named lock, or an error
// wrapping ErrNotHeld if it is free (never taken, expired, released or
// removed).
func (l *Locker) Holder(ctx context.Context, name string) (Info, error) {
	key, err := Key(name)
	if err != nil {
		return Info{}, err
	}
	var e entry
	err = l.guard(ctx, key, func(ctx context.Context) (err error) {
		e, err = l.read(ctx, key)
		return err
	})
	if err != nil {
		return Info{}, fmt.Errorf("lock: read %q: %w", name, err)
	}
	if e.state != stateHeld {
		return Info{}, fmt.Errorf("%w: %q", ErrNotHeld, name)
	}
	return e.info(key), nil
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
