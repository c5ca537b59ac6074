package timeflag_test

import (
	"errors"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/timeflag"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Time // zero: refused
	}{
		{"24h", now.Add(-24 * time.Hour)},
		{" 90m ", now.Add(-90 * time.Minute)},
		{"0s", now},
		{"2026-11-29T10:00:00Z", time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)},
		{"2026-12-07T13:00:00+01:00", time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)},
		{"-5m", time.Time{}},
		{"2027-01-01T00:00:00Z", time.Time{}}, // the future
		{"yesterday", time.Time{}},
		{"24", time.Time{}},
		{"", time.Time{}},
	} {
		v, err := timeflag.ParseSince(c.in, now)
		switch {
		case c.want.IsZero() && !errors.Is(err, timeflag.ErrInvalid):
			t.Errorf("%q: %v, %v; want ErrInvalid", c.in, v, err)
		case !c.want.IsZero() && (err != nil || !v.At(now).Equal(c.want)):
			t.Errorf("%q: %v, %v; want %v", c.in, v.At(now), err, c.want)
		}
	}
	// Parse alone takes a time in the future (an until).
	if _, err := timeflag.Parse("2027-01-01T00:00:00Z"); err != nil {
		t.Fatal(err)
	}
}
