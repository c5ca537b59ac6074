package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// ReplayConfig configures Replay. Zero fields take the defaults shown.
type ReplayConfig struct {
	Stream producer.StreamConfig
	// Where to start. FromSeq > 0 starts at that sequence; a non-zero
	// Since starts at the first event stored at or after that time.
	// Neither: resume after the Checkpoint (from the first event if none),
	// so an interrupted replay continues where it stopped.
	FromSeq uint64
	Since   time.Time
	// Checkpoint names the progress record kept in the target store.
	// Default "replay". It is a contiguous checkpoint (stores.Batch.Through):
	// a replay raises it only while everything from the first event up to
	// where it has got is stored — one that resumes after it, or starts
	// at or before it. A replay from a later FromSeq or Since stores its
	// events without claiming anything below them.
	Checkpoint string
	// Claim names more checkpoints a contiguous replay raises with its own,
	// e.g. the projector's consumer ("projector-sqlite"): after a rebuild
	// the store holds everything that consumer acknowledged, so the
	// projector starts on it instead of refusing a store behind it.
	Claim []string
	// BatchSize is the most events per store write. Default 1000.
	BatchSize int
	// RetryFor bounds retries of a failing store write before Replay gives
	// up (it can be resumed). Default 2m.
	RetryFor time.Duration
	// Trust judges each event's signature as the live projector does
	// (Config.Trust), so a rebuilt store holds the same verdicts; nil
	// checks nothing. Give replay the projectors' trust list.
	Trust *trust.List
	// Progress, if set, is called after every stored batch.
	Progress func(ReplayProgress)
	Logger   *slog.Logger // nil discards
}

// ReplayProgress is how far a replay has got.
type ReplayProgress struct {
	Applied    uint64        `json:"applied"` // events stored by this replay
	Skipped    uint64        `json:"skipped"` // events no store should hold, passed over
	Seq        uint64        `json:"seq"`     // last sequence stored
	First      uint64        `json:"first"`   // first sequence of this replay
	Target     uint64        `json:"target"`  // the stream's last sequence when the replay began
	Elapsed    time.Duration `json:"-"`       // as elapsedMs in JSON
	EventsPerS float64       `json:"eventsPerSecond"`
}

// MarshalJSON writes the progress in camelCase, the elapsed time in
// milliseconds (elapsedMs), as verify's report (auditflow replay --json).
func (p ReplayProgress) MarshalJSON() ([]byte, error) {
	type plain ReplayProgress
	return json.Marshal(struct {
		plain
		ElapsedMs int64 `json:"elapsedMs"`
	}{plain(p), p.Elapsed.Milliseconds()})
}

// Remaining estimates the time left at the current rate.
func (p ReplayProgress) Remaining() time.Duration {
	if p.EventsPerS <= 0 || p.Seq >= p.Target {
		return 0
	}
	return time.Duration(float64(p.Target-p.Seq) / p.EventsPerS * float64(time.Second))
}

// Replay rebuilds or brings up to date a store from the stream: it reads
// the stream with Scan (an ephemeral, unacknowledged consumer, so the
// live projectors' durable consumers are untouched; it rides out a
// cluster's fail-overs and node losses) from the configured
// start up to the last event present when it began, and applies it in
// batches, recording its progress under the Checkpoint name in the store.
// Applying is idempotent, so a replay over rows already there, or run
// twice, changes nothing; an interrupted replay resumes after its
// checkpoint. Events no store should hold — that do not decode, or were
// published on another change's subject — are skipped, counted and logged
// (the live projector dead-letters them). An event of a newer schema
// version than this build reads stops the replay with an error wrapping
// events.ErrUnsupportedVersion, after everything before it is stored:
// skipping it would leave it out of the rebuilt store; upgrade, then run
// the same replay again to resume.
func Replay(ctx context.Context, js jetstream.JetStream, store stores.Store, cfg ReplayConfig) (ReplayProgress, error) {
	if err := cfg.Stream.Validate(); err != nil {
		return ReplayProgress{}, err
	}
	setDefault(&cfg.Checkpoint, "replay")
	setDefault(&cfg.BatchSize, 1000)
	setDefault(&cfg.RetryFor, 2*time.Minute)
	if cfg.BatchSize < 1 || cfg.BatchSize > 100_000 {
		return ReplayProgress{}, fmt.Errorf("%w: replay batch size %d is outside 1..100000", ErrInvalidConfig, cfg.BatchSize)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stream, err := LookupStream(ctx, js, cfg.Stream.Name, cfg.RetryFor, log)
	if err != nil {
		return ReplayProgress{}, fmt.Errorf("replay: %w", err)
	}
	target, msgs := stream.CachedInfo().State.LastSeq, stream.CachedInfo().State.Msgs
	prog := ReplayProgress{Target: target}
	sc := ScanConfig{Stream: cfg.Stream.Name, Subjects: []string{cfg.Stream.SubjectPrefix + ".>"}, ToSeq: target,
		BatchSize: cfg.BatchSize, RetryFor: cfg.RetryFor, Logger: log}
	cp, err := store.Checkpoint(ctx, cfg.Checkpoint)
	if err != nil {
		return prog, fmt.Errorf("replay: read checkpoint %q: %w", cfg.Checkpoint, err)
	}
	switch {
	case !cfg.Since.IsZero():
		sc.Since = cfg.Since
	case cfg.FromSeq > 0:
		sc.FromSeq = cfg.FromSeq
	default:
		sc.FromSeq = cp + 1
		if cp > 0 {
			log.Info("resuming replay after its checkpoint", "checkpoint", cfg.Checkpoint, "seq", cp)
		}
	}
	// Scan hands over every sequence from where it starts: the replay is
	// contiguous with what is stored if it starts at or before cp+1 (with
	// Since, known at its first batch).
	contiguous := sc.FromSeq > 0 && sc.FromSeq <= cp+1
	if sc.FromSeq > prog.Target || msgs == 0 {
		if contiguous && cp > 0 { // nothing to do: what is stored, the claims may still lack
			for _, name := range cfg.Claim {
				if err := store.Apply(ctx, stores.Batch{Checkpoint: name, Through: min(cp, target)}); err != nil {
					return prog, fmt.Errorf("replay: record checkpoint %q: %w", name, err)
				}
			}
		}
		return prog, nil // nothing to do
	}
	// A rebuild into an empty store may use the store's bulk path.
	if bl, ok := store.(stores.BulkLoader); ok {
		if rows, err := store.History(ctx, stores.HistoryQuery{Limit: 1}); err == nil && len(rows) == 0 {
			if err := bl.BeginBulk(ctx); err != nil {
				return prog, fmt.Errorf("replay: %w", err)
			}
			log.Info("replay: empty store, loading in bulk")
			defer func() {
				if err := bl.EndBulk(context.WithoutCancel(ctx)); err != nil {
					log.Error("replay: ending the bulk load failed; reopening the store rebuilds its indexes", "err", err)
				}
			}()
		}
	}

	// Read and decode ahead of the store, one batch in flight.
	batches := make(chan []stores.Record, 2)
	readErr := make(chan error, 1)
	var skipped atomic.Uint64
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		readErr <- readBatches(rctx, js, sc, cfg.Stream.SubjectPrefix, cfg.Trust, batches, &skipped, log)
	}()

	start := time.Now()
	for batch := range batches {
		if prog.First == 0 {
			prog.First = batch[0].Seq
			contiguous = contiguous || (sc.FromSeq == 0 && prog.First <= cp+1)
		}
		var through uint64
		if contiguous {
			through = batch[len(batch)-1].Seq
		}
		b := backoff.WithContext(backoff.NewExponentialBackOff(
			backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(cfg.RetryFor)), ctx)
		err := backoff.RetryNotify(func() error {
			return store.Apply(ctx, stores.Batch{Checkpoint: cfg.Checkpoint, Through: through, Records: batch})
		}, b, func(err error, wait time.Duration) {
			log.Warn("replay: store write failed, retrying", "firstSeq", batch[0].Seq, "err", err, "retryIn", wait)
		})
		if err != nil {
			stop()
			for range batches { // let the reader finish
			}
			return prog, fmt.Errorf("replay: store write at seq %d (resume with the same command): %w", batch[0].Seq, err)
		}
		prog.Applied += uint64(len(batch))
		prog.Skipped = skipped.Load()
		prog.Seq = batch[len(batch)-1].Seq
		prog.Elapsed = time.Since(start)
		prog.EventsPerS = float64(prog.Applied) / prog.Elapsed.Seconds()
		if cfg.Progress != nil {
			cfg.Progress(prog)
		}
	}
	prog.Skipped = skipped.Load()
	if err := <-readErr; err != nil {
		return prog, err
	}
	// Everything up to the target is stored or was passed over on
	// purpose (skipped events end no batch, so claim the target itself).
	if contiguous || (prog.First == 0 && sc.FromSeq > 0 && sc.FromSeq <= cp+1) {
		for _, name := range append([]string{cfg.Checkpoint}, cfg.Claim...) {
			if err := store.Apply(ctx, stores.Batch{Checkpoint: name, Through: target}); err != nil {
				return prog, fmt.Errorf("replay: record checkpoint %q: %w", name, err)
			}
		}
	}
	prog.Elapsed = time.Since(start)
	return prog, nil
}

// readBatches judges what Scan reads as the live projector does
// (decide) and sends the records to store in batches; it closes out when
// done.
func readBatches(ctx context.Context, js jetstream.JetStream, sc ScanConfig, prefix string, list *trust.List, out chan<- []stores.Record, skipped *atomic.Uint64, log *slog.Logger) error {
	defer close(out)
	send := func(batch []stores.Record) error {
		if len(batch) == 0 {
			return nil
		}
		select {
		case out <- batch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return Scan(ctx, js, sc, func(msgs []StreamMsg) error {
		batch := make([]stores.Record, 0, len(msgs))
		for _, m := range msgs {
			v := decide(events.Decode, prefix, list, m)
			switch v.outcome {
			case outStore:
				batch = append(batch, v.rec)
			case outHold:
				if err := send(batch); err != nil {
					return err
				}
				return fmt.Errorf("replay: the event at seq %d (%s) has schema version %d, newer than this build reads (%d): %w; upgrade, then run the same replay to resume",
					m.Seq, m.Subject, v.version, events.SchemaVersion, events.ErrUnsupportedVersion)
			default:
				skipped.Add(1)
				log.Warn("replay: skipping an event no store should hold", "seq", m.Seq, "subject", m.Subject, "reason", v.reason)
			}
		}
		return send(batch)
	})
}

// StreamMsg is a message as Scan hands it over.
type StreamMsg struct {
	Seq     uint64
	Subject string
	Data    []byte
	// Header holds the message's headers (nil if none), among them the
	// event's signature (trust.Header).
	Header nats.Header
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
