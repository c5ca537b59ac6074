package sqlitestore_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

// newStore opens stores in one file, with the namespace as table prefix.
func newStore(path string) storetest.NewStore {
	return func(t testing.TB, ns string) stores.Store {
		s, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{
			ChangeLogTable: ns + "_changeLog", IssuesTable: ns + "_issues", CheckpointsTable: ns + "_checkpoints",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore(filepath.Join(t.TempDir(), "audit.db")), storetest.Features{AtomicBatch: true, Repairer: true, SchemaChecker: true, IssueCounter: true})
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []sqlitestore.Config{
		{ChangeLogTable: "drop table;"},
		{IssuesTable: "1abc"},
		{ChangeLogTable: "same", IssuesTable: "SAME"},
	} {
		_, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "x.db"), cfg)
		if !errors.Is(err, stores.ErrInvalidConfig) {
			t.Errorf("Open(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := sqlitestore.Open(context.Background(), "", sqlitestore.Config{}); !errors.Is(err, stores.ErrInvalidConfig) {
		t.Errorf("Open with no path = %v", err)
	}
}

// TestMigratesAndChecksSchema opens a file whose changeLog predates the
// hash chain and whose issues predate signed events, then breaks an index:
// CheckSchema must name it.
func TestMigratesAndChecksSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE "changeLog" (seq INTEGER NOT NULL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
		type TEXT NOT NULL, state TEXT NOT NULL, schema_version INTEGER NOT NULL, pipeline TEXT NOT NULL,
		change_id TEXT NOT NULL, author TEXT NOT NULL, execution_id TEXT NOT NULL, change_order TEXT NOT NULL,
		target_system TEXT NOT NULL, host TEXT NOT NULL, runner_id TEXT NOT NULL, lock_token INTEGER NOT NULL,
		occurred_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, error_message TEXT NOT NULL, error_trace TEXT NOT NULL,
		metadata TEXT NOT NULL, recovery TEXT NOT NULL, transactional INTEGER NOT NULL, resolution TEXT NOT NULL,
		operator TEXT NOT NULL, reason TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	// The issues table before signed events (no trust column).
	if _, err := db.Exec(`CREATE TABLE "issues" (pipeline TEXT NOT NULL, change_id TEXT NOT NULL, status TEXT NOT NULL,
		state TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL, execution_id TEXT NOT NULL, author TEXT NOT NULL,
		target_system TEXT NOT NULL, recovery TEXT NOT NULL, error_message TEXT NOT NULL, error_trace TEXT NOT NULL,
		updated_at TEXT NOT NULL, operator TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (pipeline, change_id))`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if p, err := st.CheckSchema(ctx); err != nil || len(p) != 0 {
		t.Fatalf("after migration: %v %v", p, err)
	}
	db, _ = sql.Open("sqlite", "file:"+path)
	defer db.Close()
	if _, err := db.Exec(`DROP INDEX "changeLog_state"`); err != nil {
		t.Fatal(err)
	}
	p, err := st.CheckSchema(ctx)
	if err != nil || len(p) != 1 || !strings.Contains(p[0], "changeLog_state") {
		t.Fatalf("CheckSchema after dropping an index = %v, %v", p, err)
	}
}

// TestRekeysOldLayout: a changeLog keyed by event id (an older version's)
// keeps its rows, is reported by CheckSchema while read-only, and once
// opened for writing holds an event published twice as two rows.
func TestRekeysOldLayout(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range []string{`CREATE TABLE "changeLog" (seq INTEGER NOT NULL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
		type TEXT NOT NULL, state TEXT NOT NULL, schema_version INTEGER NOT NULL, pipeline TEXT NOT NULL,
		change_id TEXT NOT NULL, author TEXT NOT NULL, execution_id TEXT NOT NULL, change_order TEXT NOT NULL,
		target_system TEXT NOT NULL, host TEXT NOT NULL, runner_id TEXT NOT NULL, lock_token INTEGER NOT NULL,
		occurred_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, error_message TEXT NOT NULL, error_trace TEXT NOT NULL,
		metadata TEXT NOT NULL, recovery TEXT NOT NULL, transactional INTEGER NOT NULL, resolution TEXT NOT NULL,
		operator TEXT NOT NULL, reason TEXT NOT NULL, hash TEXT NOT NULL DEFAULT '', prev_hash TEXT NOT NULL DEFAULT '',
		signer TEXT NOT NULL DEFAULT '', signature TEXT NOT NULL DEFAULT '', trust TEXT NOT NULL DEFAULT '')`,
		`INSERT INTO "changeLog" VALUES (3, 'evt-1', 'ExecutionSucceeded', 'APPLIED', 2, 'p', 'c', 'alice', 'x', '0001', '',
		'h', 'r', 7, '2026-11-26T09:00:00.000000000Z', 5, '', '', 'null', 'MANUAL_INTERVENTION', 0, '', '', '', '', '', '', '', '')`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	ro, err := sqlitestore.Open(ctx, path, sqlitestore.Config{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := ro.CheckSchema(ctx); err != nil || !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, "keyed by event id") }) {
		t.Errorf("CheckSchema of the old layout = %q, %v", p, err)
	}
	if rows, err := ro.History(ctx, stores.HistoryQuery{}); err != nil || len(rows) != 1 || rows[0].Position != 0 || rows[0].Chain != "" {
		t.Errorf("read-only History of the old layout = %+v, %v", rows, err)
	}
	_ = ro.Close()

	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if p, err := st.CheckSchema(ctx); err != nil || len(p) != 0 {
		t.Fatalf("after migration: %q %v", p, err)
	}
	rows, err := st.History(ctx, stores.HistoryQuery{})
	if err != nil || len(rows) != 1 || rows[0].ID != "evt-1" || rows[0].RowState != events.StateApplied || rows[0].Author != "alice" {
		t.Fatalf("the old row after migration: %+v, %v", rows, err)
	}
	again := rows[0]
	again.Seq, again.RowState, again.Chain = 9, "", "repeats the event id of stream sequence 3, the message before it"
	again.SchemaVersion, again.Position = 4, 1
	if err := st.Apply(ctx, stores.Batch{Checkpoint: "x", Records: []stores.Record{again}}); err != nil {
		t.Fatal(err)
	}
	if rows, err := st.History(ctx, stores.HistoryQuery{}); err != nil || len(rows) != 2 || rows[0].RowState != events.StateOutOfChain {
		t.Fatalf("the event published again: %+v, %v", rows, err)
	}
}

// TestVerifySeesAlteredColumns: every value listings filter on, altered in
// the file, is reported by verify and put back by repair.
func TestVerifySeesAlteredColumns(t *testing.T) {
	storebench.TamperVerifyRepair(t, newStore(filepath.Join(t.TempDir(), "audit.db")))
}
