package cli

import (
	"fmt"
	"strings"
	"time"
)

// sinceFlag is a --since value: a duration back from now (24h, 90m) or an
// RFC 3339 time (2026-11-29T10:00:00Z). Negative durations and times in
// the future are refused: they select nothing, silently.
type sinceFlag struct {
	text string
	d    time.Duration // set for a duration
	t    time.Time     // set for a time
}

func (s *sinceFlag) String() string { return s.text }
func (s *sinceFlag) Type() string   { return "duration|time" }

func (s *sinceFlag) Set(v string) error {
	v = strings.TrimSpace(v)
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return fmt.Errorf("%q is negative: give how long back, e.g. 5m", v)
		}
		*s = sinceFlag{text: v, d: d}
		return nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return fmt.Errorf("%q: want a duration (24h, 90m) or an RFC 3339 time (2026-11-29T10:00:00Z)", v)
	}
	if t.After(time.Now().Add(time.Minute)) {
		return fmt.Errorf("%q is in the future", v)
	}
	*s = sinceFlag{text: v, t: t}
	return nil
}

// set reports whether a window was given (a zero duration means none).
func (s *sinceFlag) set() bool { return s.d > 0 || !s.t.IsZero() }

// from is the start of the window, relative to now for a duration.
func (s *sinceFlag) from(now time.Time) time.Time {
	if !s.t.IsZero() {
		return s.t
	}
	return now.Add(-s.d)
}

// describe says the window in words, for tables.
func (s *sinceFlag) describe() string {
	if !s.t.IsZero() {
		return "since " + s.t.UTC().Format(time.RFC3339)
	}
	return "last " + s.d.String()
}
