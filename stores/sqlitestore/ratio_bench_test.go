package sqlitestore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// benchBatch is the projector's default batch size.
const benchBatch = 500

// chunks cuts recs into batches of benchBatch.
func chunks(recs []stores.Record) [][]stores.Record {
	var out [][]stores.Record
	for lo := 0; lo < len(recs); lo += benchBatch {
		out = append(out, recs[lo:min(lo+benchBatch, len(recs))])
	}
	return out
}

// BenchmarkApplyVsRaw compares Store.Apply with an equal-work raw write,
// measured in the same run on the same batches: the same changeLog rows
// (every column), one issue row per change per batch (the batch's newest
// event, upserted without the sequence guard), the checkpoint row, the
// same tables and indexes (made by Open), the same durability
// (WAL, synchronous=FULL) and one transaction per batch — but through one
// connection with statements prepared once, statement journals in memory
// and no validation. Raw and
// Apply alternate on fresh files each iteration, so load hits both alike.
// apply/raw is the figure the store is judged by (goal ≥ 0.8):
//
//	go test ./stores/sqlitestore -run '^$' -bench ApplyVsRaw -benchtime 5x
func BenchmarkApplyVsRaw(b *testing.B) {
	ctx := context.Background()
	recs := storebench.BenchEvents(20_000)
	batches := chunks(recs)
	var rawT, applyT, rawCPU, applyCPU time.Duration
	for i := 0; b.Loop(); i++ {
		dir := b.TempDir()
		c := proctest.CPUTime()
		rawT += timeRaw(b, filepath.Join(dir, "raw.db"), batches)
		rawCPU += proctest.CPUTime() - c

		st, err := sqlitestore.Open(ctx, filepath.Join(dir, "apply.db"), sqlitestore.Config{})
		if err != nil {
			b.Fatal(err)
		}
		c = proctest.CPUTime()
		start := time.Now()
		for _, c := range batches {
			if err := st.Apply(ctx, stores.Batch{Checkpoint: "bench", Through: c[len(c)-1].Seq, Records: c}); err != nil {
				b.Fatal(err)
			}
		}
		applyT += time.Since(start)
		applyCPU += proctest.CPUTime() - c
		_ = st.Close()
	}
	n := float64(b.N * len(recs))
	b.ReportMetric(n/applyT.Seconds(), "apply-events/s")
	b.ReportMetric(n/rawT.Seconds(), "raw-events/s")
	b.ReportMetric(rawT.Seconds()/applyT.Seconds(), "apply/raw")
	// The same comparison in CPU time, which others' load does not move
	// (the raw figure includes creating its schema).
	b.ReportMetric(rawCPU.Seconds()/applyCPU.Seconds(), "raw-cpu/apply-cpu")
	proctest.ReportLoad(b)
}

// timeRaw creates the store's schema at path (with Open), then times the
// equal-work raw write of batches into it.
func timeRaw(b *testing.B, path string, batches [][]stores.Record) time.Duration {
	b.Helper()
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	_ = st.Close()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)"+
		"&_pragma=temp_store(MEMORY)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	const perStmt = 32
	prep := func(table string, cols, rows int, verb string) *sql.Stmt {
		row := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
		q := verb + ` INTO "` + table + `" VALUES ` + strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
		if table == "issues" {
			q += rawIssueUpsert
		}
		st, err := conn.PrepareContext(ctx, q)
		if err != nil {
			b.Fatal(err)
		}
		return st
	}
	// Statements prepared on the connection once, run in transactions made
	// of BEGIN IMMEDIATE and COMMIT on it (database/sql's Tx would prepare
	// a connection's statement again for every transaction).
	logStmts, issueStmts := map[int]*sql.Stmt{}, map[int]*sql.Stmt{}
	cp := prep("checkpoints", 2, 1, "INSERT OR REPLACE")
	exec := func(stmts map[int]*sql.Stmt, table string, cols int, verb string, n int, args func(i int, dst []any) []any) error {
		var vals []any
		for lo := 0; lo < n; lo += perStmt {
			k := min(perStmt, n-lo)
			st := stmts[k]
			if st == nil {
				st = prep(table, cols, k, verb)
				stmts[k] = st
			}
			vals = vals[:0]
			for j := lo; j < lo+k; j++ {
				vals = args(j, vals)
			}
			if _, err := st.ExecContext(ctx, vals...); err != nil {
				return err
			}
		}
		return nil
	}
	start := time.Now()
	for _, c := range batches {
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			b.Fatal(err)
		}
		err = exec(logStmts, "changeLog", 29, "INSERT", len(c), func(i int, dst []any) []any {
			r := c[i]
			md, _ := json.Marshal(r.Metadata)
			return append(dst, r.Seq, r.ID, string(r.Type), string(r.State()), r.SchemaVersion,
				r.Pipeline, r.ChangeID, r.Author, r.ExecutionID, r.Order, r.TargetSystem, r.Host, r.RunnerID,
				int64(r.LockToken), stores.FormatTime(r.OccurredAt), r.Duration.Milliseconds(),
				r.ErrorMessage, r.ErrorTrace, string(md), string(r.Recovery), r.Transactional,
				string(r.Resolution), r.Operator, r.Reason, r.Hash, r.PrevHash, r.Signer, r.Signature, r.Trust)
		})
		if err == nil {
			latest := stores.Batch{Records: c}.LatestPerChange()
			err = exec(issueStmts, "issues", 16, "INSERT", len(latest), func(j int, dst []any) []any {
				i := stores.IssueOf(latest[j])
				return append(dst, i.Pipeline, i.ChangeID, string(i.Status), string(i.State), i.Seq,
					i.EventID, i.ExecutionID, i.Author, i.TargetSystem, string(i.Recovery), i.ErrorMessage,
					i.ErrorTrace, stores.FormatTime(i.UpdatedAt), i.Operator, i.Reason, i.Trust)
			})
		}
		if err == nil {
			_, err = cp.ExecContext(ctx, "bench", int64(c[len(c)-1].Seq))
		}
		if err == nil {
			_, err = conn.ExecContext(ctx, "COMMIT")
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// rawIssueUpsert updates an issue row in place, as Apply does, without
// Apply's sequence guard.
const rawIssueUpsert = ` ON CONFLICT (pipeline, change_id) DO UPDATE SET status=excluded.status, state=excluded.state,
	seq=excluded.seq, event_id=excluded.event_id, execution_id=excluded.execution_id, author=excluded.author,
	target_system=excluded.target_system, recovery=excluded.recovery, error_message=excluded.error_message,
	error_trace=excluded.error_trace, updated_at=excluded.updated_at, operator=excluded.operator,
	reason=excluded.reason, trust=excluded.trust`

// growthEnv lists extra store sizes for BenchmarkApplyGrowth (slow).
const growthEnv = "AUDITFLOW_BENCH_GROWTH"

// BenchmarkApplyGrowth measures Apply as the audit grows: a store
// pre-filled with N events (fast, through the bulk path a replay uses),
// then 20k new events applied in batches of 500 from two goroutines (as a
// projector's two workers) — half on changes already stored, half new —
// and reports the rate as a ratio to the rate at 100k measured in the same
// run (goal: within 25%, ratio ≥ 0.75), with the process's peak RSS.
// 10M is behind AUDITFLOW_BENCH_GROWTH=10000000 (comma-separated sizes):
//
//	go test ./stores/sqlitestore -run '^$' -bench ApplyGrowth -benchtime 1x
func BenchmarkApplyGrowth(b *testing.B) {
	sizes := []int{100_000, 1_000_000}
	for s := range strings.SplitSeq(os.Getenv(growthEnv), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
			sizes = append(sizes, n)
		}
	}
	var base float64
	for _, size := range sizes {
		b.Run(fmt.Sprintf("stored=%d", size), func(b *testing.B) {
			var rate float64
			for b.Loop() {
				rate = growthRun(b, size)
			}
			if size == sizes[0] {
				base = rate
			}
			b.ReportMetric(rate, "events/s")
			if base > 0 {
				b.ReportMetric(rate/base, "vs-100k")
			}
			b.ReportMetric(float64(proctest.PeakRSSKB())/1024, "MB-peak-RSS")
			proctest.ReportLoad(b)
		})
	}
}

// growthRun fills a fresh store with size events through the bulk path
// (untimed), then times 20k more through Apply.
func growthRun(b *testing.B, size int) float64 {
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, filepath.Join(b.TempDir(), "grow.db"), sqlitestore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const gen = 100_000 // events generated at once: keeps the fill's memory flat
	const measured = 20_000
	all := storebench.BenchEvents(gen)
	if err := st.BeginBulk(ctx); err != nil {
		b.Fatal(err)
	}
	for done := 0; done < size; done += gen {
		for _, c := range chunks(all[:min(gen, size-done)]) {
			shifted := make([]stores.Record, len(c))
			for i, r := range c {
				r.Seq += uint64(done)
				r.ID = fmt.Sprintf("%s-%d", r.ID[:24], r.Seq) // unique per copy
				r.ChangeID = fmt.Sprintf("%s-%d", r.ChangeID, done/gen)
				shifted[i] = r
			}
			if err := st.Apply(ctx, stores.Batch{Checkpoint: "bench", Through: shifted[len(shifted)-1].Seq, Records: shifted}); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := st.EndBulk(ctx); err != nil {
		b.Fatal(err)
	}
	// The measured events: sequences after the fill; half of them on
	// changes of the last filled generation, half on new ones.
	next := storebench.BenchEvents(measured)
	gen0 := (size - 1) / gen
	for i := range next {
		next[i].Seq += uint64(size)
		next[i].ID = fmt.Sprintf("%s-%d", next[i].ID[:24], next[i].Seq)
		if i%2 == 0 {
			next[i].ChangeID = fmt.Sprintf("%s-%d", next[i].ChangeID, gen0)
		} else {
			next[i].ChangeID += "-new"
		}
	}
	batches := chunks(next)
	work := make(chan []stores.Record)
	errs := make(chan error, 2)
	start := time.Now()
	for range 2 {
		go func() {
			var err error
			for c := range work {
				if err == nil {
					err = st.Apply(ctx, stores.Batch{Checkpoint: "bench", Records: c})
				}
			}
			errs <- err
		}()
	}
	for _, c := range batches {
		work <- c
	}
	close(work)
	for range 2 {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(start)
	return measured / took.Seconds()
}
