package stores

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ContextError returns err, made to wrap ctx.Err() if the context has
// ended. Drivers report cancellation in their own words ("interrupted",
// ErrRequestCanceled, a transport timeout); the contract promises callers
// errors.Is(err, context.Canceled) or context.DeadlineExceeded.
func ContextError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// TimeLayout is how stores that keep times as text write them: UTC with
// all nine fractional digits, fixed width, so text order is time order
// (range filters such as Since work on the text) and nanoseconds
// round-trip exactly.
const TimeLayout = "2006-01-02T15:04:05.000000000Z"

// FormatTime writes t in TimeLayout.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// ParseTime reads a time written by FormatTime.
func ParseTime(s string) (time.Time, error) { return time.Parse(TimeLayout, s) }
