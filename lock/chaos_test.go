package lock_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
)

var (
	chaosFor  = flag.Duration("lock.chaos", 0, "how long TestChaosPartitionedClients runs (default 15s, 4s with -short); longer makes it a soak")
	chaosSeed = flag.Uint64("lock.seed", 0, "seed of TestChaosPartitionedClients' choices (default: random, printed)")
)

// The chaos test's lock: a short lease so that many leases are lost and
// taken over within a run, long enough for a loaded 2-core machine.
const (
	chaosLease   = time.Second
	chaosClients = 5
	chaosLock    = "chaos"
)

// TestChaosPartitionedClients checks the guarantee the lock sells — at no
// moment do two holders both believe they hold the lock, and fencing
// tokens grow with every new holder — against real partitions. Several
// clients, each with its own connection through its own partition proxy
// to one server, loop: acquire (one try, or waiting a little), hold for a
// random time (often longer than the lease), release. Meanwhile random
// clients, the holder most often, are cut off for random times, some
// shorter and some longer than the lease.
//
// Every client records, on this process's monotonic clock, the interval
// in which it believed it held the lock: from Acquire's return until the
// earliest of its Release call, the moment it saw Lost closed, and the
// lease's final StopBy (what Valid compares against; read after Release,
// when refreshing has stopped, so no later refresh can move it). It also
// calls Valid() every 5 ms while holding, and the interval stretches to
// the return of any Valid() that said true: the holder believes what
// Valid() tells it when it returns. The assertions, and the bugs each
// would catch:
//
//   - No two intervals overlap (max concurrent believers 1). Catches a
//     holder that keeps believing past its lease: no Lost on failed
//     refreshes, a StopBy not before the server's expiry (e.g. refreshed
//     stamped when the reply arrives rather than when the update was
//     sent, which a cut after the update reached the server exposes), a
//     Release that deletes another's lock (a healed, stale holder frees
//     the lock under the current holder and a third client takes it), or
//     an acquire that is not exclusive. TestChaosCheckerCatchesNaiveBeliever
//     shows it firing on a believer that ignores Lost and StopBy.
//   - A Valid() that said true was called before the interval's end.
//     Catches Valid disagreeing with Lost/StopBy (true after Lost closed
//     or past StopBy), which would make the overlap check vacuous.
//   - No Valid() call takes longer than Margin: it must answer from
//     memory. It did not: the lease's mutex was held across a refresh, so
//     during a partition Valid waited for the refresh (about 0.4 lease)
//     and then said true, past StopBy, from the time it read before
//     waiting (see TestValidAnswersWhileARefreshWaits).
//   - In order of their intervals, tokens strictly increase (and every
//     acquisition's token is unique). Catches a token that is not the
//     acquire revision (a per-client counter, the latest refresh's
//     revision read at the wrong time). A lease whose belief interval is
//     empty (a reply held by a partition until its lease was already past
//     StopBy) is left out: it was never valid, and its token may be older
//     than a holder that came and went meanwhile.
//   - A Release that returned nil deleted its own lock: no later token
//     was acquired before it was called. Catches Release reporting
//     success for a lock it no longer held.
//   - The operation history (acquire → token, release → ok or not) is
//     linearizable against a model of the lock as the server keeps it,
//     lease expiry included (lockModel): what the clients were told, not
//     what they believed.
//   - Progress: the lock was acquired many times, clients were cut off,
//     leases were lost to partitions and taken over, and a holder that
//     ignored Lost would have overlapped another (the naive history is
//     checked too): the run exercised the dangerous case.
//
// What it cannot catch: Margin set to (almost) zero. The server keeps a
// lock for at least Lease after the refresh that the holder timed its
// StopBy from (and here expires it 100–300 ms late), so even with no
// margin the holder's belief ends before another can acquire; Margin buys
// the holder's work time to wind down after Lost, which belief intervals
// do not measure. For the same reason a belief a few milliseconds past
// StopBy would not show as an overlap, which is why Valid has checks of
// its own. Nor bookkeeping on the wall clock: the clock is not stepped
// here (TestLostBeforeExpiry checks Expiry carries a monotonic reading).
func TestChaosPartitionedClients(t *testing.T) {
	run := *chaosFor
	if run == 0 {
		run = 15 * time.Second
		if testing.Short() {
			run = 4 * time.Second
		}
	}
	seed := *chaosSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (-lock.seed), running %s (-lock.chaos), lease %s, %d clients", seed, run, chaosLease, chaosClients)
	master := rand.New(rand.NewPCG(seed, 0))

	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	clients := make([]*chaosClient, chaosClients)
	for i := range clients {
		clients[i] = newChaosClient(t, srv.ClientURL(), fmt.Sprintf("c%d", i), rand.New(rand.NewPCG(seed, uint64(i+1))))
	}
	rec := &recorder{t0: time.Now()}
	var holder atomic.Pointer[holding] // a hint for the chaos

	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { chaos(ctx, clients, &holder, master, rec) })
	for i, c := range clients {
		wg.Go(func() { c.loop(ctx, i, &holder, rec) })
	}
	wg.Wait()
	wall := time.Since(rec.t0)

	believed := beliefs(rec.holds, func(h hold) time.Time { return h.believedUntil() })
	naive := beliefs(rec.holds, func(h hold) time.Time { return h.release })
	for _, o := range overlaps(believed, rec.t0) {
		t.Errorf("two believers at once: %s", o)
	}
	for _, v := range tokenOrder(believed, rec.holds, rec.t0) {
		t.Errorf("fencing tokens: %s", v)
	}
	var slowestValid time.Duration
	for _, h := range rec.holds {
		if !h.validCalled.IsZero() && !h.validCalled.Before(h.end()) {
			t.Errorf("%s (token %d): Valid() called at %s said true, after its belief ended at %s",
				h.client, h.token, rel(rec.t0, h.validCalled), rel(rec.t0, h.end()))
		}
		if margin := chaosLease / 4; h.slowestValid > margin {
			t.Errorf("%s (token %d): a Valid() call took %s, longer than the margin %s: it answered for a moment long past",
				h.client, h.token, h.slowestValid.Round(time.Millisecond), margin)
		}
		slowestValid = max(slowestValid, h.slowestValid)
		if h.releaseErr != nil {
			continue
		}
		for _, o := range rec.holds {
			if o.token > h.token && o.start.Before(h.release) {
				t.Errorf("%s (token %d): Release at %s succeeded, but %s acquired token %d at %s",
					h.client, h.token, rel(rec.t0, h.release), o.client, o.token, rel(rec.t0, o.start))
			}
		}
	}

	lin := checkLinearizable(t, rec.holds, rec.t0, chaosLease)
	if lin == porcupine.Unknown {
		t.Log("linearizability: porcupine timed out, history unchecked")
	}

	st := rec.stats(believed, naive, chaosLease)
	t.Logf("%s in %s: %d acquisitions (%d by TryAcquire), %d attempts refused as held, %d failed otherwise; "+
		"%d partitions (%d longer than the lease); %d leases lost, %d of them while cut off; %d taken over from a cut-off holder; "+
		"%d never valid (reply held past StopBy); slowest Valid() %s; max concurrent believers %d; overlaps %d; a holder ignoring Lost would have overlapped %d times; linearizable: %s",
		t.Name(), wall.Round(time.Millisecond), len(rec.holds), rec.tries, rec.held, rec.failed,
		len(rec.cuts), st.longCuts, st.lost, st.lostWhileCut, st.takeovers, st.stillborn, slowestValid, st.maxBelievers, len(overlaps(believed, rec.t0)), st.naiveOverlaps, lin)
	if st.maxBelievers > 1 {
		t.Errorf("max concurrent believers %d", st.maxBelievers)
	}
	// Progress: too little happening would make the checks above vacuous.
	perSec := float64(len(rec.holds)) / run.Seconds()
	switch {
	case perSec < 0.5:
		t.Errorf("only %d acquisitions in %s", len(rec.holds), run)
	case len(rec.cuts) < int(run/time.Second):
		t.Errorf("only %d partitions in %s", len(rec.cuts), run)
	case run >= 10*time.Second && st.lostWhileCut == 0:
		t.Error("no lease was lost to a partition")
	case run >= 10*time.Second && st.naiveOverlaps == 0:
		t.Error("no holder was cut off past its lease while another took over: the run did not exercise the dangerous case")
	}
	if t.Failed() {
		t.Logf("history (ms since start):\n%s", rec.dump())
	}
}

// chaosClient is one lock client with its own connection through its own
// partition.
type chaosClient struct {
	name   string
	part   *natstest.Partition
	locker *lock.Locker
	rng    *rand.Rand // only the client's goroutine uses it
	cut    atomic.Bool
}

func newChaosClient(t *testing.T, url, name string, rng *rand.Rand) *chaosClient {
	t.Helper()
	part := natstest.NewPartition(t, url)
	_, js := natstest.ConnectURL(t, part.URL(), nats.Name(name))
	l, err := lock.New(context.Background(), js, lock.Config{
		CreateBucket: true, Owner: name, Lease: chaosLease, RetryInterval: 50 * time.Millisecond, GiveUpAfter: time.Second,
		Logger: slog.New(warnings{natstest.Logger(t).Handler()}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &chaosClient{name: name, part: part, locker: l, rng: rng}
}

// warnings passes on warnings and errors only: lost leases and failed
// refreshes, not every acquire.
type warnings struct{ slog.Handler }

func (w warnings) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}
func (w warnings) WithAttrs(as []slog.Attr) slog.Handler { return warnings{w.Handler.WithAttrs(as)} }
func (w warnings) WithGroup(g string) slog.Handler       { return warnings{w.Handler.WithGroup(g)} }

// holding is what the chaos knows of the current holder: who, and until
// when it means to hold.
type holding struct {
	client int
	until  time.Time
}

// loop acquires, holds and releases until ctx ends.
func (c *chaosClient) loop(ctx context.Context, id int, holder *atomic.Pointer[holding], rec *recorder) {
	for ctx.Err() == nil {
		try := c.rng.IntN(2) == 0
		called := time.Now()
		var lease *lock.Lease
		var err error
		if try {
			actx, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
			lease, err = c.locker.TryAcquire(actx, chaosLock)
			cancel()
		} else {
			actx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			lease, err = c.locker.Acquire(actx, chaosLock)
			cancel()
		}
		start := time.Now()
		if err != nil {
			rec.attempt(err)
			sleep(ctx, time.Duration(10+c.rng.IntN(90))*time.Millisecond)
			continue
		}
		// Mostly short holds; often longer than the lease, so that a
		// partition of the holder outlasts its lease while it still holds.
		holdFor := time.Duration(20+c.rng.IntN(280)) * time.Millisecond
		if c.rng.IntN(3) == 0 {
			holdFor = chaosLease*6/5 + time.Duration(c.rng.Int64N(int64(chaosLease*13/10)))
		}
		cur := &holding{client: id, until: start.Add(holdFor)}
		holder.Store(cur)
		timer := time.NewTimer(holdFor)
		h := holdLease(ctx, c.name, lease, called, start, timer.C)
		timer.Stop()
		h.try = try
		holder.CompareAndSwap(cur, nil)
		rec.add(h)
	}
}

// holdLease holds a lease until ctx ends or until fires, watching Lost and
// sampling Valid(), then releases it, and returns what happened. It keeps
// holding after Lost closes, so that the history also shows what a
// holder that ignored Lost would have believed (until its Release).
func holdLease(ctx context.Context, client string, lease *lock.Lease, called, start time.Time, until <-chan time.Time) hold {
	h := hold{client: client, token: lease.Token(), called: called, start: start}
	h.sampleValid(lease)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	lost := lease.Lost()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-until:
			break wait
		case <-lost:
			h.lostAt, lost = time.Now(), nil
		case <-tick.C:
			h.sampleValid(lease)
		}
	}
	h.release = time.Now()
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	h.releaseErr = lease.Release(rctx)
	h.released = time.Now()
	cancel()
	h.stopBy = lease.StopBy() // final: Release has stopped the refreshing
	return h
}

// sampleValid calls Valid and notes when, and how long it took.
func (h *hold) sampleValid(lease *lock.Lease) {
	called := time.Now()
	valid := lease.Valid()
	returned := time.Now()
	h.slowestValid = max(h.slowestValid, returned.Sub(called))
	if valid {
		h.validCalled, h.validReturned = called, returned
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// chaos cuts random clients off for random times until ctx ends, then
// heals them all. Partitions of the holder are the interesting ones, so
// it mostly picks the holder; one that means to hold on well past a lease
// from now it mostly cuts off for longer than the lease: the case where a
// holder that ignored Lost would overlap the next.
func chaos(ctx context.Context, clients []*chaosClient, holder *atomic.Pointer[holding], rng *rand.Rand, rec *recorder) {
	type cutOff struct {
		c      *chaosClient
		healAt time.Time
		idx    int
	}
	var active []cutOff
	heal := func(a cutOff) {
		a.c.part.Heal()
		a.c.cut.Store(false)
		rec.healed(a.idx, time.Now())
	}
	next := time.Now().Add(time.Duration(100+rng.IntN(300)) * time.Millisecond)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, a := range active {
				heal(a)
			}
			return
		case <-tick.C:
		}
		now := time.Now()
		active = slices.DeleteFunc(active, func(a cutOff) bool {
			if now.Before(a.healAt) {
				return false
			}
			heal(a)
			return true
		})
		if now.Before(next) || len(active) >= len(clients)/2 {
			continue
		}
		var c *chaosClient
		long := rng.IntN(2) == 0
		h := holder.Load()
		switch free := slices.DeleteFunc(slices.Clone(clients), func(c *chaosClient) bool { return c.cut.Load() }); {
		case h != nil && !clients[h.client].cut.Load() && h.until.Sub(now) > chaosLease+400*time.Millisecond && rng.IntN(4) < 3:
			c, long = clients[h.client], true
		case h != nil && !clients[h.client].cut.Load() && rng.IntN(2) == 0:
			c = clients[h.client]
		case len(free) > 0:
			c = free[rng.IntN(len(free))]
		default:
			continue
		}
		d := time.Duration(30+rng.IntN(int(chaosLease*3/4/time.Millisecond))) * time.Millisecond
		if long {
			d = chaosLease*6/5 + time.Duration(rng.Int64N(int64(chaosLease*13/10)))
		}
		c.cut.Store(true)
		c.part.Cut()
		active = append(active, cutOff{c: c, healAt: now.Add(d), idx: rec.cutOff(c.name, time.Now(), d)})
		next = now.Add(time.Duration(150+rng.IntN(500)) * time.Millisecond)
	}
}

// hold is one successful acquisition as its client lived it. All times
// are readings of this process's monotonic clock.
type hold struct {
	client string
	try    bool // TryAcquire, not Acquire
	token  uint64
	called time.Time // Acquire or TryAcquire called
	start  time.Time // it returned the lease: belief starts
	lostAt time.Time // Lost seen closed before Release was called; zero if not
	// The latest Valid() that said true: when it was called and when it
	// returned (zero if none); and the longest any Valid() call took.
	validCalled, validReturned time.Time
	slowestValid               time.Duration
	release                    time.Time // Release called
	released                   time.Time // Release returned
	releaseErr                 error
	stopBy                     time.Time // the lease's final StopBy
}

// end is when the client stopped believing it held the lock.
func (h hold) end() time.Time {
	end := h.release
	if !h.lostAt.IsZero() && h.lostAt.Before(end) {
		end = h.lostAt
	}
	if h.stopBy.Before(end) {
		end = h.stopBy
	}
	return end
}

// believedUntil is end, or later if a Valid() that said true returned
// later: the holder believed what Valid() told it when it returned.
func (h hold) believedUntil() time.Time {
	if h.validReturned.After(h.end()) {
		return h.validReturned
	}
	return h.end()
}

// lost reports whether the lease ended by being lost, not released.
func (h hold) lost() bool { return h.end().Before(h.release) }

// partition is one cut of a client's link.
type partition struct {
	client   string
	from, to time.Time // to is zero until healed
	planned  time.Duration
}

type recorder struct {
	t0 time.Time

	mu                  sync.Mutex
	holds               []hold
	cuts                []partition
	tries, held, failed int
}

func (r *recorder) add(h hold) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holds = append(r.holds, h)
	if h.try {
		r.tries++
	}
}

func (r *recorder) attempt(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if errors.Is(err, lock.ErrHeld) {
		r.held++
	} else {
		r.failed++
	}
}

func (r *recorder) cutOff(client string, at time.Time, planned time.Duration) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cuts = append(r.cuts, partition{client: client, from: at, planned: planned})
	return len(r.cuts) - 1
}

func (r *recorder) healed(i int, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cuts[i].to = at
}

// wasCut reports whether client's link was cut at some moment in [from, to].
func (r *recorder) wasCut(client string, from, to time.Time) bool {
	for _, c := range r.cuts {
		if c.client == client && c.from.Before(to) && (c.to.IsZero() || c.to.After(from)) {
			return true
		}
	}
	return false
}

type chaosStats struct {
	longCuts, lost, lostWhileCut, takeovers, stillborn, maxBelievers, naiveOverlaps int
}

func (r *recorder) stats(believed, naive []belief, lease time.Duration) chaosStats {
	var s chaosStats
	for _, c := range r.cuts {
		if c.planned > lease {
			s.longCuts++
		}
	}
	for _, h := range r.holds {
		if !h.end().After(h.start) {
			s.stillborn++
			continue
		}
		if h.lost() {
			s.lost++
			if r.wasCut(h.client, h.called, h.end()) {
				s.lostWhileCut++
			}
		}
	}
	// A takeover: the next believer started while the previous one, which
	// lost its lease, was still cut off.
	byToken := map[uint64]hold{}
	for _, h := range r.holds {
		byToken[h.token] = h
	}
	for i := 1; i < len(believed); i++ {
		prev := byToken[believed[i-1].token]
		if prev.lost() && r.wasCut(prev.client, believed[i].start, believed[i].start) {
			s.takeovers++
		}
	}
	s.maxBelievers = maxBelievers(believed)
	s.naiveOverlaps = len(overlaps(naive, r.t0))
	return s
}

// dump lists the history, for a failure's log.
func (r *recorder) dump() string {
	type line struct {
		at time.Time
		s  string
	}
	var ls []line
	for _, h := range r.holds {
		ls = append(ls, line{h.start, fmt.Sprintf("%s acquired token %d (called %s), believed until %s (lost seen %s, stopBy %s, last Valid() true %s–%s), released %s: %v",
			h.client, h.token, rel(r.t0, h.called), rel(r.t0, h.believedUntil()), rel(r.t0, h.lostAt), rel(r.t0, h.stopBy),
			rel(r.t0, h.validCalled), rel(r.t0, h.validReturned), rel(r.t0, h.release), h.releaseErr)})
	}
	for _, c := range r.cuts {
		ls = append(ls, line{c.from, fmt.Sprintf("%s cut off for %s (healed %s)", c.client, c.planned.Round(time.Millisecond), rel(r.t0, c.to))})
	}
	slices.SortFunc(ls, func(a, b line) int { return a.at.Compare(b.at) })
	var out []byte
	for _, l := range ls {
		out = fmt.Appendf(out, "%s %s\n", rel(r.t0, l.at), l.s)
	}
	return string(out)
}

// rel formats t as milliseconds since t0 ("-" for zero).
func rel(t0, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(t.Sub(t0).Microseconds())/1000)
}

// belief is an interval in which one client believed it held the lock.
type belief struct {
	who        string
	token      uint64
	start, end time.Time
}

// beliefs returns the non-empty belief intervals of holds, ending each
// where end says, in order of their start.
func beliefs(holds []hold, end func(hold) time.Time) []belief {
	var out []belief
	for _, h := range holds {
		if e := end(h); e.After(h.start) {
			out = append(out, belief{who: h.client, token: h.token, start: h.start, end: e})
		}
	}
	slices.SortFunc(out, func(a, b belief) int { return a.start.Compare(b.start) })
	return out
}

// overlaps returns every pair of intervals (sorted by start) that share a
// moment, described precisely. Intervals are half-open: one may start
// exactly where another ends.
func overlaps(bs []belief, t0 time.Time) []string {
	var out []string
	for i, a := range bs {
		for _, b := range bs[i+1:] {
			if !b.start.Before(a.end) {
				break // sorted by start: no later one starts before a ends
			}
			out = append(out, fmt.Sprintf("%s (token %d) believed %s–%s and %s (token %d) believed %s–%s: both for %s",
				a.who, a.token, rel(t0, a.start), rel(t0, a.end), b.who, b.token, rel(t0, b.start), rel(t0, b.end),
				earliest(a.end, b.end).Sub(b.start).Round(time.Microsecond)))
		}
	}
	return out
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// maxBelievers is the largest number of intervals that share a moment.
func maxBelievers(bs []belief) int {
	type edge struct {
		at time.Time
		d  int
	}
	var es []edge
	for _, b := range bs {
		es = append(es, edge{b.start, 1}, edge{b.end, -1})
	}
	// At equal times ends come first: half-open intervals.
	slices.SortFunc(es, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	n, most := 0, 0
	for _, e := range es {
		n += e.d
		most = max(most, n)
	}
	return most
}

// tokenOrder returns the violations of the fencing order: tokens must
// strictly increase from one belief interval to the next, and no two
// acquisitions may share a token.
func tokenOrder(bs []belief, holds []hold, t0 time.Time) []string {
	var out []string
	for i := 1; i < len(bs); i++ {
		if a, b := bs[i-1], bs[i]; b.token <= a.token {
			out = append(out, fmt.Sprintf("%s took token %d at %s, after %s held token %d from %s",
				b.who, b.token, rel(t0, b.start), a.who, a.token, rel(t0, a.start)))
		}
	}
	seen := map[uint64]string{}
	for _, h := range holds {
		if other, ok := seen[h.token]; ok {
			out = append(out, fmt.Sprintf("token %d acquired by both %s and %s", h.token, other, h.client))
		}
		seen[h.token] = h.client
	}
	return out
}

// TestChaosCheckerCatchesNaiveBeliever is the negative control: the
// dangerous case played out on purpose, recorded as the chaos test
// records it. Holder a is cut off and keeps holding past its lease while
// b takes the lock over; a heals and releases only after b is done. Its
// real belief (ended by Lost/StopBy) must not overlap b's, and the
// checker must flag the belief of a holder that ignored Lost and StopBy
// and believed until its own Release.
func TestChaosCheckerCatchesNaiveBeliever(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	a := newChaosClient(t, srv.ClientURL(), "a", nil)
	b := newChaosClient(t, srv.ClientURL(), "b", nil)
	ctx := context.Background()
	t0 := time.Now()

	calledA := time.Now()
	la, err := a.locker.TryAcquire(ctx, chaosLock)
	if err != nil {
		t.Fatal(err)
	}
	startA := time.Now()
	aUntil := make(chan time.Time)
	var ha hold
	var wg sync.WaitGroup
	wg.Go(func() { ha = holdLease(ctx, "a", la, calledA, startA, aUntil) })
	stopA := sync.OnceFunc(func() { close(aUntil); wg.Wait() })
	defer stopA()
	a.part.Cut()

	deadline := time.Now().Add(3 * chaosLease)
	calledB := time.Now()
	var lb *lock.Lease
	for lb == nil {
		if lb, err = b.locker.TryAcquire(ctx, chaosLock); errors.Is(err, lock.ErrHeld) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		} else if err != nil {
			t.Fatalf("b never took over: %v", err)
		}
	}
	hb := holdLease(ctx, "b", lb, calledB, time.Now(), time.After(200*time.Millisecond))
	a.part.Heal()
	stopA()
	if !ha.lost() || hb.lost() {
		t.Fatalf("a lost %v (want true), b lost %v (want false)", ha.lost(), hb.lost())
	}

	holds := []hold{ha, hb}
	believed := beliefs(holds, func(h hold) time.Time { return h.believedUntil() })
	if o := overlaps(believed, t0); len(o) > 0 || maxBelievers(believed) != 1 {
		t.Errorf("real beliefs overlap: %v", o)
	}
	if v := tokenOrder(believed, holds, t0); len(v) > 0 {
		t.Errorf("tokens: %v", v)
	}
	naive := beliefs(holds, func(h hold) time.Time { return h.release })
	o := overlaps(naive, t0)
	if len(o) != 1 || maxBelievers(naive) != 2 {
		t.Fatalf("checker missed the naive believer: overlaps %v, max believers %d", o, maxBelievers(naive))
	}
	t.Logf("caught: %s", o[0])
	if res := checkLinearizable(t, holds, t0, chaosLease); res != porcupine.Ok {
		t.Errorf("linearizability: %s, want ok: the lock itself did nothing wrong", res)
	}
}

// TestChaosChecker pins the checker's edges on made-up histories.
func TestChaosChecker(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := func(who string, token uint64, from, to int) hold {
		return hold{client: who, token: token, start: at(from), release: at(to), stopBy: at(to + 1000)}
	}
	for _, tc := range []struct {
		name           string
		holds          []hold
		overlaps, most int
		tokenErrs      int
	}{
		{"disjoint", []hold{h("a", 1, 0, 10), h("b", 2, 20, 30)}, 0, 1, 0},
		{"touching", []hold{h("a", 1, 0, 10), h("b", 2, 10, 30)}, 0, 1, 0},
		{"overlapping", []hold{h("a", 1, 0, 11), h("b", 2, 10, 30)}, 1, 2, 0},
		{"nested", []hold{h("a", 1, 0, 100), h("b", 2, 10, 20), h("c", 3, 30, 40)}, 2, 2, 0},
		{"three at once", []hold{h("a", 1, 0, 100), h("b", 2, 10, 50), h("c", 3, 30, 40)}, 3, 3, 0},
		{"never valid is left out", []hold{h("a", 5, 0, 0), h("b", 2, 10, 20)}, 0, 1, 0},
		{"token goes back", []hold{h("a", 7, 0, 10), h("b", 3, 20, 30)}, 0, 1, 1},
		{"token shared", []hold{h("a", 7, 0, 10), h("b", 7, 20, 30)}, 0, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs := beliefs(tc.holds, func(h hold) time.Time { return h.end() })
			if o := overlaps(bs, t0); len(o) != tc.overlaps {
				t.Errorf("overlaps %q, want %d", o, tc.overlaps)
			}
			if m := maxBelievers(bs); m != tc.most {
				t.Errorf("max believers %d, want %d", m, tc.most)
			}
			if v := tokenOrder(bs, tc.holds, t0); len(v) != tc.tokenErrs {
				t.Errorf("token violations %q, want %d", v, tc.tokenErrs)
			}
		})
	}
}

// TestChaosLinearizabilityModel pins the lease model on made-up histories
// (lease 1s, times in ms): what it accepts and what it must reject.
func TestChaosLinearizabilityModel(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	notHeld := fmt.Errorf("%w: lost", lock.ErrNotHeld)
	// h: acquired by who with token, called at acq and returned 1ms later;
	// Release called at rel, returned 1ms later with err.
	h := func(who string, token uint64, acq, rel int, err error) hold {
		return hold{client: who, token: token, called: at(acq), start: at(acq + 1), release: at(rel), released: at(rel + 1), releaseErr: err}
	}
	for _, tc := range []struct {
		name  string
		holds []hold
		want  porcupine.CheckResult
	}{
		{"released, then taken", []hold{h("a", 1, 0, 100, nil), h("b", 2, 150, 300, nil)}, porcupine.Ok},
		{"taken after the lease", []hold{h("a", 1, 0, 2000, notHeld), h("b", 2, 1100, 1300, nil)}, porcupine.Ok},
		{"taken when a lost release may have deleted", []hold{h("a", 1, 0, 100, notHeld), h("b", 2, 200, 300, nil)}, porcupine.Ok},
		{"taken when a failed release may land later", []hold{h("a", 1, 0, 100, errors.New("timeout")), h("b", 2, 400, 500, nil)}, porcupine.Ok},
		{"taken within the lease, unreleased", []hold{h("a", 1, 0, 900, nil), h("b", 2, 500, 600, nil)}, porcupine.Illegal},
		{"taken within the lease, release still to come", []hold{h("a", 1, 0, 2000, notHeld), h("b", 2, 500, 600, nil)}, porcupine.Illegal},
		{"token goes back", []hold{h("a", 5, 0, 100, nil), h("b", 3, 200, 300, nil)}, porcupine.Illegal},
		{"released another's lock", []hold{h("a", 1, 0, 1600, nil), h("b", 2, 1100, 1300, nil)}, porcupine.Illegal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := porcupine.CheckOperations(lockModel(time.Second), operations(tc.holds, t0))
			if want := tc.want == porcupine.Ok; got != want {
				t.Errorf("linearizable = %v, want %v", got, want)
			}
		})
	}
}
