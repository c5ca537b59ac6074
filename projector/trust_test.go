package projector_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// TestForgeriesOpenIssues: with a trust list, every forgery — unsigned,
// an unknown key, a valid key over altered bytes, a signature copied from
// another event, a runner key signing an operator's decision, a revoked
// key — is stored with its verdict and leaves its change's issue OPEN
// (a forged ExecutionSucceeded or ManuallyResolved closes nothing), is
// counted, and a trusted operator's resolution after it closes the issue.
// A replay with the same list stores the same rows.
func TestForgeriesOpenIssues(t *testing.T) {
	srv := natstest.Start(t)
	sc := trusttest.Publish(t, srv.JS)
	st := openSQLite(t)
	p, _ := run(t, srv.JS, st, projector.Config{Trust: sc.List})
	waitCaughtUp(t, p)
	ctx := context.Background()

	want := map[trust.Kind]string{
		trust.KindUnsigned: "unsigned", trust.KindUnknownKey: "unknown key " + sc.Keys.Stranger.PublicKey(),
		trust.KindBadSignature: "bad signature: runner-1", trust.KindRole: "may not sign ManuallyResolved",
		trust.KindRevoked: "revoked after sequence",
	}
	for _, f := range sc.Forgeries {
		i := issue(t, st, f.ChangeID)
		if i.Status != stores.IssueOpen || i.Seq != f.Seq || !strings.Contains(i.Trust, want[f.Kind]) {
			t.Errorf("%s: issue %s %s seq %d trust %q; want OPEN at seq %d saying %q", f.ChangeID, i.Status, i.State, i.Seq, i.Trust, f.Seq, want[f.Kind])
		}
		rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: trusttest.Pipeline, ChangeID: f.ChangeID, Limit: 1})
		if err != nil || len(rows) != 1 || rows[0].Trust != i.Trust {
			t.Errorf("%s: newest row %+v %v; want its verdict", f.ChangeID, rows, err)
		}
	}
	for _, c := range sc.Trusted {
		if i := issue(t, st, c); i.Status != stores.IssueClosed || i.Trust != "" {
			t.Errorf("%s: %+v, want CLOSED and trusted", c, i)
		}
	}
	// The revoked key's event before its revocation is trusted, and
	// every trusted row keeps its signature.
	rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: trusttest.Pipeline, ChangeID: "revoked"})
	if err != nil || len(rows) != 2 || rows[1].Trust != "" || rows[1].Signer != sc.Keys.Revoked.PublicKey() || rows[1].Signature == "" {
		t.Fatalf("revoked key's history: %+v %v", rows, err)
	}
	if got := p.Stats().Untrusted; got < uint64(len(sc.Forgeries)) {
		t.Fatalf("Stats.Untrusted = %d, want at least %d", got, len(sc.Forgeries))
	}

	// A trusted operator resolves a forged success: the issue closes.
	op, err := producer.New(ctx, srv.JS, producer.Config{Signer: sc.Keys.Operator})
	if err != nil {
		t.Fatal(err)
	}
	_, head, err := op.Last(ctx, trusttest.Pipeline, "unsigned")
	if err != nil {
		t.Fatal(err)
	}
	res := events.New(events.ManuallyResolved, trusttest.Pipeline, "unsigned")
	res.Resolution, res.Operator, res.Reason = events.ResolvedRolledBack, sc.List.Identity(sc.Keys.Operator.PublicKey()), "never applied: forged"
	if _, err := op.Publish(ctx, res, producer.After(head)); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, p)
	if i := issue(t, st, "unsigned"); i.Status != stores.IssueClosed || i.Trust != "" || i.State != events.StateManuallyRolledBack {
		t.Fatalf("after a trusted resolution: %+v", i)
	}

	// Replay judges as the live projector does.
	rebuilt := openSQLite(t)
	if _, err := projector.Replay(ctx, srv.JS, rebuilt, projector.ReplayConfig{Trust: sc.List}); err != nil {
		t.Fatal(err)
	}
	live, _ := st.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit})
	again, _ := rebuilt.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit})
	if len(live) == 0 || !reflect.DeepEqual(live, again) {
		t.Fatalf("replayed rows differ from the live projector's:\n%+v\n%+v", again, live)
	}
}

func issue(t *testing.T, st stores.Store, change string) stores.Issue {
	t.Helper()
	is, err := st.Issues(context.Background(), stores.IssueQuery{Pipeline: trusttest.Pipeline, ChangeID: change})
	if err != nil || len(is) != 1 {
		t.Fatalf("issue %s: %+v %v", change, is, err)
	}
	return is[0]
}

// BenchmarkEndToEndSigned is BenchmarkEndToEnd (sync=false) with every
// event signed and judged against a trust list: what checking signatures
// costs a projector.
//
//	go test ./projector -run XXX -bench EndToEndSigned -benchtime 50000x
func BenchmarkEndToEndSigned(b *testing.B) {
	js, _ := benchServer(b, embedded.Config{})
	ctx := context.Background()
	key := trusttest.NewSigner(b)
	list, err := trust.NewList(trust.Key{Key: key.PublicKey(), Name: "runner", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		b.Fatal(err)
	}
	prod, err := producer.New(ctx, js, producer.Config{Signer: key})
	if err != nil {
		b.Fatal(err)
	}
	st := openSQLite(b)
	evs := benchEvents(b.N)
	b.ResetTimer()
	p, err := projector.New(ctx, js, st, projector.Config{CreateStreams: true, StoreName: "sqlite", Trust: list})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- p.Run(rctx) }()
	publishAll(b, prod, evs)
	if err := p.WaitCaughtUp(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	cancel()
	<-done
	if s := p.Stats(); s.Applied != uint64(b.N) || s.Untrusted != 0 {
		b.Fatalf("applied %d (want %d), untrusted %d", s.Applied, b.N, s.Untrusted)
	}
}
