package projector

import (
	"context"
	"errors"
	"fmt"

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
//     a second) or the store was restored from a backup. Replaying from
//     the checkpoint on stores whatever it lacks; events already there are
//     applied again, which changes nothing.
//
// It leaves the floor of the projector's progress at the ack floor (or the
// checkpoint, if higher), which Run's writes build on.
func (p *Projector) checkStore(ctx context.Context) error {
	ackFloor := p.cons.CachedInfo().AckFloor.Stream
	cp, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		return fmt.Errorf("projector: read the store's checkpoint %q: %w", p.cfg.Consumer, err)
	}
	switch {
	case cp >= ackFloor:
		if p.cfg.Rebuild {
			p.log.Info("rebuild: the store already holds every event its consumer has acknowledged; nothing to replay",
				"checkpoint", cp, "ackFloor", ackFloor)
		}
	case cp == 0 && !p.cfg.Rebuild:
		return fmt.Errorf("%w: it has recorded no progress for consumer %q, but that consumer has already "+
			"acknowledged the stream's events up to sequence %d, which it will not deliver again: this store is new, "+
			"was lost or reset, or is not the one this consumer has been writing to, and consuming into it would leave "+
			"those events out of it for good (audit and issue listings would miss them). Fill it from the stream: start "+
			"the projector with --rebuild (Config.Rebuild), which replays the stream into the store and then consumes "+
			"(`auditflow replay` fills a store too, but records its progress under its own name, not this consumer's). "+
			"Or point the projector at the store this consumer has been writing to. Or, to have the consumer deliver "+
			"the stream again from its first event, delete it (nats consumer rm %s %s) or use another --consumer name",
			ErrStoreBehind, p.cfg.Consumer, ackFloor, p.cfg.Stream.Name, p.cfg.Consumer)
	default:
		if cp, err = p.fill(ctx, cp, ackFloor); err != nil {
			return err
		}
	}
	p.progress.raise(max(cp, ackFloor))
	p.progress.stored(cp)
	return nil
}

// fill replays the stream into the store from after its checkpoint cp, so
// that it holds everything up to at least ackFloor, and returns the new
// checkpoint. The replay records its progress under the consumer's
// checkpoint name, so an interrupted fill resumes where it stopped.
func (p *Projector) fill(ctx context.Context, cp, ackFloor uint64) (uint64, error) {
	if cp == 0 {
		p.log.Warn("rebuild: replaying the stream into the store before consuming", "consumer", p.cfg.Consumer, "ackFloor", ackFloor)
	} else {
		p.log.Warn("the store is behind its consumer (the last projector stopped before recording its progress, or the store was restored from a backup): replaying the events after its checkpoint before consuming",
			"consumer", p.cfg.Consumer, "checkpoint", cp, "ackFloor", ackFloor, "events", ackFloor-cp)
	}
	prog, err := Replay(ctx, p.js, p.store, ReplayConfig{Stream: p.cfg.Stream, Checkpoint: p.cfg.Consumer,
		Trust: p.cfg.Trust, Logger: p.log})
	switch {
	case err == nil:
		// Everything up to the replay's target is stored or was skipped as
		// no store should hold it; the last batch may have claimed less.
		if prog.Target > 0 {
			if err := p.store.Apply(ctx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: prog.Target}); err != nil {
				return 0, fmt.Errorf("projector: record the replay's progress: %w", err)
			}
		}
	case errors.Is(err, events.ErrUnsupportedVersion):
		// An event of a newer schema version: fine if it is past what the
		// consumer acknowledged (the projector holds it, as it would have);
		// checked below.
		p.log.Warn("the replay stopped at an event of a newer schema version", "err", err)
	default:
		return 0, fmt.Errorf("projector: replaying the stream into the store (start again to resume): %w", err)
	}
	got, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		return 0, fmt.Errorf("projector: read the store's checkpoint %q: %w", p.cfg.Consumer, err)
	}
	if got < ackFloor {
		return 0, fmt.Errorf("%w: a replay into it ended at sequence %d, below the consumer's ack floor %d (stopped at an event this build cannot read? upgrade the projector)",
			ErrStoreBehind, got, ackFloor)
	}
	p.log.Info("the store holds every event its consumer has acknowledged", "checkpoint", got, "replayed", prog.Applied, "skipped", prog.Skipped)
	return got, nil
}
