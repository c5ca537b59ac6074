package lock

import "errors"

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
	// ErrInvalidConfig: a Config value is not allowed, or disagrees with
	// the existing bucket.
	ErrInvalidConfig = errors.New("lock: invalid config")
)
