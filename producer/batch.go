package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// Batch publishes many events without waiting for each acknowledgement in
// turn, for fleets that emit events in bulk (imports, backfills, replays
// from another system).
//
// Each event is placed in its change's chain like Publish places it:
// after the change's newest message as the batch knows it — read from the
// stream the first time the batch meets the change, then the batch's own
// previous event of it — and published expecting that message's sequence.
// An event's place names the sequence of the one before it, which is
// known only once that one is acknowledged: so events of one change go out
// one at a time (Add waits for the change's previous acknowledgement),
// while events of different changes are in flight together. Another writer
// on one of the batch's changes makes that change's next event fail with
// ErrConflict (named by Wait).
//
// A Batch is not safe for concurrent use.
type Batch struct {
	p       *Producer
	pending []pending
	// heads holds, per subject, the newest message the batch knows of: its
	// own last event there once acknowledged, or what it read. last is the
	// index in pending of the subject's newest event not yet settled.
	heads map[string]Head
	last  map[string]int
}

// pending is an event sent and not yet settled.
type pending struct {
	e      events.Event // as placed
	after  Head         // what it was placed after
	hash   string
	future jetstream.PubAckFuture
	err    error // set when the publish could not even be sent
	seq    uint64
	done   bool
}

// NewBatch starts an empty batch.
func (p *Producer) NewBatch() *Batch {
	return &Batch{p: p, heads: map[string]Head{}, last: map[string]int{}}
}

// Add places e after its change's newest message as the batch knows it
// (waiting for the acknowledgement of the batch's previous event of the
// change, or reading the change's newest message from the stream the first
// time), validates it and sends it, its error output fitted to the limits
// as Publish does. It returns an error for an invalid event or a change
// whose newest message cannot be read; send failures are reported (and
// retried) by Wait.
func (b *Batch) Add(ctx context.Context, e events.Event) error {
	subject := b.p.Subject(e.Pipeline, e.ChangeID)
	if i, ok := b.last[subject]; ok {
		b.settle(ctx, i)
	}
	head, known := b.heads[subject]
	if !known {
		_, h, err := b.p.Last(ctx, e.Pipeline, e.ChangeID)
		if err != nil && h.Seq == 0 && !errors.Is(err, ErrNoEvents) {
			return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: read the change's newest message: %w", e.Type, e.ID, e.ChangeID, e.Pipeline, err)
		}
		head = h
	}
	if e.SchemaVersion >= events.ChainVersion {
		e.PrevSeq, e.PrevHash, e.Position = head.Seq, head.Hash, head.Position+1
	} else if head.Seq != 0 {
		e.PrevHash = head.Hash
	}
	data, err := b.p.encode(e)
	if err != nil {
		return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", e.Type, e.ID, e.ChangeID, e.Pipeline, err)
	}
	msg := b.p.message(e, data)
	f, err := b.p.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(b.p.cfg.Stream.Name),
		jetstream.WithExpectLastSequencePerSubject(head.Seq))
	b.pending = append(b.pending, pending{e: e, after: head, hash: events.Hash(data), future: f, err: err})
	b.last[subject] = len(b.pending) - 1
	b.heads[subject] = head // until the event is settled, its change waits on it
	return nil
}

// settle waits for pending event i's acknowledgement. An event whose
// asynchronous publish failed is published again synchronously, with
// Publish's retries, at the same place; the message id makes that safe
// if the first attempt did land. It records the change's new head.
func (b *Batch) settle(ctx context.Context, i int) {
	pe := &b.pending[i]
	if pe.done {
		return
	}
	pe.done = true
	err := pe.err
	if err == nil {
		select {
		case ack := <-pe.future.Ok():
			pe.seq = ack.Sequence
		case err = <-pe.future.Err():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil && ctx.Err() == nil {
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || temporary(apiErr) || isWrongLastSeq(err) { // a glitch, or a refusal to confirm
			var h Head
			h, err = b.p.Publish(ctx, pe.e, After(pe.after))
			pe.seq = h.Seq
		}
	}
	pe.err = err
	subject := b.p.Subject(pe.e.Pipeline, pe.e.ChangeID)
	if b.last[subject] != i {
		return
	}
	delete(b.last, subject)
	if err != nil {
		delete(b.heads, subject) // read it again next time
		return
	}
	b.heads[subject] = Head{Seq: pe.seq, Hash: pe.hash, Position: pe.e.Position}
}

// Len is the number of events added since the last Wait.
func (b *Batch) Len() int { return len(b.pending) }

// Wait waits for every acknowledgement and returns the stream sequence of
// each event, in the order added (see settle). Events that still fail
// have sequence 0 and are named in the returned error. The batch is empty
// afterwards and can be reused; it keeps what it knows of its changes.
func (b *Batch) Wait(ctx context.Context) ([]uint64, error) {
	seqs := make([]uint64, len(b.pending))
	var errs []error
	for i := range b.pending {
		b.settle(ctx, i)
		if ctx.Err() != nil {
			return seqs, fmt.Errorf("producer: batch: %w", ctx.Err())
		}
		seqs[i] = b.pending[i].seq
		if err := b.pending[i].err; err != nil {
			errs = append(errs, fmt.Errorf("event %s: %w", b.pending[i].e.ID, err))
		}
	}
	b.pending = b.pending[:0]
	clear(b.last)
	if len(errs) > 0 {
		return seqs, fmt.Errorf("producer: batch: %d of %d events not published: %w", len(errs), len(seqs), errors.Join(errs...))
	}
	return seqs, nil
}
