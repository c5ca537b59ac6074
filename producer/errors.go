package producer

import "errors"

// Sentinel errors.
var (
	// ErrConflict: another writer published an event for the change after
	// the sequence this publish expected. The caller's view of the change is
	// stale; re-read it before deciding again.
	ErrConflict = errors.New("producer: change was updated concurrently")
	// ErrNoEvents: the change has no events on the stream.
	ErrNoEvents = errors.New("producer: change has no events")
	// ErrStreamMismatch: the stream exists with a configuration that differs
	// from the one asked for.
	ErrStreamMismatch = errors.New("producer: existing stream has a different configuration")
	// ErrInvalidConfig: a Config or StreamConfig value is not allowed.
	ErrInvalidConfig = errors.New("producer: invalid config")
)
