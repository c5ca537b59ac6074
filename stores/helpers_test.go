package stores_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/auditflow/auditflow/stores"
)

func TestParallel(t *testing.T) {
	var ran, inFlight, peak atomic.Int32
	err := stores.Parallel(context.Background(), 3, 50, func(ctx context.Context, i int) error {
		n := inFlight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		defer inFlight.Add(-1)
		ran.Add(1)
		return nil
	})
	if err != nil || ran.Load() != 50 || peak.Load() > 3 {
		t.Fatalf("err %v, ran %d, peak %d", err, ran.Load(), peak.Load())
	}
	boom := errors.New("boom")
	err = stores.Parallel(context.Background(), 2, 100, func(ctx context.Context, i int) error {
		if i == 5 {
			return boom
		}
		return ctx.Err()
	})
	if !errors.Is(err, boom) {
		t.Fatalf("first error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := stores.Parallel(ctx, 2, 10, func(context.Context, int) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled = %v", err)
	}
	if err := stores.Parallel(context.Background(), 2, 0, func(context.Context, int) error { return errors.New("called") }); err != nil {
		t.Fatalf("no calls = %v", err)
	}
}
