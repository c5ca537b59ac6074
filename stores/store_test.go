package stores_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

func rec(seq uint64, typ events.Type, change string) stores.Record {
	e := events.New(typ, "p", change)
	e.ExecutionID = "x"
	if typ == events.ExecutionFailed {
		e.ErrorMessage = "boom"
	}
	return stores.Record{Seq: seq, Event: e}
}

func TestLatestPerChange(t *testing.T) {
	b := stores.Batch{Records: []stores.Record{
		rec(5, events.ExecutionStarted, "a"), rec(9, events.ExecutionSucceeded, "a"),
		rec(3, events.ExecutionStarted, "b"), rec(7, events.ExecutionStarted, "a"),
	}}
	got := b.LatestPerChange()
	if len(got) != 2 || got[0].ChangeID != "a" || got[0].Seq != 9 || got[1].ChangeID != "b" || got[1].Seq != 3 {
		t.Fatalf("LatestPerChange = %+v", got)
	}
	if b.MaxSeq() != 9 {
		t.Fatalf("MaxSeq = %d", b.MaxSeq())
	}
}

func TestBatchValidate(t *testing.T) {
	ok := stores.Batch{Checkpoint: "c", Records: []stores.Record{rec(1, events.ExecutionStarted, "a")}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := rec(2, events.ExecutionFailed, "a")
	bad.ErrorMessage = ""
	for name, b := range map[string]stores.Batch{
		"no checkpoint": {Records: ok.Records},
		"seq 0":         {Checkpoint: "c", Records: []stores.Record{rec(0, events.ExecutionStarted, "a")}},
		"invalid event": {Checkpoint: "c", Records: []stores.Record{bad}},
		"long verdict":  {Checkpoint: "c", Records: []stores.Record{withTrust(rec(3, events.ExecutionStarted, "a"), strings.Repeat("x", stores.MaxTrustLen+1))}},
	} {
		if err := b.Validate(); !errors.Is(err, stores.ErrInvalidRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestStatusAndStaleness(t *testing.T) {
	for state, want := range map[events.State]stores.IssueStatus{
		events.StateStarted: stores.IssueInProgress, events.StateFailed: stores.IssueOpen,
		events.StateRollbackFailed: stores.IssueOpen, events.StateUncertain: stores.IssueOpen, events.StateOverlapped: stores.IssueOpen,
		events.StateApplied: stores.IssueClosed, events.StateRolledBack: stores.IssueClosed,
		events.StateManuallyApplied: stores.IssueClosed, events.StateManuallyRolledBack: stores.IssueClosed,
	} {
		if got := stores.StatusOf(state); got != want {
			t.Errorf("StatusOf(%s) = %s, want %s", state, got, want)
		}
	}
	now := time.Now()
	started := stores.IssueOf(rec(1, events.ExecutionStarted, "a"))
	started.UpdatedAt = now.Add(-time.Hour)
	if !started.Stale(now, 15*time.Minute) || started.Stale(now, 2*time.Hour) {
		t.Fatal("Stale does not follow the threshold")
	}
	failed := stores.IssueOf(rec(2, events.ExecutionFailed, "a"))
	failed.UpdatedAt = now.Add(-time.Hour)
	if failed.Stale(now, time.Minute) {
		t.Fatal("only in-progress issues go stale")
	}
}

func withTrust(r stores.Record, trust string) stores.Record { r.Trust = trust; return r }

// TestUntrustedIsOpen: an untrusted event opens its change's issue
// whatever it claims, and says why.
func TestUntrustedIsOpen(t *testing.T) {
	for _, typ := range events.Types {
		r := withTrust(rec(1, typ, "a"), "unknown key UABC")
		if i := stores.IssueOf(r); i.Status != stores.IssueOpen || i.Trust != r.Trust || i.State != r.State() {
			t.Errorf("%s, untrusted: %+v, want OPEN with its verdict and its state", typ, i)
		}
	}
	if i := stores.IssueOf(rec(1, events.ExecutionSucceeded, "a")); i.Status != stores.IssueClosed || i.Trust != "" {
		t.Fatalf("trusted success: %+v", i)
	}
}

func TestQueryNormalize(t *testing.T) {
	q, err := stores.HistoryQuery{}.Normalize()
	if err != nil || q.Limit != stores.DefaultLimit {
		t.Fatalf("default limit: %+v %v", q, err)
	}
	for _, q := range []stores.HistoryQuery{{Limit: -1}, {Limit: stores.MaxLimit + 1}, {State: "NOPE"}} {
		if _, err := q.Normalize(); !errors.Is(err, stores.ErrInvalidQuery) {
			t.Errorf("%+v: %v", q, err)
		}
	}
	if _, err := (stores.IssueQuery{Status: "NOPE"}).Normalize(); !errors.Is(err, stores.ErrInvalidQuery) {
		t.Error("bad status accepted")
	}
}
