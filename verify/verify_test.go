package verify_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/verify"
)

// history runs a few pipelines through the real runner, so the stream holds
// chained events of every kind: applied, failed and rolled back, failed and
// resolved by an operator.
func history(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"billing", "shipping", "identity"} {
		r, err := runner.New(prod, locker, runner.Config{Pipeline: p})
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		changes := []runner.Change{
			{ID: "0001-schema", Order: "1", Apply: func(context.Context) error { return nil }},
			{ID: "0002-index", Order: "2", Apply: func(context.Context) error { return nil }},
			{ID: "0003-backfill", Order: "3", Apply: func(context.Context) error {
				if calls.Add(1) == 1 {
					return fmt.Errorf("timeout on %s", p)
				}
				return nil
			}, Rollback: func(context.Context) error { return nil }},
			{ID: "0004-flag", Order: "4", Apply: func(context.Context) error { return fmt.Errorf("flag service down") }},
		}
		_, _ = r.Run(ctx, changes) // 0003 fails and rolls back
		_, _ = r.Run(ctx, changes) // 0003 applies, 0004 fails
		if _, err := r.Resolve(ctx, runner.Resolution{ChangeID: "0004-flag", Resolution: events.ResolvedApplied, Operator: "bob", Reason: "enabled by hand"}); err != nil {
			t.Fatal(err)
		}
	}
}

// project runs a live projector into st until it has caught up.
func project(t *testing.T, js jetstream.JetStream, st stores.Store, name string) {
	t.Helper()
	ctx := context.Background()
	p, err := projector.New(ctx, js, st, projector.Config{CreateStreams: true, StoreName: name})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(rctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := p.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
}

func verifyStore(t *testing.T, js jetstream.JetStream, st stores.Store) *verify.Report {
	t.Helper()
	rep, err := verify.Verify(context.Background(), js, st, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func clean(t *testing.T, rep *verify.Report) {
	t.Helper()
	if rep.Drift() || rep.Tampered() || rep.StreamEvents == 0 || rep.StoreRows != rep.StreamEvents || rep.Unchained != 0 || len(rep.StaleTokens) != 0 {
		t.Fatalf("want a clean report, got %+v", rep)
	}
}

func openSQLite(t *testing.T) (*sqlitestore.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, path
}

func TestCorruptedRowIsNamedAndRepaired(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, path := openSQLite(t)
	project(t, srv.JS, st, "sqlite")
	clean(t, verifyStore(t, srv.JS, st))

	// Corrupt the store behind auditflow's back: alter a row, lose a row,
	// add a stray row, falsify an issue.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range []string{
		`UPDATE "changeLog" SET error_message = 'all good', author = 'mallory' WHERE seq = 5`,
		`DELETE FROM "changeLog" WHERE seq = 7`,
		`INSERT INTO "changeLog" SELECT 9999, 'forged-event', type, state, schema_version, pipeline, change_id, author, execution_id,
			change_order, target_system, host, runner_id, lock_token, occurred_at, duration_ms, error_message, error_trace, metadata,
			recovery, transactional, resolution, operator, reason, hash, prev_hash, signer, signature, trust, prev_seq, position, chain
			FROM "changeLog" WHERE seq = 3`,
		`UPDATE "issues" SET status = 'CLOSED', state = 'APPLIED' WHERE change_id = '0004-flag' AND pipeline = 'shipping'`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	rep := verifyStore(t, srv.JS, st)
	if len(rep.Mismatched) != 1 || rep.Mismatched[0].Seq != 5 || !slices.Contains(rep.Mismatched[0].Fields, "Author") {
		t.Fatalf("mismatched = %+v, want seq 5 naming Author", rep.Mismatched)
	}
	if len(rep.Missing) != 1 || rep.Missing[0].Seq != 7 || len(rep.Extra) != 1 || rep.Extra[0].EventID != "forged-event" {
		t.Fatalf("missing %+v extra %+v", rep.Missing, rep.Extra)
	}
	if len(rep.Issues) != 1 || rep.Issues[0].ChangeID != "0004-flag" || rep.Issues[0].Pipeline != "shipping" {
		t.Fatalf("issue drift = %+v", rep.Issues)
	}
	if len(rep.Drifted) == 0 || rep.Drifted[0].StreamDigest == rep.Drifted[0].StoreDigest {
		t.Fatalf("per-change digests = %+v", rep.Drifted)
	}

	plan, err := verify.PlanRepair(context.Background(), srv.JS, st, rep, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Rebuild || len(plan.Lines()) != 4 { // write seq 5 and 7, delete the forgery, write the issue
		t.Fatalf("plan:\n%s", strings.Join(plan.Lines(), "\n"))
	}
	if err := verify.Repair(context.Background(), srv.JS, st, plan, projector.ReplayConfig{}); err != nil {
		t.Fatal(err)
	}
	clean(t, verifyStore(t, srv.JS, st))
}

// TestTamperedStreamCopyNamesTheBrokenLink copies the stream to another
// server, altering one event's payload on the way (as someone with write
// access to a backup might), and verifies a store against the copy.
func TestTamperedStreamCopyNamesTheBrokenLink(t *testing.T) {
	src := natstest.Start(t)
	history(t, src.JS)
	st, _ := openSQLite(t)
	project(t, src.JS, st, "sqlite")

	ctx := context.Background()
	dst := natstest.Start(t)
	if _, err := producer.EnsureStream(ctx, dst.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	s, _ := src.JS.Stream(ctx, producer.DefaultStreamName)
	last := s.CachedInfo().State.LastSeq
	var victim stores.Record
	for seq := uint64(1); seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		data := m.Data
		e, _ := events.Decode(data)
		if victim.Seq == 0 && e.Type == events.ExecutionFailed && e.Pipeline == "identity" {
			// Make a failure look like a success; keep everything else.
			victim = stores.Record{Seq: seq, Event: e}
			data = []byte(strings.Replace(string(data), `"errorMessage":"timeout on identity"`, `"errorMessage":"none"`, 1))
		}
		if _, err := dst.JS.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if victim.Seq == 0 {
		t.Fatal("no event to tamper with")
	}
	rep := verifyStore(t, dst.JS, st)
	b, ok := rep.FirstBreak()
	if !ok || b.Where != "stream" || b.PrevSeq != victim.Seq || b.Pipeline != "identity" || b.ChangeID != victim.ChangeID {
		t.Fatalf("first break = %+v (%v), want the link after seq %d of identity/%s", b, ok, victim.Seq, victim.ChangeID)
	}
	if !strings.Contains(b.String(), fmt.Sprint("seq ", victim.Seq)) {
		t.Fatalf("break description does not name the altered event: %s", b)
	}
	// The store, fed from the original, disagrees with the copy at that
	// row, and at its successor's, which the copy puts out of its chain.
	if len(rep.Mismatched) != 2 || rep.Mismatched[0].Seq != victim.Seq || !slices.Contains(rep.Mismatched[0].Fields, "ErrorMessage") ||
		!slices.Equal(rep.Mismatched[1].Fields, []string{"Chain", "RowState"}) {
		t.Fatalf("mismatched = %+v", rep.Mismatched)
	}
	if len(rep.OutOfChain) != 1 || rep.OutOfChain[0].Seq != rep.Mismatched[1].Seq || rep.OutOfChain[0].PrevSeq != victim.Seq {
		t.Fatalf("out of chain = %+v, want the altered event's successor", rep.OutOfChain)
	}
	// And the original stream still verifies.
	clean(t, verifyStore(t, src.JS, st))
}

// TestRebuildEveryStoreFromTheStream: for each backend, delete the store
// (Reset), replay, verify zero drift; then plant a row the stream never had
// and let repair remove it (targeted, or by rebuild where the store has no
// targeted repair).
func TestRebuildEveryStoreFromTheStream(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	ns := fmt.Sprintf("verify%d", time.Now().UnixNano()%1e6)
	for _, kind := range storeflags.Kinds {
		t.Run(kind, func(t *testing.T) {
			st := storetestenv.Open(t, kind, ns)
			ctx := context.Background()
			project(t, srv.JS, st, kind)
			clean(t, verifyStore(t, srv.JS, st))

			if err := st.Reset(ctx); err != nil {
				t.Fatal(err)
			}
			if rep := verifyStore(t, srv.JS, st); len(rep.Missing) != rep.StreamEvents {
				t.Fatalf("after reset %d of %d rows missing", len(rep.Missing), rep.StreamEvents)
			}
			if _, err := projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{}); err != nil {
				t.Fatal(err)
			}
			clean(t, verifyStore(t, srv.JS, st))

			forged := events.New(events.ExecutionSucceeded, "billing", "9999-never-ran")
			forged.ExecutionID = "x"
			if err := st.Apply(ctx, stores.Batch{Checkpoint: "forger", Records: []stores.Record{{Seq: 1 << 30, Event: forged}}}); err != nil {
				t.Fatal(err)
			}
			rep := verifyStore(t, srv.JS, st)
			if len(rep.Extra) != 1 || rep.Extra[0].EventID != forged.ID || len(rep.Issues) != 1 || rep.Issues[0].Problem != "extra" {
				t.Fatalf("forged row not reported: extra %+v issues %+v", rep.Extra, rep.Issues)
			}
			plan, err := verify.PlanRepair(ctx, srv.JS, st, rep, verify.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := verify.Repair(ctx, srv.JS, st, plan, projector.ReplayConfig{}); err != nil {
				t.Fatal(err)
			}
			clean(t, verifyStore(t, srv.JS, st))
		})
	}
}

// TestStaleLockTokensAreListed: a runner's history has no stale tokens;
// an event written with a token lower than one already recorded for its
// pipeline is listed, unacknowledged until an overlap record or an
// operator's resolution follows it on its change.
func TestStaleLockTokensAreListed(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, _ := openSQLite(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	// A writer whose lease passed on long ago (token 1) starts a change.
	late := events.New(events.ExecutionStarted, "billing", "0005-late")
	late.ExecutionID, late.LockToken, late.RunnerID = "exec-late", 1, "paused-runner"
	h, err := prod.Publish(ctx, late)
	if err != nil {
		t.Fatal(err)
	}
	project(t, srv.JS, st, "sqlite")
	rep := verifyStore(t, srv.JS, st)
	if rep.Drift() || len(rep.StaleTokens) != 1 || len(rep.Unacknowledged()) != 1 {
		t.Fatalf("stale tokens %+v", rep.StaleTokens)
	}
	s := rep.StaleTokens[0]
	if s.ChangeID != "0005-late" || s.Seq != h.Seq || s.Token != 1 || s.Newer <= 1 || s.Acknowledged {
		t.Fatalf("stale token %+v", s)
	}
	// An operator looks and records the outcome: acknowledged.
	locker, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Resolve(ctx, prod, locker, runner.Resolution{Pipeline: "billing", ChangeID: "0005-late",
		Resolution: events.ResolvedRolledBack, Operator: "carol", Reason: "nothing was applied", Force: true}); err != nil {
		t.Fatal(err)
	}
	project(t, srv.JS, st, "sqlite")
	rep = verifyStore(t, srv.JS, st)
	if len(rep.StaleTokens) != 1 || len(rep.Unacknowledged()) != 0 {
		t.Fatalf("after the resolution: %+v", rep.StaleTokens)
	}
}
