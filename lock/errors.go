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
	// ErrInvalidConfig: a Config value is not allowed, or disagrees with
	// the existing bucket.
	ErrInvalidConfig = errors.New("lock: invalid config")
)
