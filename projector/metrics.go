package projector

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/stores"
)

// The lag is read from the server at most once per lagCacheTTL, each read
// bounded by lagTimeout.
const (
	lagCacheTTL = time.Second
	lagTimeout  = 2 * time.Second
)

// writeDurationBuckets are the store write histogram's bounds, in seconds:
// from an SQLite commit (~1ms) to a write that waits out a replica set
// election or a retrying SDK (~10s).
var writeDurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// registerMetrics registers the projector's collectors on reg, labelled
// with store and consumer. The counters read the same atomics as Stats, so
// the two never disagree. Nothing is left registered if one fails.
func (p *Projector) registerMetrics(reg prometheus.Registerer) error {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"store": p.cfg.StoreName, "consumer": p.cfg.Consumer}, reg)
	p.writeDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "auditflow_projector_store_write_duration_seconds",
		Help:    "Duration of store write attempts (one batch each), successful or not.",
		Buckets: writeDurationBuckets,
	})
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	cs := []prometheus.Collector{
		counter("auditflow_projector_events_applied_total", "Events written to the store (redeliveries count again).", &p.applied),
		counter("auditflow_projector_batches_total", "Successful store writes.", &p.batches),
		counter("auditflow_projector_store_write_failures_total", "Failed store write attempts (errors, timeouts, refusals); each is retried, or split to isolate a refused record, until it succeeds or shutdown gives up on it.", &p.writeFailures),
		counter("auditflow_projector_dead_lettered_total", "Events moved to the dead-letter stream: undecodable, published on the wrong subject, or refused by the store.", &p.deadLettered),
		counter("auditflow_projector_dead_letter_failures_total", "Dead-letter publishes that failed after all attempts; the message was left on the stream for redelivery.", &p.deadLetterFailures),
		counter("auditflow_projector_store_refusals_total", "Records the store refused for good (stores.ErrInvalidRecord); each is dead-lettered and the rest of its batch stored.", &p.storeRefusals),
		counter("auditflow_projector_held_newer_version_total", "Events parked in the held stream (AUDIT_HELD) for a newer projector: of a newer schema version than this build reads, or behind one in their change.", &p.held),
		counter("auditflow_projector_held_redriven_total", "Parked events this process stored when it started (a newer build reading what an older one parked).", &p.redriven),
		counter("auditflow_projector_held_failures_total", "Events that could not be parked (the held stream did not store the pointer); each was left on the stream for later.", &p.heldFailures),
		counter("auditflow_projector_consumer_recreated_total", "Times the durable consumer was found deleted and recreated from the store's checkpoint.", &p.recreated),
		counter("auditflow_projector_consumer_restored_total", "Times the durable consumer was found changed outside the projector and restored, what the change skipped stored from the checkpoint.", &p.restored),
		counter("auditflow_projector_busy_worker_naks_total", "Messages handed back to the stream because their apply loop was busy for longer than the hand-over wait.", &p.busyNaks),
		counter("auditflow_projector_stale_token_events_total", "Events written with a lock token lower than one already recorded for their pipeline (a writer that outlived its lease).", &p.staleTokens),
		counter("auditflow_projector_out_of_chain_events_total", "Events that do not extend their change's chain (a copy of an earlier event published again, a fork, a downgrade); each opens its change's issue as OUT_OF_CHAIN. Redeliveries count again.", &p.outOfChain),
		counter("auditflow_projector_chain_lookup_failures_total", "Deliveries handed back to the stream because what precedes them on their subject could not be read.", &p.lookupFailures),
		counter("auditflow_projector_untrusted_events_total", "Events whose signature the trust list does not accept (unsigned, unknown key, bad signature, outside the key's roles or pipelines, revoked key); each opens its change's issue. Redeliveries count again.", &p.untrusted),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_held_newer_version_events",
			Help: "Events waiting in the held stream for this consumer (read every few seconds): an upgrade is needed.",
		}, func() float64 { return float64(p.parked.waiting()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_consumer_drift",
			Help: "1 while the durable consumer's configuration differs from the projector's (changed outside it): the checkpoint does not move until a restart restores it; else 0.",
		}, func() float64 {
			if st, _, err := p.lag.get(); err == nil && len(st.drift) > 0 {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_write_concurrency",
			Help: "How many workers may write to the store at once now: halved by a failed or timed-out write, raised by one by a quick one, between 1 and the workers.",
		}, func() float64 { return float64(p.writers.current()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_stalled",
			Help: "1 while a store write has been failing for longer than the stall time, or nothing was stored or acknowledged for that long with a lag; else 0.",
		}, func() float64 {
			if p.stalled() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_last_applied_sequence",
			Help: "Highest stream sequence this process has applied to the store (0 before its first write): a high-water mark, with events below it possibly not stored yet.",
		}, func() float64 { return float64(p.lastSeq.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_checkpoint_sequence",
			Help: "The store's contiguous checkpoint as this process knows it (read at start, then the highest it recorded): every stream event at or below it is stored or dead-lettered.",
		}, func() float64 { return float64(p.checkpointRecorded()) }),
		p.writeDuration,
		&lagCollector{
			desc: prometheus.NewDesc("auditflow_projector_lag_messages",
				"Messages of the stream not yet acknowledged by the consumer (pending + delivered unacknowledged), read from the server at most once a second.",
				nil, nil),
			lag: &p.lag,
		},
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			p.writeDuration = nil
			return fmt.Errorf("projector: register metrics: %w", err)
		}
	}
	return nil
}

// consumerState is what the projector reads of its consumer on the
// server: the lag (messages not yet delivered plus messages delivered and
// not yet acknowledged), and where its deliveries and acknowledgements
// stand, which move while any process on the consumer makes progress.
type consumerState struct {
	lag                 uint64
	ackFloor, delivered uint64   // stream sequences
	drift               []string // how its configuration differs from the projector's (consumer.go)
}

func (p *Projector) consumerState(ctx context.Context) (consumerState, error) {
	if s := p.nc.Status(); s != nats.CONNECTED {
		// A request would wait out its timeout in the reconnect buffer.
		return consumerState{}, fmt.Errorf("NATS connection is %s", s)
	}
	info, err := p.cons.Info(ctx)
	if err != nil {
		return consumerState{}, err
	}
	return consumerState{lag: info.NumPending + uint64(info.NumAckPending),
		ackFloor: info.AckFloor.Stream, delivered: info.Delivered.Stream, drift: p.drift(info.Config)}, nil
}

// observeWrite counts one store write attempt of recs.
func (p *Projector) observeWrite(d time.Duration, recs []stores.Record, err error) {
	if p.writeDuration != nil {
		p.writeDuration.Observe(d.Seconds())
	}
	if err != nil {
		p.writeFailures.Add(1)
		return
	}
	p.applied.Add(uint64(len(recs)))
	p.batches.Add(1)
	var last uint64 // redeliveries can put a lower sequence last
	for _, r := range recs {
		last = max(last, r.Seq)
	}
	for { // batches finish out of order across workers: keep the highest
		cur := p.lastSeq.Load()
		if last <= cur || p.lastSeq.CompareAndSwap(cur, last) {
			return
		}
	}
}

// lagReader reads the consumer's state from the server. The reading (or
// the failure to get one) is kept for ttl, and one caller at a time asks,
// so however many scrapers and probes there are the server sees at most
// one consumer-info request per ttl, each bounded by timeout. No goroutine
// is needed: nothing runs between reads. It also notes when the
// consumer's deliveries or acknowledgements were last seen to move.
type lagReader struct {
	read    func(context.Context) (consumerState, error)
	log     *slog.Logger
	ttl     time.Duration
	timeout time.Duration

	mu    sync.Mutex
	at    time.Time // when val and err were read
	val   consumerState
	err   error
	moved time.Time // when ackFloor or delivered were first seen at their current values
}

// forget drops the reading, so the next get reads the server.
func (c *lagReader) forget() {
	c.mu.Lock()
	c.at = time.Time{}
	c.mu.Unlock()
}

func (c *lagReader) get() (consumerState, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= c.ttl {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		val, err := c.read(ctx)
		cancel()
		c.at, c.err = time.Now(), err
		if err != nil {
			c.log.Debug("consumer state not read", "err", err)
		} else {
			if c.moved.IsZero() || val.ackFloor != c.val.ackFloor || val.delivered != c.val.delivered {
				c.moved = c.at
			}
			c.val = val
		}
	}
	return c.val, c.moved, c.err
}

// lagCollector exports the lag when scraped.
type lagCollector struct {
	desc *prometheus.Desc
	lag  *lagReader
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect omits the sample when the server cannot be asked: an absent
// series alerts as "no data", where a stale number would look healthy.
func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	if val, _, err := c.lag.get(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(val.lag))
	}
}
