package verify_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/trust"
	"github.com/auditflow/auditflow/verify"
)

// TestForgeriesAreUntrusted: with the trust list, verify reports every
// forgery of the scenario in the stream and, judged from its row alone,
// in the store — unsigned, unknown key, altered bytes, a signature copied
// from another event (named as replayed), a runner key resolving, a
// revoked key — as open problems, until a trusted operator resolves each
// change; a forged resolution acknowledges nothing. Without the list it
// checks no signature and takes the rows' verdicts as they are, and
// repair refuses to overwrite them. A store projected without the list
// shows its missing verdicts as drift, which repair writes.
func TestForgeriesAreUntrusted(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	sc := trusttest.Publish(t, srv.JS)
	st := projectTrusted(t, srv.JS, "audit.db", sc.List)

	rep := verifyWith(t, srv.JS, st, sc.List)
	if rep.Drift() || rep.Tampered() || !rep.TrustChecked || !rep.Problems() {
		t.Fatalf("report: drift %v tampered %v checked %v problems %v", rep.Drift(), rep.Tampered(), rep.TrustChecked, rep.Problems())
	}
	for where, found := range map[string][]verify.Untrusted{"stream": rep.Untrusted, "store": rep.StoreUntrusted} {
		if len(found) != len(sc.Forgeries) {
			t.Fatalf("%s: %d untrusted, want %d: %v", where, len(found), len(sc.Forgeries), found)
		}
		for _, f := range sc.Forgeries {
			i := slices.IndexFunc(found, func(u verify.Untrusted) bool { return u.Seq == f.Seq })
			want := f.Kind
			if f.Replayed {
				want = trust.KindReplayed
			}
			if i < 0 || found[i].Kind != want || found[i].Acknowledged || found[i].Where != where || found[i].ChangeID != f.ChangeID {
				t.Fatalf("%s: forgery %s (seq %d, %s): %+v", where, f.ChangeID, f.Seq, want, found)
			}
			t.Logf("%s", found[i])
		}
	}
	if len(rep.OpenUntrusted()) != 2*len(sc.Forgeries) {
		t.Fatalf("open untrusted = %d", len(rep.OpenUntrusted()))
	}

	// Without the list: nothing judged, the projector's verdicts kept.
	plain := verifyWith(t, srv.JS, st, nil)
	if plain.Drift() || len(plain.OpenUntrusted()) != 0 || plain.TrustChecked || plain.StoreVerdicts != len(sc.Forgeries) {
		t.Fatalf("without a list: drift %v, open %v, verdicts in the store %d", plain.Drift(), plain.OpenUntrusted(), plain.StoreVerdicts)
	}
	// A lost row: repair without the list would drop the verdicts.
	rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: trusttest.Pipeline, ChangeID: "unsigned", Limit: 1})
	if err != nil || len(rows) != 1 {
		t.Fatal(rows, err)
	}
	if err := st.Repair(ctx, stores.Repair{Delete: rows}); err != nil {
		t.Fatal(err)
	}
	plain = verifyWith(t, srv.JS, st, nil)
	if _, err := verify.PlanRepair(ctx, srv.JS, st, plain, verify.Config{}); !errors.Is(err, verify.ErrNeedsTrust) {
		t.Fatalf("PlanRepair without the list = %v, want ErrNeedsTrust", err)
	}
	repairWith(t, srv.JS, st, sc.List)
	if got, _ := st.History(ctx, stores.HistoryQuery{Pipeline: trusttest.Pipeline, ChangeID: "unsigned", Limit: 1}); len(got) != 1 || got[0].Trust == "" {
		t.Fatalf("repaired row %+v: want its verdict back", got)
	}

	// A trusted operator resolves every forged change: all acknowledged.
	// (A forged resolution acknowledged nothing above.)
	resolveSigned(t, srv.JS, sc)
	st = projectTrusted(t, srv.JS, "audit2.db", sc.List)
	rep = verifyWith(t, srv.JS, st, sc.List)
	if rep.Problems() || len(rep.Untrusted) != len(sc.Forgeries) || len(rep.OpenUntrusted()) != 0 {
		t.Fatalf("after trusted resolutions: problems %v, open %v", rep.Problems(), rep.OpenUntrusted())
	}

	// A store projected without the list: its missing verdicts are drift,
	// which repair writes (the forged changes' issues reopen).
	old := projectTrusted(t, srv.JS, "old.db", nil)
	rep = verifyWith(t, srv.JS, old, sc.List)
	if !rep.Drift() || len(rep.Mismatched) != len(sc.Forgeries) || !slices.Equal(rep.Mismatched[0].Fields, []string{"Trust"}) {
		t.Fatalf("a store projected without the list: %+v", rep.Mismatched)
	}
	repairWith(t, srv.JS, old, sc.List)
	if rep = verifyWith(t, srv.JS, old, sc.List); rep.Drift() {
		t.Fatalf("still drifting after repair: %+v", rep)
	}
}

// projectTrusted builds a store from the stream as a projector with list does.
func projectTrusted(t *testing.T, js jetstream.JetStream, name string, list *trust.List) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), name), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := projector.Replay(context.Background(), js, st, projector.ReplayConfig{Trust: list}); err != nil {
		t.Fatal(err)
	}
	return st
}

func verifyWith(t *testing.T, js jetstream.JetStream, st stores.Store, list *trust.List) *verify.Report {
	t.Helper()
	rep, err := verify.Verify(context.Background(), js, st, verify.Config{Trust: list, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func repairWith(t *testing.T, js jetstream.JetStream, st stores.Store, list *trust.List) {
	t.Helper()
	ctx := context.Background()
	cfg := verify.Config{Trust: list}
	plan, err := verify.PlanRepair(ctx, js, st, verifyWith(t, js, st, list), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Repair(ctx, js, st, plan, projector.ReplayConfig{Trust: list}); err != nil {
		t.Fatal(err)
	}
}

// resolveSigned records, with the scenario's operator key, a resolution
// after every forgery (forced: no runner is about).
func resolveSigned(t *testing.T, js jetstream.JetStream, sc *trusttest.Scenario) {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{Signer: sc.Keys.Operator})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range sc.Forgeries {
		if _, err := runner.Resolve(ctx, prod, nil, runner.Resolution{Pipeline: trusttest.Pipeline, ChangeID: f.ChangeID,
			Resolution: events.ResolvedRolledBack, Reason: "forged: inspected the target", Trust: sc.List, Force: true}); err != nil {
			t.Fatalf("resolve %s: %v", f.ChangeID, err)
		}
	}
}
