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
// from another system). Events of a batch carry no expected sequence: use
// Publish with ExpectLastSeq where two writers may race on one change.
//
// A Batch is not safe for concurrent use.
type Batch struct {
	p       *Producer
	events  []events.Event
	futures []jetstream.PubAckFuture
	errs    []error // per event, set when the publish could not even be sent
}

// NewBatch starts an empty batch.
func (p *Producer) NewBatch() *Batch { return &Batch{p: p} }

// Add validates and sends e, its error output fitted to the limits as
// Publish does. It returns an error only for an invalid event;
// send failures are reported (and retried) by Wait.
func (b *Batch) Add(e events.Event) error {
	data, err := b.p.encode(e)
	if err != nil {
		return fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", e.Type, e.ID, e.ChangeID, e.Pipeline, err)
	}
	msg := b.p.message(e, data)
	f, err := b.p.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(b.p.cfg.Stream.Name))
	b.events = append(b.events, e)
	b.futures = append(b.futures, f)
	b.errs = append(b.errs, err)
	return nil
}

// Len is the number of events added.
func (b *Batch) Len() int { return len(b.events) }

// Wait waits for every acknowledgement and returns the stream sequence of
// each event, in the order added. An event whose asynchronous publish failed
// is published again synchronously, with Publish's retries; the message id
// makes that safe if the first attempt did land. Events that still fail
// have sequence 0 and are named in the returned error. The batch is empty
// afterwards and can be reused.
func (b *Batch) Wait(ctx context.Context) ([]uint64, error) {
	seqs := make([]uint64, len(b.events))
	var errs []error
	for i, f := range b.futures {
		err := b.errs[i]
		if err == nil {
			select {
			case ack := <-f.Ok():
				seqs[i] = ack.Sequence
				continue
			case err = <-f.Err():
			case <-ctx.Done():
				return seqs, fmt.Errorf("producer: batch: %w", ctx.Err())
			}
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && !temporary(apiErr) { // the server decided; retrying would not change its mind
			errs = append(errs, fmt.Errorf("event %s: %w", b.events[i].ID, err))
			continue
		}
		h, err := b.p.Publish(ctx, b.events[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("event %s: %w", b.events[i].ID, err))
		}
		seqs[i] = h.Seq
	}
	b.events, b.futures, b.errs = b.events[:0], b.futures[:0], b.errs[:0]
	if len(errs) > 0 {
		return seqs, fmt.Errorf("producer: batch: %d of %d events not published: %w", len(errs), len(seqs), errors.Join(errs...))
	}
	return seqs, nil
}
