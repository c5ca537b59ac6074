package projector_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// outageStore is the real store, except that while failing is set every
// write holding an event of one change fails, as a write into a database
// partition that is down would: that batch is retried and its worker
// stalls, while the other workers store everything after it.
type outageStore struct {
	stores.Store
	pipeline, change string
	failing          atomic.Bool
	failed           atomic.Int64
}

func (s *outageStore) Apply(ctx context.Context, b stores.Batch) error {
	if s.failing.Load() {
		for _, r := range b.Records {
			if r.Pipeline == s.pipeline && r.ChangeID == s.change {
				s.failed.Add(1)
				return errors.New("injected: the partition holding this change is down")
			}
		}
	}
	return s.Store.Apply(ctx, b)
}

// storedSeqs returns the sequences the store holds, ascending.
func storedSeqs(t testing.TB, s stores.Store) []uint64 {
	t.Helper()
	var out []uint64
	q := stores.HistoryQuery{Limit: stores.MaxLimit}
	for {
		page, err := s.History(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			out = append(out, r.Seq)
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
	slices.Sort(out)
	return out
}

func checkpoint(t testing.TB, s stores.Store, name string) uint64 {
	t.Helper()
	cp, err := s.Checkpoint(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// checkContiguous asserts what a checkpoint promises: every sequence in
// 1..cp is stored, and cp is below every sequence in 1..last that is not.
func checkContiguous(t testing.TB, cp, last uint64, stored []uint64) (firstMissing uint64) {
	t.Helper()
	have := map[uint64]bool{}
	for _, s := range stored {
		have[s] = true
	}
	for s := uint64(1); s <= last; s++ {
		if !have[s] {
			if cp >= s {
				t.Fatalf("checkpoint %d, but sequence %d is not stored", cp, s)
			}
			return s
		}
	}
	return 0
}

// TestCheckpointStaysBelowUnstoredEvents: four workers, one of whose
// batches keeps failing, while the others store every event after it. The
// store's checkpoint must stay below the first unstored event, with every
// event at or below it stored. (A high-water mark — what the checkpoint
// used to be — reads the highest sequence stored, far above.) Once the
// outage ends, a new projector stores the rest and the checkpoint reaches
// the end of the stream.
func TestCheckpointStaysBelowUnstoredEvents(t *testing.T) {
	e := setup(t)
	const workers, changes = 4, 200
	publish(t, e.prod, "billing", changes)
	const total = 2 * changes
	stall := "0003-change"
	stuck := projector.Route("billing", stall, workers)
	others := 0 // events routed to the workers that are not stuck
	for c := range changes {
		if projector.Route("billing", fmt.Sprintf("%04d-change", c), workers) != stuck {
			others += 2
		}
	}
	st := &outageStore{Store: e.store, pipeline: "billing", change: stall}
	st.failing.Store(true)
	start := time.Now()
	p, stop := run(t, e.srv.JS, st, projector.Config{Workers: workers, BatchSize: 10, RetryMax: 50 * time.Millisecond, ShutdownTimeout: 200 * time.Millisecond})
	waitFor(t, "the other workers to store their events", 20*time.Second, func() bool {
		return countHistory(t, e.store) >= others && st.failed.Load() >= 3
	})
	stop()
	stored := storedSeqs(t, e.store)
	cp := checkpoint(t, e.store, "projector-sqlite")
	firstMissing := checkContiguous(t, cp, total, stored)
	t.Logf("%d of %d events stored, highest %d, first missing %d; checkpoint %d (Stats.Checkpoint %d, LastSeq %d), %s",
		len(stored), total, stored[len(stored)-1], firstMissing, cp, p.Stats().Checkpoint, p.Stats().LastSeq, time.Since(start).Round(time.Millisecond))
	if firstMissing == 0 {
		t.Fatal("the stalled change's events were stored")
	}
	if high := stored[len(stored)-1]; high <= firstMissing {
		t.Fatalf("nothing stored above the unstored events (highest %d): the test shows nothing", high)
	}
	// Everything below the stall was stored by this process, and Run
	// records the checkpoint as it stops.
	if cp != firstMissing-1 {
		t.Fatalf("checkpoint %d, want %d: the last event before the first unstored one", cp, firstMissing-1)
	}

	st.failing.Store(false)
	p2, _ := run(t, e.srv.JS, e.store, projector.Config{Workers: workers, BatchSize: 10})
	waitCaughtUp(t, p2)
	checkProjection(t, e.store, "billing", changes)
	waitFor(t, "the checkpoint to reach the end of the stream", 5*time.Second, func() bool {
		return checkpoint(t, e.store, "projector-sqlite") == total
	})
}

// TestCheckpointPassesAParkedEvent: an event of a newer schema version is
// parked for a newer projector (held.go), which settles it: the checkpoint
// passes it while the events after it are stored, and the later events of
// its change are parked behind it; an upgraded projector stores them all,
// and the store then holds every event.
func TestCheckpointPassesAParkedEvent(t *testing.T) {
	projector.SetHeldTimings(t, 200*time.Millisecond, time.Second)
	e := setup(t)
	publish(t, e.prod, "shipping", 5) // seqs 1..10
	rawPublish(t, e.srv.JS, subjectOf("newer"), edited(t, events.ExecutionStarted, "newer", newerVersion))
	publish(t, e.prod, "shipping-later", 5) // 12..21
	old, stopOld := run(t, e.srv.JS, e.store, projector.Config{Workers: 3, BatchSize: 4})
	waitStored(t, e.store, "shipping-later", "0004-change", 10*time.Second)
	waitFor(t, "the checkpoint to pass the parked event", 5*time.Second, func() bool {
		return checkpoint(t, e.store, "projector-sqlite") == 21
	})
	if old.Stats().Held != 1 {
		t.Fatalf("%d events parked, want 1", old.Stats().Held)
	}
	if rows, err := e.store.History(context.Background(), stores.HistoryQuery{Pipeline: "billing", ChangeID: "newer"}); err != nil || len(rows) != 0 {
		t.Fatalf("the parked event has rows %v (%v)", rows, err)
	}
	if err := old.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "upgrade needed") {
		t.Fatalf("Ready with an event parked: %v", err)
	}
	stopOld()
	upgraded, _ := run(t, e.srv.JS, e.store, projector.Config{Decode: readNewer})
	waitCaughtUp(t, upgraded)
	waitStored(t, e.store, "billing", "newer", 5*time.Second)
	if err := upgraded.Ready(context.Background()); err != nil {
		t.Fatalf("Ready after the re-drive: %v", err)
	}
}
