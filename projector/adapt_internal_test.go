package projector

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimiterAdapts: failures halve the writers allowed down to one, quick
// writes raise them one at a time up to the workers, and no more writers
// than the limit ever write at once.
func TestLimiterAdapts(t *testing.T) {
	l := newLimiter(8, 400*time.Millisecond) // quick: under 100ms
	for _, want := range []int{4, 2, 1, 1} {
		if !l.acquire(context.Background()) {
			t.Fatal("acquire failed")
		}
		l.release(time.Second, true)
		if got := l.current(); got != want {
			t.Fatalf("after a failure: limit %d, want %d", got, want)
		}
	}
	for want := 2; want <= 8; want++ {
		l.acquire(context.Background())
		l.release(time.Millisecond, false)
		if got := l.current(); got != want {
			t.Fatalf("after a quick write: limit %d, want %d", got, want)
		}
	}
	l.acquire(context.Background())
	l.release(200*time.Millisecond, false) // neither quick nor failed
	if got := l.current(); got != 8 {
		t.Fatalf("after a slow success: limit %d, want 8", got)
	}
	// Two failures: 2 writers at most, whatever the callers.
	for range 2 {
		l.acquire(context.Background())
		l.release(time.Second, true)
	}
	var active, peak atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			l.acquire(context.Background())
			n := active.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			active.Add(-1)
			l.release(200*time.Millisecond, false)
		})
	}
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Fatalf("%d writers at once with a limit of 2", p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.acquire(ctx)
	l.acquire(ctx)
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if l.acquire(ctx) {
		t.Fatal("acquire past the limit returned true after its context ended")
	}
}
