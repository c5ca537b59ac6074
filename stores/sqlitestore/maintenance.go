package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/auditflow/auditflow/stores"
)

var (
	_ stores.Repairer      = (*Store)(nil)
	_ stores.SchemaChecker = (*Store)(nil)
)

// migrate brings tables an older version created up to date (CREATE
// TABLE IF NOT EXISTS leaves those alone): it adds the columns later
// versions introduced, and rebuilds a changeLog whose event id is unique
// (rows were once keyed by event id, which hid an event published again)
// into one keyed by sequence alone.
func (s *Store) migrate(ctx context.Context, tx *sql.Tx) error {
	for table, added := range map[string][]string{
		// hash, prev_hash: schema version 2, the hash chain; signer,
		// signature, trust: signed events; prev_seq, position, chain:
		// schema version 4 and the chain verdict.
		s.cfg.ChangeLogTable: {"hash", "prev_hash", "signer", "signature", "trust", "prev_seq", "position", "chain"},
		s.cfg.IssuesTable:    {"trust", "chain"},
	} {
		have, err := columns(ctx, tx, table)
		if err != nil {
			return err
		}
		for _, col := range added {
			if slices.Contains(have, col) {
				continue
			}
			typ := "TEXT NOT NULL DEFAULT ''"
			if integerColumn(col) {
				typ = "INTEGER NOT NULL DEFAULT 0"
			}
			if _, err := tx.ExecContext(ctx, `ALTER TABLE `+quote(table)+` ADD COLUMN `+col+` `+typ); err != nil {
				return fmt.Errorf("add column %s.%s: %w", table, col, err)
			}
		}
	}
	unique, err := uniqueEventID(ctx, tx, s.cfg.ChangeLogTable)
	if err != nil || !unique {
		return err
	}
	// SQLite cannot drop a constraint: copy the rows into a table of the
	// current definition, in the same transaction, and put it in place.
	lg, tmp := quote(s.cfg.ChangeLogTable), quote(s.cfg.ChangeLogTable+"_rekeyed")
	for _, stmt := range []string{
		`DROP TABLE IF EXISTS ` + tmp,
		changeLogTable(tmp),
		`INSERT INTO ` + tmp + ` (` + logColumns + `) SELECT ` + logColumns + ` FROM ` + lg,
		`DROP TABLE ` + lg,
		`ALTER TABLE ` + tmp + ` RENAME TO ` + lg,
	} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("rekey %s by sequence (%s): %w", s.cfg.ChangeLogTable, firstLine(stmt), err)
		}
	}
	for _, stmt := range s.sql.schema { // the indexes went with the old table
		if strings.HasPrefix(stmt, "CREATE INDEX") {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("rekey %s by sequence (%s): %w", s.cfg.ChangeLogTable, firstLine(stmt), err)
			}
		}
	}
	return nil
}

// uniqueEventID reports whether table has a unique index on event_id
// alone: the layout that keyed rows by event id.
func uniqueEventID(ctx context.Context, q querier, table string) (bool, error) {
	rows, err := q.QueryContext(ctx, `SELECT l.name FROM pragma_index_list(?) AS l WHERE l."unique" = 1`, table)
	if err != nil {
		return false, err
	}
	idx, err := scanNames(rows)
	if err != nil {
		return false, err
	}
	for _, name := range idx {
		cols, err := names(ctx, q, `SELECT name FROM pragma_index_info(?)`, name)
		if err != nil {
			return false, err
		}
		if slices.Equal(cols, []string{"event_id"}) {
			return true, nil
		}
	}
	return false, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// columns lists a table's column names, or none if it does not exist.
func columns(ctx context.Context, q querier, table string) ([]string, error) {
	return names(ctx, q, `SELECT name FROM pragma_table_info(?)`, table)
}

func names(ctx context.Context, q querier, stmt string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, err
	}
	return scanNames(rows)
}

func scanNames(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// CheckSchema reports missing tables, columns and indexes.
func (s *Store) CheckSchema(ctx context.Context) ([]string, error) {
	want := map[string]string{
		s.cfg.ChangeLogTable:   logColumns,
		s.cfg.IssuesTable:      issueColumns,
		s.cfg.CheckpointsTable: "name, seq",
	}
	var problems []string
	for table, cols := range want {
		have, err := columns(ctx, s.db, table)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: check schema: %w", stores.ContextError(ctx, err))
		}
		if len(have) == 0 {
			problems = append(problems, fmt.Sprintf("table %s is missing", table))
			continue
		}
		for _, col := range columnNames(cols) {
			if !slices.Contains(have, col) {
				problems = append(problems, fmt.Sprintf("table %s has no column %s", table, col))
			}
		}
	}
	if unique, err := uniqueEventID(ctx, s.db, s.cfg.ChangeLogTable); err != nil {
		return nil, fmt.Errorf("sqlitestore: check schema: %w", stores.ContextError(ctx, err))
	} else if unique {
		problems = append(problems, fmt.Sprintf("table %s is keyed by event id, so an event published twice shows once: open the store for writing once (a projector, or auditflow replay) to rekey it by sequence", s.cfg.ChangeLogTable))
	}
	indexes, err := names(ctx, s.db, `SELECT name FROM sqlite_master WHERE type = 'index'`)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: check schema: %w", stores.ContextError(ctx, err))
	}
	for _, idx := range s.sql.indexes {
		if !slices.Contains(indexes, idx) {
			problems = append(problems, fmt.Sprintf("index %s is missing", idx))
		}
	}
	slices.Sort(problems)
	return problems, nil
}

// Repair makes rows exactly as given, in one transaction.
func (s *Store) Repair(ctx context.Context, r stores.Repair) error {
	if r.Empty() {
		return ctx.Err()
	}
	lg, is := quote(s.cfg.ChangeLogTable), quote(s.cfg.IssuesTable)
	return s.inTx(ctx, func(tx *sql.Tx) error {
		for _, rec := range r.Delete {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+lg+` WHERE seq = ?`, rec.Seq); err != nil {
				return err
			}
		}
		for _, rec := range r.Put {
			args, err := logArgs(rec, nil)
			if err != nil {
				return err
			}
			// REPLACE drops the row at this sequence.
			if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO `+lg+` (`+logColumns+`) VALUES `+placeholders(logColumnCount), args...); err != nil {
				return err
			}
		}
		for _, i := range r.DeleteIssues {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+is+` WHERE pipeline = ? AND change_id = ?`, i.Pipeline, i.ChangeID); err != nil {
				return err
			}
		}
		for _, i := range r.Issues {
			if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO `+is+` (`+issueColumns+`) VALUES `+placeholders(issueColumnCount), issueArgs(i, nil)...); err != nil {
				return err
			}
		}
		return nil
	})
}

var _ stores.BulkLoader = (*Store)(nil)

// BeginBulk prepares for a large load into an empty store (a rebuild by
// replay): the secondary indexes are dropped, to be built once at the end,
// and commits stop waiting for the disk (synchronous=NORMAL: in WAL mode a
// crash may lose the last commits, never corrupt the file; the replay's
// checkpoint is in the same commits, so a resumed replay repeats exactly
// what was lost). Writes go through one connection until EndBulk.
func (s *Store) BeginBulk(ctx context.Context) error {
	s.bulkMu.Lock()
	defer s.bulkMu.Unlock()
	if s.bulk != nil {
		return nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sqlitestore: bulk: %w", stores.ContextError(ctx, err))
	}
	stmts := []string{"PRAGMA synchronous = NORMAL"}
	for _, idx := range s.sql.indexes {
		stmts = append(stmts, "DROP INDEX IF EXISTS "+quote(idx))
	}
	for _, st := range stmts {
		if _, err := conn.ExecContext(ctx, st); err != nil {
			_ = conn.Close()
			return fmt.Errorf("sqlitestore: bulk: %s: %w", st, stores.ContextError(ctx, err))
		}
	}
	s.bulk = conn
	return nil
}

// EndBulk rebuilds the indexes, makes everything loaded durable and returns
// to normal writes. (Should a bulk load die before EndBulk, the next Open
// recreates the indexes.)
func (s *Store) EndBulk(ctx context.Context) error {
	s.bulkMu.Lock()
	defer s.bulkMu.Unlock()
	if s.bulk == nil {
		return nil
	}
	conn := s.bulk
	s.bulk = nil
	defer conn.Close()
	stmts := []string{"PRAGMA synchronous = FULL"}
	for _, st := range s.sql.schema {
		if strings.HasPrefix(st, "CREATE INDEX") {
			stmts = append(stmts, st)
		}
	}
	stmts = append(stmts, "PRAGMA wal_checkpoint(FULL)") // syncs what NORMAL commits left unsynced
	for _, st := range stmts {
		if _, err := conn.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("sqlitestore: end bulk: %s: %w", firstLine(st), stores.ContextError(ctx, err))
		}
	}
	return nil
}
