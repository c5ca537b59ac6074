package projector

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyTimeout bounds the store read of a /readyz check.
const ReadyTimeout = 2 * time.Second

// Ready reports whether the projector can do its work now: it has not been
// asked to stop, its NATS connection is up, and the store answers a cheap
// read (the consumer's checkpoint). The error, wrapping ErrNotReady, names
// the check that failed.
func (p *Projector) Ready(ctx context.Context) error {
	if p.stopping.Load() {
		return fmt.Errorf("%w: shutting down", ErrNotReady)
	}
	if s := p.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("%w: NATS connection is %s", ErrNotReady, s)
	}
	if _, err := p.store.Checkpoint(ctx, p.cfg.Consumer); err != nil {
		return fmt.Errorf("%w: store: %w", ErrNotReady, err)
	}
	return nil
}

// Handler serves the projector's operational endpoints:
//
//	/metrics  what g gathers, in the Prometheus exposition formats (not served if g is nil)
//	/healthz  liveness: 200 until the projector is asked to stop, then 503
//	/readyz   readiness: 200 if Ready within ReadyTimeout, else 503 with the reason on one line
//
// Liveness deliberately checks nothing outside the process: a NATS or
// store outage is waited out by retrying, and restarting the projector
// would not end it.
func (p *Projector) Handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if p.stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := p.Ready(ctx); err != nil {
			http.Error(w, oneLine(err.Error(), 512), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// oneLine keeps a reason to one line of at most n bytes, as probes and
// their logs show it.
func oneLine(s string, n int) string {
	return truncate(strings.Join(strings.Fields(s), " "), n)
}
