package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"

	"modernc.org/sqlite" // registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"
)

// Config configures a Store. Zero fields take the defaults shown.
type Config struct {
	ChangeLogTable   string // default "changeLog"
	IssuesTable      string // default "issues"
	CheckpointsTable string // default "checkpoints"
	// SkipSchema leaves the tables and indexes alone on open (no creation,
	// no migration), for checking a schema rather than fixing it.
	SkipSchema bool
	// ReadOnly opens an existing database for reading: nothing is
	// created — not the file, not the schema — and every write fails
	// (query_only). Implies SkipSchema. For commands that only read. The
	// file is opened read-write where allowed, so that closing removes
	// the -wal and -shm files as usual; else read-only (mode=ro), which
	// may leave them behind.
	ReadOnly bool
}

// Defaults.
const (
	DefaultChangeLogTable   = "changeLog"
	DefaultIssuesTable      = "issues"
	DefaultCheckpointsTable = "checkpoints"
)

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// Validate fills in defaults and checks the table names.
func (c *Config) Validate() error {
	for _, f := range []struct {
		name string
		v    *string
		def  string
	}{
		{"ChangeLogTable", &c.ChangeLogTable, DefaultChangeLogTable},
		{"IssuesTable", &c.IssuesTable, DefaultIssuesTable},
		{"CheckpointsTable", &c.CheckpointsTable, DefaultCheckpointsTable},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
		if !identifier.MatchString(*f.v) {
			return fmt.Errorf("%w: sqlitestore: %s %q is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63)", stores.ErrInvalidConfig, f.name, *f.v)
		}
	}
	if strings.EqualFold(c.ChangeLogTable, c.IssuesTable) || strings.EqualFold(c.ChangeLogTable, c.CheckpointsTable) || strings.EqualFold(c.IssuesTable, c.CheckpointsTable) {
		return fmt.Errorf("%w: sqlitestore: table names must differ", stores.ErrInvalidConfig)
	}
	return nil
}

// Store is the SQLite audit store.
type Store struct {
	db  *sql.DB
	cfg Config
	own bool // Close closes db: Open created it
	sql queries

	bulkMu sync.Mutex
	bulk   *sql.Conn // set between BeginBulk and EndBulk: writes go through it

	stmts stmtCache
	// writer is held by the write transaction in progress. SQLite lets one
	// writer in at a time; one that finds the lock taken waits in the
	// driver's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ms… and
	// so leaves the lock idle for up to half of each wait: with a
	// projector's two workers that idled a third of the store's time.
	// Writers of this Store queue here instead and go in the moment the
	// last one commits (other processes still meet the busy handler).
	writer chan struct{}

	// path and file identify the database file Open opened (nil for New):
	// checked around every write and checkpoint read (checkFile).
	path string
	file os.FileInfo
}

// ErrFileGone: the database file was deleted or replaced under the open
// store. SQLite would go on writing into the open, unlinked file, which
// nobody can open again: every write would be lost while it reported
// success. Apply and Checkpoint fail with it instead.
var ErrFileGone = errors.New("sqlitestore: the database file was deleted or replaced under the running store")

// checkFile fails if the file at the store's path is no longer the one it
// opened.
func (s *Store) checkFile() error {
	if s.file == nil {
		return nil
	}
	now, err := os.Stat(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %s no longer exists (restore it, or restart to create an empty one and fill it from the stream with --rebuild)", ErrFileGone, s.path)
	case err != nil:
		return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	case !os.SameFile(now, s.file):
		return fmt.Errorf("%w: %s is another file now (restart to open it)", ErrFileGone, s.path)
	}
	return nil
}

// stmtCache holds Apply's statements, prepared once on the database:
// database/sql prepares each again on a connection the first time a
// transaction there uses it, and keeps it, so a batch neither parses nor
// plans SQL (a 32-row INSERT has 928 parameters: parsing it cost more than
// binding and running it).
type stmtCache struct {
	mu     sync.Mutex
	m      map[stmtKey]*sql.Stmt
	closed bool
}

type stmtKey struct {
	head string // which statement: its multiRow's head
	rows int
}

// get returns m's statement for rows rows, preparing it on first use.
func (c *stmtCache) get(ctx context.Context, db *sql.DB, m multiRow, rows int) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("store is closed")
	}
	k := stmtKey{m.head, rows}
	if st, ok := c.m[k]; ok {
		return st, nil
	}
	st, err := db.PrepareContext(ctx, m.sql(rows))
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[stmtKey]*sql.Stmt{}
	}
	c.m[k] = st
	return st, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		_ = st.Close()
	}
	c.m, c.closed = nil, true
}

var _ stores.Store = (*Store)(nil)

// Open opens (creating if needed) the SQLite database at path with the
// settings an audit store needs: a busy timeout first (so that even
// switching to WAL waits for a concurrent opener), WAL journal, synchronous=FULL (a commit is
// on disk when Apply returns, so the projector may acknowledge), a busy
// timeout for concurrent writers, and write transactions that take the
// write lock up front.
func Open(ctx context.Context, path string, cfg Config) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: sqlitestore: empty database path", stores.ErrInvalidConfig)
	}
	if cfg.ReadOnly {
		return openReadOnly(ctx, path, cfg)
	}
	q := url.Values{}
	// temp_store(MEMORY) keeps statement journals (a multi-row INSERT's
	// undo log within its transaction, never needed after a crash) in
	// memory instead of temporary files: a third of a batch's system calls.
	for _, p := range []string{"busy_timeout(30000)", "journal_mode(WAL)", "synchronous(FULL)", "temp_store(MEMORY)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	// Two processes creating the same new file race to switch it to WAL,
	// and the loser gets SQLITE_BUSY without the busy handler being asked.
	// It is a one-time race, so retry it briefly.
	var s *Store
	for attempt := 0; ; attempt++ {
		s, err = New(ctx, db, cfg)
		if err == nil || !isBusy(err) || attempt == 50 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	s.own = true
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		s.path, s.file = path, fi
	}
	return s, nil
}

// openReadOnly opens an existing database for Config.ReadOnly: mode=rw
// (never creates the file) with query_only, or mode=ro if the file may
// not be written.
func openReadOnly(ctx context.Context, path string, cfg Config) (*Store, error) {
	cfg.SkipSchema = true
	var err error
	for _, mode := range []string{"rw", "ro"} {
		q := url.Values{}
		q.Set("mode", mode)
		q.Add("_pragma", "busy_timeout(30000)")
		q.Add("_pragma", "query_only(1)")
		var db *sql.DB
		if db, err = sql.Open("sqlite", "file:"+path+"?"+q.Encode()); err != nil {
			return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
		}
		if err = db.PingContext(ctx); err != nil { // sql.Open is lazy: find a missing file now
			_ = db.Close()
			continue
		}
		s, err := New(ctx, db, cfg)
		if err != nil {
			_ = db.Close()
			return nil, err
		}
		s.own = true
		return s, nil
	}
	return nil, fmt.Errorf("sqlitestore: open %s for reading: %w", path, err)
}

func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// New uses an open database (the caller keeps ownership of db and should
// have opened it as Open does) and creates the tables and indexes if
// missing.
func New(ctx context.Context, db *sql.DB, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{db: db, cfg: cfg, sql: newQueries(cfg), writer: make(chan struct{}, 1)}
	if cfg.SkipSchema {
		// A file an older version wrote, opened without migrating it:
		// read the columns it lacks as their defaults.
		if err := s.sql.readOlder(ctx, db, cfg); err != nil {
			return nil, fmt.Errorf("sqlitestore: %w", err)
		}
		return s, nil
	}
	// One write transaction: a plain statement would start as a reader and
	// fail with SQLITE_BUSY, without waiting, if another connection wrote
	// in between.
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, stmt := range s.sql.schema {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("create schema (%s): %w", firstLine(stmt), err)
			}
		}
		return s.migrate(ctx, tx)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

type queries struct {
	indexes                []string // names of the secondary indexes
	schema                 []string
	insertLog, upsertIssue multiRow
	upsertCP               string
	selectLog, selectIssue string
	reset                  []string
}

const logColumns = `seq, event_id, type, state, schema_version, pipeline, change_id, author, execution_id,
	change_order, target_system, host, runner_id, lock_token, occurred_at, duration_ms, error_message,
	error_trace, metadata, recovery, transactional, resolution, operator, reason, hash, prev_hash,
	signer, signature, trust, prev_seq, position, chain`

// logColumnCount and issueColumnCount are the number of columns above.
const (
	logColumnCount   = 32
	issueColumnCount = 17
)

const issueColumns = `pipeline, change_id, status, state, seq, event_id, execution_id, author,
	target_system, recovery, error_message, error_trace, updated_at, operator, reason, trust, chain`

// changeLogTable is the changeLog's definition: one row per stream message
// stored, keyed by its sequence. The event id is not unique: an event
// published again is a row of its own.
func changeLogTable(name string) string {
	return `CREATE TABLE IF NOT EXISTS ` + name + ` (
	seq INTEGER NOT NULL PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL,
	schema_version INTEGER NOT NULL, pipeline TEXT NOT NULL, change_id TEXT NOT NULL, author TEXT NOT NULL,
	execution_id TEXT NOT NULL, change_order TEXT NOT NULL, target_system TEXT NOT NULL, host TEXT NOT NULL,
	runner_id TEXT NOT NULL, lock_token INTEGER NOT NULL, occurred_at TEXT NOT NULL, duration_ms INTEGER NOT NULL,
	error_message TEXT NOT NULL, error_trace TEXT NOT NULL, metadata TEXT NOT NULL, recovery TEXT NOT NULL,
	transactional INTEGER NOT NULL, resolution TEXT NOT NULL, operator TEXT NOT NULL, reason TEXT NOT NULL,
	hash TEXT NOT NULL DEFAULT '', prev_hash TEXT NOT NULL DEFAULT '',
	signer TEXT NOT NULL DEFAULT '', signature TEXT NOT NULL DEFAULT '', trust TEXT NOT NULL DEFAULT '',
	prev_seq INTEGER NOT NULL DEFAULT 0, position INTEGER NOT NULL DEFAULT 0, chain TEXT NOT NULL DEFAULT '')`
}

func newQueries(c Config) queries {
	lg, is, cp := quote(c.ChangeLogTable), quote(c.IssuesTable), quote(c.CheckpointsTable)
	idx := func(table, suffix string) string { return quote(table + "_" + suffix) }
	return queries{
		indexes: []string{c.ChangeLogTable + "_change", c.ChangeLogTable + "_state", c.IssuesTable + "_status", c.IssuesTable + "_seq"},
		schema: []string{
			changeLogTable(lg),
			`CREATE INDEX IF NOT EXISTS ` + idx(c.ChangeLogTable, "change") + ` ON ` + lg + ` (pipeline, change_id, seq)`,
			`CREATE INDEX IF NOT EXISTS ` + idx(c.ChangeLogTable, "state") + ` ON ` + lg + ` (state, seq)`,
			`CREATE TABLE IF NOT EXISTS ` + is + ` (
	pipeline TEXT NOT NULL, change_id TEXT NOT NULL, status TEXT NOT NULL, state TEXT NOT NULL,
	seq INTEGER NOT NULL, event_id TEXT NOT NULL, execution_id TEXT NOT NULL, author TEXT NOT NULL,
	target_system TEXT NOT NULL, recovery TEXT NOT NULL, error_message TEXT NOT NULL, error_trace TEXT NOT NULL,
	updated_at TEXT NOT NULL, operator TEXT NOT NULL, reason TEXT NOT NULL, trust TEXT NOT NULL DEFAULT '',
	chain TEXT NOT NULL DEFAULT '', PRIMARY KEY (pipeline, change_id))`,
			`CREATE INDEX IF NOT EXISTS ` + idx(c.IssuesTable, "status") + ` ON ` + is + ` (status, seq)`,
			`CREATE INDEX IF NOT EXISTS ` + idx(c.IssuesTable, "seq") + ` ON ` + is + ` (seq)`,
			`CREATE TABLE IF NOT EXISTS ` + cp + ` (name TEXT NOT NULL PRIMARY KEY, seq INTEGER NOT NULL)`,
		},
		insertLog: multiRow{head: `INSERT INTO ` + lg + ` (` + logColumns + `) VALUES `,
			row: placeholders(logColumnCount), tail: ` ON CONFLICT DO NOTHING`},
		// The sequence guard: an older event never replaces newer state.
		upsertIssue: multiRow{head: `INSERT INTO ` + is + ` (` + issueColumns + `) VALUES `, row: placeholders(issueColumnCount),
			tail: ` ON CONFLICT (pipeline, change_id) DO UPDATE SET status=excluded.status, state=excluded.state,
	seq=excluded.seq, event_id=excluded.event_id, execution_id=excluded.execution_id, author=excluded.author,
	target_system=excluded.target_system, recovery=excluded.recovery, error_message=excluded.error_message,
	error_trace=excluded.error_trace, updated_at=excluded.updated_at, operator=excluded.operator,
	reason=excluded.reason, trust=excluded.trust, chain=excluded.chain
	WHERE excluded.seq > ` + is + `.seq`},
		upsertCP: `INSERT INTO ` + cp + ` (name, seq) VALUES (?, ?)
	ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)`,
		selectLog:   `SELECT ` + logColumns + ` FROM ` + lg,
		selectIssue: `SELECT ` + issueColumns + ` FROM ` + is,
		reset:       []string{`DELETE FROM ` + lg, `DELETE FROM ` + is, `DELETE FROM ` + cp},
	}
}

func quote(id string) string { return `"` + id + `"` }

// columnNames lists the names in a column list such as logColumns.
func columnNames(cols string) []string {
	var out []string
	for col := range strings.SplitSeq(cols, ",") {
		out = append(out, strings.TrimSpace(col))
	}
	return out
}

// integerColumn reports whether col, one of the columns later versions
// added, holds an integer (else text): what migrate adds it as, and what
// a file without it reads as (0, or ”).
func integerColumn(col string) bool { return col == "prev_seq" || col == "position" }

// readOlder makes the SELECTs read columns a table lacks (it was written by
// an older version and not migrated) as their defaults.
func (q *queries) readOlder(ctx context.Context, db *sql.DB, c Config) error {
	for _, t := range []struct {
		table, cols string
		sel         *string
	}{{c.ChangeLogTable, logColumns, &q.selectLog}, {c.IssuesTable, issueColumns, &q.selectIssue}} {
		have, err := columns(ctx, db, t.table)
		if err != nil || len(have) == 0 {
			return err // a missing table fails where it is read, naming it
		}
		list := make([]string, 0, 32)
		for _, col := range columnNames(t.cols) {
			switch {
			case slices.Contains(have, col):
				list = append(list, col)
			case integerColumn(col):
				list = append(list, "0 AS "+col)
			default:
				list = append(list, "'' AS "+col)
			}
		}
		*t.sel = `SELECT ` + strings.Join(list, ", ") + ` FROM ` + quote(t.table)
	}
	return nil
}

// Apply writes the batch in one transaction. It fails with ErrFileGone if
// the database file was deleted or replaced, before or during the write.
func (s *Store) Apply(ctx context.Context, b stores.Batch) error {
	if err := s.checkFile(); err != nil {
		return err
	}
	if err := s.apply(ctx, b); err != nil {
		return err
	}
	return s.checkFile() // deleted while the write went into it
}

func (s *Store) apply(ctx context.Context, b stores.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if len(b.Records) == 0 && b.Through == 0 {
		return ctx.Err()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if len(b.Records) == 0 {
			return s.raiseCheckpoint(ctx, tx, b)
		}
		err := s.execRows(ctx, tx, s.sql.insertLog, len(b.Records), func(i int, args []any) ([]any, error) {
			return logArgs(b.Records[i], args)
		})
		if err != nil {
			return fmt.Errorf("insert events: %w", err)
		}
		latest := b.LatestPerChange() // one row per change: a statement may not upsert a key twice
		err = s.execRows(ctx, tx, s.sql.upsertIssue, len(latest), func(j int, args []any) ([]any, error) {
			return issueArgs(stores.IssueOf(latest[j]), args), nil
		})
		if err != nil {
			return fmt.Errorf("upsert issues: %w", err)
		}
		return s.raiseCheckpoint(ctx, tx, b)
	})
}

// raiseCheckpoint raises b's checkpoint to b.Through, in the batch's
// transaction: never lowered, and never covering rows not written.
func (s *Store) raiseCheckpoint(ctx context.Context, tx *sql.Tx, b stores.Batch) error {
	if b.Through == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, s.sql.upsertCP, b.Checkpoint, int64(b.Through)); err != nil {
		return fmt.Errorf("raise checkpoint: %w", err)
	}
	return nil
}

func logArgs(r stores.Record, args []any) ([]any, error) {
	md, err := json.Marshal(r.Metadata)
	return append(args, r.Seq, r.ID, string(r.Type), string(stores.StateOf(r)), r.SchemaVersion,
		r.Pipeline, r.ChangeID, r.Author, r.ExecutionID, r.Order, r.TargetSystem, r.Host, r.RunnerID,
		int64(r.LockToken), stores.FormatTime(r.OccurredAt), r.Duration.Milliseconds(),
		r.ErrorMessage, r.ErrorTrace, string(md), string(r.Recovery), r.Transactional,
		string(r.Resolution), r.Operator, r.Reason, r.Hash, r.PrevHash, r.Signer, r.Signature, r.Trust,
		int64(r.PrevSeq), int64(r.Position), r.Chain), err
}

func issueArgs(i stores.Issue, args []any) []any {
	return append(args, i.Pipeline, i.ChangeID, string(i.Status), string(i.State), i.Seq,
		i.EventID, i.ExecutionID, i.Author, i.TargetSystem, string(i.Recovery), i.ErrorMessage,
		i.ErrorTrace, stores.FormatTime(i.UpdatedAt), i.Operator, i.Reason, i.Trust, i.Chain)
}

// multiRow is an INSERT whose VALUES list takes any number of rows: one
// statement per chunk of rows costs far less than one per row.
type multiRow struct{ head, row, tail string }

func (m multiRow) sql(rows int) string {
	return m.head + strings.Repeat(m.row+",", rows-1) + m.row + m.tail
}

func placeholders(n int) string { return "(" + strings.Repeat("?,", n-1) + "?)" }

// rowsPerStatement keeps a statement's parameters (32 per changeLog row)
// well under SQLite's limit of 32766.
const rowsPerStatement = 32

// execRows executes m over n rows, in chunks; args appends row i's values.
func (s *Store) execRows(ctx context.Context, tx *sql.Tx, m multiRow, n int, args func(i int, dst []any) ([]any, error)) error {
	vals := make([]any, 0, min(n, rowsPerStatement)*strings.Count(m.row, "?"))
	for i := 0; i < n; {
		k := min(rowsPerStatement, n-i)
		st, err := s.stmts.get(ctx, s.db, m, k)
		if err != nil {
			return err
		}
		vals = vals[:0]
		for j := i; j < i+k; j++ {
			if vals, err = args(j, vals); err != nil {
				return err
			}
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, vals...); err != nil {
			return err
		}
		i += k
	}
	return nil
}

func (s *Store) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	s.bulkMu.Lock()
	conn := s.bulk
	if conn != nil {
		defer s.bulkMu.Unlock() // one writer in bulk mode: its connection
	} else {
		s.bulkMu.Unlock()
	}
	select {
	case s.writer <- struct{}{}:
		defer func() { <-s.writer }()
	case <-ctx.Done():
		return fmt.Errorf("sqlitestore: begin: %w", stores.ContextError(ctx, ctx.Err()))
	}
	var tx *sql.Tx
	var err error
	if conn != nil {
		tx, err = conn.BeginTx(ctx, nil)
	} else {
		tx, err = s.db.BeginTx(ctx, nil)
	}
	if err != nil {
		return fmt.Errorf("sqlitestore: begin: %w", stores.ContextError(ctx, err))
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("sqlitestore: %w", stores.ContextError(ctx, err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlitestore: commit: %w", stores.ContextError(ctx, err))
	}
	return nil
}

// Checkpoint returns the contiguous checkpoint recorded under name (see
// stores.Batch.Through), 0 if none.
func (s *Store) Checkpoint(ctx context.Context, name string) (uint64, error) {
	if err := s.checkFile(); err != nil {
		return 0, err
	}
	var seq int64
	err := s.db.QueryRowContext(ctx, `SELECT seq FROM `+quote(s.cfg.CheckpointsTable)+` WHERE name = ?`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: checkpoint %q: %w", name, stores.ContextError(ctx, err))
	}
	return uint64(seq), nil
}

// where builds a WHERE clause from column=value filters that are set.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, arg any, set bool) {
	if set {
		w.conds = append(w.conds, cond)
		w.args = append(w.args, arg)
	}
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// History returns changeLog rows, newest first.
func (s *Store) History(ctx context.Context, q stores.HistoryQuery) ([]stores.Record, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	var w where
	w.add("pipeline = ?", q.Pipeline, q.Pipeline != "")
	w.add("change_id = ?", q.ChangeID, q.ChangeID != "")
	w.add("state = ?", string(q.State), q.State != "")
	w.add("occurred_at >= ?", stores.FormatTime(q.Since), !q.Since.IsZero())
	w.add("seq < ?", q.BeforeSeq, q.BeforeSeq != 0)
	return query(ctx, s.db, "history", s.sql.selectLog+w.String()+" ORDER BY seq DESC LIMIT ?", append(w.args, q.Limit),
		func(rows *sql.Rows) (r stores.Record, err error) {
			var typ, state, at, md, recovery, resolution string
			var lockToken, durMs, prevSeq, position int64
			if err := rows.Scan(&r.Seq, &r.ID, &typ, &state, &r.SchemaVersion, &r.Pipeline, &r.ChangeID, &r.Author,
				&r.ExecutionID, &r.Order, &r.TargetSystem, &r.Host, &r.RunnerID, &lockToken, &at, &durMs,
				&r.ErrorMessage, &r.ErrorTrace, &md, &recovery, &r.Transactional, &resolution, &r.Operator,
				&r.Reason, &r.Hash, &r.PrevHash, &r.Signer, &r.Signature, &r.Trust, &prevSeq, &position, &r.Chain); err != nil {
				return r, err
			}
			r.Type, r.Recovery, r.Resolution = events.Type(typ), events.Recovery(recovery), events.Resolution(resolution)
			r.RowState, r.PrevSeq, r.Position = events.State(state), uint64(prevSeq), uint64(position)
			r.LockToken, r.Duration = uint64(lockToken), time.Duration(durMs)*time.Millisecond
			if r.OccurredAt, err = stores.ParseTime(at); err != nil {
				return r, fmt.Errorf("event %s: bad occurred_at %q: %w", r.ID, at, err)
			}
			if err := json.Unmarshal([]byte(md), &r.Metadata); err != nil {
				return r, fmt.Errorf("event %s: bad metadata: %w", r.ID, err)
			}
			return r, nil
		})
}

// Issues returns issue rows, most recently changed first.
func (s *Store) Issues(ctx context.Context, q stores.IssueQuery) ([]stores.Issue, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	w := issueWhere(q)
	return query(ctx, s.db, "issues", s.sql.selectIssue+w.String()+" ORDER BY seq DESC LIMIT ?", append(w.args, q.Limit),
		func(rows *sql.Rows) (i stores.Issue, err error) {
			var status, state, recovery, at string
			if err := rows.Scan(&i.Pipeline, &i.ChangeID, &status, &state, &i.Seq, &i.EventID, &i.ExecutionID,
				&i.Author, &i.TargetSystem, &recovery, &i.ErrorMessage, &i.ErrorTrace, &at, &i.Operator,
				&i.Reason, &i.Trust, &i.Chain); err != nil {
				return i, err
			}
			i.Status, i.State, i.Recovery = stores.IssueStatus(status), events.State(state), events.Recovery(recovery)
			if i.UpdatedAt, err = stores.ParseTime(at); err != nil {
				return i, fmt.Errorf("issue %s/%s: bad updated_at %q: %w", i.Pipeline, i.ChangeID, at, err)
			}
			return i, nil
		})
}

// query runs a SELECT and scans every row with scan.
func query[T any](ctx context.Context, db *sql.DB, what, stmt string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	rows, err := db.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %s: %w", what, stores.ContextError(ctx, err))
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: %s: %w", what, stores.ContextError(ctx, err))
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: %s: %w", what, stores.ContextError(ctx, err))
	}
	return out, nil
}

// Reset deletes every row of this store's tables.
func (s *Store) Reset(ctx context.Context) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		for _, stmt := range s.sql.reset {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close closes the database if Open opened it.
func (s *Store) Close() error {
	s.stmts.close()
	if s.own {
		return s.db.Close()
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
