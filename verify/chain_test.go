package verify_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
)

// TestReplayedEventIsOutOfChainUntilResolved: exact copies of earlier
// events published again (a rolled-back change's old success, a start)
// are listed out of their chain — not as tampering — with the message
// they follow; verify fails while no resolution follows them, and passes
// once one does; the store, fed as a projector feeds it, shows them as
// OUT_OF_CHAIN rows, and a store that shows one of them believed is drift.
func TestReplayedEventIsOutOfChainUntilResolved(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	ctx := context.Background()
	s, _ := srv.JS.Stream(ctx, producer.DefaultStreamName)
	// identity/0003-backfill failed, was rolled back, then applied: copy
	// its success; and billing/0001-schema's start.
	copyOf := func(pipeline, change string, typ events.Type) uint64 {
		t.Helper()
		subject := events.Subject(events.DefaultSubjectPrefix, pipeline, change)
		for seq := uint64(1); ; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				t.Fatalf("no %s on %s: %v", typ, subject, err)
			}
			if e, _ := events.Decode(m.Data); m.Subject == subject && e.Type == typ {
				ack, err := srv.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: m.Data, Header: nats.Header{"Nats-Msg-Id": []string{events.NewID()}}})
				if err != nil {
					t.Fatal(err)
				}
				return ack.Sequence
			}
		}
	}
	success := copyOf("identity", "0003-backfill", events.ExecutionSucceeded)
	start := copyOf("billing", "0001-schema", events.ExecutionStarted)
	st, _ := openSQLite(t)
	storetestenv.Feed(t, srv.JS, st)

	rep := verifyStore(t, srv.JS, st)
	if rep.Drift() || rep.Tampered() || !rep.Problems() || len(rep.OpenOutOfChain()) != 2 {
		t.Fatalf("report %+v: want the two copies open, out of chain, and nothing else", rep)
	}
	for i, want := range []uint64{success, start} {
		if o := rep.OutOfChain[i]; o.Seq != want || o.PrevSeq == 0 || !strings.Contains(o.String(), "NOT resolved") {
			t.Errorf("out of chain %d: %s, want seq %d", i, o, want)
		}
	}
	rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: "identity", ChangeID: "0003-backfill", Limit: 1})
	if err != nil || len(rows) != 1 || rows[0].Seq != success || rows[0].RowState != events.StateOutOfChain {
		t.Fatalf("the copy's row: %+v %v", rows, err)
	}

	resolve(t, srv.JS, "identity", "0003-backfill", events.ResolvedApplied)
	resolve(t, srv.JS, "billing", "0001-schema", events.ResolvedApplied)
	st2, _ := openSQLite(t)
	storetestenv.Feed(t, srv.JS, st2)
	rep = verifyStore(t, srv.JS, st2)
	if rep.Problems() || len(rep.OutOfChain) != 2 || !rep.OutOfChain[0].Acknowledged {
		t.Fatalf("after resolutions: %+v", rep)
	}
	clean(t, rep)
}
