// Command fencing is a target-side fence for change commands: it applies a
// write to a SQLite "target system" only if the caller's lock token is not
// older than the newest token the target has seen for that resource.
//
//	fencing -db target.db -resource orders -write "reprice batch 7"   # token from $AUDITFLOW_LOCK_TOKEN
//	fencing -db target.db -resource orders -write "..." -token 12
//	fencing -db target.db -show
//
// Exit status: 0 the write was recorded; 3 fenced (a newer lock holder has
// written this resource: the write was refused); 2 usage; 1 any other
// error. See docs/fencing.md for why a runner's lock alone is not enough.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Exit codes.
const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitFenced = 3
)

// tokenEnv is where the auditflow runner puts the execution's lock token.
const tokenEnv = "AUDITFLOW_LOCK_TOKEN"

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Getenv(tokenEnv), os.Stdout, os.Stderr))
}

// errFenced is a write refused because the resource was last written
// under a newer lock token.
var errFenced = errors.New("fenced")

// fencedError is a refused write; it says which tokens met.
type fencedError struct {
	Resource      string
	Stored, Token uint64
}

func (e *fencedError) Error() string {
	return fmt.Sprintf("fenced: resource %s was last written under lock token %d; this execution holds token %d (stale): write refused",
		e.Resource, e.Stored, e.Token)
}

func (e *fencedError) Unwrap() error { return errFenced }

func run(ctx context.Context, args []string, envToken string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fencing", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbPath := fs.String("db", "", "SQLite database of the target system (created if missing)")
	resource := fs.String("resource", "", "the resource the write is fenced on, e.g. a table or an account")
	text := fs.String("write", "", "what to record as written")
	tokenFlag := fs.String("token", "", "lock token (default $"+tokenEnv+")")
	show := fs.Bool("show", false, "print the fences and the writes, and exit")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dbPath == "" || (!*show && *resource == "") {
		fmt.Fprintln(stderr, "fencing: -db and -resource (or -show) are required")
		return exitUsage
	}
	db, err := open(ctx, *dbPath)
	if err != nil {
		fmt.Fprintln(stderr, "fencing:", err)
		return exitError
	}
	defer db.Close()
	if *show {
		if err := showAll(ctx, db, stdout); err != nil {
			fmt.Fprintln(stderr, "fencing:", err)
			return exitError
		}
		return exitOK
	}
	raw := *tokenFlag
	if raw == "" {
		raw = envToken
	}
	if raw == "" {
		fmt.Fprintln(stderr, "fencing: no lock token: run as an auditflow change (it sets $"+tokenEnv+") or pass -token")
		return exitUsage
	}
	token, err := strconv.ParseUint(raw, 10, 63) // SQLite integers are signed 64-bit
	if err != nil {
		fmt.Fprintf(stderr, "fencing: lock token %q is not a number\n", raw)
		return exitUsage
	}
	err = write(ctx, db, *resource, token, *text, time.Now())
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "wrote %s under lock token %d\n", *resource, token)
		return exitOK
	case errors.Is(err, errFenced):
		fmt.Fprintln(stderr, err)
		return exitFenced
	default:
		fmt.Fprintln(stderr, "fencing:", err)
		return exitError
	}
}

// open opens the target as sqlitestore does: a busy timeout (concurrent
// writers wait rather than fail), WAL, and write transactions that take
// the write lock at BEGIN, so the fence's read and update cannot
// interleave with another writer's.
func open(ctx context.Context, path string) (*sql.DB, error) {
	q := url.Values{}
	for _, p := range []string{"busy_timeout(30000)", "journal_mode(WAL)", "synchronous(FULL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	const schema = `
CREATE TABLE IF NOT EXISTS fences (
	resource   TEXT PRIMARY KEY,
	token      INTEGER NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS writes (
	id         INTEGER PRIMARY KEY,
	resource   TEXT NOT NULL,
	token      INTEGER NOT NULL,
	text       TEXT NOT NULL,
	written_at TEXT NOT NULL
);`
	// Two processes creating a new file race to switch it to WAL; the
	// loser gets SQLITE_BUSY without the busy handler being asked. It
	// happens once per file, so retry briefly.
	for attempt := 0; ; attempt++ {
		_, err = db.ExecContext(ctx, schema)
		if err == nil || attempt == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// write is the fence: in one transaction, raise the resource's token to
// ours unless it is already higher, and record the write only if it was
// not. A real target puts its own writes where the writes row goes.
func write(ctx context.Context, db *sql.DB, resource string, token uint64, text string, now time.Time) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: we hold the write lock from here
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	at := now.UTC().Format(time.RFC3339Nano)
	res, err := tx.ExecContext(ctx, `UPDATE fences SET token = ?, updated_at = ? WHERE resource = ? AND token <= ?`, token, at, resource, token)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		// No row, or a row with a newer token.
		res, err := tx.ExecContext(ctx, `INSERT INTO fences (resource, token, updated_at) VALUES (?, ?, ?) ON CONFLICT (resource) DO NOTHING`, resource, token, at)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			var stored uint64
			if err := tx.QueryRowContext(ctx, `SELECT token FROM fences WHERE resource = ?`, resource).Scan(&stored); err != nil {
				return err
			}
			return &fencedError{Resource: resource, Stored: stored, Token: token}
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO writes (resource, token, text, written_at) VALUES (?, ?, ?, ?)`, resource, token, text, at); err != nil {
		return err
	}
	return tx.Commit()
}

func showAll(ctx context.Context, db *sql.DB, w io.Writer) error {
	rows, err := db.QueryContext(ctx, `SELECT resource, token, updated_at FROM fences ORDER BY resource`)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "FENCE RESOURCE TOKEN UPDATED")
	for rows.Next() {
		var r, at string
		var tok uint64
		if err := rows.Scan(&r, &tok, &at); err != nil {
			rows.Close()
			return err
		}
		fmt.Fprintf(w, "fence %s %d %s\n", r, tok, at)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	rows, err = db.QueryContext(ctx, `SELECT id, resource, token, written_at, text FROM writes ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	fmt.Fprintln(w, "WRITE ID RESOURCE TOKEN WRITTEN TEXT")
	for rows.Next() {
		var id int64
		var r, at, text string
		var tok uint64
		if err := rows.Scan(&id, &r, &tok, &at, &text); err != nil {
			return err
		}
		fmt.Fprintf(w, "write %d %s %d %s %s\n", id, r, tok, at, strconv.Quote(text))
	}
	return rows.Err()
}
