package projector

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
)

// Each event is judged against the message right before it on its
// change's subject (events.CheckChain), and the verdict is stored with it
// (stores.Record.Chain): an event out of its chain — a copy of an earlier
// event published again, a fork, a downgrade — opens its change's issue
// as OUT_OF_CHAIN whatever it claims.
//
// A reader that sees the stream in order knows each subject's previous
// message without asking: chainTracker remembers each subject's newest
// message over a run of messages read without a gap. A consumer delivers
// every message once in stream order (consumer sequences without a hole,
// first deliveries), so within such a run the newest message a subject had
// is the one before the next; a run that began at the stream's first
// message also knows that a subject not seen has none. Anything else — the
// first message of a subject after a restart, a hole in the consumer's
// sequence (another process sharing the consumer took some), a
// redelivery — is asked of the stream (producer.Before).

// chainTracker follows each subject's chain over a run of messages read
// in stream order without a gap. It is not safe for concurrent use.
type chainTracker struct {
	run       uint64
	fromStart bool // the run began at the stream's first message
	last      map[string]tracked
}

type tracked struct {
	prev events.Prev
	run  uint64
}

// maxTracked bounds the subjects remembered: past it they are all
// forgotten and a new run begins (each is asked of the stream when it
// comes back).
const maxTracked = 200_000

// restart begins a new run: what was remembered may have missed messages.
// fromStart says the run begins at the stream's first message.
func (t *chainTracker) restart(fromStart bool) {
	t.run++
	t.fromStart = fromStart
}

// next records self, the next message of the run, as its subject's newest
// and returns the message before it on the subject if the run knows it.
func (t *chainTracker) next(subject string, self events.Prev) (events.Prev, bool) {
	if t.last == nil {
		t.last = map[string]tracked{}
	}
	if len(t.last) >= maxTracked {
		t.last = map[string]tracked{}
		t.restart(false)
	}
	old, seen := t.last[subject]
	t.last[subject] = tracked{prev: self, run: t.run}
	switch {
	case seen && old.run == t.run:
		return old.prev, true
	case t.fromStart && t.run == 1:
		return events.Prev{}, true // the first run read everything: nothing before
	}
	return events.Prev{}, false
}

// lookupFunc finds what precedes seq on subject on the stream.
type lookupFunc func(ctx context.Context, subject string, seq uint64) (events.Prev, error)

// streamLookup asks the stream (producer.Before), opening it on first use.
func streamLookup(js jetstream.JetStream, stream, prefix string) lookupFunc {
	var mu sync.Mutex
	var s jetstream.Stream
	return func(ctx context.Context, subject string, seq uint64) (events.Prev, error) {
		mu.Lock()
		if s == nil {
			var err error
			if s, err = js.Stream(ctx, stream); err != nil {
				mu.Unlock()
				return events.Prev{}, fmt.Errorf("stream %s: %w", stream, err)
			}
		}
		h := s
		mu.Unlock()
		return producer.Before(ctx, js, h, prefix, subject, seq)
	}
}

// lookupAll runs the lookups for the records at idx (whose predecessors
// the tracker did not know), a few at a time, and sets their verdicts. It
// returns, per index, why a record got none (a lookup that failed, or ctx
// ended first): such a record must not be stored yet.
func lookupAll(ctx context.Context, lookup lookupFunc, subjects []string, recs []*stores.Record, idx []int) map[int]error {
	const parallel = 8
	var mu sync.Mutex
	done := make(map[int]bool, len(idx))
	failed := map[int]error{}
	_ = stores.Parallel(ctx, parallel, len(idx), func(ctx context.Context, k int) error {
		i := idx[k]
		prev, err := lookup(ctx, subjects[i], recs[i].Seq)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed[i] = err
			return nil
		}
		recs[i].Chain, done[i] = stores.ChainOf(recs[i].Event, prev), true
		return nil
	})
	for _, i := range idx {
		if _, ok := failed[i]; !ok && !done[i] {
			failed[i] = context.Cause(ctx)
		}
	}
	return failed
}

// placeAll sets the chain verdict of every record among outcomes (the
// judged deliveries of one fetch, in delivery order): from the tracker
// where it knows the predecessor, else from the stream. It returns, by
// index, why a record could not be placed: it goes back to the stream for
// later, since storing it without its verdict would show it believed.
func (p *Projector) placeAll(ctx context.Context, ds []delivery, outcomes []decision) map[int]error {
	var need []int
	for i, d := range ds {
		cons, first := d.consumerSeq, d.delivered == 1
		if p.lastCons == 0 || cons != p.lastCons+1 {
			// The process's first delivery, or a hole: another process
			// sharing the consumer took messages, or some were lost on
			// the way and come back later.
			p.chain.restart(p.lastCons == 0 && first && d.seq == 1)
		}
		p.lastCons = cons
		v := &outcomes[i]
		known := false
		if first { // a redelivery comes after its successors: ask the stream
			var prev events.Prev
			if prev, known = p.chain.next(d.msg.Subject(), v.self); known && v.outcome == outStore {
				v.rec.Chain = stores.ChainOf(v.rec.Event, prev)
			}
		}
		if !known && v.outcome == outStore {
			need = append(need, i)
		}
	}
	if len(need) == 0 {
		return nil
	}
	subjects := make([]string, len(ds))
	recs := make([]*stores.Record, len(ds))
	for _, i := range need {
		subjects[i], recs[i] = ds[i].msg.Subject(), &outcomes[i].rec
	}
	return lookupAll(ctx, p.lookup, subjects, recs, need)
}

// unplaced hands a record whose predecessor could not be read back to the
// stream, with a growing delay, and says so now and then.
func (p *Projector) unplaced(d delivery, err error) {
	p.lookupFailures.Add(1)
	delay := growingDelay(d.delivered, busyNakMin, p.cfg.AckWait)
	p.settle(d.msg, func() error { return d.msg.NakWithDelay(delay) })
	if p.chainLog.allow(10 * time.Second) {
		p.log.Warn("could not read what precedes an event on its subject to judge its chain; it goes back to the stream for later",
			"seq", d.seq, "subject", d.msg.Subject(), "err", err, "failuresSoFar", p.lookupFailures.Load())
	}
}

// watchChain counts and logs an event out of its chain (see chain.go). Like
// an untrusted event it is an issue in the store, not an outage.
func (p *Projector) watchChain(r stores.Record) {
	if r.Chain == "" {
		return
	}
	p.outOfChain.Add(1)
	p.log.Error("event out of its change's chain (a copy of an earlier event published again, a fork or a downgrade): stored as OUT_OF_CHAIN, its change's issue is open until an operator resolves it",
		"seq", r.Seq, "pipeline", r.Pipeline, "change", r.ChangeID, "type", r.Type, "id", r.ID, "problem", r.Chain, "signer", r.Signer)
}

// chainItem is one message read, for the chains: its subject, what it is
// as a predecessor, and the index of its record in the batch (-1 if it is
// not stored).
type chainItem struct {
	subject string
	self    events.Prev
	rec     int
}

// scanChain places the records a Scan reads — in stream order, without a
// gap, from a first sequence — in their chains.
type scanChain struct {
	t      chainTracker
	lookup lookupFunc
}

func newScanChain(lookup lookupFunc, from uint64) *scanChain {
	c := &scanChain{lookup: lookup}
	c.t.restart(from <= 1)
	return c
}

// place sets the chain verdicts of recs, given every message of the batch
// read (items, in order): from what the scan has read, else (the first
// message of a subject when the scan began past the stream's start) from
// the stream.
func (c *scanChain) place(ctx context.Context, items []chainItem, recs []stores.Record) error {
	var need []int
	ptrs := make([]*stores.Record, len(items))
	subjects := make([]string, len(items))
	for i, it := range items {
		prev, known := c.t.next(it.subject, it.self)
		if it.rec < 0 {
			continue
		}
		if known {
			recs[it.rec].Chain = stores.ChainOf(recs[it.rec].Event, prev)
			continue
		}
		need = append(need, i)
		ptrs[i], subjects[i] = &recs[it.rec], it.subject
	}
	for i, err := range lookupAll(ctx, c.lookup, subjects, ptrs, need) {
		return fmt.Errorf("what precedes sequence %d on %s: %w", ptrs[i].Seq, subjects[i], err)
	}
	return nil
}
