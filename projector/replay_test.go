package projector_test

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

func openSQLite(t testing.TB) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// sameStores fails unless a and b hold the same rows, field for field.
func sameStores(t testing.TB, a, b stores.Store) {
	t.Helper()
	ra, ia := storetest.AllContent(t, a)
	rb, ib := storetest.AllContent(t, b)
	if len(ra) != len(rb) || len(ia) != len(ib) {
		t.Fatalf("row counts differ: changeLog %d vs %d, issues %d vs %d", len(ra), len(rb), len(ia), len(ib))
	}
	for i := range ra {
		if !reflect.DeepEqual(ra[i], rb[i]) {
			t.Fatalf("changeLog row %d differs:\n%+v\n%+v", i, ra[i], rb[i])
		}
	}
	for i := range ia {
		if !reflect.DeepEqual(ia[i], ib[i]) {
			t.Fatalf("issue %d differs:\n%+v\n%+v", i, ia[i], ib[i])
		}
	}
}

// TestReplayRebuildsTheLiveStore: a store rebuilt from the stream equals,
// row for row, the store a live projector fed; an interrupted replay
// resumes; a second replay changes nothing.
func TestReplayRebuildsTheLiveStore(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	publish(t, e.prod, "billing", 300)
	r := events.New(events.ManuallyResolved, "billing", "0000-change")
	r.Resolution, r.Operator, r.Reason = events.ResolvedRolledBack, "bob", "undone by hand"
	if _, err := e.prod.Publish(ctx, r); err != nil {
		t.Fatal(err)
	}
	publish(t, e.prod, "shipping", 200)
	live, _ := run(t, e.srv.JS, e.store, projector.Config{})
	waitCaughtUp(t, live)

	// Interrupted after its first batch, then resumed.
	rebuilt := openSQLite(t)
	ictx, interrupt := context.WithCancel(ctx)
	prog, err := projector.Replay(ictx, e.srv.JS, rebuilt, projector.ReplayConfig{BatchSize: 100,
		Progress: func(p projector.ReplayProgress) { interrupt() }})
	if err == nil || prog.Applied == 0 || prog.Applied >= 1001 {
		t.Fatalf("interrupted replay: %+v, %v", prog, err)
	}
	prog, err = projector.Replay(ctx, e.srv.JS, rebuilt, projector.ReplayConfig{BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if prog.First <= 1 || prog.Seq != prog.Target || prog.Target != 1001 {
		t.Fatalf("resumed replay did not continue after its checkpoint: %+v", prog)
	}
	sameStores(t, e.store, rebuilt)

	// Again: nothing to do, nothing changes.
	prog, err = projector.Replay(ctx, e.srv.JS, rebuilt, projector.ReplayConfig{})
	if err != nil || prog.Applied != 0 {
		t.Fatalf("second replay: %+v, %v", prog, err)
	}
	// From the start, explicitly, over the existing rows: idempotent.
	if _, err := projector.Replay(ctx, e.srv.JS, rebuilt, projector.ReplayConfig{FromSeq: 1, BatchSize: 333}); err != nil {
		t.Fatal(err)
	}
	sameStores(t, e.store, rebuilt)
}

func TestReplayFromSequenceAndTime(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	publish(t, e.prod, "billing", 50)
	time.Sleep(20 * time.Millisecond)
	mark := time.Now()
	publish(t, e.prod, "shipping", 25)

	fromSeq := openSQLite(t)
	if _, err := projector.Replay(ctx, e.srv.JS, fromSeq, projector.ReplayConfig{FromSeq: 91}); err != nil {
		t.Fatal(err)
	}
	recs, _ := storetest.AllContent(t, fromSeq)
	if len(recs) != 60 || recs[len(recs)-1].Seq != 91 {
		t.Fatalf("from seq 91: %d rows, oldest %d", len(recs), recs[len(recs)-1].Seq)
	}
	since := openSQLite(t)
	if _, err := projector.Replay(ctx, e.srv.JS, since, projector.ReplayConfig{Since: mark}); err != nil {
		t.Fatal(err)
	}
	recs, _ = storetest.AllContent(t, since)
	if len(recs) != 50 || recs[len(recs)-1].Pipeline != "shipping" {
		t.Fatalf("since the mark: %d rows (want the 50 shipping events)", len(recs))
	}
}

// TestReplayJudgesLikeTheProjector: a replay skips what the live projector
// dead-letters (an undecodable event, one on another change's subject),
// and stops at an event of a newer schema version, which it must not
// leave out, after storing everything before it.
func TestReplayJudgesLikeTheProjector(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	publish(t, e.prod, "billing", 2) // seq 1..4
	rawPublish(t, e.srv.JS, subjectOf("0001"), []byte("not json"))
	rawPublish(t, e.srv.JS, subjectOf("0001"), edited(t, events.ExecutionFailed, "0002", nil))
	publish(t, e.prod, "shipping", 1) // seq 7..8
	rawPublish(t, e.srv.JS, subjectOf("0003"), edited(t, events.ExecutionStarted, "0003", newerVersion))
	publish(t, e.prod, "ops", 1)

	st := openSQLite(t)
	prog, err := projector.Replay(ctx, e.srv.JS, st, projector.ReplayConfig{BatchSize: 3})
	if !errors.Is(err, events.ErrUnsupportedVersion) || !strings.Contains(err.Error(), "seq 9") {
		t.Fatalf("replay over a newer event: %v", err)
	}
	if n := countHistory(t, st); n != 6 || prog.Skipped != 2 {
		t.Fatalf("%d rows stored, %d skipped; want the 6 before the newer event, 2 skipped", n, prog.Skipped)
	}
	if cp, _ := st.Checkpoint(ctx, "replay"); cp != 8 {
		t.Fatalf("checkpoint %d, want 8: a resumed replay starts at the newer event", cp)
	}
}

// TestParallelReplay: a replay with several writers into SQLite rebuilds
// the same store as one writer; cancelled midway, its checkpoint covers
// only stored events and it resumes to the same end.
func TestParallelReplay(t *testing.T) {
	storebench.ParallelReplay(t, func(t testing.TB, _ string) stores.Store { return openSQLite(t) }, storebench.ReplayConfig{})
}

func TestReplayRefusesBadWriters(t *testing.T) {
	e := setup(t)
	for _, w := range []int{-1, 257} {
		if _, err := projector.Replay(context.Background(), e.srv.JS, e.store, projector.ReplayConfig{Writers: w}); !errors.Is(err, projector.ErrInvalidConfig) {
			t.Errorf("Writers %d: %v, want ErrInvalidConfig", w, err)
		}
	}
}
