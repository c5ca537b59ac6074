package verify_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/verify"
)

// TestVerifyAndRepairWhileAProjectorRuns: events keep flowing on a few
// changes into a SQLite store through a live projector while verify and
// repair run, round after round, on a store damaged behind auditflow's
// back (rows deleted and altered, an issue row deleted or altered). Verify
// reports exactly the damage, never the changes moving under it; repair
// fixes it; and no issue row, sampled all along, ever moves back to an
// older event.
func TestVerifyAndRepairWhileAProjectorRuns(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	st, path := openSQLite(t)
	p, err := projector.New(ctx, srv.JS, st, projector.Config{CreateStreams: true, StoreName: "sqlite"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	pctx, stopProjector := context.WithCancel(ctx)
	defer stopProjector()
	wg.Go(func() { _ = p.Run(pctx) })

	// The writer: runs of 4 changes, each a start then a success or a
	// failure, so issues keep moving between IN_PROGRESS, CLOSED and OPEN.
	changes := []string{"0001-a", "0002-b", "0003-c", "0004-d"}
	wctx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	var writeErr error
	wg.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			c := changes[i%len(changes)]
			run := i / len(changes)
			typ := events.ExecutionStarted
			if run%2 == 1 {
				typ = events.ExecutionSucceeded
				if run%4 == 3 {
					typ = events.ExecutionFailed
				}
			}
			e := events.New(typ, "billing", c)
			e.ExecutionID = fmt.Sprint("exec-", run/2)
			if typ == events.ExecutionFailed {
				e.ErrorMessage = "lock timeout"
			}
			if _, err := prod.Publish(wctx, e); err != nil {
				if wctx.Err() == nil {
					writeErr = err
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	})

	// The sampler: every issue row, as often as it can; an issue row may
	// vanish (the test deletes one) but never go back to an older event.
	type sample struct {
		seq   uint64
		state events.State
	}
	sctx, stopSampler := context.WithCancel(ctx)
	defer stopSampler()
	var regressions []string
	samples := 0
	wg.Go(func() {
		newest := map[string]sample{}
		for sctx.Err() == nil {
			is, err := st.Issues(sctx, stores.IssueQuery{Limit: stores.MaxLimit})
			if err != nil {
				continue
			}
			samples++
			for _, i := range is {
				if n, ok := newest[i.ChangeID]; ok && i.Seq < n.seq {
					regressions = append(regressions, fmt.Sprintf("%s went from seq %d (%s) back to seq %d (%s)", i.ChangeID, n.seq, n.state, i.Seq, i.State))
				}
				newest[i.ChangeID] = sample{i.Seq, i.State}
			}
			time.Sleep(500 * time.Microsecond)
		}
	})

	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	settle := func() uint64 {
		t.Helper()
		time.Sleep(50 * time.Millisecond)
		var seq uint64
		if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM "changeLog"`).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return seq
	}
	for round := range 6 {
		top := settle()
		if top < 40 {
			time.Sleep(200 * time.Millisecond)
			top = settle()
		}
		// Damage rows well behind the flow, and one issue row (none in
		// the clean rounds).
		var deleted, altered []uint64
		var issue string
		if round%2 == 1 {
			deleted, altered = []uint64{top - 30, top - 25}, []uint64{top - 20}
			issue = changes[round%len(changes)]
			for _, s := range deleted {
				exec(`DELETE FROM "changeLog" WHERE seq = ?`, s)
			}
			exec(`UPDATE "changeLog" SET author = 'mallory' WHERE seq = ?`, altered[0])
			if round%4 == 1 {
				exec(`DELETE FROM "issues" WHERE change_id = ?`, issue)
			} else {
				exec(`UPDATE "issues" SET author = 'mallory' WHERE change_id = ?`, issue)
			}
		}
		rep, err := verify.Verify(ctx, srv.JS, st, verify.Config{Settle: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var missing, mismatched []uint64
		for _, r := range rep.Missing {
			missing = append(missing, r.Seq)
		}
		for _, m := range rep.Mismatched {
			mismatched = append(mismatched, m.Seq)
		}
		issueOK := len(rep.Issues) == 0 || len(rep.Issues) == 1 && rep.Issues[0].ChangeID == issue
		if !slices.Equal(missing, deleted) || !slices.Equal(mismatched, altered) || len(rep.Extra) > 0 || !issueOK {
			t.Fatalf("round %d (snapshot %d): missing %v (deleted %v), altered %v (altered %v), extra %v, issues %+v (damaged %q)",
				round, rep.LastSeq, missing, deleted, mismatched, altered, rep.Extra, rep.Issues, issue)
		}
		plan, err := verify.PlanRepair(ctx, srv.JS, st, rep, verify.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if err := verify.Repair(ctx, srv.JS, st, plan, projector.ReplayConfig{}); err != nil {
			t.Fatal(err)
		}
		if rep, err = verify.Verify(ctx, srv.JS, st, verify.Config{Settle: time.Second}); err != nil {
			t.Fatal(err)
		} else if rep.Drift() {
			t.Fatalf("round %d: drift after repair: missing %v extra %v altered %v issues %+v", round, rep.Missing, rep.Extra, rep.Mismatched, rep.Issues)
		}
	}
	stopWriter()
	wctx2, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	if err := p.WaitCaughtUp(wctx2); err != nil {
		t.Fatal(err)
	}
	stopSampler()
	stopProjector()
	wg.Wait()
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	rep := verifyStore(t, srv.JS, st)
	if rep.Drift() || rep.StoreRows != rep.StreamEvents {
		t.Fatalf("at the end: %+v", rep)
	}
	t.Logf("%d events, %d issue samples", rep.StreamEvents, samples)
	if len(regressions) > 0 {
		t.Fatalf("issue rows went back to older events:\n%v", regressions)
	}
}

// TestRepairNeverRollsBackAnIssue: a plan made from a verify report is
// carried out after the projector has moved the issues it corrects to
// newer events (an issue altered at its own sequence, and one deleted).
// Repair leaves the altered one to the projector's newer write and
// re-applies the deleted one's event through the guarded Apply, which
// cannot replace a newer issue: neither goes back.
func TestRepairNeverRollsBackAnIssue(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, path := openSQLite(t)
	project(t, srv.JS, st, "sqlite")
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`UPDATE "issues" SET author = 'mallory' WHERE pipeline = 'billing' AND change_id = '0001-schema'`,
		`DELETE FROM "issues" WHERE pipeline = 'billing' AND change_id = '0002-index'`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	rep := verifyStore(t, srv.JS, st)
	if len(rep.Issues) != 2 {
		t.Fatalf("issues drift %+v, want the altered and the deleted", rep.Issues)
	}
	plan, err := verify.PlanRepair(ctx, srv.JS, st, rep, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Fix.Issues) != 1 || len(plan.Issues) != 1 {
		t.Fatalf("plan: %v", plan.Lines())
	}
	// Meanwhile both changes run again and the projector records it.
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	newer := map[string]uint64{}
	for _, c := range []string{"0001-schema", "0002-index"} {
		e := events.New(events.ExecutionStarted, "billing", c)
		e.ExecutionID = "exec-again"
		h, err := prod.Publish(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		newer[c] = h.Seq
	}
	project(t, srv.JS, st, "sqlite")
	if err := verify.Repair(ctx, srv.JS, st, plan, projector.ReplayConfig{}); err != nil {
		t.Fatal(err)
	}
	for c, seq := range newer {
		is, err := st.Issues(ctx, stores.IssueQuery{Pipeline: "billing", ChangeID: c})
		if err != nil || len(is) != 1 {
			t.Fatalf("issue %s: %v %+v", c, err, is)
		}
		if is[0].Seq != seq || is[0].State != events.StateStarted {
			t.Fatalf("issue %s rolled back to seq %d (%s), want seq %d (STARTED)", c, is[0].Seq, is[0].State, seq)
		}
	}
	if rep := verifyStore(t, srv.JS, st); rep.Drift() {
		t.Fatalf("drift after repair: %+v", rep.Issues)
	}
}
