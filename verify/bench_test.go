package verify_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/verify"
)

const verifyChildEnv = "AUDITFLOW_VERIFY_BENCH_CHILD"

// BenchmarkVerifyMemory measures verify's peak resident memory over a
// stream of AUDITFLOW_VERIFY_BENCH_N events (default 1,000,000; 1000
// changes, a start and a success per run) and the SQLite store replayed
// from it, on an embedded NATS server. Each measurement runs in a child
// process — this test binary — that reports its own peak RSS (VmHWM) and
// peak Go heap: "scan" only reads the stream (the floor any verify pays),
// "verify" runs verify.Verify. Setting up 1M events takes a few minutes.
//
//	go test ./verify -run '^$' -bench VerifyMemory -benchtime 1x -timeout 30m
func BenchmarkVerifyMemory(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("AUDITFLOW_VERIFY_BENCH_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	srv := natstest.StartWith(b, embedded.Config{Port: -1, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	batch := prod.NewBatch()
	for i := range n {
		typ := events.ExecutionStarted
		if i%2 == 1 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, "billing-service", fmt.Sprintf("%05d-migration", (i/2)%1000))
		e.ExecutionID, e.Author, e.Order = fmt.Sprint("exec-", i/2), "alice@example.com", fmt.Sprintf("%05d", (i/2)%1000)
		e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "billing-db", "deploy-7f9c", "runner-3", 118
		e.Duration = 1780 * time.Millisecond
		e.Metadata = map[string]string{"ticket": "OPS-1234"}
		if err := batch.Add(context.Background(), e); err != nil {
			b.Fatal(err)
		}
		if i%5000 == 4999 || i == n-1 {
			if _, err := batch.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Logf("published %d events in %s", n, time.Since(t0).Round(time.Second))
	db := filepath.Join(b.TempDir(), "audit.db")
	st, err := sqlitestore.Open(ctx, db, sqlitestore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	if _, err := projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{}); err != nil {
		b.Fatal(err)
	}
	_ = st.Close()
	b.Logf("replayed into SQLite in %s", time.Since(t0).Round(time.Second))

	for b.Loop() {
		for _, mode := range []string{"scan", "verify"} {
			var args []string
			if dir := os.Getenv("AUDITFLOW_VERIFY_BENCH_PROFILE"); dir != "" { // a CPU profile per child
				args = append(args, "-test.cpuprofile="+filepath.Join(dir, mode+".prof"))
			}
			var r verifyChildResult
			out := proctest.RunChild(b, "TestVerifyChild", []string{verifyChildEnv + "=" + mode, "AUDITFLOW_BENCH_NATS=" + srv.ClientURL(), "AUDITFLOW_BENCH_DB=" + db}, &r, args...)
			if r.Events != n {
				b.Fatalf("child %s read %d of %d events\n%s", mode, r.Events, n, out)
			}
			b.Logf("%-6s %d events: peak RSS %.0f MB, peak heap %.0f MB, %.1f s", mode, n, float64(r.PeakRSSKB)/1024,
				float64(r.PeakHeapBytes)/(1<<20), r.Seconds)
			b.ReportMetric(float64(r.PeakRSSKB)/1024, "MB-peak-RSS-"+mode)
			b.ReportMetric(float64(r.PeakHeapBytes)/(1<<20), "MB-peak-heap-"+mode)
			b.ReportMetric(r.Seconds, "s-"+mode)
		}
	}
}

type verifyChildResult struct {
	Events        int
	PeakRSSKB     int64
	PeakHeapBytes uint64
	Seconds       float64
}

// TestVerifyChild is the child process of BenchmarkVerifyMemory; it does
// nothing in a normal test run.
func TestVerifyChild(t *testing.T) {
	mode := os.Getenv(verifyChildEnv)
	if mode == "" {
		t.Skip("child process of BenchmarkVerifyMemory")
	}
	nc, err := nats.Connect(os.Getenv("AUDITFLOW_BENCH_NATS"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	peakHeap := proctest.SampleHeap(50 * time.Millisecond)
	start := time.Now()
	var r verifyChildResult
	switch mode {
	case "scan":
		s, err := projector.LookupStream(ctx, js, producer.DefaultStreamName, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		last := s.CachedInfo().State.LastSeq
		err = projector.Scan(ctx, js, projector.ScanConfig{Stream: producer.DefaultStreamName, ToSeq: last}, func(ms []projector.StreamMsg) error {
			r.Events += len(ms)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	case "verify":
		st, err := sqlitestore.Open(ctx, os.Getenv("AUDITFLOW_BENCH_DB"), sqlitestore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		rep, err := verify.Verify(ctx, js, st, verify.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Drift() || rep.StoreRows != rep.StreamEvents {
			t.Fatalf("drift: %d missing, %d extra, %d altered, %d issues; %d rows for %d events",
				len(rep.Missing), len(rep.Extra), len(rep.Mismatched), len(rep.Issues), rep.StoreRows, rep.StreamEvents)
		}
		r.Events = rep.StreamEvents
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	r.Seconds = time.Since(start).Seconds()
	r.PeakRSSKB, r.PeakHeapBytes = proctest.PeakRSSKB(), peakHeap()
	proctest.PrintResult(t, r)
}
