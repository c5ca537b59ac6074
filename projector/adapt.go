package projector

import (
	"context"
	"sync"
	"time"
)

// A slow store is not hammered: store writes pass a limiter whose limit
// — how many workers may write at once — adapts to the store, additive
// increase and multiplicative decrease, as TCP does with its window. A
// write that fails or times out halves it (down to one writer); a write
// quicker than a quarter of WriteTimeout raises it by one (up to
// Workers). So a store that slows down (an overloaded MongoDB, FerretDB
// with its small connection pool, a throttled DynamoDB table) soon sees
// one writer at a time instead of every worker retrying at once, and a
// healthy one keeps every worker busy. The limit is the gauge
// auditflow_projector_write_concurrency.
type limiter struct {
	mu      sync.Mutex
	cond    *sync.Cond
	limit   int // writers allowed now, 1..max
	max     int
	active  int
	fastest time.Duration // a write quicker than this raises the limit
}

func newLimiter(workers int, writeTimeout time.Duration) *limiter {
	l := &limiter{limit: workers, max: workers, fastest: writeTimeout / 4}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// acquire waits for a writer's slot, or until ctx ends (then it reports
// false and takes none).
func (l *limiter) acquire(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.active >= l.limit {
		if ctx.Err() != nil {
			return false
		}
		l.cond.Wait()
	}
	l.active++
	return true
}

// release gives the slot back, adapting the limit to how the write went.
func (l *limiter) release(took time.Duration, failed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.active--
	switch {
	case failed:
		l.limit = max(1, l.limit/2)
	case took < l.fastest && l.limit < l.max:
		l.limit++
	}
	l.cond.Broadcast()
}

// current is the limit now.
func (l *limiter) current() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}
