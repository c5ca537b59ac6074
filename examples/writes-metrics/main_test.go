package main

import (
	"context"
	"encoding/json"
	"github.com/auditflow/auditflow/internal/promtest"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/projector"
)

// TestMetricsFromAuditWrites publishes synthetic AuditWrites on a real
// in-process NATS server and scrapes what the subscriber made of them.
func TestMetricsFromAuditWrites(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := projector.NewWriteSubscription(ctx, srv.Conn, "", "*")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	m := newWriteMetrics(reg, sub.Dropped)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := sub.Run(ctx, m.observe); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	defer wg.Wait()
	defer cancel()

	for _, w := range []projector.AuditWrite{
		{Store: "sqlite", Consumer: "projector-sqlite", Count: 500, Duration: 3 * time.Millisecond},
		{Store: "sqlite", Consumer: "projector-sqlite", Count: 20, Duration: 2 * time.Second},
		{Store: "mongo", Consumer: "projector-mongo", Count: 40, Duration: 30 * time.Millisecond, Error: "no primary"},
		{Store: "mongo", Consumer: "projector-mongo", Count: 40, Duration: 20 * time.Millisecond},
	} {
		b, _ := json.Marshal(w)
		if err := srv.Conn.Publish(projector.DefaultWritesPrefix+"."+w.Store, b); err != nil {
			t.Fatal(err)
		}
	}
	_ = srv.Conn.Publish(projector.DefaultWritesPrefix+".mongo", []byte("not json")) // skipped

	web := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer web.Close()
	sqlite, mongo := `{consumer="projector-sqlite",store="sqlite"}`, `{consumer="projector-mongo",store="mongo"}`
	want := map[string]float64{
		"auditflow_writes_total" + sqlite:                  2,
		"auditflow_writes_total" + mongo:                   2,
		"auditflow_writes_events_total" + sqlite:           520,
		"auditflow_writes_events_total" + mongo:            40,
		"auditflow_writes_failed_total" + mongo:            1,
		"auditflow_writes_duration_seconds_count" + sqlite: 2,
		`auditflow_writes_duration_seconds_bucket{consumer="projector-sqlite",store="sqlite",le="0.005"}`: 1,
		`auditflow_writes_duration_seconds_bucket{consumer="projector-sqlite",store="sqlite",le="2.5"}`:   2,
		"auditflow_writes_dropped_total": 0,
	}
	var got map[string]float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got = promtest.Scrape(t, web.URL)
		if got["auditflow_writes_total"+mongo] == 2 || time.Now().After(deadline) {
			break
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, ok := got["auditflow_writes_failed_total"+sqlite]; ok {
		t.Errorf("a failure series for sqlite, which never failed")
	}
}
