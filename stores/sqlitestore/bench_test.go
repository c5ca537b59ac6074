package sqlitestore_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

func benchRecords(n int) []stores.Record {
	out := make([]stores.Record, n)
	for i := range out {
		typ := events.ExecutionStarted
		if i%2 == 1 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, "billing-service", fmt.Sprintf("%05d-migration", (i/2)%1000))
		e.ExecutionID, e.Author, e.Order = fmt.Sprint("exec-", i/2), "alice@example.com", "00042"
		e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "billing-db", "deploy-7f9c", "runner-3", 118
		e.Metadata = map[string]string{"ticket": "OPS-1234"}
		out[i] = stores.Record{Seq: uint64(i + 1), Event: e}
	}
	return out
}

// BenchmarkApply compares Store.Apply with the raw rate of SQLite writing
// the same rows (same columns, one transaction per batch, same durability,
// no indexes, no issue upserts) in the same run.
func BenchmarkApply(b *testing.B) {
	const batch = 500
	recs := benchRecords(b.N)
	path := filepath.Join(b.TempDir(), "bench.db")
	st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(recs); i += batch {
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "bench", Records: recs[i:min(i+batch, len(recs))]}); err != nil {
			b.Fatal(err)
		}
	}
	storeRate := float64(len(recs)) / time.Since(start).Seconds()
	b.StopTimer()

	db, err := sql.Open("sqlite", "file:"+filepath.Join(b.TempDir(), "raw.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	cols := "seq, event_id, type, state, schema_version, pipeline, change_id, author, execution_id, change_order, target_system, host, runner_id, lock_token, occurred_at, duration_ms, error_message, error_trace, metadata, recovery, transactional, resolution, operator, reason"
	if _, err := db.Exec("CREATE TABLE raw (" + cols + ")"); err != nil {
		b.Fatal(err)
	}
	const rows = 40
	stmt, err := db.Prepare("INSERT INTO raw VALUES " + strings.TrimSuffix(strings.Repeat("("+strings.TrimSuffix(strings.Repeat("?,", 24), ",")+"),", rows), ","))
	if err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	args := make([]any, 0, 24*rows)
	for i := 0; i+rows <= len(recs); i += batch {
		tx, _ := db.Begin()
		ts := tx.Stmt(stmt)
		for j := i; j+rows <= min(i+batch, len(recs)); j += rows {
			args = args[:0]
			for _, r := range recs[j : j+rows] {
				args = append(args, r.Seq, r.ID, string(r.Type), string(r.State()), 1, r.Pipeline, r.ChangeID, r.Author,
					r.ExecutionID, r.Order, r.TargetSystem, r.Host, r.RunnerID, 118, r.OccurredAt.Format(time.RFC3339Nano),
					0, "", "", `{"ticket":"OPS-1234"}`, "MANUAL_INTERVENTION", false, "", "", "")
			}
			if _, err := ts.Exec(args...); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	rawRate := float64(len(recs)-len(recs)%rows) / time.Since(start).Seconds()
	b.ReportMetric(storeRate, "events/s")
	b.ReportMetric(rawRate, "raw-events/s")
	b.ReportMetric(storeRate/rawRate, "store/raw")
}
