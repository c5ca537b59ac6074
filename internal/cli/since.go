package cli

import (
	"time"

	"github.com/auditflow/auditflow/internal/timeflag"
)

// sinceFlag is a --since value: a duration back from now (24h, 90m) or an
// RFC 3339 time (2026-11-29T10:00:00Z), read by timeflag as the console's
// API reads its since and until. Negative durations and times in the
// future are refused: they select nothing, silently.
type sinceFlag struct{ v timeflag.Value }

func (s *sinceFlag) String() string { return s.v.Text }
func (s *sinceFlag) Type() string   { return "duration|time" }

func (s *sinceFlag) Set(text string) error {
	v, err := timeflag.ParseSince(text, time.Now())
	if err != nil {
		return err
	}
	s.v = v
	return nil
}

// set reports whether a window was given (a zero duration means none).
func (s *sinceFlag) set() bool { return s.v.Duration > 0 || !s.v.Time.IsZero() }

// from is the start of the window, relative to now for a duration.
func (s *sinceFlag) from(now time.Time) time.Time { return s.v.At(now) }

// describe says the window in words, for tables.
func (s *sinceFlag) describe() string {
	if !s.v.IsDuration() {
		return "since " + s.v.Time.UTC().Format(time.RFC3339)
	}
	return "last " + s.v.Duration.String()
}

// parseSince reads a --since given as text: timeflag.ParseSince.
func parseSince(s string, now time.Time) (time.Time, error) {
	v, err := timeflag.ParseSince(s, now)
	if err != nil {
		return time.Time{}, err
	}
	return v.At(now), nil
}
