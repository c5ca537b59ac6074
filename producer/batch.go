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
// An event's place names the sequence of the one before it, which is known
// only once that one is acknowledged: so an event whose change has one in
// flight is held back, and sent as soon as that acknowledgement arrives,
// while events of other changes go out meanwhile. Each change's events
// reach the stream in the order added; events of different changes may
// not. Another writer on one of the batch's changes makes that change's
// next event fail with ErrConflict (named by Wait).
//
// A Batch is not safe for concurrent use.
type Batch struct {
	p       *Producer
	pending []pending // every event added since the last Wait, in order
	// heads holds, per subject, the newest message the batch knows of: its
	// own last event there once acknowledged, or what it read.
	heads map[string]Head
	// inflight is, per subject, the index of its event sent and not yet
	// settled; held the indexes of its events waiting for it, in order.
	inflight map[string]int
	held     map[string][]int
	sent     []int // indexes sent and not yet settled, oldest first
}

// pending is one event added.
type pending struct {
	e       events.Event // as placed once sent
	subject string
	after   Head // what it was placed after
	hash    string
	future  jetstream.PubAckFuture
	err     error // set when it could not be sent, or failed for good
	seq     uint64
	sent    bool
	settled bool
}

// NewBatch starts an empty batch.
func (p *Producer) NewBatch() *Batch {
	return &Batch{p: p, heads: map[string]Head{}, inflight: map[string]int{}, held: map[string][]int{}}
}

// Add queues e: it is sent now, placed after its change's newest message
// as the batch knows it (read from the stream the first time), or, if the
// batch has an event of the change in flight, as soon as that one is
// acknowledged. Its error output is fitted to the limits as Publish does.
// Add returns an error for an invalid event or a change whose newest
// message cannot be read; send failures are reported (and retried) by Wait.
func (b *Batch) Add(ctx context.Context, e events.Event) error {
	if err := events.Validate(e); err != nil {
		return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", e.Type, e.ID, e.ChangeID, e.Pipeline, err)
	}
	subject := b.p.Subject(e.Pipeline, e.ChangeID)
	b.pending = append(b.pending, pending{e: e, subject: subject})
	i := len(b.pending) - 1
	b.pump(ctx, false)
	if _, busy := b.inflight[subject]; busy || len(b.held[subject]) > 0 {
		b.held[subject] = append(b.held[subject], i)
		return nil
	}
	return b.send(ctx, i)
}

// send places pending event i after its change's head and publishes it
// asynchronously.
func (b *Batch) send(ctx context.Context, i int) error {
	pe := &b.pending[i]
	head, known := b.heads[pe.subject]
	if !known {
		_, h, err := b.p.Last(ctx, pe.e.Pipeline, pe.e.ChangeID)
		if err != nil && h.Seq == 0 && !errors.Is(err, ErrNoEvents) {
			pe.err, pe.settled = fmt.Errorf("read the change's newest message: %w", err), true
			return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", pe.e.Type, pe.e.ID, pe.e.ChangeID, pe.e.Pipeline, pe.err)
		}
		head = h
	}
	if pe.e.SchemaVersion >= events.ChainVersion {
		pe.e.PrevSeq, pe.e.PrevHash, pe.e.Position = head.Seq, head.Hash, head.Position+1
	} else if head.Seq != 0 {
		pe.e.PrevHash = head.Hash
	}
	data, err := b.p.encode(pe.e)
	if err != nil {
		pe.err, pe.settled = err, true
		return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", pe.e.Type, pe.e.ID, pe.e.ChangeID, pe.e.Pipeline, err)
	}
	msg := b.p.message(pe.e, data)
	pe.after, pe.hash, pe.sent = head, events.Hash(data), true
	pe.future, pe.err = b.p.js.PublishMsgAsync(msg, jetstream.WithMsgID(pe.e.ID), jetstream.WithExpectStream(b.p.cfg.Stream.Name),
		jetstream.WithExpectLastSequencePerSubject(head.Seq))
	b.inflight[pe.subject] = i
	b.sent = append(b.sent, i)
	return nil
}

// pump settles the events sent whose acknowledgements have arrived, oldest
// first (all of them, waiting, if block), and sends the events held behind
// them. Acknowledgements come back in the order sent, so without block it
// stops at the first still in flight.
func (b *Batch) pump(ctx context.Context, block bool) {
	for len(b.sent) > 0 {
		i := b.sent[0]
		if !block && !b.acked(i) {
			return
		}
		b.sent = b.sent[1:]
		b.settle(ctx, i) // may send a held event, which joins b.sent
	}
}

// acked reports whether sent event i's acknowledgement (or failure) has
// arrived.
func (b *Batch) acked(i int) bool {
	pe := &b.pending[i]
	if pe.err != nil {
		return true
	}
	select {
	case ack := <-pe.future.Ok():
		pe.seq = ack.Sequence
		return true
	case err := <-pe.future.Err():
		pe.err = err
		return true
	default:
		return false
	}
}

// settle finishes sent event i: it waits for its acknowledgement if it has
// not arrived; an event whose asynchronous publish failed is published
// again synchronously, with Publish's retries, at the same place (the
// message id makes that safe if the first attempt did land). It records
// the change's new head and sends the next event held behind it.
func (b *Batch) settle(ctx context.Context, i int) {
	pe := &b.pending[i]
	if pe.settled {
		return
	}
	pe.settled = true
	if pe.seq == 0 && pe.err == nil {
		select {
		case ack := <-pe.future.Ok():
			pe.seq = ack.Sequence
		case pe.err = <-pe.future.Err():
		case <-ctx.Done():
			pe.err = ctx.Err()
		}
	}
	if pe.err != nil && ctx.Err() == nil {
		var apiErr *jetstream.APIError
		if !errors.As(pe.err, &apiErr) || temporary(apiErr) || isWrongLastSeq(pe.err) { // a glitch, or a refusal to confirm
			h, err := b.p.Publish(ctx, pe.e, After(pe.after))
			pe.seq, pe.err = h.Seq, err
		}
	}
	delete(b.inflight, pe.subject)
	if pe.err != nil {
		delete(b.heads, pe.subject) // read it again for the next event
	} else {
		b.heads[pe.subject] = Head{Seq: pe.seq, Hash: pe.hash, Position: pe.e.Position}
	}
	if q := b.held[pe.subject]; len(q) > 0 {
		next := q[0]
		if len(q) == 1 {
			delete(b.held, pe.subject)
		} else {
			b.held[pe.subject] = q[1:]
		}
		_ = b.send(ctx, next) // its error is kept in pending and reported by Wait
	}
}

// Len is the number of events added since the last Wait.
func (b *Batch) Len() int { return len(b.pending) }

// Wait sends every event held, waits for every acknowledgement and returns
// the stream sequence of each event, in the order added. Events that still
// fail have sequence 0 and are named in the returned error. The batch is
// empty afterwards and can be reused; it keeps what it knows of its
// changes.
func (b *Batch) Wait(ctx context.Context) ([]uint64, error) {
	b.pump(ctx, true)
	if ctx.Err() != nil {
		return make([]uint64, len(b.pending)), fmt.Errorf("producer: batch: %w", ctx.Err())
	}
	seqs := make([]uint64, len(b.pending))
	var errs []error
	for i, pe := range b.pending {
		seqs[i] = pe.seq
		if pe.err != nil {
			errs = append(errs, fmt.Errorf("event %s: %w", pe.e.ID, pe.err))
		} else if !pe.sent {
			errs = append(errs, fmt.Errorf("event %s: not sent", pe.e.ID))
		}
	}
	b.pending, b.sent = b.pending[:0], b.sent[:0]
	clear(b.inflight)
	clear(b.held)
	if len(errs) > 0 {
		return seqs, fmt.Errorf("producer: batch: %d of %d events not published: %w", len(errs), len(seqs), errors.Join(errs...))
	}
	return seqs, nil
}
