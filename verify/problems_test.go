package verify_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/verify"
)

func publishRaw(t *testing.T, js jetstream.JetStream, pipeline, change string, data []byte) uint64 {
	t.Helper()
	ack, err := js.Publish(context.Background(), events.Subject(events.DefaultSubjectPrefix, pipeline, change), data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func resolve(t *testing.T, js jetstream.JetStream, pipeline, change string, res events.Resolution) {
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
	if _, err := runner.Resolve(ctx, prod, locker, runner.Resolution{Pipeline: pipeline, ChangeID: change, Resolution: res,
		Operator: "carol", Reason: "checked the target"}); err != nil {
		t.Fatalf("resolve %s/%s: %v", pipeline, change, err)
	}
}

// TestWrongSubjectIsItsOwnProblem: an ExecutionFailed for change 0002
// published on change 0001's subject is reported as what it is — not as a
// broken chain ("restore the stream") and not silently — before and after
// an operator resolves 0001; a store that holds it (fed by a projector that
// did not check subjects) has an extra row that repair removes.
func TestWrongSubjectIsItsOwnProblem(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, _ := openSQLite(t)
	storetestenv.Feed(t, srv.JS, st)
	clean(t, verifyStore(t, srv.JS, st))

	stray := events.New(events.ExecutionFailed, "billing", "0002-index")
	stray.ExecutionID, stray.ErrorMessage = "by-hand", "disk full"
	b, err := events.Encode(stray)
	if err != nil {
		t.Fatal(err)
	}
	seq := publishRaw(t, srv.JS, "billing", "0001-schema", b)
	storetestenv.Feed(t, srv.JS, st)

	rep := verifyStore(t, srv.JS, st)
	if len(rep.WrongSubject) != 1 || rep.Tampered() || rep.Drift() || rep.Unchained != 0 || rep.StoreRows != rep.StreamEvents {
		t.Fatalf("report %+v: want one wrong-subject event and nothing else", rep)
	}
	w := rep.WrongSubject[0]
	want := `event for change "0002-index" of pipeline "billing" published on change "0001-schema"'s subject`
	if w.Seq != seq || w.Pipeline != "billing" || w.ChangeID != "0001-schema" || w.Event == nil || w.Event.ChangeID != "0002-index" ||
		!w.Open() || !strings.Contains(w.String(), want) || !rep.Problems() {
		t.Fatalf("wrong subject = %s (%+v), want seq %d saying %q, open", w, w, seq, want)
	}

	// A store whose projector took it for 0002's event: an extra row, not
	// a broken chain; repair removes it.
	if err := st.Apply(context.Background(), stores.Batch{Checkpoint: "projector",
		Records: []stores.Record{{Seq: seq, Hash: events.Hash(b), Event: stray}}}); err != nil {
		t.Fatal(err)
	}
	rep = verifyStore(t, srv.JS, st)
	if rep.Tampered() || len(rep.Extra) != 1 || rep.Extra[0].Seq != seq || len(rep.WrongSubject) != 1 {
		t.Fatalf("store with the misfiled row: tampered %v, extra %+v", rep.Tampered(), rep.Extra)
	}
	plan, err := verify.PlanRepair(context.Background(), srv.JS, st, rep, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Repair(context.Background(), srv.JS, st, plan, projector.ReplayConfig{}); err != nil {
		t.Fatal(err)
	}
	if rep = verifyStore(t, srv.JS, st); rep.Drift() {
		t.Fatalf("after repair: %+v", rep)
	}

	// The operator records 0001's state after the stray event: the chain
	// goes through it, nothing reads as tampered, and it is acknowledged.
	resolve(t, srv.JS, "billing", "0001-schema", events.ResolvedApplied)
	storetestenv.Feed(t, srv.JS, st)
	rep = verifyStore(t, srv.JS, st)
	if rep.Tampered() || rep.Drift() || rep.Problems() || len(rep.WrongSubject) != 1 || !rep.WrongSubject[0].Acknowledged {
		t.Fatalf("after the resolution: tampered %v (stream %v, store %v), drift %v, wrong subject %+v",
			rep.Tampered(), rep.StreamChain, rep.StoreChain, rep.Drift(), rep.WrongSubject)
	}
}

// TestUnreadableMessageOnAChange: garbage on a change's subject is a
// problem naming the change until it is resolved; on a subject that is no
// change's, it is listed but blocks nothing.
func TestUnreadableMessageOnAChange(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, _ := openSQLite(t)
	seq := publishRaw(t, srv.JS, "shipping", "0002-index", []byte("garbage"))
	if _, err := srv.JS.Publish(context.Background(), "audit.exec.stray", []byte("more garbage")); err != nil {
		t.Fatal(err)
	}
	storetestenv.Feed(t, srv.JS, st)
	rep := verifyStore(t, srv.JS, st)
	if rep.Undecodable != 2 || len(rep.Unreadable) != 2 || rep.Drift() || rep.Tampered() {
		t.Fatalf("report %+v: want two unreadable messages and nothing else", rep)
	}
	bad, downgrades := rep.OpenStreamProblems()
	if len(bad) != 1 || len(downgrades) != 0 || bad[0].Seq != seq || bad[0].ChangeID != "0002-index" || bad[0].Event != nil ||
		!strings.Contains(bad[0].What, "malformed event") || !rep.Problems() {
		t.Fatalf("open problems %+v, want the garbage on shipping/0002-index", bad)
	}
	if s := rep.Unreadable[1].String(); !strings.Contains(s, "no change's") || !strings.Contains(s, "no runner reads it") {
		t.Fatalf("garbage off any change's subject: %s", s)
	}
	resolve(t, srv.JS, "shipping", "0002-index", events.ResolvedApplied)
	storetestenv.Feed(t, srv.JS, st)
	rep = verifyStore(t, srv.JS, st)
	if rep.Problems() || rep.Tampered() || !rep.Unreadable[0].Acknowledged {
		t.Fatalf("after the resolution: %+v", rep)
	}
}

// TestDowngradeIsReported: a hand-written schema-version-1
// ManuallyResolved without prevHash closes a ROLLBACK_FAILED change whose
// events carry the hash chain. verify reports it as a downgrade (not as
// one more "unchained" event) until an operator records the change's
// state after it.
func TestDowngradeIsReported(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Run(ctx, []runner.Change{{ID: "0001-drop", Apply: func(context.Context) error { return errors.New("boom") },
		Rollback: func(context.Context) error { return errors.New("rollback boom") }}})
	if !errors.Is(err, runner.ErrChangeFailed) {
		t.Fatal(err)
	}
	started, _, err := prod.First(ctx, "ops", "0001-drop")
	if err != nil {
		t.Fatal(err)
	}
	forged := events.New(events.ManuallyResolved, "ops", "0001-drop")
	forged.SchemaVersion, forged.Position, forged.Resolution, forged.Operator, forged.Reason = 1, 0, events.ResolvedApplied, "mallory", "trust me"
	b, err := events.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	seq := publishRaw(t, srv.JS, "ops", "0001-drop", b)
	st, _ := openSQLite(t)
	storetestenv.Feed(t, srv.JS, st)
	rep := verifyStore(t, srv.JS, st)
	if len(rep.Downgrades) != 1 || rep.Unchained != 0 || rep.Drift() || rep.Tampered() || !rep.Problems() {
		t.Fatalf("report %+v: want one downgrade", rep)
	}
	d := rep.Downgrades[0]
	firstSeq := startedSeq(t, srv.JS, started.ID)
	if d.Seq != seq || d.Version != 1 || d.Type != events.ManuallyResolved || d.ChainSince != firstSeq || d.Acknowledged ||
		!strings.Contains(d.String(), "at schemaVersion 1, without the hash chain") {
		t.Fatalf("downgrade %s (%+v), want seq %d, chain since %d", d, d, seq, firstSeq)
	}
	resolve(t, srv.JS, "ops", "0001-drop", events.ResolvedRolledBack)
	storetestenv.Feed(t, srv.JS, st)
	if rep = verifyStore(t, srv.JS, st); rep.Problems() || !rep.Downgrades[0].Acknowledged {
		t.Fatalf("after the resolution: %+v", rep)
	}
}

// startedSeq is the stream sequence of the event with id.
func startedSeq(t *testing.T, js jetstream.JetStream, id string) uint64 {
	t.Helper()
	for _, e := range natstest.ReadEvents(t, js, producer.DefaultStreamName, events.Subject(events.DefaultSubjectPrefix, "ops", "0001-drop")) {
		if e.ID == id {
			return e.Seq
		}
	}
	t.Fatalf("event %s not on the stream", id)
	return 0
}
