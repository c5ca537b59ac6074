package lock

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors.
var (
	// ErrHeld: another owner holds the lock (after waiting, if Acquire).
	ErrHeld = errors.New("lock: held by another owner")
	// ErrNotHeld: the lease was lost, or the lock is not held at all.
	ErrNotHeld = errors.New("lock: not held")
	// ErrInvalidName: the lock name cannot be used.
	ErrInvalidName = errors.New("lock: invalid name")
	// ErrChanged: ForceRelease found the lock at another revision than the
	// one it was asked to remove (its holder refreshed it, or a new holder
	// took it); nothing was removed.
	ErrChanged = errors.New("lock: changed since it was read")
	// ErrNoBucket: the lock bucket does not exist and Config.CreateBucket
	// is not set.
	ErrNoBucket = errors.New("lock: the lock bucket does not exist")
	// ErrUnsafeBucket: the lock bucket lets a client remove locks other
	// than its own (it allows rollups, purges or message deletes), and
	// Config.CreateBucket is not set to make it refuse them.
	ErrUnsafeBucket = errors.New("lock: the lock bucket lets clients remove every lock")
	// ErrInvalidConfig: a Config value is not allowed, or disagrees with
	// the existing bucket.
	ErrInvalidConfig = errors.New("lock: invalid config")
)

// LostKind says why a lease was lost.
type LostKind string

// Kinds of loss.
const (
	// LostRanOut: the holder could not refresh the lease in time (paused,
	// partitioned, the server or the bucket unreachable); the lease was
	// given up Config.Margin before the server could drop the lock.
	LostRanOut LostKind = "ran out"
	// LostDeleted: the lock's key was deleted or purged by someone other
	// than its holder, or replaced by a release record its holder did not
	// write, or the key's entries are gone while the lease was still valid
	// (the bucket was deleted and created again).
	LostDeleted LostKind = "deleted"
	// LostForceReleased: an operator removed the lock (lock release
	// --force, Locker.ForceRelease); LostError.By names who, as recorded.
	LostForceReleased LostKind = "force-released"
	// LostTaken: another holder's value is on the lock's key
	// (LostError.By and OtherToken name it).
	LostTaken LostKind = "taken"
	// LostForfeited: the holder gave the lease up itself (Lease.Forfeit).
	LostForfeited LostKind = "forfeited"
)

// LostError is why a lease was lost (Lease.LostCause). It wraps
// ErrNotHeld, and the failure that revealed the loss, if any.
type LostError struct {
	Kind  LostKind
	Lock  string // the lock's name
	Token uint64 // the lost lease's fencing token
	// By is who removed the lock (LostForceReleased) or the other holder
	// (LostTaken), as the value or the removal recorded it: informative
	// only, since anyone with the right to write the key can write it.
	By string
	// OtherToken is the other holder's fencing token (LostTaken).
	OtherToken uint64
	// At is when the server stored the removal or the other holder's
	// value, by the server's clock; zero if unknown.
	At time.Time
	// Detail says more: Forfeit's reason, why a release record was not
	// believed, or what was found on the key.
	Detail string
	// Err is the failure that revealed the loss (the refused refresh, or
	// the last failed one), if any.
	Err error
}

func (e *LostError) Error() string {
	msg := fmt.Sprintf("lock: lease of %q (token %d) lost: the lock %s", e.Lock, e.Token, e.Why())
	if e.Err != nil {
		msg += " (" + e.Err.Error() + ")"
	}
	return msg
}

// Why says, for people, what happened to the lock, to follow "the lock"
// (or "the pipeline lock"): "was not refreshed in time (its lease ran
// out)", "was deleted by someone other than its holder", "was
// force-released by …", "was taken by … (token N)", "was given up by its
// holder", with when the server stored it and any detail.
func (e *LostError) Why() string {
	var msg string
	switch e.Kind {
	case LostRanOut:
		msg = "was not refreshed in time (its lease ran out)"
	case LostDeleted:
		msg = "was deleted by someone other than its holder"
	case LostForceReleased:
		msg = "was force-released"
		if e.By != "" {
			msg += " by " + e.By
		}
	case LostTaken:
		msg = fmt.Sprintf("was taken by %s (token %d)", e.By, e.OtherToken)
	case LostForfeited:
		msg = "was given up by its holder"
	default:
		msg = "was lost: " + string(e.Kind)
	}
	if !e.At.IsZero() {
		msg += " at " + e.At.UTC().Format(time.RFC3339)
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Unwrap returns ErrNotHeld and the failure that revealed the loss.
func (e *LostError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrNotHeld}
	}
	return []error{ErrNotHeld, e.Err}
}
