package projector

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyTimeout bounds the store read of a /readyz check.
const ReadyTimeout = 2 * time.Second

// Ready reports whether the projector is doing its work: it has not been
// asked to stop, its NATS connection is up, the store answers a cheap read
// (the consumer's checkpoint), and, once Run has started, none of these
// holds:
//
//   - events of a newer schema version are held ("upgrade needed: N events
//     of schema version V held"): they wait for a newer projector;
//   - dead-letter publishes fail (the last one failed, within the last
//     2 minutes): poison messages are being left on the stream;
//   - a store write has been failing for longer than StallAfter;
//   - nothing has been stored, acknowledged or dead-lettered for
//     StallAfter, by this process or (as far as the consumer shows) any
//     other on its consumer, while the consumer has messages pending or
//     unacknowledged (the lag, as the lag metric reads it). Another process
//     doing all the work does not make this one unready.
//
// The error, wrapping ErrNotReady, names every check that failed.
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
	reasons := p.health.problems(time.Now())
	if r := p.parked.reason(); r != "" {
		reasons = append(reasons, r)
	}
	if r := p.consumerReason(); r != "" {
		reasons = append(reasons, r)
	}
	if r := p.stallReason(); r != "" {
		reasons = append(reasons, r)
	}
	if len(reasons) > 0 {
		return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(reasons, "; "))
	}
	return nil
}

// stallReason says why the projector is stalled, or returns "": nothing
// stored, acknowledged or dead-lettered for StallAfter — by this process,
// nor (as far as the consumer's delivered and acknowledged sequences show)
// by any other on the consumer — while the consumer has a lag. The
// consumer's state is read at most once a second (shared with the lag
// metric); an unreadable state is reported by the NATS check instead.
func (p *Projector) stallReason() string {
	last := p.health.lastProgress()
	if last.IsZero() { // Run has not started
		return ""
	}
	st, moved, err := p.lag.get()
	if err != nil || st.lag == 0 {
		return ""
	}
	if moved.After(last) {
		last = moved
	}
	idle := time.Since(last)
	if idle < p.cfg.StallAfter {
		return ""
	}
	return fmt.Sprintf("stalled: nothing stored or acknowledged for %s with %d messages pending or unacknowledged",
		idle.Round(time.Second), st.lag)
}

// stalled is the auditflow_projector_stalled gauge: a write failing for
// longer than StallAfter, or no progress for StallAfter with a lag.
func (p *Projector) stalled() bool {
	return p.health.stuckWrite(time.Now(), p.cfg.StallAfter) != "" || p.stallReason() != ""
}

// Handler serves the projector's operational endpoints:
//
//	/metrics  what g gathers, in the Prometheus exposition formats (not served if g is nil)
//	/healthz  liveness: 200 until the projector is asked to stop, then 503
//	/readyz   readiness: 200 if Ready within ReadyTimeout, else 503 with the reasons on one line
//
// Liveness deliberately checks nothing outside the process, nor whether
// the projector makes progress: a NATS or store outage is waited out by
// retrying, a stuck write is bounded and retried, held and poison events
// come back by themselves, and a restart would cure none of these — it
// would only add redeliveries. Readiness reports them instead, for alerts
// and rollouts.
func (p *Projector) Handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := p.Live(); err != nil {
			http.Error(w, oneLine(err.Error(), 512), http.StatusServiceUnavailable)
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

// health is what Ready and the gauges judge, kept by the loops as they go.
type health struct {
	progress atomic.Int64 // unix ns of the last store write or settled message; 0 before Run

	mu         sync.Mutex
	dlFailedAt time.Time // last failed dead-letter publish
	dlErr      error
	dlOKAt     time.Time    // last successful one
	writes     []writeState // per worker: the write being retried
	fetchErr   error        // the last fetch's failure, nil once one succeeds
	fetchSince time.Time    // first failure of the current run of failures
}

type writeState struct {
	since    time.Time // first failure of the batch being written; zero if none
	events   int
	firstSeq uint64
	err      error
}

func (h *health) start(workers int) {
	h.mu.Lock()
	h.writes = make([]writeState, workers)
	h.mu.Unlock()
	h.progressed()
}

func (h *health) progressed() { h.progress.Store(time.Now().UnixNano()) }

func (h *health) lastProgress() time.Time {
	if ns := h.progress.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

func (h *health) deadLetterFailed(err error) {
	h.mu.Lock()
	h.dlFailedAt, h.dlErr = time.Now(), err
	h.mu.Unlock()
}

func (h *health) deadLetterOK() {
	h.mu.Lock()
	h.dlOKAt = time.Now()
	h.mu.Unlock()
}

// writeFailed records a failed attempt of worker's batch; the first
// failure starts the clock.
func (h *health) writeFailed(worker, events int, firstSeq uint64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := &h.writes[worker]
	if w.since.IsZero() {
		w.since = time.Now()
	}
	w.events, w.firstSeq, w.err = events, firstSeq, err
}

// writeDone: worker's batch is settled (stored, or left for redelivery).
func (h *health) writeDone(worker int) {
	h.mu.Lock()
	h.writes[worker] = writeState{}
	h.mu.Unlock()
}

// fetched records how the last fetch went.
func (h *health) fetched(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err == nil:
		h.fetchErr, h.fetchSince = nil, time.Time{}
	case h.fetchErr == nil:
		h.fetchErr, h.fetchSince = err, time.Now()
	default:
		h.fetchErr = err
	}
}

// stuckWrite describes the longest-failing store write if it has been
// failing for longer than after, or returns "".
func (h *health) stuckWrite(now time.Time, after time.Duration) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	worst := -1
	for i, w := range h.writes {
		if !w.since.IsZero() && now.Sub(w.since) >= after && (worst < 0 || w.since.Before(h.writes[worst].since)) {
			worst = i
		}
	}
	if worst < 0 {
		return ""
	}
	w := h.writes[worst]
	return fmt.Sprintf("store write failing for %s (worker %d, %d events from seq %d): %v",
		now.Sub(w.since).Round(time.Second), worst, w.events, w.firstSeq, w.err)
}

// problems lists what is wrong that needs no I/O to tell.
func (h *health) problems(now time.Time) []string {
	var out []string
	h.mu.Lock()
	if !h.dlFailedAt.IsZero() && h.dlFailedAt.After(h.dlOKAt) && now.Sub(h.dlFailedAt) < 2*deadLetterRetryMax {
		out = append(out, fmt.Sprintf("dead-letter publish failing (%s ago): %v", now.Sub(h.dlFailedAt).Round(time.Second), h.dlErr))
	}
	if h.fetchErr != nil {
		out = append(out, fmt.Sprintf("fetching from the consumer failing (for %s): %v", now.Sub(h.fetchSince).Round(time.Second), h.fetchErr))
	}
	h.mu.Unlock()
	// A failing write is named at once; StallAfter decides only the
	// stalled gauge.
	if s := h.stuckWrite(now, 0); s != "" {
		out = append(out, s)
	}
	return out
}
