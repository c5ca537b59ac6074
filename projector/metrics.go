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
		counter("auditflow_projector_store_write_failures_total", "Failed store write attempts; each is retried until the write succeeds or shutdown gives up on it.", &p.writeFailures),
		counter("auditflow_projector_dead_lettered_total", "Undecodable events moved to the dead-letter stream.", &p.deadLettered),
		counter("auditflow_projector_stale_token_events_total", "Events written with a lock token lower than one already recorded for their pipeline (a writer that outlived its lease).", &p.staleTokens),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "auditflow_projector_last_applied_sequence",
			Help: "Highest stream sequence this process has applied to the store (0 before its first write).",
		}, func() float64 { return float64(p.lastSeq.Load()) }),
		p.writeDuration,
		&lagCollector{
			desc: prometheus.NewDesc("auditflow_projector_lag_messages",
				"Messages of the stream not yet acknowledged by the consumer (pending + delivered unacknowledged), read from the server at most once a second.",
				nil, nil),
			pending: p.pending,
			log:     p.log,
			ttl:     lagCacheTTL,
			timeout: lagTimeout,
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

// pending returns the consumer's lag: messages not yet delivered plus
// messages delivered and not yet acknowledged.
func (p *Projector) pending(ctx context.Context) (uint64, error) {
	if s := p.nc.Status(); s != nats.CONNECTED {
		// A request would wait out its timeout in the reconnect buffer.
		return 0, fmt.Errorf("NATS connection is %s", s)
	}
	info, err := p.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumPending + uint64(info.NumAckPending), nil
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

// lagCollector reads the consumer's lag from the server when scraped. The
// reading (or the failure to get one) is kept for ttl, and one scrape at a
// time asks, so however many scrapers there are the server sees at most
// one consumer-info request per ttl, each bounded by timeout. No goroutine
// is needed: nothing runs between scrapes.
type lagCollector struct {
	desc    *prometheus.Desc
	pending func(context.Context) (uint64, error)
	log     *slog.Logger
	ttl     time.Duration
	timeout time.Duration

	mu  sync.Mutex
	at  time.Time // when val and err were read
	val uint64
	err error
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect omits the sample when the server cannot be asked: an absent
// series alerts as "no data", where a stale number would look healthy.
func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= c.ttl {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		c.val, c.err = c.pending(ctx)
		cancel()
		c.at = time.Now()
		if c.err != nil {
			c.log.Debug("consumer lag not read", "err", c.err)
		}
	}
	if c.err == nil {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.val))
	}
}
