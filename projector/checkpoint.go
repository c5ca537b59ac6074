package projector

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/auditflow/auditflow/stores"
)

// The contiguous checkpoint.
//
// A store's checkpoint (stores.Batch.Through) must be a sequence at or
// below which every event is stored or deliberately not (dead-lettered).
// Batches of several workers and processes land in any order, so the
// highest sequence stored is not one: a worker's batch can be stored while
// an earlier one is still being written, is handed back to the stream, or
// is held for a newer projector. The projector proves its checkpoint from
// two sources:
//
//   - the consumer's ack floor on the server: every event at or below it
//     was acknowledged or terminated, and the projector acknowledges only
//     after the store write and terminates only after the dead letter is
//     written — by whichever process, on whichever gap in the stream;
//   - what this process has settled since: the sequences it stored or
//     dead-lettered above the floor, extending it while they are
//     contiguous.
//
// Each store write claims, as its Through, the floor as it would be with
// the batch's own events settled. A checkpoint loop reads the ack floor
// about once a second and records the floor in the store whenever it has
// passed what the writes claimed (a batch written while its neighbours
// were still in flight claims less than it could, and dead letters claim
// nothing), and once more when Run stops. A kill -9 therefore leaves the
// store's checkpoint at most about a second of progress behind the
// consumer's ack floor; New closes that gap at the next start (see
// Config.Rebuild).

// checkpointEvery is how often the checkpoint loop reads the ack floor and
// records progress; a variable so that tests can shorten it.
var checkpointEvery = time.Second

// progress is what this process can prove of its consumer's progress.
type progress struct {
	mu sync.Mutex
	// floor: every event at or below it is settled for good.
	floor uint64
	// done: sequences above floor settled by this process, as ascending,
	// disjoint, non-adjacent runs, none starting at floor+1.
	done []seqRun
	// recorded is the highest Through the store has accepted from this
	// process.
	recorded uint64
}

type seqRun struct{ lo, hi uint64 }

// raise moves the floor up to f (the consumer's ack floor, or a checkpoint
// the store holds).
func (g *progress) raise(f uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f <= g.floor {
		return
	}
	g.floor = f
	g.advance()
}

// finish records seqs as settled: stored or dead-lettered.
func (g *progress) finish(seqs ...uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range seqs {
		if s > g.floor {
			g.add(s)
		}
	}
	g.advance()
}

// add inserts s into done, merging runs.
func (g *progress) add(s uint64) {
	i, _ := slices.BinarySearchFunc(g.done, s, func(r seqRun, s uint64) int {
		switch {
		case r.hi < s:
			return -1
		case r.lo > s:
			return 1
		}
		return 0
	})
	if i < len(g.done) && g.done[i].lo <= s && s <= g.done[i].hi {
		return // already there
	}
	joinsPrev := i > 0 && g.done[i-1].hi+1 == s
	joinsNext := i < len(g.done) && g.done[i].lo == s+1
	switch {
	case joinsPrev && joinsNext:
		g.done[i-1].hi = g.done[i].hi
		g.done = slices.Delete(g.done, i, i+1)
	case joinsPrev:
		g.done[i-1].hi = s
	case joinsNext:
		g.done[i].lo = s
	default:
		g.done = slices.Insert(g.done, i, seqRun{s, s})
	}
}

// advance drops the runs the floor has reached and extends the floor over
// the one that starts right above it.
func (g *progress) advance() {
	n := 0
	for n < len(g.done) && g.done[n].lo <= g.floor+1 {
		g.floor = max(g.floor, g.done[n].hi)
		n++
	}
	g.done = slices.Delete(g.done, 0, n)
}

// through is the floor as it would be with seqs settled too: the
// checkpoint a batch of seqs may claim.
func (g *progress) through(seqs []uint64) uint64 {
	s := slices.Clone(seqs)
	slices.Sort(s)
	g.mu.Lock()
	defer g.mu.Unlock()
	f, i, j := g.floor, 0, 0
	for {
		switch {
		case i < len(g.done) && g.done[i].lo <= f+1:
			f = max(f, g.done[i].hi)
			i++
		case j < len(s) && s[j] <= f:
			j++
		case j < len(s) && s[j] == f+1:
			f++
			j++
		default:
			return f
		}
	}
}

// stored records that the store accepted a checkpoint of through.
func (g *progress) stored(through uint64) {
	g.mu.Lock()
	g.recorded = max(g.recorded, through)
	g.mu.Unlock()
}

// state returns the floor and the highest checkpoint recorded.
func (g *progress) state() (floor, recorded uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.floor, g.recorded
}

// checkpointLoop raises the floor to the consumer's ack floor and records
// it in the store, every checkpointEvery and when checkpointSoon asks,
// until ctx is done.
func (p *Projector) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// A changed consumer's ack floor proves nothing (consumer.go).
			if st, _, err := p.lag.get(); err == nil && len(st.drift) == 0 {
				p.progress.raise(st.ackFloor)
			}
		case <-p.checkpointKick:
		}
		p.recordCheckpoint(ctx)
	}
}

// checkpointSoon asks the checkpoint loop to record the floor now rather
// than at its next tick, when this process has nothing else in flight and
// the floor is past what the store holds: the last batch of a burst may
// claim less than it could (another worker's batch was still being
// written), and a quiet stream would otherwise show a checkpoint behind
// for a second. Under load the tick does it, so that it costs at most one
// extra store write a second.
func (p *Projector) checkpointSoon() {
	if p.inflight.len() > 0 {
		return
	}
	if floor, recorded := p.progress.state(); floor <= recorded {
		return
	}
	select {
	case p.checkpointKick <- struct{}{}:
	default:
	}
}

// finalCheckpoint reads the ack floor once more and records the floor: Run
// calls it when every loop has stopped.
func (p *Projector) finalCheckpoint(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
	defer cancel()
	if st, err := p.consumerState(ctx); err == nil && len(st.drift) == 0 {
		p.progress.raise(st.ackFloor)
	}
	p.recordCheckpoint(ctx)
}

// recordCheckpoint writes the floor to the store as the checkpoint if it
// is past what was recorded. A failure is logged; the next tick retries.
func (p *Projector) recordCheckpoint(ctx context.Context) {
	floor, recorded := p.progress.state()
	if floor <= recorded {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
	defer cancel()
	if err := p.store.Apply(wctx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: floor}); err != nil {
		if ctx.Err() == nil {
			p.log.Warn("recording the checkpoint failed; retrying", "checkpoint", floor, "err", err)
		}
		return
	}
	p.progress.stored(floor)
}

// seqsOf returns the stream sequences of recs.
func seqsOf(recs []stores.Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}
