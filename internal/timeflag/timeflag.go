package timeflag

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalid: the text is neither a duration nor an RFC 3339 time, or
// names a moment that selects nothing (a negative duration, a start in
// the future).
var ErrInvalid = errors.New("invalid time")

// Syntax says what is accepted, for messages.
const Syntax = "a duration back from now (24h, 90m) or an RFC 3339 time (2026-11-29T10:00:00Z)"

// Value is a parsed time: a duration back from the moment it is read at,
// or a fixed time.
type Value struct {
	Text     string
	Duration time.Duration // set for a duration (≥ 0)
	Time     time.Time     // set for a time
}

// IsDuration reports whether v is a duration back from now.
func (v Value) IsDuration() bool { return v.Time.IsZero() }

// At is the moment v names, relative to now for a duration.
func (v Value) At(now time.Time) time.Time {
	if !v.Time.IsZero() {
		return v.Time
	}
	return now.Add(-v.Duration)
}

// Parse reads s: a duration back from now, which may not be negative (it
// would point into the future), or an RFC 3339 time.
func Parse(s string) (Value, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return Value{}, fmt.Errorf("%w: %q is negative: give how long back, e.g. 24h", ErrInvalid, s)
		}
		return Value{Text: s, Duration: d}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return Value{}, fmt.Errorf("%w: %q: want %s", ErrInvalid, s, Syntax)
	}
	return Value{Text: s, Time: t}, nil
}

// skew is how far in the future a start may be before it is refused:
// clocks differ a little between machines.
const skew = time.Minute

// ParseSince reads the start of a window: as Parse, and a time in the
// future is refused, since it selects nothing.
func ParseSince(s string, now time.Time) (Value, error) {
	v, err := Parse(s)
	if err != nil {
		return v, err
	}
	if v.Time.After(now.Add(skew)) {
		return Value{}, fmt.Errorf("%w: %q is in the future", ErrInvalid, s)
	}
	return v, nil
}
