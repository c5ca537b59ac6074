package sqlitestore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
)

// BenchmarkProjector compares the projector into SQLite with raw writes of
// the same events into a plain table (same columns, no indexes, no issue
// rows), one transaction per chunk with the same durability, 32 rows per
// INSERT:
//
//	go test ./stores/sqlitestore -run '^$' -bench Projector -benchtime 3x
func BenchmarkProjector(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bench.db")
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	var tables sync.Map
	storebench.Bench(b, newStore(path), func(ctx context.Context, ns string, recs []stores.Record) error {
		once, _ := tables.LoadOrStore(ns, &sync.Once{})
		var cerr error
		once.(*sync.Once).Do(func() { _, cerr = raw.ExecContext(ctx, "CREATE TABLE "+ns+"_raw ("+rawColumns+")") })
		if cerr != nil {
			return cerr
		}
		tx, err := raw.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		const rows = 32
		row := "(" + strings.TrimSuffix(strings.Repeat("?,", 21), ",") + ")"
		for lo := 0; lo < len(recs); lo += rows {
			chunk := recs[lo:min(lo+rows, len(recs))]
			args := make([]any, 0, 21*len(chunk))
			for _, r := range chunk {
				args = append(args, r.Seq, r.ID, string(r.Type), string(r.State()), r.SchemaVersion, r.Pipeline, r.ChangeID,
					r.Author, r.ExecutionID, r.Order, r.TargetSystem, r.Host, r.RunnerID, int64(r.LockToken),
					stores.FormatTime(r.OccurredAt), r.Duration.Milliseconds(), r.ErrorMessage, r.ErrorTrace,
					`{"ticket":"`+r.Metadata["ticket"]+`"}`, string(r.Recovery), r.Transactional)
			}
			stmt := "INSERT INTO " + ns + "_raw VALUES " + strings.TrimSuffix(strings.Repeat(row+",", len(chunk)), ",")
			if _, err := tx.ExecContext(ctx, stmt, args...); err != nil {
				return err
			}
		}
		return tx.Commit()
	}, storebench.BenchConfig{Events: 20000})
}

const rawColumns = `seq, event_id, type, state, schema_version, pipeline, change_id, author, execution_id,
	change_order, target_system, host, runner_id, lock_token, occurred_at, duration_ms, error_message,
	error_trace, metadata, recovery, transactional`
