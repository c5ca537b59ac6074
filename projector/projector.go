package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// Config configures a Projector. Zero fields take the defaults shown.
type Config struct {
	// Stream is the audit stream (its name and subject prefix).
	Stream producer.StreamConfig
	// CreateStreams lets New create the audit stream and the projector's
	// dead-letter and writes streams if they are missing (EnsureStreams).
	// Default false: New fails with an error wrapping producer.ErrNoStream
	// (or ErrNoStream) naming what is missing, so that a deleted stream
	// never comes back empty and projectors need no right to create
	// streams. Set it only in the embedded mode and tests; deployments
	// create them with `auditflow init`.
	CreateStreams bool
	// StoreName names the store in AuditWrite subjects
	// (audit.writes.<StoreName>) and the default consumer. Required.
	StoreName string
	// Consumer is the durable consumer's name, shared by every worker and
	// process projecting into the same store. Default "projector-<StoreName>".
	Consumer string
	// Workers is the number of concurrent apply-ack loops fed by one
	// fetcher; each owns a share of the changes. Default 2.
	Workers int
	// BatchSize is the most messages applied in one store write. Default 500.
	BatchSize int
	// MaxAckPending bounds messages delivered but not yet acknowledged,
	// across all workers and processes. Default 4 × Workers × BatchSize.
	MaxAckPending int
	// AckWait is how long the server waits for an ack before redelivering.
	// Default 4s. Every message a projector holds (queued, being written or
	// dead-lettered) is kept from redelivery by an InProgress every
	// AckWait/4, so a short AckWait costs no redeliveries; what it buys is
	// a quick restart: the unacknowledged messages of a process that died
	// — up to MaxAckPending of them, and while they are out the server
	// delivers nothing new — come back within AckWait. At least 1s.
	AckWait time.Duration
	// WriteTimeout bounds each store write attempt. A timed-out attempt is
	// retried, its batch halved (a smaller write is quicker). Default
	// AckWait/2; it must be below AckWait, so that a hung write (a dead
	// database connection) is abandoned and retried before the server
	// would redeliver its messages even if the heartbeats were lost.
	WriteTimeout time.Duration
	// StallAfter is how long the projector may go without progress before
	// Ready fails: nothing stored, acknowledged or dead-lettered while the
	// consumer has a lag, or one store write failing for that long.
	// Default 2m.
	StallAfter time.Duration
	// IdleWait is how long an idle worker's fetch waits for a message
	// before asking again; it bounds how long shutdown waits for an idle
	// worker. A message is delivered as soon as it arrives whatever this
	// is. Default 250ms.
	IdleWait time.Duration
	// RetryMax caps the back-off between attempts at a failing store write.
	// Attempts never stop: an event is acknowledged only once stored.
	// Default 10s.
	RetryMax time.Duration
	// ShutdownTimeout bounds how long a cancelled Run keeps trying to store
	// the batches in flight before handing them back to the stream for
	// another projector. Default 5s: below Docker's 10s stop timeout, so
	// the projector stops by itself rather than being killed.
	ShutdownTimeout time.Duration
	// DeadLetterPrefix is where events that can never be stored are
	// copied, as <prefix>.<original subject>. Default "audit.deadletter".
	DeadLetterPrefix string
	// WritesPrefix is where AuditWrite events go. Default "audit.writes".
	WritesPrefix string
	// HeldPrefix is where pointers to parked events go, as
	// <prefix>.<consumer>.<the event's subject after the stream prefix>
	// (see held.go). Default "audit.held".
	HeldPrefix string
	// HeldCap bounds the parked events of the consumer: past it an event
	// of a newer schema version is dead-lettered (ErrHeldCapReached).
	// Default 100000.
	HeldCap int
	// Rebuild lets New fill a store that has recorded no progress for the
	// consumer while the consumer has acknowledged events (a new, lost or
	// reset store): New replays the stream into it (Replay, recording its
	// progress under the consumer's name, so an interrupted rebuild
	// resumes) before the projector consumes. Without it New refuses such a
	// store with ErrStoreBehind. A store that is behind but has progress
	// for the consumer is always brought up to date (see New).
	Rebuild bool
	// Decode decodes a message's data into an event. Default events.Decode.
	// It is a seam for tests and for reading a newer format: a build that
	// reads a newer schema version supplies a decoder for it. Whatever it
	// returns is validated with events.Validate.
	Decode func([]byte) (events.Event, error)
	// Trust judges each event's signature (package trust); nil checks
	// nothing. An untrusted event — unsigned, an unknown key, a bad
	// signature, a key outside its roles or pipelines, a revoked key — is
	// stored with its verdict, which opens its change's issue, and is
	// logged and counted (Stats.Untrusted).
	Trust *trust.List
	// Registerer receives the projector's Prometheus metrics, labelled with
	// store and consumer (see the package documentation); nil means no
	// metrics. Register at most one projector per store and consumer on it.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // nil discards
}

// Defaults.
const (
	DefaultWorkers          = 2
	DefaultBatchSize        = 500
	DefaultAckWait          = 4 * time.Second
	DefaultStallAfter       = 2 * time.Minute
	DefaultShutdownTimeout  = 5 * time.Second
	DefaultDeadLetterPrefix = "audit.deadletter"
	DefaultWritesPrefix     = "audit.writes"
	DeadLetterStream        = "AUDIT_DEADLETTER"
	WritesStream            = "AUDIT_WRITES"
)

// Timing of messages handed back to the stream; variables so that tests
// can shorten them.
var (
	// handoverWait bounds how long the fetcher waits for a busy apply loop
	// (or the dead-letter loop) to take a share before handing it back.
	handoverWait = time.Second
	// busyNakMin is the first delay of a message handed back for a busy
	// loop; it doubles with each delivery, up to AckWait.
	busyNakMin = 250 * time.Millisecond
)

// Validate fills in defaults and checks values.
func (c *Config) Validate() error {
	if err := c.Stream.Validate(); err != nil {
		return err
	}
	if c.StoreName == "" {
		return fmt.Errorf("%w: StoreName is required", ErrInvalidConfig)
	}
	if c.Consumer == "" {
		c.Consumer = "projector-" + c.StoreName
	}
	setDefault(&c.Workers, DefaultWorkers)
	setDefault(&c.BatchSize, DefaultBatchSize)
	setDefault(&c.MaxAckPending, 4*c.Workers*c.BatchSize)
	setDefault(&c.AckWait, DefaultAckWait)
	setDefault(&c.WriteTimeout, c.AckWait/2)
	setDefault(&c.StallAfter, DefaultStallAfter)
	setDefault(&c.IdleWait, 250*time.Millisecond)
	setDefault(&c.RetryMax, 10*time.Second)
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDefault(&c.DeadLetterPrefix, DefaultDeadLetterPrefix)
	setDefault(&c.WritesPrefix, DefaultWritesPrefix)
	setDefault(&c.HeldPrefix, DefaultHeldPrefix)
	setDefault(&c.HeldCap, DefaultHeldCap)
	if c.Decode == nil {
		c.Decode = events.Decode
	}
	switch {
	case c.Workers < 1 || c.Workers > 64:
		return fmt.Errorf("%w: workers %d is outside 1..64", ErrInvalidConfig, c.Workers)
	case c.BatchSize < 1 || c.BatchSize > 10_000:
		return fmt.Errorf("%w: batch size %d is outside 1..10000", ErrInvalidConfig, c.BatchSize)
	case c.MaxAckPending < c.BatchSize*c.Workers:
		return fmt.Errorf("%w: max ack pending %d is below batch size × workers (%d)", ErrInvalidConfig, c.MaxAckPending, c.BatchSize*c.Workers)
	case c.AckWait < time.Second || c.IdleWait <= 0 || c.RetryMax <= 0 || c.ShutdownTimeout <= 0 || c.StallAfter <= 0:
		return fmt.Errorf("%w: ack wait must be at least 1s and other durations positive", ErrInvalidConfig)
	case c.HeldCap < 0:
		return fmt.Errorf("%w: held cap %d is negative", ErrInvalidConfig, c.HeldCap)
	case c.WriteTimeout <= 0 || c.WriteTimeout >= c.AckWait:
		return fmt.Errorf("%w: write timeout %s must be positive and below ack wait %s", ErrInvalidConfig, c.WriteTimeout, c.AckWait)
	}
	return nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Projector consumes the audit stream and applies it to a store.
type Projector struct {
	js    jetstream.JetStream
	nc    *nats.Conn
	store stores.Store
	cfg   Config
	log   *slog.Logger
	cons  jetstream.Consumer
	// restoredAtStart: setupConsumer found the consumer changed and
	// restored it. restoredAt and restoredDrift: when the fetcher last
	// restored it, and what had changed (consumer.go).
	restoredAtStart bool
	restoredAt      atomic.Int64
	restoredDrift   atomic.Value
	restoreFailing  atomic.Int64 // unix ns since restoring has failed, 0 if it has not
	// recreatedAt is when the fetcher last recreated the deleted consumer
	// (unix ns, 0 if never): Ready says so until it has caught up.
	recreatedAt atomic.Int64
	// heldCons re-drives parked events (held.go).
	heldCons jetstream.Consumer
	// deadLetterMaxMsgSize is the dead-letter stream's own limit (<= 0: none).
	deadLetterMaxMsgSize int32

	applied, batches, retries, deadLettered, writeFailures, staleTokens atomic.Uint64
	deadLetterFailures, storeRefusals, held, busyNaks, untrusted        atomic.Uint64
	heldFailures, redriven, recreated, restored                         atomic.Uint64
	parked                                                              parking // held.go
	heldLog, restoreTry                                                 logLimit
	tokens                                                              tokenWatch
	inflight                                                            inflight
	health                                                              health
	lag                                                                 lagReader
	busyLog                                                             logLimit
	progress                                                            progress // the contiguous checkpoint (checkpoint.go)
	checkpointKick                                                      chan struct{}

	writers       *limiter             // how many workers write at once (adapt.go)
	lastSeq       atomic.Uint64        // highest sequence applied: a high-water mark
	stopping      atomic.Bool          // Run's context is done
	writeDuration prometheus.Histogram // nil without metrics

	// The fetcher's own (chain.go): each subject's chain as delivered,
	// the last consumer sequence it saw, and how it asks the stream.
	chain                      chainTracker
	lastCons                   uint64
	lookup                     lookupFunc
	chainLog                   logLimit
	outOfChain, lookupFailures atomic.Uint64
}

// New checks the configuration, opens the audit stream and the projector's
// dead-letter and writes streams — it creates missing ones only with
// Config.CreateStreams, and otherwise fails with an error naming what is
// missing (producer.ErrNoStream, ErrNoStream) — and creates or updates the
// durable consumer.
//
// Then it compares the store's checkpoint for the consumer with the
// consumer's ack floor, since the consumer never delivers again what it has
// acknowledged. A store with no progress for the consumer while the
// consumer has acknowledged events (a new or lost store) is refused with
// ErrStoreBehind, whose message says what to do, unless Config.Rebuild: then
// New replays the stream into it first. A store behind by some events but
// with progress for the consumer (a projector killed before it recorded its
// latest checkpoint, a store restored from a backup) is brought up to date
// by replaying the events after its checkpoint.
func New(ctx context.Context, js jetstream.JetStream, store stores.Store, cfg Config) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Projector{js: js, nc: js.Conn(), store: store, cfg: cfg, log: log.With("store", cfg.StoreName),
		checkpointKick: make(chan struct{}, 1), writers: newLimiter(cfg.Workers, cfg.WriteTimeout)}
	p.lag = lagReader{read: p.consumerState, log: p.log, ttl: lagCacheTTL, timeout: lagTimeout}
	p.lookup = streamLookup(js, cfg.Stream.Name, cfg.Stream.SubjectPrefix)
	// A projector started while its cluster elects a leader waits for one.
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxElapsedTime(30*time.Second)), ctx)
	err := backoff.RetryNotify(func() error {
		err := p.setup(ctx)
		if err != nil && (ctx.Err() != nil || !producer.Transient(err)) {
			return backoff.Permanent(err)
		}
		return err
	}, b, func(err error, wait time.Duration) {
		p.log.Warn("projector setup failed, retrying", "wait", wait.Round(time.Millisecond), "err", err)
	})
	if err != nil {
		return nil, err
	}
	if err := p.setupHeld(ctx); err != nil {
		return nil, err
	}
	if err := p.redrive(ctx); err != nil {
		return nil, err
	}
	if err := p.checkStore(ctx); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		if err := p.registerMetrics(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Stats are the projector's counters since it was created.
type Stats struct {
	Applied       uint64 // events applied to the store (including redeliveries)
	Batches       uint64 // successful store writes
	Retries       uint64 // failed store writes that were retried
	WriteFailures uint64 // failed store writes (retried, split, or given up at shutdown)
	// DeadLettered counts events moved to the dead letter: undecodable,
	// on the wrong subject, or refused by the store.
	DeadLettered uint64
	// DeadLetterFailures counts dead-letter publishes that failed; each
	// message was left on the stream for redelivery.
	DeadLetterFailures uint64
	// StoreRefusals counts records the store refused for good
	// (stores.ErrInvalidRecord); each is dead-lettered.
	StoreRefusals uint64
	// Held counts events parked in the held stream for a newer projector:
	// of a newer schema version, or behind one in their change.
	// HeldFailures counts parks that failed (the event was left on the
	// stream for later); Redriven counts parked events stored at start.
	Held, HeldFailures, Redriven uint64
	// ConsumerRecreated counts times the durable consumer was found
	// deleted and recreated from the store's checkpoint; ConsumerRestored
	// times it was found changed and restored (consumer.go).
	ConsumerRecreated, ConsumerRestored uint64
	// BusyNaks counts messages handed back to the stream because their
	// apply loop was busy.
	BusyNaks uint64
	// StaleTokens counts events written with a lock token lower than one
	// already recorded for their pipeline (see Projector.Run).
	StaleTokens uint64
	// Untrusted counts events whose signature the trust list does not
	// accept (see Config.Trust); redeliveries count again.
	Untrusted uint64
	// OutOfChain counts events that do not extend their change's chain
	// (a copy published again, a fork, a downgrade); redeliveries count
	// again. ChainLookupFailures counts deliveries handed back because
	// what precedes them on their subject could not be read.
	OutOfChain, ChainLookupFailures uint64
	// LastSeq is the highest stream sequence applied, 0 before the first
	// write: a high-water mark, with events below it possibly not stored
	// yet (another worker's batch, a held event).
	LastSeq uint64
	// Checkpoint is the store's contiguous checkpoint as this process
	// knows it — read at start, then the highest it recorded: every event
	// at or below it is stored or dead-lettered (see stores.Batch.Through).
	Checkpoint uint64
}

// Stats returns the counters.
func (p *Projector) Stats() Stats {
	return Stats{Applied: p.applied.Load(), Batches: p.batches.Load(), Retries: p.retries.Load(),
		WriteFailures: p.writeFailures.Load(), DeadLettered: p.deadLettered.Load(),
		DeadLetterFailures: p.deadLetterFailures.Load(), StoreRefusals: p.storeRefusals.Load(),
		Held: p.held.Load(), HeldFailures: p.heldFailures.Load(), Redriven: p.redriven.Load(), ConsumerRecreated: p.recreated.Load(), ConsumerRestored: p.restored.Load(), BusyNaks: p.busyNaks.Load(), StaleTokens: p.staleTokens.Load(), Untrusted: p.untrusted.Load(), LastSeq: p.lastSeq.Load(),
		OutOfChain: p.outOfChain.Load(), ChainLookupFailures: p.lookupFailures.Load(), Checkpoint: p.checkpointRecorded()}
}

func (p *Projector) checkpointRecorded() uint64 {
	_, recorded := p.progress.state()
	return recorded
}

// setup opens (with CreateStreams: creates) the streams and creates or
// updates the durable consumer. A missing right ends it at once with an
// error naming the denied subject (natsperm), which New does not retry.
func (p *Projector) setup(ctx context.Context) error {
	ctx, stop := natsperm.Watch(ctx, p.nc, natsperm.JetStream)
	defer stop()
	err := p.setupStreams(ctx)
	if err == nil {
		err = p.setupConsumer(ctx)
	}
	if pe := natsperm.Cause(ctx); err != nil && pe != nil {
		return fmt.Errorf("projector: setup: %w", pe)
	}
	return err
}

func (p *Projector) setupStreams(ctx context.Context) error {
	open := producer.OpenStream
	if p.cfg.CreateStreams {
		open = producer.EnsureStream
	}
	if _, err := open(ctx, p.js, p.cfg.Stream); err != nil {
		return err
	}
	for _, s := range Streams(p.cfg) {
		st, err := openStream(ctx, p.js, s, p.cfg.CreateStreams)
		if err != nil {
			return err
		}
		if s.Name == DeadLetterStream {
			p.deadLetterMaxMsgSize = st.CachedInfo().Config.MaxMsgSize
		}
	}
	return nil
}

func (p *Projector) setupConsumer(ctx context.Context) error {
	var existing *jetstream.ConsumerInfo
	if c, err := p.js.Consumer(ctx, p.cfg.Stream.Name, p.cfg.Consumer); err == nil {
		existing = c.CachedInfo()
		if d := p.drift(existing.Config); len(d) > 0 {
			p.restoredAtStart = true
			p.log.Warn("the durable consumer was changed outside the projector: restoring its configuration (the catch-up stores what the change skipped)",
				"consumer", p.cfg.Consumer, "drift", strings.Join(d, "; "))
		}
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("projector: consumer %s: %w", p.cfg.Consumer, err)
	}
	cons, err := p.js.CreateOrUpdateConsumer(ctx, p.cfg.Stream.Name, p.consumerConfig(existing))
	if err != nil {
		return fmt.Errorf("projector: consumer %s: %w", p.cfg.Consumer, err)
	}
	p.cons = cons
	return nil
}

// Run projects until ctx is cancelled, then finishes the batches in
// flight (within ShutdownTimeout), acknowledges them and returns nil;
// what it cannot finish goes back to the stream for another projector.
// Failures along the way (fetch errors, store outages) are retried, never
// returned: the stream keeps every event until it is stored.
//
// One fetcher feeds Workers apply loops, routing each event by its change:
// all events of a change go to the same loop, in stream order, so a change's
// events are applied in order and two loops never write one issue at once.
// (JetStream spreads messages across concurrent pull requests, so workers
// fetching for themselves would each see every change.) The fetcher waits
// for a busy loop at most a second, then hands that loop's share back to
// the stream with a short delay, so no loop holds the others up; stores are
// order-insensitive (see stores.Store), so a change whose events come back
// later still converges.
//
// The fetcher judges each message (decode, validate, subject check): an
// event that can never be stored goes to a dead-letter loop, one of a
// newer schema version is held for a newer projector (see the package
// documentation). A heartbeat keeps every message the process holds from
// redelivery until it is settled.
//
// The fetcher also flags events written with a stale lock token — lower
// than one already recorded for the same pipeline before them: a runner
// that went on writing after its lease passed to another. It logs each
// (an error, unless the event is the runner's own ExecutionOverlapped
// record) and counts it in Stats.StaleTokens and
// auditflow_projector_stale_token_events_total. The event is stored as
// usual: the store stays a projection of the stream, and verify lists
// every such event.
func (p *Projector) Run(ctx context.Context) error {
	p.log.Info("projector running", "stream", p.cfg.Stream.Name, "consumer", p.cfg.Consumer,
		"workers", p.cfg.Workers, "batch", p.cfg.BatchSize, "ackWait", p.cfg.AckWait, "writeTimeout", p.cfg.WriteTimeout)
	// Health checks report a stopping projector from the moment it is asked
	// to stop, not only once it has.
	defer p.stopping.Store(true)
	defer context.AfterFunc(ctx, func() { p.stopping.Store(true) })()
	p.health.start(p.cfg.Workers)
	// The heartbeat outlives ctx: it keeps the batches finishing during
	// shutdown alive.
	hctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	var hb sync.WaitGroup
	hb.Go(func() { p.heartbeat(hctx) })
	defer func() { stopHeartbeat(); hb.Wait() }()

	parts := make([]chan []delivery, p.cfg.Workers)
	deadLetters := make(chan []delivery, 4)
	var wg sync.WaitGroup
	cpctx, stopCheckpoints := context.WithCancel(ctx)
	defer stopCheckpoints()
	var cp sync.WaitGroup
	cp.Go(func() { p.checkpointLoop(cpctx) })
	cp.Go(func() { p.heldLoop(cpctx) })
	for i := range parts {
		parts[i] = make(chan []delivery, 2)
		wg.Go(func() { p.work(ctx, i, parts[i]) })
	}
	wg.Go(func() { p.deadLetterLoop(ctx, deadLetters) })
	p.fetchLoop(ctx, parts, deadLetters)
	for _, c := range parts {
		close(c) // the loops store what is queued, then return
	}
	close(deadLetters)
	wg.Wait()
	stopCheckpoints()
	cp.Wait()
	p.finalCheckpoint(context.WithoutCancel(ctx))
	p.log.Info("projector stopped", "applied", p.applied.Load(), "deadLettered", p.deadLettered.Load())
	return nil
}

// delivery is a judged message on its way to an apply loop or the
// dead-letter loop.
type delivery struct {
	msg         jetstream.Msg
	seq         uint64        // stream sequence
	consumerSeq uint64        // the consumer's sequence of this delivery
	delivered   uint64        // deliveries so far, this one included
	rec         stores.Record // to store
	reason      error         // to dead-letter
}

// fetchLoop fetches, judges and routes until ctx is cancelled. Each
// fetch is split by change and each loop's share handed over whole, so
// loops apply batches, not the first message they happen to wake up to.
func (p *Projector) fetchLoop(ctx context.Context, parts []chan []delivery, deadLetters chan<- []delivery) {
	fails := backoff.NewExponentialBackOff(backoff.WithMaxInterval(p.cfg.RetryMax), backoff.WithMaxElapsedTime(0))
	busy := make([]bool, len(parts)+1) // the apply loops, then the dead-letter loop
	for ctx.Err() == nil {
		// At most one attempt a second: a failed one logs, and the reading
		// that showed the drift stays cached for that long anyway.
		if st, _, err := p.lag.get(); err == nil && len(st.drift) > 0 && p.restoreTry.allow(lagCacheTTL) && p.restoreConsumer(ctx, st.drift) {
			p.lastCons = 0 // what follows is not contiguous with what came before
		}
		msgs, err := p.fetch()
		p.health.fetched(err)
		if err != nil && len(msgs) == 0 {
			if ctx.Err() != nil {
				break
			}
			if p.recreateConsumer(ctx) {
				p.lastCons = 0 // a new consumer numbers its deliveries from 1
				fails.Reset()
				continue
			}
			wait := fails.NextBackOff()
			p.log.Warn("fetch failed", "err", err, "retryIn", wait)
			sleep(ctx, wait)
			continue
		}
		if err != nil {
			p.log.Warn("fetch ended early", "messages", len(msgs), "err", err)
		}
		fails.Reset()
		p.inflight.add(msgs)
		shares := make([][]delivery, len(parts))
		var poison []delivery
		var toPark []parkItem
		judged := make([]delivery, 0, len(msgs))
		outcomes := make([]decision, 0, len(msgs))
		for _, m := range msgs {
			md, err := m.Metadata()
			if err != nil { // not a JetStream message: cannot happen on a pull consumer
				p.log.Error("message without metadata", "subject", m.Subject(), "err", err)
				p.inflight.remove(m)
				continue
			}
			d := delivery{msg: m, seq: md.Sequence.Stream, consumerSeq: md.Sequence.Consumer, delivered: md.NumDelivered}
			v := decide(p.cfg.Decode, p.cfg.Stream.SubjectPrefix, p.cfg.Trust,
				StreamMsg{Seq: d.seq, Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
			judged, outcomes = append(judged, d), append(outcomes, v)
		}
		unplaced := p.placeAll(ctx, judged, outcomes)
		for i, d := range judged {
			v := outcomes[i]
			switch {
			case v.outcome == outHold:
				toPark = append(toPark, parkItem{d, v.version})
			case v.outcome == outStore && p.parked.has(d.msg.Subject()) && p.parked.waiting() < p.cfg.HeldCap:
				// Behind a parked event of its change: parked too, in order.
				toPark = append(toPark, parkItem{d, 0})
			case unplaced[i] != nil:
				p.unplaced(d, unplaced[i])
			case v.outcome == outStore:
				p.watchToken(v.rec.Event, d.seq)
				p.watchTrust(v.rec)
				p.watchChain(v.rec)
				d.rec = v.rec
				w := route(v.rec.Event, len(parts))
				shares[w] = append(shares[w], d)
			default:
				d.reason = v.reason
				poison = append(poison, d)
			}
		}
		if len(toPark) > 0 {
			poison = append(poison, p.park(ctx, toPark)...)
		}
		// One deadline for the whole fetch: busy loops cost at most
		// handoverWait together. A loop that could not take its last share
		// is not waited for again until it takes one: while it is stuck,
		// the others go at full speed.
		now := time.Now()
		deadline := func(i int) time.Time {
			if busy[i] {
				return now
			}
			return now.Add(handoverWait)
		}
		if len(poison) > 0 {
			busy[len(parts)] = !p.handOver(ctx, deadLetters, poison, deadline(len(parts)), "dead-letter")
		}
		for i, share := range shares {
			if len(share) > 0 {
				busy[i] = !p.handOver(ctx, parts[i], share, deadline(i), "apply "+strconv.Itoa(i))
			}
		}
	}
}

// handOver gives share to a loop, waiting for it until deadline, and
// reports whether it did. A share the loop cannot take by then goes back
// to the stream with a delay (doubling with each delivery, up to AckWait),
// so one busy loop never stops the others; at shutdown it goes back at
// once, for another projector.
func (p *Projector) handOver(ctx context.Context, to chan<- []delivery, share []delivery, deadline time.Time, loop string) bool {
	select {
	case to <- share:
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case to <- share:
		return true
	case <-ctx.Done():
		for _, d := range share {
			p.settle(d.msg, d.msg.Nak)
		}
		return false
	case <-t.C:
	}
	p.busyNaks.Add(uint64(len(share)))
	for _, d := range share {
		delay := growingDelay(d.delivered, busyNakMin, p.cfg.AckWait)
		p.settle(d.msg, func() error { return d.msg.NakWithDelay(delay) })
	}
	if p.busyLog.allow(10 * time.Second) {
		p.log.Warn("a loop is busy: its messages are handed back to the stream for later", "loop", loop,
			"messages", len(share), "firstSeq", share[0].seq, "busyNaksSoFar", p.busyNaks.Load())
	}
	return false
}

// watchToken flags e if its lock token is stale (see Run).
func (p *Projector) watchToken(e events.Event, seq uint64) {
	newest, stale := p.tokens.check(e, seq)
	if !stale {
		return
	}
	p.staleTokens.Add(1)
	attrs := []any{"seq", seq, "pipeline", e.Pipeline, "change", e.ChangeID, "type", e.Type,
		"lockToken", e.LockToken, "newerToken", newest, "runner", e.RunnerID}
	if e.Type == events.ExecutionOverlapped {
		p.log.Warn("an execution overlapped a newer lock holder; its runner recorded it for an operator", attrs...)
		return
	}
	p.log.Error("event written with a stale lock token: its writer no longer held the pipeline lock", attrs...)
}

// fetch returns up to a batch for every apply loop without waiting if any
// messages are available, and otherwise waits up to IdleWait for the first
// one (then takes whatever else has arrived), so a busy stream gets full
// batches and a quiet one low latency.
func (p *Projector) fetch() ([]jetstream.Msg, error) {
	n := p.cfg.BatchSize * p.cfg.Workers
	msgs, err := drain(p.cons.FetchNoWait(n))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	// Not FetchContext: a message delivered just as a client-side deadline
	// fires can be dropped by the client, and then sits unacknowledged for
	// AckWait. With a server-side expiry the server ends the request, so
	// nothing it delivered is lost; shutdown waits at most IdleWait.
	msgs, err = drain(p.cons.Fetch(1, jetstream.FetchMaxWait(p.cfg.IdleWait)))
	if err != nil || len(msgs) == 0 || n == 1 {
		return msgs, err
	}
	more, err := drain(p.cons.FetchNoWait(n - 1))
	return append(msgs, more...), err
}

func drain(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var out []jetstream.Msg
	for m := range b.Messages() {
		out = append(out, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return out, err
	}
	return out, nil
}

// work applies what the fetcher routes to it, joining the shares that have
// queued up into batches of at most about BatchSize, until its channel is
// closed and empty.
func (p *Projector) work(ctx context.Context, worker int, in <-chan []delivery) {
	log := p.log.With("worker", worker)
	for {
		batch, ok := <-in
		if !ok {
			return
		}
	more:
		for len(batch) < p.cfg.BatchSize {
			select {
			case share, ok := <-in:
				if !ok {
					break more
				}
				batch = append(batch, share...)
			default:
				break more
			}
		}
		p.apply(ctx, log, worker, batch)
	}
}

// apply stores a batch (see write). The batch is finished even if ctx is
// cancelled, within ShutdownTimeout of the cancellation.
func (p *Projector) apply(ctx context.Context, log *slog.Logger, worker int, batch []delivery) {
	bctx, cancel := shutdownContext(ctx, p.cfg.ShutdownTimeout)
	defer cancel()
	defer p.health.writeDone(worker)
	p.write(bctx, log, worker, batch)
}

// errWriteTimeout: a store write attempt ran out of WriteTimeout.
var errWriteTimeout = errors.New("store write timed out")

// write stores batch and only then acknowledges its messages. A failed
// attempt is retried with back-off for as long as it takes, or until ctx
// ends: then the messages go back to the stream at once. Two failures
// split the batch instead, each half written the same way: a refusal
// (stores.ErrInvalidRecord), so that the refused records are found — a
// lone one is dead-lettered with the store's reason — and the rest stored;
// and a timeout, since a smaller write is quicker. A split costs about
// 2·log2(n) writes per culprit, and only when there is one.
func (p *Projector) write(ctx context.Context, log *slog.Logger, worker int, batch []delivery) {
	recs := make([]stores.Record, len(batch))
	for i, d := range batch {
		recs[i] = d.rec
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(p.cfg.RetryMax),
		backoff.WithMaxElapsedTime(0))
	for {
		err := p.attempt(ctx, worker, recs)
		if err == nil {
			p.progress.finish(seqsOf(recs)...)
			for _, d := range batch {
				p.settle(d.msg, d.msg.Ack) // a lost ack means a harmless redelivery
			}
			p.checkpointSoon()
			p.health.progressed()
			p.health.writeDone(worker)
			return
		}
		refused := errors.Is(err, stores.ErrInvalidRecord)
		if refused && len(batch) == 1 {
			p.storeRefusals.Add(1)
			p.deadLetter(ctx, batch[0], refusalReason(err))
			return
		}
		// Failing since the first failure after this loop's last success.
		p.health.writeFailed(worker, len(recs), recs[0].Seq, err)
		timedOut := errors.Is(err, errWriteTimeout)
		if timedOut && ctx.Err() == nil {
			// A store that timed out is busy: wait (with jitter, so that
			// workers do not come back together) before trying again,
			// split or not.
			p.retries.Add(1)
			wait := b.NextBackOff()
			log.Warn("store write timed out; backing off", "events", len(recs), "firstSeq", recs[0].Seq, "err", err, "retryIn", wait)
			sleep(ctx, wait)
		}
		if ctx.Err() == nil && (refused || (timedOut && len(batch) > 1)) {
			log.Warn("store write failed; splitting the batch", "events", len(recs), "firstSeq", recs[0].Seq, "err", err)
			half := len(batch) / 2
			p.write(ctx, log, worker, batch[:half])
			p.write(ctx, log, worker, batch[half:])
			return
		}
		if ctx.Err() == nil && !timedOut {
			p.retries.Add(1)
			wait := b.NextBackOff()
			log.Warn("store write failed, retrying", "events", len(recs), "firstSeq", recs[0].Seq, "err", err, "retryIn", wait)
			sleep(ctx, wait)
		}
		if ctx.Err() != nil {
			log.Warn("batch handed back to the stream for redelivery", "events", len(recs), "firstSeq", recs[0].Seq, "err", err)
			for _, d := range batch {
				p.settle(d.msg, d.msg.Nak)
			}
			return
		}
	}
}

// attempt makes one store write of recs within WriteTimeout, and reports
// it (metrics, AuditWrite).
func (p *Projector) attempt(ctx context.Context, worker int, recs []stores.Record) error {
	if !p.writers.acquire(ctx) {
		return context.Cause(ctx)
	}
	actx, cancel := context.WithTimeoutCause(ctx, p.cfg.WriteTimeout, errWriteTimeout)
	start := time.Now()
	// The checkpoint this write may claim: everything at or below it is
	// stored once this batch is (see checkpoint.go).
	through := p.progress.through(seqsOf(recs))
	err := p.store.Apply(actx, stores.Batch{Checkpoint: p.cfg.Consumer, Through: through, Records: recs})
	took := time.Since(start)
	p.writers.release(took, err != nil && !errors.Is(err, stores.ErrInvalidRecord))
	if err == nil {
		p.progress.stored(through)
	}
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errWriteTimeout) {
		err = fmt.Errorf("%w after %s: %w", errWriteTimeout, p.cfg.WriteTimeout, err)
	}
	cancel()
	// Counted before the AuditWrite and the acks, so whoever sees either
	// sees the counters and metrics include this write.
	p.observeWrite(took, recs, err)
	p.publishWrite(AuditWrite{Store: p.cfg.StoreName, Consumer: p.cfg.Consumer, Worker: worker,
		Count: len(recs), FirstSeq: recs[0].Seq, LastSeq: recs[len(recs)-1].Seq, Through: through,
		Duration: took, At: time.Now().UTC(), Error: errString(err), SignaturesUnchecked: p.cfg.Trust == nil})
	return err
}

// logLimit lets a repeated log line through at most once per interval.
type logLimit struct{ last atomic.Int64 }

func (l *logLimit) allow(every time.Duration) bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	return now-last >= int64(every) && l.last.CompareAndSwap(last, now)
}

// shutdownContext returns a context that is not cancelled with parent, but
// ends timeout after parent is.
func shutdownContext(parent context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() {
		t := time.AfterFunc(timeout, cancel)
		context.AfterFunc(ctx, func() { t.Stop() })
	})
	return ctx, func() { stop(); cancel() }
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// WaitCaughtUp blocks until every event on the stream when it is called
// has been applied and acknowledged (or dead-lettered) by this projector's
// consumer, or ctx ends. The embedded runner uses it to show a complete
// changeLog.
//
// It waits for the consumer's ack floor to reach the stream's last
// sequence, not for "nothing pending": the consumer learns of a new
// message asynchronously, so right after a publish its pending count can
// still read 0.
func (p *Projector) WaitCaughtUp(ctx context.Context) error {
	s, err := p.js.Stream(ctx, p.cfg.Stream.Name)
	if err != nil {
		return fmt.Errorf("projector: stream %s: %w", p.cfg.Stream.Name, err)
	}
	target := s.CachedInfo().State.LastSeq
	for {
		info, err := p.cons.Info(ctx)
		if err == nil && info.AckFloor.Stream >= target && info.NumAckPending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
