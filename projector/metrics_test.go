package projector_test

import (
	"context"
	"errors"
	"github.com/auditflow/auditflow/internal/promtest"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestMetrics projects events through a store that fails twice, with a
// poison event among them, and scrapes /metrics over HTTP before, during
// and after.
func TestMetrics(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	if _, err := e.srv.JS.Publish(ctx, "audit.exec.billing.poison", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	publish(t, e.prod, "billing", 50) // sequences 2..101
	flaky := &flakyStore{Store: e.store}
	flaky.failBefore.Store(2)
	reg := prometheus.NewPedanticRegistry()
	p, err := projector.New(ctx, e.srv.JS, flaky, projector.Config{CreateStreams: true, StoreName: "sqlite", BatchSize: 20,
		RetryMax: 20 * time.Millisecond, Registerer: reg, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(p.Handler(reg))
	defer web.Close()
	const labels = `{consumer="projector-sqlite",store="sqlite"}`
	metric := func(m map[string]float64, name string) float64 {
		t.Helper()
		v, ok := m[name+labels]
		if !ok {
			t.Fatalf("%s%s not exposed", name, labels)
		}
		return v
	}

	// Before Run: everything is lag.
	before := promtest.Scrape(t, web.URL+"/metrics")
	if lag := metric(before, "auditflow_projector_lag_messages"); lag != 101 {
		t.Fatalf("lag before running = %v, want 101", lag)
	}
	if n := metric(before, "auditflow_projector_events_applied_total"); n != 0 {
		t.Fatalf("applied before running = %v", n)
	}

	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := p.Run(rctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
		}
	}
	defer stop()
	waitCaughtUp(t, p)
	checkProjection(t, e.store, "billing", 50)

	// The lag reading is cached for a second: it reaches 0 within about that.
	var m map[string]float64
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m = promtest.Scrape(t, web.URL+"/metrics")
		if metric(m, "auditflow_projector_lag_messages") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag = %v after catching up", metric(m, "auditflow_projector_lag_messages"))
		}
	}
	st := p.Stats()
	for name, want := range map[string]float64{
		"auditflow_projector_events_applied_total":               100,
		"auditflow_projector_dead_lettered_total":                1,
		"auditflow_projector_store_write_failures_total":         2,
		"auditflow_projector_batches_total":                      float64(st.Batches),
		"auditflow_projector_store_write_duration_seconds_count": float64(st.Batches + 2),
		"auditflow_projector_last_applied_sequence":              101,
	} {
		if got := metric(m, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if st.Batches < 5 || st.Applied != 100 || st.WriteFailures != 2 || st.LastSeq != 101 {
		t.Errorf("stats %+v", st)
	}
	if n := m[`auditflow_projector_store_write_duration_seconds_bucket{consumer="projector-sqlite",store="sqlite",le="10"}`]; n != float64(st.Batches+2) {
		t.Errorf("10s bucket holds %v writes, want all %d", n, st.Batches+2)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, web.URL+path); code != http.StatusOK || body != "ok" {
			t.Errorf("%s: %d %q while running", path, code, body)
		}
	}

	// Stopped: liveness and readiness fail, metrics are still served.
	stop()
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, web.URL+path); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
			t.Errorf("%s: %d %q after Run returned", path, code, body)
		}
	}
	if n := metric(promtest.Scrape(t, web.URL+"/metrics"), "auditflow_projector_events_applied_total"); n != 100 {
		t.Errorf("applied after stop = %v", n)
	}

	// One projector per store and consumer on a registry.
	if _, err := projector.New(ctx, e.srv.JS, e.store, projector.Config{StoreName: "sqlite", Registerer: reg}); err == nil {
		t.Error("a second projector registered the same metrics")
	}
	if _, err := projector.New(ctx, e.srv.JS, e.store, projector.Config{StoreName: "sqlite", Consumer: "replay", Registerer: reg}); err != nil {
		t.Errorf("a second consumer's metrics: %v", err)
	}
}

// TestReadiness checks /readyz against a closed store and a lost NATS
// server, the lag metric's absence when NATS cannot be asked, and that no
// metrics are served without a Gatherer.
func TestReadiness(t *testing.T) {
	srv := natstest.Start(t)
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewPedanticRegistry()
	p, err := projector.New(context.Background(), srv.JS, st, projector.Config{CreateStreams: true, StoreName: "sqlite", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(p.Handler(reg))
	defer web.Close()
	if code, body := get(t, web.URL+"/readyz"); code != http.StatusOK || body != "ok" {
		t.Fatalf("readyz: %d %q", code, body)
	}
	bare := httptest.NewServer(p.Handler(nil))
	defer bare.Close()
	if code, _ := get(t, bare.URL+"/metrics"); code != http.StatusNotFound {
		t.Fatalf("metrics without a gatherer: %d", code)
	}

	_ = st.Close()
	code, body := get(t, web.URL+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "projector: not ready: store: ") || strings.Contains(body, "\n") {
		t.Fatalf("readyz with the store closed: %d %q", code, body)
	}
	if err := p.Ready(context.Background()); !errors.Is(err, projector.ErrNotReady) {
		t.Fatalf("Ready = %v, want ErrNotReady", err)
	}

	srv.Shutdown() // the client keeps reconnecting
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, body = get(t, web.URL+"/readyz")
		if strings.Contains(body, "NATS connection is") || time.Now().After(deadline) {
			break
		}
	}
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "projector: not ready: NATS connection is ") ||
		strings.HasSuffix(body, " CONNECTED") { // RECONNECTING, or DISCONNECTED for a moment
		t.Fatalf("readyz with NATS down: %d %q", code, body)
	}
	if code, _ := get(t, web.URL+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz with NATS down: %d; liveness must not depend on it", code)
	}
	m := promtest.Scrape(t, web.URL+"/metrics") // the first scrape: nothing cached
	const labels = `{consumer="projector-sqlite",store="sqlite"}`
	if v, ok := m["auditflow_projector_lag_messages"+labels]; ok {
		t.Errorf("lag = %v with NATS down; want the series absent", v)
	}
	if _, ok := m["auditflow_projector_events_applied_total"+labels]; !ok {
		t.Error("counters missing with NATS down")
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestReadyReportsAStall: a projector that gets nothing to do because the
// consumer's window is held by a process whose store write hangs (as a
// restarted projector waits out a dead one's messages) is not ready once
// StallAfter passes with a lag; the hung one says its write is failing.
// Both recover once the write goes through.
func TestReadyReportsAStall(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	publish(t, e.prod, "billing", 100)
	cfg := projector.Config{Workers: 1, BatchSize: 200, MaxAckPending: 200, StallAfter: time.Second, AckWait: 2 * time.Second}
	hung := &flakyStore{Store: e.store, block: make(chan struct{})}
	_, js1 := e.srv.Connect(t)
	a, _ := run(t, js1, hung, cfg)
	waitFor(t, "the hung write", 5*time.Second, func() bool { return hung.calls.Load() > 0 })
	reg := prometheus.NewPedanticRegistry()
	cfg.Registerer = reg
	b, _ := run(t, e.srv.JS, e.store, cfg)
	waitFor(t, "the idle projector to report the stall", 10*time.Second, func() bool {
		err := b.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), "stalled: nothing stored or acknowledged for") &&
			strings.Contains(err.Error(), "with 200 messages pending or unacknowledged")
	})
	if v := gathered(t, reg, "auditflow_projector_stalled"); v != 1 {
		t.Fatalf("stalled gauge = %v", v)
	}
	waitFor(t, "the hung projector to report its write", 10*time.Second, func() bool {
		err := a.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), "store write failing for")
	})
	close(hung.block)
	waitCaughtUp(t, b)
	checkProjection(t, e.store, "billing", 100)
	waitFor(t, "both ready again", 5*time.Second, func() bool { return a.Ready(ctx) == nil && b.Ready(ctx) == nil })
	if v := gathered(t, reg, "auditflow_projector_stalled"); v != 0 {
		t.Fatalf("stalled gauge = %v after recovering", v)
	}
}
