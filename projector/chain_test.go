package projector_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// republish publishes the exact bytes (and headers) of the message at seq
// again under a new message id, as anyone allowed to publish on its
// subject could: a replay of a signed event.
func republish(t *testing.T, e *env, seq uint64) uint64 {
	t.Helper()
	ctx := context.Background()
	s, err := e.srv.JS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	h := nats.Header{"Nats-Msg-Id": []string{events.NewID()}}
	if sig := m.Header.Get(trust.Header); sig != "" {
		h.Set(trust.Header, sig)
	}
	ack, err := e.srv.JS.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: h})
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// seqOf is the stream sequence of change's first event of type typ.
func seqOf(t *testing.T, e *env, change string, typ events.Type) uint64 {
	t.Helper()
	ctx := context.Background()
	s, err := e.srv.JS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	subject := events.Subject(events.DefaultSubjectPrefix, "billing", change)
	for seq := uint64(1); ; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("no %s of %s: %v", typ, change, err)
		}
		if ev, err := events.Decode(m.Data); err == nil && m.Subject == subject && ev.Type == typ {
			return seq
		}
	}
}

// TestCopiesAreOutOfChain: copies of earlier events published again — a
// success after a failure, a start, two in a row — are each stored as
// rows of their own, OUT_OF_CHAIN, and leave their change's issue OPEN in
// that state; and every reader judges them alike: the live projector from
// the start, one started later (which asks the stream what precedes the
// first event of each change it meets), a replay from the first event and
// one from the middle.
func TestCopiesAreOutOfChain(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	evs := publish(t, e.prod, "billing", 6) // change 0000 failed; the others applied
	_ = evs
	p, stop := run(t, e.srv.JS, e.store, projector.Config{})
	waitCaughtUp(t, p)
	// 0000: failed at seq 2; a copy of 0001's success cannot pass for
	// 0000's (another subject), so copy 0000's own start and, after a
	// resolution that rolls it back, a success published later.
	rolled := events.New(events.ManuallyResolved, "billing", "0000-change")
	rolled.Resolution, rolled.Operator, rolled.Reason = events.ResolvedRolledBack, "bob", "undone by hand"
	_, head, err := e.prod.Last(ctx, "billing", "0000-change")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.prod.Publish(ctx, rolled, producer.After(head)); err != nil {
		t.Fatal(err)
	}
	startCopy := republish(t, e, seqOf(t, e, "0000-change", events.ExecutionStarted)) // 0000's start again
	success1 := seqOf(t, e, "0001-change", events.ExecutionSucceeded)
	successCopy := republish(t, e, success1) // 0001's success again, right after its own
	// 0002's start and success, the second chained to the first by hash
	start2 := seqOf(t, e, "0002-change", events.ExecutionStarted)
	twice := []uint64{republish(t, e, start2), republish(t, e, seqOf(t, e, "0002-change", events.ExecutionSucceeded))}
	waitCaughtUp(t, p)
	stop()

	for _, c := range []struct {
		change string
		seq    uint64
		typ    events.Type
		want   string
	}{
		{"0000-change", startCopy, events.ExecutionStarted, "written as its change's first event"},
		{"0001-change", successCopy, events.ExecutionSucceeded, fmt.Sprintf("repeats the event id of stream sequence %d", success1)},
		{"0002-change", twice[1], events.ExecutionSucceeded, fmt.Sprintf("written to follow stream sequence %d", start2)},
	} {
		is, err := e.store.Issues(ctx, stores.IssueQuery{Pipeline: "billing", ChangeID: c.change})
		if err != nil || len(is) != 1 {
			t.Fatalf("%s: %+v %v", c.change, is, err)
		}
		i := is[0]
		if i.Seq != c.seq || i.Status != stores.IssueOpen || i.State != events.StateOutOfChain || !strings.Contains(i.Chain, c.want) {
			t.Errorf("%s: issue %s %s at %d (%q); want OPEN, OUT_OF_CHAIN at %d saying %q", c.change, i.Status, i.State, i.Seq, i.Chain, c.seq, c.want)
		}
		rows, err := e.store.History(ctx, stores.HistoryQuery{Pipeline: "billing", ChangeID: c.change})
		if err != nil || len(rows) < 3 || rows[0].Seq != c.seq || rows[0].Type != c.typ || rows[0].RowState != events.StateOutOfChain {
			t.Errorf("%s: history %+v %v; want the copy as its own row, OUT_OF_CHAIN", c.change, rows, err)
		}
	}
	if rows, _ := e.store.History(ctx, stores.HistoryQuery{Pipeline: "billing", ChangeID: "0002-change"}); len(rows) != 4 || rows[1].Seq != twice[0] || rows[1].RowState != events.StateOutOfChain {
		t.Errorf("0002: the first copy of the two: %+v", rows)
	}
	if got := p.Stats().OutOfChain; got != 4 {
		t.Errorf("Stats.OutOfChain = %d, want 4", got)
	}
	if rows, _ := e.store.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit}); len(rows) != 17 {
		t.Errorf("%d rows, want 17: every message a row", len(rows))
	}

	// The same projector restarted: its consumer resumes mid-stream, so it
	// asks the stream what precedes the first event of each change it
	// meets, and judges a copy it has never seen the original of.
	late := republish(t, e, seqOf(t, e, "0003-change", events.ExecutionSucceeded)) // 0003's success again
	p, stop = run(t, e.srv.JS, e.store, projector.Config{})
	waitCaughtUp(t, p)
	stop()
	if is, _ := e.store.Issues(ctx, stores.IssueQuery{Pipeline: "billing", ChangeID: "0003-change"}); len(is) != 1 || is[0].Seq != late || is[0].State != events.StateOutOfChain {
		t.Errorf("0003 after a restart: %+v; want OUT_OF_CHAIN at %d", is, late)
	}

	// A projector on a consumer of its own reads the whole stream as one
	// run, and judges alike.
	fresh := openSQLite(t)
	p2, stop2 := run(t, e.srv.JS, fresh, projector.Config{Consumer: "second"})
	waitCaughtUp(t, p2)
	stop2()
	sameStores(t, e.store, fresh)

	rebuilt := openSQLite(t)
	if _, err := projector.Replay(ctx, e.srv.JS, rebuilt, projector.ReplayConfig{}); err != nil {
		t.Fatal(err)
	}
	sameStores(t, e.store, rebuilt)

	// From the middle: the first event of each change it reads is judged
	// by asking the stream; rows below are the live store's.
	tail := openSQLite(t)
	if _, err := projector.Replay(ctx, e.srv.JS, tail, projector.ReplayConfig{FromSeq: successCopy - 1}); err != nil {
		t.Fatal(err)
	}
	want, _ := e.store.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit})
	got, _ := tail.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit})
	for i, r := range got {
		if r.Chain != want[i].Chain || r.Seq != want[i].Seq {
			t.Errorf("replay from %d: row %d chain %q, the live store's %q", successCopy-1, r.Seq, r.Chain, want[i].Chain)
		}
	}
}
