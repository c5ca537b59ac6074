package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
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
	// Writers is how many store writes run at once. Default 1. Events are
	// partitioned by change (a hash of pipeline and change id), so each
	// change's events are written in stream order by one writer; the
	// checkpoint stays contiguous across writers: it is raised to S only
	// once every event at or below S is stored, whichever writer had it.
	// Remote stores gain most (their writes wait on round trips).
	Writers int
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
	setDefault(&cfg.Writers, 1)
	if cfg.Writers < 1 || cfg.Writers > 256 {
		return ReplayProgress{}, fmt.Errorf("%w: replay writers %d is outside 1..256", ErrInvalidConfig, cfg.Writers)
	}
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

	// Read and decode ahead of the store; the writers apply.
	units := make(chan scanUnit, 2)
	readErr := make(chan error, 1)
	var skipped atomic.Uint64
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		readErr <- readBatches(rctx, js, sc, cfg.Stream.SubjectPrefix, cfg.Trust, units, &skipped, log)
	}()

	r := &replayRun{store: store, cfg: cfg, log: log, prog: prog, skipped: &skipped, start: time.Now(),
		pending: map[uint64]*pendingUnit{}}
	first := true
	werr := r.write(rctx, stop, units, func(u scanUnit) {
		if first {
			first = false
			contiguous = contiguous || (sc.FromSeq == 0 && u.lo <= cp+1)
			r.mu.Lock()
			r.prog.First, r.contiguous = u.lo, contiguous
			r.mu.Unlock()
		}
	})
	prog = r.progress()
	if werr != nil {
		stop()
		for range units { // let the reader finish
		}
		<-readErr
		return prog, werr
	}
	prog.Skipped = skipped.Load()
	if err := <-readErr; err != nil {
		return prog, err
	}
	// Everything up to the target is stored or was passed over on
	// purpose (skipped events end no batch, so claim the target itself).
	if contiguous || (first && sc.FromSeq > 0 && sc.FromSeq <= cp+1) {
		for _, name := range append([]string{cfg.Checkpoint}, cfg.Claim...) {
			if err := store.Apply(ctx, stores.Batch{Checkpoint: name, Through: target}); err != nil {
				return prog, fmt.Errorf("replay: record checkpoint %q: %w", name, err)
			}
		}
	}
	prog.Elapsed = time.Since(r.start)
	return prog, nil
}

// scanUnit is what the reader hands over per batch read from the stream:
// the records to store, and the range of sequences read (lo..hi), skipped
// events included, so that the checkpoint can pass over skipped events.
type scanUnit struct {
	recs   []stores.Record
	lo, hi uint64
}

// replayRun is one replay's writers and the contiguous checkpoint they
// share. Events are partitioned by change, so each change's events reach
// one writer in stream order; a writer may merge several read batches
// into one store write. The checkpoint a writer claims (Batch.Through) is
// the global contiguous low-water mark — the end of the longest run of
// read batches all of whose parts are stored (its own write included) —
// never its own highest sequence, which another writer may not have
// reached below.
type replayRun struct {
	store   stores.Store
	cfg     ReplayConfig
	log     *slog.Logger
	skipped *atomic.Uint64
	start   time.Time

	mu         sync.Mutex
	contiguous bool
	prog       ReplayProgress
	pending    map[uint64]*pendingUnit // read batches not all stored, by index
	nextUnit   uint64                  // index of the next read batch
	doneUnit   uint64                  // every read batch below this index is stored
	lowWater   uint64                  // hi of read batch doneUnit-1: stored contiguously
	claimed    uint64                  // the highest Through handed to a store write
}

type pendingUnit struct {
	hi   uint64
	left int // parts not stored yet
}

// part is a writer's share of one read batch.
type part struct {
	unit uint64
	recs []stores.Record
}

func (r *replayRun) progress() ReplayProgress {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.prog
	p.Skipped = r.skipped.Load()
	return p
}

// write runs the writers until units is closed and drained, or a store
// write fails for good (then it cancels the reader with stop).
func (r *replayRun) write(ctx context.Context, stop context.CancelFunc, units <-chan scanUnit, onFirst func(scanUnit)) error {
	n := max(r.cfg.Writers, 1)
	queues := make([]chan part, n)
	errs := make(chan error, n)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan part, 2*n+2)
		q := queues[i]
		wg.Go(func() {
			if err := r.writer(wctx, q); err != nil {
				errs <- err
				cancel()
				stop()
				for range q { // let the dispatcher finish
				}
			}
		})
	}
	split := make([][]stores.Record, n)
dispatch:
	for u := range units {
		onFirst(u)
		for i := range split {
			split[i] = nil
		}
		if n == 1 {
			split[0] = u.recs
		} else {
			for _, rec := range u.recs {
				i := changeWriter(rec.Pipeline, rec.ChangeID, n)
				split[i] = append(split[i], rec)
			}
		}
		parts := 0
		for _, s := range split {
			if len(s) > 0 {
				parts++
			}
		}
		r.mu.Lock()
		id := r.nextUnit
		r.nextUnit++
		r.pending[id] = &pendingUnit{hi: u.hi, left: parts}
		if parts == 0 {
			r.advance()
		}
		r.mu.Unlock()
		for i, s := range split {
			if len(s) == 0 {
				continue
			}
			select {
			case queues[i] <- part{unit: id, recs: s}:
			case <-wctx.Done():
				break dispatch
			}
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// changeWriter picks the writer of a change: FNV-1a of pipeline and id.
func changeWriter(pipeline, change string, n int) int {
	h := uint32(2166136261)
	for _, s := range [2]string{pipeline, change} {
		for i := 0; i < len(s); i++ {
			h ^= uint32(s[i])
			h *= 16777619
		}
		h *= 16777619 // a zero byte between the two
	}
	return int(h % uint32(n))
}

// writer applies what arrives on q, merging parts that are already
// waiting up to BatchSize events per store write.
func (r *replayRun) writer(ctx context.Context, q <-chan part) error {
	var carry *part
	for {
		var parts []part
		size := 0
		if carry != nil {
			parts, size, carry = append(parts, *carry), len(carry.recs), nil
		} else {
			p, ok := <-q
			if !ok {
				return nil
			}
			parts, size = append(parts, p), len(p.recs)
		}
	merge:
		for size < r.cfg.BatchSize {
			select {
			case p, ok := <-q:
				if !ok {
					break merge
				}
				if size+len(p.recs) > r.cfg.BatchSize {
					carry = &p
					break merge
				}
				parts, size = append(parts, p), size+len(p.recs)
			default:
				break merge
			}
		}
		if err := r.apply(ctx, parts, size); err != nil {
			return err
		}
	}
}

// apply stores parts in one write, claiming the contiguous low-water
// mark as it will stand once they are stored, then marks them done.
func (r *replayRun) apply(ctx context.Context, parts []part, size int) error {
	recs := parts[0].recs
	if len(parts) > 1 {
		recs = make([]stores.Record, 0, size)
		for _, p := range parts {
			recs = append(recs, p.recs...)
		}
	}
	r.mu.Lock()
	var through uint64
	if r.contiguous {
		// A mark another write already claims is not claimed again: the
		// store skips the checkpoint write (one less round trip, and no
		// contention among writers on one checkpoint record).
		if lw := r.lowWaterWith(parts); lw > r.claimed {
			through, r.claimed = lw, lw
		}
	}
	r.mu.Unlock()
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(r.cfg.RetryFor)), ctx)
	err := backoff.RetryNotify(func() error {
		return r.store.Apply(ctx, stores.Batch{Checkpoint: r.cfg.Checkpoint, Through: through, Records: recs})
	}, b, func(err error, wait time.Duration) {
		r.log.Warn("replay: store write failed, retrying", "firstSeq", recs[0].Seq, "err", err, "retryIn", wait)
	})
	if err != nil {
		return fmt.Errorf("replay: store write at seq %d (resume with the same command): %w", recs[0].Seq, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts {
		r.pending[p.unit].left--
	}
	r.advance()
	r.prog.Applied += uint64(len(recs))
	r.prog.Skipped = r.skipped.Load()
	r.prog.Seq = max(r.prog.Seq, r.lowWater)
	r.prog.Elapsed = time.Since(r.start)
	r.prog.EventsPerS = float64(r.prog.Applied) / r.prog.Elapsed.Seconds()
	if r.cfg.Progress != nil {
		r.cfg.Progress(r.prog) // under the lock: one call at a time, in order
	}
	return nil
}

// advance moves the low-water mark over every stored read batch; r.mu held.
func (r *replayRun) advance() {
	for {
		u, ok := r.pending[r.doneUnit]
		if !ok || u.left > 0 {
			return
		}
		r.lowWater = u.hi
		delete(r.pending, r.doneUnit)
		r.doneUnit++
	}
}

// lowWaterWith is the low-water mark as it will stand once parts are
// stored (and nothing else meanwhile); r.mu held.
func (r *replayRun) lowWaterWith(parts []part) uint64 {
	mine := make(map[uint64]int, len(parts))
	for _, p := range parts {
		mine[p.unit]++
	}
	lw := r.lowWater
	for k := r.doneUnit; ; k++ {
		u, ok := r.pending[k]
		if !ok || u.left > mine[k] {
			return lw
		}
		lw = u.hi
	}
}

// readBatches judges what Scan reads as the live projector does
// (decide) and sends the records to store in units, one per read batch,
// in stream order; it closes out when done. Judging (decoding, hashing,
// checking signatures) costs about as much as storing, so it runs beside
// the read, on up to decoders batches at once, and the units are sent in
// the order they were read.
func readBatches(ctx context.Context, js jetstream.JetStream, sc ScanConfig, prefix string, list *trust.List, out chan<- scanUnit, skipped *atomic.Uint64, log *slog.Logger) error {
	const decoders = 2
	defer close(out)
	sctx, stopScan := context.WithCancel(ctx)
	defer stopScan()
	futures := make(chan chan judged, decoders)
	scanErr := make(chan error, 1)
	var wg sync.WaitGroup
	go func() {
		defer close(futures)
		scanErr <- Scan(sctx, js, sc, func(msgs []StreamMsg) error {
			f := make(chan judged, 1)
			select {
			case futures <- f:
			case <-sctx.Done():
				return sctx.Err()
			}
			wg.Go(func() { f <- judge(msgs, prefix, list, log) })
			return nil
		})
	}()
	var err error
	chain := newScanChain(streamLookup(js, sc.Stream, prefix), sc.FromSeq)
	for f := range futures {
		j := <-f
		if err != nil {
			continue // drain
		}
		// Chains are followed here, in stream order, once each batch is
		// judged (judging runs on several batches at once).
		if err = chain.place(ctx, j.items, j.unit.recs); err != nil {
			stopScan()
			continue
		}
		skipped.Add(j.skipped)
		if j.unit.hi > 0 {
			select {
			case out <- j.unit:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		if err == nil {
			err = j.err
		}
		if err != nil {
			stopScan()
		}
	}
	wg.Wait()
	if serr := <-scanErr; err == nil {
		err = serr
	}
	return err
}

// judged is one read batch judged: the unit to store, every message's
// place for the chains, the events skipped, and an error that ends the
// replay after the unit (a newer schema).
type judged struct {
	unit    scanUnit
	items   []chainItem
	skipped uint64
	err     error
}

func judge(msgs []StreamMsg, prefix string, list *trust.List, log *slog.Logger) judged {
	var j judged
	j.unit.recs = make([]stores.Record, 0, len(msgs))
	j.items = make([]chainItem, 0, len(msgs))
	for _, m := range msgs {
		v := decide(events.Decode, prefix, list, m)
		item := chainItem{subject: m.Subject, self: v.self, rec: -1}
		if v.outcome == outStore {
			item.rec = len(j.unit.recs)
		}
		j.items = append(j.items, item)
		switch v.outcome {
		case outStore:
			j.unit.recs = append(j.unit.recs, v.rec)
		case outHold:
			j.err = fmt.Errorf("replay: the event at seq %d (%s) has schema version %d, newer than this build reads (%d): %w; upgrade, then run the same replay to resume",
				m.Seq, m.Subject, v.version, events.SchemaVersion, events.ErrUnsupportedVersion)
			return j
		default:
			j.skipped++
			log.Warn("replay: skipping an event no store should hold", "seq", m.Seq, "subject", m.Subject, "reason", v.reason)
		}
		if j.unit.lo == 0 {
			j.unit.lo = m.Seq
		}
		j.unit.hi = m.Seq
	}
	return j
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
