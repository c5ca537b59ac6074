package stores

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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

// Parallel runs fn(ctx, 0) … fn(ctx, n-1) on at most limit goroutines and
// waits for all of them. The first error cancels the context the others
// see and is returned; if ctx ends before every call has started, its
// error is returned. Backends use it to keep several requests in flight.
func Parallel(ctx context.Context, limit, n int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next  atomic.Int64
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	for range min(n, max(limit, 1)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil && next.Load() < int64(n) {
		first = ctx.Err() // ended before every call had started
	}
	return first
}
