package projector_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

func openFile(t testing.TB, path string) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// removeDB deletes a SQLite database and its WAL files, as a lost disk or
// a wrong path would leave the projector.
func removeDB(t testing.TB, path string) {
	t.Helper()
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// TestRefusesALostStore: a projector whose SQLite file was deleted between
// two runs finds an empty store behind its consumer, which will never
// deliver the acknowledged events again. It refuses to start, saying what
// to do; with Rebuild it replays the stream into the store and consumes.
func TestRefusesALostStore(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.db")
	st := openFile(t, path)
	publish(t, prod, "billing", 20)
	p1, stop1 := run(t, srv.JS, st, projector.Config{})
	waitCaughtUp(t, p1)
	stop1()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	removeDB(t, path)

	lost := openFile(t, path) // a new, empty file at the same path
	_, err = projector.New(ctx, srv.JS, lost, projector.Config{StoreName: "sqlite", Logger: natstest.Logger(t)})
	if !errors.Is(err, projector.ErrStoreBehind) {
		t.Fatalf("New into an empty store behind its consumer: %v, want ErrStoreBehind", err)
	}
	t.Logf("refused: %v", err)
	for _, want := range []string{"recorded no progress", "up to sequence 40", "--rebuild", "nats consumer rm AUDIT projector-sqlite"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q", want)
		}
	}
	if n := countHistory(t, lost); n != 0 {
		t.Fatalf("a refused projector wrote %d rows", n)
	}

	publish(t, prod, "shipping", 5) // the stream goes on meanwhile
	start := time.Now()
	p2, stop2 := run(t, srv.JS, lost, projector.Config{Rebuild: true})
	t.Logf("rebuilt in %s", time.Since(start).Round(time.Millisecond))
	waitCaughtUp(t, p2)
	checkProjection(t, lost, "billing", 20)
	checkProjection(t, lost, "shipping", 5)
	if cp := checkpoint(t, lost, "projector-sqlite"); cp < 40 {
		t.Fatalf("checkpoint %d after the rebuild, want at least 40", cp)
	}
	stop2()
	// The rebuilt store is the consumer's now: no flag needed.
	p3, _ := run(t, srv.JS, lost, projector.Config{})
	publish(t, prod, "shipping-later", 3)
	waitCaughtUp(t, p3)
	checkProjection(t, lost, "shipping-later", 3)
}

// TestCatchesUpARestoredStore: a store restored from a backup has progress
// for its consumer, but less than the consumer has acknowledged. The
// projector replays the events after the store's checkpoint before it
// consumes, so the events acknowledged since the backup are not lost.
func TestCatchesUpARestoredStore(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path, backup := filepath.Join(dir, "audit.db"), filepath.Join(dir, "backup.db")
	st := openFile(t, path)
	publish(t, prod, "billing", 20)
	p1, stop1 := run(t, srv.JS, st, projector.Config{})
	waitCaughtUp(t, p1)
	stop1()
	if err := st.Close(); err != nil { // closing folds the WAL into the file
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backup, data, 0o600); err != nil {
		t.Fatal(err)
	}
	st = openFile(t, path)
	publish(t, prod, "shipping", 10)
	p2, stop2 := run(t, srv.JS, st, projector.Config{})
	waitCaughtUp(t, p2)
	stop2()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	removeDB(t, path)
	if err := os.Rename(backup, path); err != nil {
		t.Fatal(err)
	}

	restored := openFile(t, path)
	if cp := checkpoint(t, restored, "projector-sqlite"); cp != 40 {
		t.Fatalf("the backup's checkpoint is %d, want 40", cp)
	}
	p3, _ := run(t, srv.JS, restored, projector.Config{})
	waitCaughtUp(t, p3)
	checkProjection(t, restored, "billing", 20)
	checkProjection(t, restored, "shipping", 10)
	if cp := checkpoint(t, restored, "projector-sqlite"); cp != 60 {
		t.Fatalf("checkpoint %d after catching up, want 60", cp)
	}
}

// TestReplayClaimsForTheProjector: a complete replay into a lost store
// (as auditflow replay does, claiming the projector's consumer) lets the
// projector start on it; a replay from a later sequence claims nothing
// below it, so the projector still refuses.
func TestReplayClaimsForTheProjector(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.db")
	st := openFile(t, path)
	publish(t, prod, "billing", 20) // 40 events
	p1, stop1 := run(t, srv.JS, st, projector.Config{})
	waitCaughtUp(t, p1)
	stop1()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	removeDB(t, path)
	lost := openFile(t, path)
	claim := []string{"projector-sqlite"}

	if _, err := projector.Replay(ctx, srv.JS, lost, projector.ReplayConfig{FromSeq: 21, Claim: claim}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"replay", "projector-sqlite"} {
		if cp, err := lost.Checkpoint(ctx, name); err != nil || cp != 0 {
			t.Fatalf("checkpoint %s after a replay from 21 = %d, %v; want 0: events 1..20 are not stored", name, cp, err)
		}
	}
	if _, err := projector.New(ctx, srv.JS, lost, projector.Config{StoreName: "sqlite", Logger: natstest.Logger(t)}); !errors.Is(err, projector.ErrStoreBehind) {
		t.Fatalf("New after a partial replay: %v, want ErrStoreBehind", err)
	}

	prog, err := projector.Replay(ctx, srv.JS, lost, projector.ReplayConfig{Claim: claim})
	if err != nil || prog.First != 1 || prog.Seq != 40 {
		t.Fatalf("complete replay = %+v, %v", prog, err)
	}
	for _, name := range []string{"replay", "projector-sqlite"} {
		if cp, err := lost.Checkpoint(ctx, name); err != nil || cp != 40 {
			t.Fatalf("checkpoint %s after a complete replay = %d, %v; want 40", name, cp, err)
		}
	}
	publish(t, prod, "shipping", 5)
	p2, stop2 := run(t, srv.JS, lost, projector.Config{})
	defer stop2()
	waitCaughtUp(t, p2)
	if n := countHistory(t, lost); n != 50 {
		t.Fatalf("%d rows after the projector resumed on the replayed store, want 50", n)
	}
}
