// Command writes-metrics is an example AuditWrite subscriber: it turns the
// AuditWrite events every projector publishes (one per store write attempt)
// into Prometheus metrics, for all stores at once, without touching a store
// or a projector. The projectors' own /metrics say the same about each
// process; this shows what any service on the bus can derive.
//
//	go run ./examples/writes-metrics --nats-url nats://127.0.0.1:4222 --listen :9465
//	curl -s localhost:9465/metrics | grep auditflow_writes
//
// It exposes, labelled by store and consumer:
//
//	auditflow_writes_total                    counter: write attempts
//	auditflow_writes_failed_total             counter: failed write attempts
//	auditflow_writes_events_total             counter: events in successful writes
//	auditflow_writes_duration_seconds         histogram: write attempt durations
//
// and auditflow_writes_dropped_total, the AuditWrites this subscriber lost
// by falling behind. It sees writes from the moment it subscribes; for
// history, consume the AUDIT_WRITES stream instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/auditflow/auditflow/projector"
)

func main() {
	natsURL := flag.String("nats-url", nats.DefaultURL, "NATS server URLs, comma-separated")
	listen := flag.String("listen", ":9465", "host:port serving /metrics")
	prefix := flag.String("writes-prefix", projector.DefaultWritesPrefix, "subject prefix of AuditWrite events")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *natsURL, *listen, *prefix, log)
	stop()
	if err != nil {
		log.Error("writes-metrics failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, natsURL, listen, prefix string, log *slog.Logger) error {
	nc, err := nats.Connect(natsURL, nats.Name("auditflow-writes-metrics"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	sub, err := projector.NewWriteSubscription(ctx, nc, prefix, "*")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	m := newWriteMetrics(reg, sub.Dropped)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		_ = sub.Close()
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	log.Info("serving AuditWrite metrics", "addr", ln.Addr().String(), "subject", prefix+".*")

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	})
	err = sub.Run(ctx, m.observe) // until ctx is cancelled
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	wg.Wait()
	return err
}

// writeMetrics turns AuditWrites into Prometheus metrics.
type writeMetrics struct {
	writes, failed, events *prometheus.CounterVec
	duration               *prometheus.HistogramVec
}

func newWriteMetrics(reg prometheus.Registerer, dropped func() int) *writeMetrics {
	labels := []string{"store", "consumer"}
	m := &writeMetrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "auditflow_writes_total", Help: "Store write attempts reported by AuditWrite events."}, labels),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "auditflow_writes_failed_total", Help: "Failed store write attempts (the projector retries them)."}, labels),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "auditflow_writes_events_total", Help: "Events in successful store writes."}, labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "auditflow_writes_duration_seconds", Help: "Store write attempt durations.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, labels),
	}
	reg.MustRegister(m.writes, m.failed, m.events, m.duration,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "auditflow_writes_dropped_total", Help: "AuditWrites this subscriber lost by falling behind."},
			func() float64 { return float64(dropped()) }))
	return m
}

func (m *writeMetrics) observe(w projector.AuditWrite) {
	m.writes.WithLabelValues(w.Store, w.Consumer).Inc()
	m.duration.WithLabelValues(w.Store, w.Consumer).Observe(w.Duration.Seconds())
	if w.Error != "" {
		m.failed.WithLabelValues(w.Store, w.Consumer).Inc()
		return
	}
	m.events.WithLabelValues(w.Store, w.Consumer).Add(float64(w.Count))
}
