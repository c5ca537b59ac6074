package console_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/console"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

var (
	benchEvents = flag.Int("console.events", 1_000_000, "events in the console benchmark's SQLite store")
	benchDB     = flag.String("console.db", "", "keep the console benchmark's SQLite file here and reuse it when it exists (default: a fresh one per run)")
)

// benchRecords are events first..first+n-1 of a stream as runners produce
// it: changes of seven pipelines by five authors on three target systems,
// started then finished; one change in five fails and is retried, one in
// fifty fails and stays failed (an open issue).
func benchRecords(first, n int, base time.Time) []stores.Record {
	out := make([]stores.Record, 0, n)
	// Each change takes 2 events, 4 when retried: walk changes from the
	// start so that event first is where the whole stream has it.
	seq := 0
	for c := 0; len(out) < n; c++ {
		steps := []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}
		switch {
		case c%50 == 7:
			steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed}
		case c%5 == 0:
			steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded}
		}
		if seq+len(steps) <= first-1 {
			seq += len(steps)
			continue
		}
		for _, typ := range steps {
			seq++
			if seq < first || len(out) == n {
				continue
			}
			e := events.New(typ, fmt.Sprintf("service-%d", c%7), fmt.Sprintf("%06d-change", c))
			e.OccurredAt = base.Add(time.Duration(seq) * time.Millisecond)
			e.ExecutionID = fmt.Sprintf("exec-%d", c)
			e.Author = fmt.Sprintf("author-%d@example.com", c%5)
			e.TargetSystem = []string{"orders-db", "warehouse", "search"}[c%3]
			e.Order, e.Host, e.RunnerID, e.LockToken = fmt.Sprintf("%06d", c), "deploy-7f9c", "runner-1", 118
			if typ != events.ExecutionStarted {
				e.Duration = 1500 * time.Millisecond
			}
			e.Metadata = map[string]string{"ticket": "OPS-1234"}
			if typ == events.ExecutionFailed {
				e.ErrorMessage = "duplicate key value violates unique constraint"
				e.ErrorTrace = "at migrate()\nat run()\n"
			}
			out = append(out, stores.Record{Seq: uint64(seq), Event: e})
		}
	}
	return out
}

// loadBench fills a SQLite store with n events through its bulk path (as
// a replay into an empty store does), then reopens it read-only, as
// auditflow console opens it.
func loadBench(b *testing.B, n int) stores.Store {
	b.Helper()
	ctx := context.Background()
	path := *benchDB
	if path == "" {
		path = filepath.Join(b.TempDir(), "audit.db")
	}
	if _, err := os.Stat(path); err != nil {
		start := time.Now()
		st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
		if err != nil {
			b.Fatal(err)
		}
		if err := st.BeginBulk(ctx); err != nil {
			b.Fatal(err)
		}
		base := time.Now().UTC().Add(-time.Duration(n) * time.Millisecond)
		const chunk = 10_000
		for lo := 1; lo <= n; lo += chunk {
			recs := benchRecords(lo, min(chunk, n-lo+1), base)
			if err := st.Apply(ctx, stores.Batch{Checkpoint: "projector-sqlite", Through: recs[len(recs)-1].Seq, Records: recs}); err != nil {
				b.Fatal(err)
			}
		}
		if err := st.EndBulk(ctx); err != nil {
			b.Fatal(err)
		}
		if err := st.Close(); err != nil {
			b.Fatal(err)
		}
		b.Logf("loaded %d events into %s in %s", n, path, time.Since(start).Round(time.Millisecond))
	}
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	if cp, err := st.Checkpoint(ctx, "projector-sqlite"); err != nil || cp != uint64(n) {
		b.Fatalf("store at %s holds %d events (%v), want %d: delete it or pass -console.events %d", path, cp, err, n, cp)
	}
	return st
}

// BenchmarkConsole1M measures the console's server time for the API's
// history and issue queries and for its pages over a SQLite store of
// -console.events events (default 1M): each request through the whole
// handler (key check, store query, JSON or template), reported as p50 and
// p99 in ms. Goals: p99 < 50 ms for the queries, < 100 ms for pages.
//
//	go test ./internal/console -run XXX -bench Console1M -benchtime 200x
func BenchmarkConsole1M(b *testing.B) {
	n := *benchEvents
	st := loadBench(b, n)
	key, line, err := console.NewKey("bench", console.RoleRead)
	if err != nil {
		b.Fatal(err)
	}
	keys, err := console.ParseKeys(strings.NewReader(line))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := console.New(console.Config{Store: st, StoreKind: "sqlite", Keys: keys})
	if err != nil {
		b.Fatal(err)
	}
	h := srv.Handler()
	// The baselines: the store's own queries for the rows the API's first
	// pages show, without the console (key check, JSON, templates).
	ctx := context.Background()
	for name, query := range map[string]func() error{
		"store/history": func() error { _, err := st.History(ctx, stores.HistoryQuery{Limit: 100}); return err },
		"store/issues": func() error {
			_, err := st.Issues(ctx, stores.IssueQuery{Status: stores.IssueOpen, Limit: 100})
			return err
		},
	} {
		b.Run(name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := query(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			reportPercentiles(b, lat)
		})
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	deep := func() uint64 { return uint64(rnd.IntN(n-1000) + 1000) }
	change := func() string { c := rnd.IntN(n * 2 / 5); return fmt.Sprintf("service-%d/%06d-change", c%7, c) }
	for _, bc := range []struct {
		name string
		goal time.Duration
		path func() string
	}{
		{"api/history", 50 * time.Millisecond, func() string { return "/api/v1/history" }},
		{"api/history/deep-page", 50 * time.Millisecond, func() string { return fmt.Sprintf("/api/v1/history?beforeSeq=%d", deep()) }},
		{"api/history/pipeline", 50 * time.Millisecond, func() string { return fmt.Sprintf("/api/v1/history?pipeline=service-3&beforeSeq=%d", deep()) }},
		{"api/history/state", 50 * time.Millisecond, func() string { return fmt.Sprintf("/api/v1/history?state=FAILED&beforeSeq=%d", deep()) }},
		{"api/history/author", 50 * time.Millisecond, func() string { return fmt.Sprintf("/api/v1/history?author=author-2@example.com&beforeSeq=%d", deep()) }},
		{"api/history/no-match", 50 * time.Millisecond, func() string { return "/api/v1/history?author=nobody" }}, // reads the scan budget
		{"api/changes", 50 * time.Millisecond, func() string { return "/api/v1/changes" }},
		{"api/changes/pipeline", 50 * time.Millisecond, func() string { return "/api/v1/changes?pipeline=service-3" }},
		{"api/changes/state", 50 * time.Millisecond, func() string { return "/api/v1/changes?state=FAILED" }},
		{"api/issues", 50 * time.Millisecond, func() string { return "/api/v1/issues" }},
		{"api/issues/pipeline", 50 * time.Millisecond, func() string { return "/api/v1/issues?pipeline=service-3" }},
		{"api/issues/deep-page", 50 * time.Millisecond, func() string { return fmt.Sprintf("/api/v1/issues?beforeSeq=%d", deep()) }},
		{"api/stats", 50 * time.Millisecond, func() string { return "/api/v1/stats" }}, // no NATS here: checkpoint and open issues
		{"api/change", 50 * time.Millisecond, func() string { return "/api/v1/changes/" + change() }},
		{"page/overview", 100 * time.Millisecond, func() string { return "/" }},
		{"page/overview/pipeline", 100 * time.Millisecond, func() string { return "/?pipeline=service-3" }},
		{"page/lag", 100 * time.Millisecond, func() string { return "/lag" }},
		{"page/change", 100 * time.Millisecond, func() string { return "/changes/" + change() }},
		{"page/issues", 100 * time.Millisecond, func() string { return "/issues" }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, bc.path(), nil)
				req.Header.Set("Authorization", "Bearer "+key)
				rec := httptest.NewRecorder()
				t0 := time.Now()
				h.ServeHTTP(rec, req)
				lat = append(lat, time.Since(t0))
				if rec.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", req.URL, rec.Code, rec.Body)
				}
			}
			if p99 := reportPercentiles(b, lat); p99 > bc.goal {
				b.Logf("%s: p99 %s is over the goal %s", bc.name, p99, bc.goal)
			}
		})
	}
}

// reportPercentiles reports the p50 and p99 of lat in ms and returns the p99.
func reportPercentiles(b *testing.B, lat []time.Duration) time.Duration {
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	return p99
}
