package projector

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
)

// Config configures a Projector. Zero fields take the defaults shown.
type Config struct {
	// Stream is the audit stream (its name and subject prefix).
	Stream producer.StreamConfig
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
	// Default 30s; batches still being retried are kept alive.
	AckWait time.Duration
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
	// the batch in flight before leaving it unacknowledged for redelivery.
	// Default 30s.
	ShutdownTimeout time.Duration
	// DeadLetterPrefix is where undecodable events are copied, as
	// <prefix>.<original subject>. Default "audit.deadletter".
	DeadLetterPrefix string
	// WritesPrefix is where AuditWrite events go. Default "audit.writes".
	WritesPrefix string
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
	DefaultDeadLetterPrefix = "audit.deadletter"
	DefaultWritesPrefix     = "audit.writes"
	DeadLetterStream        = "AUDIT_DEADLETTER"
	WritesStream            = "AUDIT_WRITES"
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
	setDefault(&c.AckWait, 30*time.Second)
	setDefault(&c.IdleWait, 250*time.Millisecond)
	setDefault(&c.RetryMax, 10*time.Second)
	setDefault(&c.ShutdownTimeout, 30*time.Second)
	setDefault(&c.DeadLetterPrefix, DefaultDeadLetterPrefix)
	setDefault(&c.WritesPrefix, DefaultWritesPrefix)
	switch {
	case c.Workers < 1 || c.Workers > 64:
		return fmt.Errorf("%w: workers %d is outside 1..64", ErrInvalidConfig, c.Workers)
	case c.BatchSize < 1 || c.BatchSize > 10_000:
		return fmt.Errorf("%w: batch size %d is outside 1..10000", ErrInvalidConfig, c.BatchSize)
	case c.MaxAckPending < c.BatchSize*c.Workers:
		return fmt.Errorf("%w: max ack pending %d is below batch size × workers (%d)", ErrInvalidConfig, c.MaxAckPending, c.BatchSize*c.Workers)
	case c.AckWait < time.Second || c.IdleWait <= 0 || c.RetryMax <= 0 || c.ShutdownTimeout <= 0:
		return fmt.Errorf("%w: ack wait must be at least 1s and other durations positive", ErrInvalidConfig)
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

	applied, batches, retries, deadLettered, writeFailures, staleTokens atomic.Uint64
	tokens                                                              tokenWatch

	lastSeq       atomic.Uint64        // highest sequence applied
	stopping      atomic.Bool          // Run's context is done
	writeDuration prometheus.Histogram // nil without metrics
}

// New checks the configuration and creates what the projector needs on the
// server, if missing: the audit stream, the dead-letter and writes streams,
// and the durable consumer.
func New(ctx context.Context, js jetstream.JetStream, store stores.Store, cfg Config) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Projector{js: js, nc: js.Conn(), store: store, cfg: cfg, log: log.With("store", cfg.StoreName)}
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
	WriteFailures uint64 // failed store writes (retried, or given up at shutdown)
	DeadLettered  uint64 // undecodable events moved to the dead letter
	// StaleTokens counts events written with a lock token lower than one
	// already recorded for their pipeline (see Projector.Run).
	StaleTokens uint64
	LastSeq     uint64 // highest stream sequence applied, 0 before the first write
}

// Stats returns the counters.
func (p *Projector) Stats() Stats {
	return Stats{Applied: p.applied.Load(), Batches: p.batches.Load(), Retries: p.retries.Load(),
		WriteFailures: p.writeFailures.Load(), DeadLettered: p.deadLettered.Load(), StaleTokens: p.staleTokens.Load(), LastSeq: p.lastSeq.Load()}
}

func (p *Projector) setup(ctx context.Context) error {
	if _, err := producer.EnsureStream(ctx, p.js, p.cfg.Stream); err != nil {
		return err
	}
	for _, s := range []jetstream.StreamConfig{
		{Name: DeadLetterStream, Subjects: []string{p.cfg.DeadLetterPrefix + ".>"}, Storage: jetstream.FileStorage,
			Replicas: p.cfg.Stream.Replicas, Description: "auditflow events a projector could not decode"},
		{Name: WritesStream, Subjects: []string{p.cfg.WritesPrefix + ".>"}, Storage: jetstream.FileStorage,
			Replicas: p.cfg.Stream.Replicas, MaxAge: 7 * 24 * time.Hour, Description: "auditflow AuditWrite events (projector telemetry)"},
	} {
		if _, err := p.js.Stream(ctx, s.Name); errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err := p.js.CreateStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("projector: create stream %s: %w", s.Name, err)
			}
		} else if err != nil {
			return fmt.Errorf("projector: stream %s: %w", s.Name, err)
		}
	}
	cons, err := p.js.CreateOrUpdateConsumer(ctx, p.cfg.Stream.Name, jetstream.ConsumerConfig{
		Durable:       p.cfg.Consumer,
		Description:   "auditflow projector into " + p.cfg.StoreName,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		MaxDeliver:    -1, // a store outage must never drop an event
		MaxAckPending: p.cfg.MaxAckPending,
		FilterSubject: p.cfg.Stream.SubjectPrefix + ".>",
	})
	if err != nil {
		return fmt.Errorf("projector: consumer %s: %w", p.cfg.Consumer, err)
	}
	p.cons = cons
	return nil
}

// Run projects until ctx is cancelled, then finishes the batches in
// flight, acknowledges them and returns nil. Failures along the way (fetch
// errors, store outages) are retried, never returned: the stream keeps
// every event until it is stored.
//
// One fetcher feeds Workers apply loops, routing each event by its change:
// all events of a change go to the same loop, in stream order, so a change's
// events are applied in order and two loops never write one issue at once.
// (JetStream spreads messages across concurrent pull requests, so workers
// fetching for themselves would each see every change.)
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
		"workers", p.cfg.Workers, "batch", p.cfg.BatchSize)
	// Health checks report a stopping projector from the moment it is asked
	// to stop, not only once it has.
	defer p.stopping.Store(true)
	defer context.AfterFunc(ctx, func() { p.stopping.Store(true) })()
	parts := make([]chan []delivery, p.cfg.Workers)
	var wg sync.WaitGroup
	for i := range parts {
		parts[i] = make(chan []delivery, 2)
		wg.Go(func() { p.work(ctx, i, parts[i]) })
	}
	p.fetchLoop(ctx, parts)
	for _, c := range parts {
		close(c) // the loops store what is queued, then return
	}
	wg.Wait()
	p.log.Info("projector stopped", "applied", p.applied.Load(), "deadLettered", p.deadLettered.Load())
	return nil
}

// delivery is a decoded message on its way to an apply loop.
type delivery struct {
	msg jetstream.Msg
	rec stores.Record
}

// fetchLoop fetches, decodes and routes until ctx is cancelled. Each
// fetch is split by change and each loop's share handed over whole, so
// loops apply batches, not the first message they happen to wake up to.
func (p *Projector) fetchLoop(ctx context.Context, parts []chan []delivery) {
	fails := backoff.NewExponentialBackOff(backoff.WithMaxInterval(p.cfg.RetryMax), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		msgs, err := p.fetch()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			wait := fails.NextBackOff()
			p.log.Warn("fetch failed", "err", err, "retryIn", wait)
			sleep(ctx, wait)
			continue
		}
		fails.Reset()
		shares := make([][]delivery, len(parts))
		for _, m := range msgs {
			md, err := m.Metadata()
			if err != nil { // not a JetStream message: cannot happen on a pull consumer
				p.log.Error("message without metadata", "subject", m.Subject(), "err", err)
				continue
			}
			e, err := events.Decode(m.Data())
			if err != nil {
				dctx, cancel := shutdownContext(ctx, p.cfg.ShutdownTimeout)
				p.deadLetter(dctx, m, md.Sequence.Stream, err)
				cancel()
				continue
			}
			p.watchToken(e, md.Sequence.Stream)
			h := fnv.New32a()
			h.Write([]byte(e.Pipeline))
			h.Write([]byte{0})
			h.Write([]byte(e.ChangeID))
			i := h.Sum32() % uint32(len(parts))
			rec := stores.Record{Seq: md.Sequence.Stream, Hash: events.Hash(m.Data()), Event: e}
			shares[i] = append(shares[i], delivery{msg: m, rec: rec})
		}
		for i, share := range shares {
			if len(share) > 0 {
				parts[i] <- share // blocks while that loop is behind: in-flight work stays bounded
			}
		}
	}
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

// apply stores a batch, retrying until it succeeds, and only then
// acknowledges its messages.
func (p *Projector) apply(ctx context.Context, log *slog.Logger, worker int, batch []delivery) {
	// The batch is finished even if ctx is cancelled, within
	// ShutdownTimeout of the cancellation.
	bctx, cancel := shutdownContext(ctx, p.cfg.ShutdownTimeout)
	defer cancel()
	recs := make([]stores.Record, len(batch))
	for i, d := range batch {
		recs[i] = d.rec
	}
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(p.cfg.RetryMax),
		backoff.WithMaxElapsedTime(0)), bctx)
	err := backoff.RetryNotify(func() error {
		start := time.Now()
		err := p.store.Apply(bctx, stores.Batch{Checkpoint: p.cfg.Consumer, Records: recs})
		took := time.Since(start)
		// Counted before the AuditWrite and the acks, so whoever sees
		// either sees the counters and metrics include this write.
		p.observeWrite(took, recs, err)
		p.publishWrite(AuditWrite{Store: p.cfg.StoreName, Consumer: p.cfg.Consumer, Worker: worker,
			Count: len(recs), FirstSeq: recs[0].Seq, LastSeq: recs[len(recs)-1].Seq,
			Duration: took, At: time.Now().UTC(), Error: errString(err)})
		return err
	}, b, func(err error, wait time.Duration) {
		p.retries.Add(1)
		log.Warn("store write failed, retrying", "events", len(recs), "firstSeq", recs[0].Seq, "err", err, "retryIn", wait)
		for _, d := range batch {
			_ = d.msg.InProgress() // keep the batch from being redelivered while we retry
		}
	})
	if err != nil {
		log.Warn("batch left unacknowledged for redelivery", "events", len(recs), "firstSeq", recs[0].Seq, "err", err)
		return
	}
	for _, d := range batch {
		if err := d.msg.Ack(); err != nil {
			// The write is durable; a lost ack means a harmless redelivery.
			log.Debug("ack failed", "err", err)
		}
	}
}

// deadLetter copies an undecodable message to the dead-letter subject and
// terminates it, so it never blocks the events behind it.
func (p *Projector) deadLetter(ctx context.Context, m jetstream.Msg, seq uint64, reason error) {
	log := p.log
	dl := &nats.Msg{Subject: p.cfg.DeadLetterPrefix + "." + m.Subject(), Data: m.Data(), Header: nats.Header{}}
	for k, v := range m.Headers() {
		dl.Header[k] = v
	}
	dl.Header.Del(jetstream.MsgIDHeader)
	dl.Header.Set(HeaderReason, reason.Error())
	dl.Header.Set(HeaderSubject, m.Subject())
	dl.Header.Set(HeaderSequence, strconv.FormatUint(seq, 10))
	dl.Header.Set(HeaderConsumer, p.cfg.Consumer)
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxInterval(p.cfg.RetryMax), backoff.WithMaxElapsedTime(0)), ctx)
	err := backoff.Retry(func() error {
		// The id makes the copy idempotent if this message is redelivered.
		_, err := p.js.PublishMsg(ctx, dl, jetstream.WithMsgID(fmt.Sprintf("%s-%d", p.cfg.Consumer, seq)))
		return err
	}, b)
	if err != nil {
		log.Warn("dead letter not written; message left for redelivery", "seq", seq, "err", err)
		return
	}
	p.deadLettered.Add(1) // before the terminate, as applied is counted before the ack
	if err := m.TermWithReason(truncate(reason.Error(), 256)); err != nil {
		log.Warn("terminate failed", "seq", seq, "err", err)
	}
	log.Error("dead-lettered an undecodable event", "seq", seq, "subject", m.Subject(), "to", dl.Subject, "reason", reason)
}

// Headers on dead-lettered messages.
const (
	HeaderReason   = "Auditflow-Deadletter-Reason"
	HeaderSubject  = "Auditflow-Original-Subject"
	HeaderSequence = "Auditflow-Original-Sequence"
	HeaderConsumer = "Auditflow-Consumer"
)

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
