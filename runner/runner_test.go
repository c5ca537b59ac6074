package runner_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

const lease = 2 * time.Second

// newRunner builds a runner on its own view of the server (as a separate
// process would have).
func newRunner(t testing.TB, js jetstream.JetStream, pipeline, id string) *runner.Runner {
	t.Helper()
	return newRunnerLogged(t, js, pipeline, id, natstest.Logger(t))
}

func newRunnerLogged(t testing.TB, js jetstream.JetStream, pipeline, id string, log *slog.Logger) *runner.Runner {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true, RetryFor: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true, Lease: lease, RetryInterval: 20 * time.Millisecond, GiveUpAfter: time.Minute, Owner: id})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: pipeline, RunnerID: id, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// counted returns changes whose Apply counts its calls.
func counted(n int, counts []atomic.Int32) []runner.Change {
	var out []runner.Change
	for i := range n {
		out = append(out, runner.Change{
			ID: fmt.Sprintf("%03d-change", i), Author: "alice", Order: fmt.Sprintf("%03d", i), TargetSystem: "orders-db",
			Apply: func(context.Context) error { counts[i].Add(1); return nil },
		})
	}
	return out
}

func outcomes(rep *runner.Report) []runner.Outcome {
	var out []runner.Outcome
	for _, r := range rep.Results {
		out = append(out, r.Outcome)
	}
	return out
}

// typesOf lists the event types recorded for a change, oldest first, and
// checks that the runner chained them: each event carries the hash of the
// bytes of the one before.
func typesOf(t *testing.T, js jetstream.JetStream, pipeline, change string) []events.Type {
	t.Helper()
	var out []events.Type
	prev := ""
	for _, e := range natstest.ReadEvents(t, js, producer.DefaultStreamName, events.Subject(events.DefaultSubjectPrefix, pipeline, change)) {
		if e.PrevHash != prev {
			t.Fatalf("%s/%s event %d (%s): prevHash %q, want %q", pipeline, change, len(out), e.Type, e.PrevHash, prev)
		}
		prev = events.Hash(e.Data)
		out = append(out, e.Type)
	}
	return out
}

func TestAppliesInOrderAndSkipsOnRerun(t *testing.T) {
	srv := natstest.Start(t)
	counts := make([]atomic.Int32, 3)
	var order []string
	changes := counted(3, counts)
	for i := range changes {
		apply, id := changes[i].Apply, changes[i].ID
		changes[i].Apply = func(ctx context.Context) error { order = append(order, id); return apply(ctx) }
	}
	slices.Reverse(changes) // given out of order: Order decides
	r := newRunner(t, srv.JS, "billing", "r1")
	rep, err := r.Run(context.Background(), changes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []string{"000-change", "001-change", "002-change"}) {
		t.Fatalf("applied in order %v", order)
	}
	if rep.LockToken == 0 || !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeApplied, runner.OutcomeApplied, runner.OutcomeApplied}) {
		t.Fatalf("report %+v", rep)
	}
	rep, err = newRunner(t, srv.JS, "billing", "r2").Run(context.Background(), changes)
	if err != nil {
		t.Fatal(err)
	}
	if rep.LockToken != 0 || !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeSkipped}) {
		t.Fatalf("rerun report %+v (a run with nothing to do takes no lock)", rep)
	}
	for i := range counts {
		if counts[i].Load() != 1 {
			t.Fatalf("change %d applied %d times", i, counts[i].Load())
		}
	}
	if got := typesOf(t, srv.JS, "billing", "001-change"); !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}) {
		t.Fatalf("recorded %v", got)
	}
}

// TestRacingRunnersApplyEachChangeOnce: 16 runners, each with its own
// connection, start the same pipeline at once.
func TestRacingRunnersApplyEachChangeOnce(t *testing.T) {
	srv := natstest.Start(t)
	const runners, changes = 16, 10
	counts := make([]atomic.Int32, changes)
	defs := counted(changes, counts)
	for i := range defs {
		apply := defs[i].Apply
		defs[i].Apply = func(ctx context.Context) error {
			time.Sleep(2 * time.Millisecond) // give racers time to collide
			return apply(ctx)
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, runners)
	for i := range runners {
		_, js := srv.Connect(t)
		r := newRunner(t, js, "billing", fmt.Sprint("runner-", i))
		wg.Go(func() {
			<-start
			if _, err := r.Run(context.Background(), defs); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("runner: %v", err)
	}
	for i := range counts {
		if n := counts[i].Load(); n != 1 {
			t.Errorf("change %d applied %d times", i, n)
		}
		if got := typesOf(t, srv.JS, "billing", defs[i].ID); !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}) {
			t.Errorf("change %d recorded %v", i, got)
		}
	}
}

func failing(id string, rollback func(context.Context) error) runner.Change {
	return runner.Change{ID: id, Order: id, Apply: func(context.Context) error {
		return errors.New("ERROR: relation \"users\" already exists\n\tat migrate.go:42")
	}, Rollback: rollback}
}

func TestFailureRollsBackAndStopsTheRun(t *testing.T) {
	srv := natstest.Start(t)
	counts := make([]atomic.Int32, 1)
	ok := counted(1, counts)[0]
	ok.Order = "9"
	var rolledBack atomic.Int32
	bad := failing("2-bad", func(context.Context) error { rolledBack.Add(1); return nil })
	r := newRunner(t, srv.JS, "p", "r")
	rep, err := r.Run(context.Background(), []runner.Change{ok, bad})
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrChangeFailed) || !errors.As(err, &ce) || ce.ChangeID != "2-bad" || ce.State != events.StateRolledBack {
		t.Fatalf("Run = %v, want a ChangeError for 2-bad, ROLLED_BACK", err)
	}
	if !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeRolledBack, runner.OutcomeNotRun}) || counts[0].Load() != 0 {
		t.Fatalf("report %v; later change ran %d times", outcomes(rep), counts[0].Load())
	}
	if got := typesOf(t, srv.JS, "p", "2-bad"); !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionRolledBack}) {
		t.Fatalf("recorded %v", got)
	}
	// Rolled back means it runs again next time.
	plan, err := r.Plan(context.Background(), []runner.Change{ok, bad})
	if err != nil {
		t.Fatal(err)
	}
	if plan[0].Action != runner.ActionRun {
		t.Fatalf("plan for a rolled-back change: %+v", plan[0])
	}
}

func TestRecoveryRules(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	cases := []struct {
		name      string
		change    runner.Change
		wantState events.State
		action    runner.Action
	}{
		{"failed, manual", failing("a", nil), events.StateFailed, runner.ActionBlocked},
		{"failed, always retry", func() runner.Change { c := failing("b", nil); c.Recovery = events.AlwaysRetry; return c }(), events.StateFailed, runner.ActionRetry},
		{"failed, transactional", func() runner.Change { c := failing("c", nil); c.Transactional = true; return c }(), events.StateFailed, runner.ActionRetry},
		{"rollback failed", failing("d", func(context.Context) error { return errors.New("cannot drop") }), events.StateRollbackFailed, runner.ActionBlocked},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRunner(t, srv.JS, "rules-"+c.change.ID, "r")
			if _, err := r.Run(ctx, []runner.Change{c.change}); !errors.Is(err, runner.ErrChangeFailed) {
				t.Fatalf("first run = %v", err)
			}
			plan, err := r.Plan(ctx, []runner.Change{c.change})
			if err != nil {
				t.Fatal(err)
			}
			if plan[0].State != c.wantState || plan[0].Action != c.action {
				t.Fatalf("plan: state %s action %s, want %s %s", plan[0].State, plan[0].Action, c.wantState, c.action)
			}
			_, err = r.Run(ctx, []runner.Change{c.change})
			want := runner.ErrChangeFailed // retried, and fails again
			if c.action == runner.ActionBlocked {
				want = runner.ErrManualIntervention
			}
			var ce *runner.ChangeError
			if !errors.Is(err, want) || !errors.As(err, &ce) || ce.Guidance("fix %s %s") == "" {
				t.Fatalf("second run = %v, want %v with guidance", err, want)
			}
		})
	}
}

// TestKilledRunnerLeavesChangeForOperator kills a runner (its connection
// closes) while a change is applying. The next run must not re-run it: it
// marks it UNCERTAIN, which the projector turns into an open issue, and
// stops until an operator resolves it.
func TestKilledRunnerLeavesChangeForOperator(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	proj, err := projector.New(ctx, srv.JS, st, projector.Config{CreateStreams: true, StoreName: "sqlite", Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stopProj := context.WithCancel(ctx)
	defer stopProj()
	go func() { _ = proj.Run(pctx) }()

	counts := make([]atomic.Int32, 3)
	changes := counted(3, counts)
	nc, js := srv.Connect(t)
	doomed := slices.Clone(changes)
	doomed[1].Apply = func(context.Context) error { nc.Close(); return nil } // the process dies mid-change
	if _, err := newRunner(t, js, "billing", "doomed").Run(ctx, doomed); err == nil {
		t.Fatal("a runner whose connection died reported success")
	}

	next := newRunner(t, srv.JS, "billing", "next")
	_, err = next.Run(ctx, changes) // waits for the dead runner's lease to expire
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrManualIntervention) || !errors.As(err, &ce) || ce.ChangeID != "001-change" || ce.State != events.StateUncertain {
		t.Fatalf("next run = %v, want manual intervention on 001-change (UNCERTAIN)", err)
	}
	if counts[1].Load() != 0 || counts[2].Load() != 0 {
		t.Fatalf("a change after the uncertain one ran (%d, %d)", counts[1].Load(), counts[2].Load())
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := proj.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	is, err := st.Issues(ctx, stores.IssueQuery{Pipeline: "billing", Status: stores.IssueOpen})
	if err != nil {
		t.Fatal(err)
	}
	if len(is) != 1 || is[0].ChangeID != "001-change" || is[0].State != events.StateUncertain {
		t.Fatalf("open issues = %+v, want 001-change UNCERTAIN", is)
	}

	// The operator checks the target, finds the change applied, and says so.
	if _, err := next.Resolve(ctx, runner.Resolution{ChangeID: "001-change", Resolution: events.ResolvedApplied, Operator: "bob", Reason: "column exists; verified by hand"}); err != nil {
		t.Fatal(err)
	}
	rep, err := next.Run(ctx, changes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeApplied}) {
		t.Fatalf("after resolution: %v", outcomes(rep))
	}
	if err := proj.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	if is, _ := st.Issues(ctx, stores.IssueQuery{Pipeline: "billing", Status: stores.IssueOpen}); len(is) != 0 {
		t.Fatalf("issues still open after resolution: %+v", is)
	}
	if _, err := next.Resolve(ctx, runner.Resolution{ChangeID: "002-change", Resolution: events.ResolvedApplied, Operator: "bob", Reason: "x"}); !errors.Is(err, runner.ErrNothingToResolve) {
		t.Fatalf("resolving an applied change = %v", err)
	}
}

// TestLostLeaseStartsNoFurtherChange force-releases the lock while a
// change runs: the runner finishes that change and starts no other.
func TestLostLeaseStartsNoFurtherChange(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	ops, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]atomic.Int32, 2)
	changes := counted(2, counts)
	changes[0].Apply = func(context.Context) error {
		counts[0].Add(1)
		h, err := ops.Holder(ctx, "billing")
		if err != nil {
			return err
		}
		if err := ops.ForceRelease(ctx, "billing", h.Revision); err != nil {
			return err
		}
		time.Sleep(lease/3 + 300*time.Millisecond) // past the next refresh
		return nil
	}
	rep, err := newRunner(t, srv.JS, "billing", "r").Run(ctx, changes)
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrLeaseLost) || !errors.As(err, &ce) || !strings.Contains(ce.Guidance("fix %s %s"), "Run again") {
		t.Fatalf("Run = %v, want ErrLeaseLost with guidance to run again", err)
	}
	if counts[1].Load() != 0 || !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeApplied, runner.OutcomeNotRun}) {
		t.Fatalf("second change ran after the lease was lost: %v", outcomes(rep))
	}
}

func TestInvalidChanges(t *testing.T) {
	srv := natstest.Start(t)
	r := newRunner(t, srv.JS, "p", "r")
	noop := func(context.Context) error { return nil }
	for name, cs := range map[string][]runner.Change{
		"no id":        {{Apply: noop}},
		"no apply":     {{ID: "a"}},
		"duplicate":    {{ID: "a", Apply: noop}, {ID: "a", Apply: noop}},
		"bad recovery": {{ID: "a", Apply: noop, Recovery: "SOMETIMES"}},
	} {
		if _, err := r.Run(context.Background(), cs); !errors.Is(err, runner.ErrInvalidChange) {
			t.Errorf("%s: Run = %v, want ErrInvalidChange", name, err)
		}
	}
	if _, err := runner.New(nil, nil, runner.Config{}); !errors.Is(err, runner.ErrInvalidConfig) {
		t.Errorf("New without pipeline = %v", err)
	}
}

// BenchmarkRunnerOverhead measures what recording costs per change on the
// embedded server: the time a run spends outside Apply, per change, with
// no-op changes. It reports the p50 and p99 of the per-change overhead
// (start published and acknowledged, success published and acknowledged)
// and the whole run's time per change (plans, lock included).
//
// With sync=true (every stream write fsynced) it also measures, in the same
// run and interleaved with it, the baselines the overhead is a ratio to:
//   - fsync2: the two fsyncs a change cannot do without (its start must be
//     durable before the command runs, its outcome after), as two O_SYNC
//     appends of an event-sized record to a file on the server's disk;
//   - jetstream-publish2: two bare synchronous JetStream publishes of the
//     same record on the same server (no expected sequence, encoding,
//     signing or permission watch): what NATS itself costs, so that
//     overhead ÷ it is what the runner adds;
//   - flamingock-sqlite: what a runner that audits synchronously into its
//     store pays (Flamingock's way): an insert per state change (STARTED,
//     EXECUTED), each its own transaction, into SQLite (WAL,
//     synchronous=FULL) on the same disk;
//   - flamingock-mongo: the same two inserts with the mongo driver and a
//     journaled write concern, when AUDITFLOW_TEST_MONGO_URI names a server
//     (the test servers' FerretDB runs on a PostgreSQL with fsync off: its
//     figure is round trips, not durability).
//
// Each is reported as its p50 and as overhead p50 ÷ its p50.
func BenchmarkRunnerOverhead(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) { benchRunner(b, sync) })
	}
}

func benchRunner(b *testing.B, sync bool) {
	dir := b.TempDir()
	srv := natstest.StartWith(b, embedded.Config{SyncAlways: sync, DataDir: filepath.Join(dir, "nats"), Logger: slog.New(slog.DiscardHandler)})
	// The runner logs as cmd/runner does: text lines to a file (stderr),
	// not through the test log.
	logFile, err := os.Create(filepath.Join(dir, "runner.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = logFile.Close() })
	log := slog.New(slog.NewTextHandler(logFile, nil))
	const perRun = 50
	var per []time.Duration
	var total time.Duration
	var bases []*baseline
	if sync {
		bases = baselines(b, dir, srv.JS)
	}
	runs := 0
	for b.Loop() {
		r := newRunnerLogged(b, srv.JS, fmt.Sprint("bench-", runs), "r", log)
		changes := counted(perRun, make([]atomic.Int32, perRun))
		t0 := time.Now()
		rep, err := r.Run(context.Background(), changes)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		for _, res := range rep.Results {
			per = append(per, res.Overhead)
		}
		for _, base := range bases {
			for i := range perRun {
				base.measure(b, fmt.Sprintf("run%d-%03d", runs, i))
			}
		}
		runs++
	}
	p50 := quantile(per, 0.5)
	b.ReportMetric(ms(p50), "ms/change-p50")
	b.ReportMetric(ms(quantile(per, 0.99)), "ms/change-p99")
	b.ReportMetric(ms(total)/float64(runs*perRun), "ms/change-whole-run")
	for _, base := range bases {
		bp50 := quantile(base.per, 0.5)
		b.ReportMetric(ms(bp50), "ms/change-p50-"+base.name)
		b.ReportMetric(float64(p50)/float64(bp50), "overhead÷"+base.name)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*q)]
}

// baseline is one way of paying for a change's audit, timed per change.
type baseline struct {
	name string
	// change records one change's start and end; id is unique in the run.
	change func(ctx context.Context, id string) error
	per    []time.Duration
}

func (base *baseline) measure(b *testing.B, id string) {
	b.Helper()
	t0 := time.Now()
	if err := base.change(context.Background(), id); err != nil {
		b.Fatalf("%s: %v", base.name, err)
	}
	base.per = append(base.per, time.Since(t0))
}

// baselines builds the same-run baselines of BenchmarkRunnerOverhead on
// dir's disk and js's server.
func baselines(b *testing.B, dir string, js jetstream.JetStream) []*baseline {
	b.Helper()
	e := events.New(events.ExecutionStarted, "bench-0", "000-change")
	e.Author, e.Order, e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "alice", "000", "orders-db", "deploy-7f9c", "r", 1
	e.ExecutionID = events.NewID()
	record, err := events.Encode(e)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "fsync.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_SYNC, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Close() })
	out := []*baseline{{name: "fsync2", change: func(context.Context, string) error {
		for range 2 {
			if _, err := f.Write(record); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
		return nil
	}}}

	out = append(out, &baseline{name: "jetstream-publish2", change: func(ctx context.Context, id string) error {
		for range 2 {
			if _, err := js.Publish(ctx, "audit.exec.rawbench."+id, record); err != nil {
				return fmt.Errorf("publish: %w", err)
			}
		}
		return nil
	}})

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "flamingock.db")+"?_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE audit (id TEXT PRIMARY KEY, change_id TEXT, state TEXT, created_at INTEGER, body BLOB)`); err != nil {
		b.Fatal(err)
	}
	out = append(out, &baseline{name: "flamingock-sqlite", change: func(ctx context.Context, id string) error {
		for _, state := range []string{"STARTED", "EXECUTED"} {
			if _, err := db.ExecContext(ctx, `INSERT INTO audit VALUES (?, ?, ?, ?, ?)`, id+"-"+state, id, state, time.Now().UnixNano(), record); err != nil {
				return fmt.Errorf("insert %s: %w", state, err)
			}
		}
		return nil
	}})

	if uri := os.Getenv("AUDITFLOW_TEST_MONGO_URI"); uri != "" {
		client, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = client.Disconnect(context.Background()) })
		journal := true
		coll := client.Database(fmt.Sprintf("flamingock_bench_%d", time.Now().UnixNano())).Collection("audit",
			options.Collection().SetWriteConcern(&writeconcern.WriteConcern{W: 1, Journal: &journal}))
		b.Cleanup(func() { _ = coll.Database().Drop(context.Background()) })
		out = append(out, &baseline{name: "flamingock-mongo", change: func(ctx context.Context, id string) error {
			for _, state := range []string{"STARTED", "EXECUTED"} {
				doc := bson.M{"_id": id + "-" + state, "changeId": id, "state": state, "createdAt": time.Now(), "body": record}
				if _, err := coll.InsertOne(ctx, doc); err != nil {
					return fmt.Errorf("insert %s: %w", state, err)
				}
			}
			return nil
		}})
	}
	return out
}
