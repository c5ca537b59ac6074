package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// checkStore compares the store's checkpoint for the consumer with the
// consumer's ack floor before the projector consumes anything. The
// consumer never delivers again what it has acknowledged, so a store
// behind it would stay without those events for good, with nothing to
// show for it: `issue list` saying "no open issues" while a change is
// UNCERTAIN. Three cases:
//
//   - the checkpoint is at or past the ack floor: nothing is missing;
//   - the checkpoint is 0 while the ack floor is not (a new, lost or reset
//     store, or the wrong one): refused with ErrStoreBehind, unless
//     Config.Rebuild, which replays the stream into the store first;
//   - the checkpoint is behind but not 0: the store has been this
//     consumer's, and everything up to its checkpoint is in it (the
//     checkpoint is contiguous). Either the last projector died before it
//     recorded its latest progress (the checkpoint is recorded about once
//     a second) or the store was restored from a backup. Reading the
//     stream from the checkpoint to the ack floor stores whatever it
//     lacks; events already there are applied again, which changes
//     nothing.
//
// It leaves the floor of the projector's progress at the ack floor, which
// Run's writes build on.
func (p *Projector) checkStore(ctx context.Context) error {
	ackFloor := p.cons.CachedInfo().AckFloor.Stream
	if p.restoredAtStart {
		// The consumer was changed (setupConsumer restored it): while it
		// was, its position moved past events it never delivered, which it
		// will not deliver now — and its info does not say how far. Catch
		// up through the stream's last event; the consumer delivers what
		// comes after.
		s, err := p.js.Stream(ctx, p.cfg.Stream.Name)
		if err != nil {
			return fmt.Errorf("projector: stream %s: %w", p.cfg.Stream.Name, err)
		}
		ackFloor = max(ackFloor, s.CachedInfo().State.LastSeq)
	}
	cp, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		return fmt.Errorf("projector: read the store's checkpoint %q: %w", p.cfg.Consumer, err)
	}
	switch {
	case cp >= ackFloor:
		if p.cfg.Rebuild {
			// Not news (runner --embedded asks for a rebuild on every
			// start, the first included): debug only.
			p.log.Debug("rebuild: the store already holds every event its consumer has acknowledged; nothing to replay",
				"checkpoint", cp, "ackFloor", ackFloor)
		}
	case cp == 0 && !p.cfg.Rebuild:
		return fmt.Errorf("%w: it has recorded no progress for consumer %q, but that consumer has already "+
			"acknowledged the stream's events up to sequence %d, which it will not deliver again: this store is new, "+
			"was lost or reset, or is not the one this consumer has been writing to, and consuming into it would leave "+
			"those events out of it for good (audit and issue listings would miss them). Fill it from the stream: start "+
			"the projector with --rebuild (Config.Rebuild), which replays the stream into the store and then consumes "+
			"(`auditflow replay` fills a store too, and a replay that covers the stream from its first event — the default, "+
			"or --reset — also records this consumer's progress (its --consumer, default projector-<store>), so the projector starts on it). "+
			"Or point the projector at the store this consumer has been writing to. Or, to have the consumer deliver "+
			"the stream again from its first event, delete it (nats consumer rm %s %s) or use another --consumer name",
			ErrStoreBehind, p.cfg.Consumer, ackFloor, p.cfg.Stream.Name, p.cfg.Consumer)
	case cp == 0:
		if cp, err = p.rebuild(ctx, ackFloor); err != nil {
			return err
		}
	default:
		if cp, err = p.catchUp(ctx, cp, ackFloor,
			"the store is behind its consumer (the last projector stopped before recording its progress, the store was restored from a backup, or the consumer was changed)"); err != nil {
			return err
		}
	}
	// The floor is what the server proves, not the store's checkpoint: one
	// written by an earlier version is a high-water mark. A checkpoint past
	// the ack floor (acks lost in a crash) is caught up with as the
	// consumer redelivers.
	p.progress.raise(ackFloor)
	p.progress.stored(cp)
	return nil
}

// rebuild replays the whole stream into the store (Config.Rebuild) and
// returns the new checkpoint. The replay records its progress under the
// consumer's checkpoint name, so an interrupted rebuild resumes where it
// stopped; into an empty store it takes the store's bulk path.
func (p *Projector) rebuild(ctx context.Context, ackFloor uint64) (uint64, error) {
	p.log.Warn("rebuild: replaying the stream into the store before consuming", "consumer", p.cfg.Consumer, "ackFloor", ackFloor)
	prog, err := Replay(ctx, p.js, p.store, ReplayConfig{Stream: p.cfg.Stream, Checkpoint: p.cfg.Consumer,
		Trust: p.cfg.Trust, Logger: p.log})
	switch {
	case err == nil:
		// Everything up to the replay's target is stored or was skipped as
		// no store should hold it; the last batch may have claimed less.
		if prog.Target > 0 {
			if err := p.store.Apply(ctx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: prog.Target}); err != nil {
				return 0, fmt.Errorf("projector: record the rebuild's progress: %w", err)
			}
		}
	case errors.Is(err, events.ErrUnsupportedVersion):
		// An event of a newer schema version: fine if it is past what the
		// consumer acknowledged (the projector holds it, as it would have);
		// checked below.
		p.log.Warn("rebuild: the replay stopped at an event of a newer schema version", "err", err)
	default:
		return 0, fmt.Errorf("projector: rebuild: replaying the stream into the store (start again to resume): %w", err)
	}
	got, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		return 0, fmt.Errorf("projector: read the store's checkpoint %q: %w", p.cfg.Consumer, err)
	}
	if got < ackFloor {
		return 0, fmt.Errorf("%w: a rebuild ended at sequence %d, below the consumer's ack floor %d (stopped at an event this build cannot read? upgrade the projector)",
			ErrStoreBehind, got, ackFloor)
	}
	p.log.Info("rebuild: the store holds every event its consumer has acknowledged", "checkpoint", got,
		"replayed", prog.Applied, "skipped", prog.Skipped, "took", prog.Elapsed.Round(time.Millisecond))
	return got, nil
}

// catchUp stores the events after the store's checkpoint cp up to the
// consumer's ack floor, read from the stream (Scan) and judged as the
// live projector judges them, and returns the new checkpoint, ackFloor.
// Events past the ack floor are left to the consumer, which will deliver
// them. Every batch records its progress, so an interrupted catch-up
// resumes where it stopped.
// why says what made it necessary, for the log.
func (p *Projector) catchUp(ctx context.Context, cp, ackFloor uint64, why string) (uint64, error) {
	p.log.Warn(why+": storing the events after its checkpoint",
		"consumer", p.cfg.Consumer, "checkpoint", cp, "ackFloor", ackFloor, "events", ackFloor-cp)
	start := time.Now()
	var applied, skipped int
	chain := newScanChain(p.lookup, cp+1)
	err := Scan(ctx, p.js, ScanConfig{Stream: p.cfg.Stream.Name, Subjects: []string{p.cfg.Stream.SubjectPrefix + ".>"},
		FromSeq: cp + 1, ToSeq: ackFloor, BatchSize: p.cfg.BatchSize, Logger: p.log}, func(msgs []StreamMsg) error {
		recs := make([]stores.Record, 0, len(msgs))
		items := make([]chainItem, 0, len(msgs))
		for _, m := range msgs {
			v := decide(p.cfg.Decode, p.cfg.Stream.SubjectPrefix, p.cfg.Trust, m)
			if p.parked.parkedSeq(m.Seq) {
				// Parked (held.go): stored by whichever projector reads it,
				// after the events before it in its change.
				v.outcome = outDeadLetter
			}
			item := chainItem{subject: m.Subject, self: v.self, rec: -1}
			if v.outcome == outStore {
				item.rec = len(recs)
			}
			items = append(items, item)
			switch v.outcome {
			case outStore:
				recs = append(recs, v.rec)
			case outHold:
				// Acknowledged, yet not among the parked events found at
				// start: skipped by a changed consumer, or parked by a
				// process whose pointer is in another's hands now. Park it
				// (again: a newer projector stores it once either way).
				if err := p.parkRead(ctx, m.Subject, m.Seq, v.version); err != nil {
					return err
				}
				skipped++
				continue
			default:
				skipped++ // dead-lettered or parked when it was consumed
			}
		}
		if err := chain.place(ctx, items, recs); err != nil {
			return err
		}
		applied += len(recs)
		return p.applyRetrying(ctx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: msgs[len(msgs)-1].Seq, Records: recs})
	})
	if err == nil { // the range may end in sequences the stream does not hold
		err = p.applyRetrying(ctx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: ackFloor})
	}
	if err != nil {
		return 0, fmt.Errorf("projector: storing the events the store lacks (start again to resume): %w", err)
	}
	p.log.Info("the store holds every event its consumer has acknowledged", "checkpoint", ackFloor,
		"stored", applied, "skipped", skipped, "took", time.Since(start).Round(time.Millisecond))
	return ackFloor, nil
}

// applyRetrying applies b, retrying failures with back-off for up to two
// minutes, as a replay does.
func (p *Projector) applyRetrying(ctx context.Context, b stores.Batch) error {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(p.cfg.RetryMax), backoff.WithMaxElapsedTime(2*time.Minute)), ctx)
	return backoff.RetryNotify(func() error {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
		defer cancel()
		err := p.store.Apply(wctx, b)
		if errors.Is(err, stores.ErrInvalidRecord) {
			return backoff.Permanent(err)
		}
		return err
	}, bo, func(err error, wait time.Duration) {
		p.log.Warn("store write failed, retrying", "through", b.Through, "err", err, "retryIn", wait)
	})
}
