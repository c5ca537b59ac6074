package runner_test

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
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

// forceRelease takes the pipeline's lock from its holder, as an operator
// (or a lease expiring under a paused holder) would.
func forceRelease(t *testing.T, srv *natstest.Server, pipeline string) {
	t.Helper()
	ctx := context.Background()
	ops, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Lease: lease})
	if err != nil {
		t.Error(err)
		return
	}
	h, err := ops.Holder(ctx, pipeline)
	if err == nil {
		err = ops.ForceRelease(ctx, pipeline, h.Revision)
	}
	if err != nil {
		t.Error(err)
	}
}

func lastEvent(t *testing.T, srv *natstest.Server, pipeline, change string) events.Event {
	t.Helper()
	prod, err := producer.New(context.Background(), srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := prod.Last(context.Background(), pipeline, change)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestExecutionReachesApply: Apply's context carries the fencing token the
// run holds and the lease's deadlines.
func TestExecutionReachesApply(t *testing.T) {
	srv := natstest.Start(t)
	var got *runner.Execution
	var stopBy, killBy time.Time
	var ok bool
	c := runner.Change{ID: "a", Apply: func(ctx context.Context) error {
		got, _ = runner.ExecutionFrom(ctx)
		stopBy, killBy, ok = got.Deadlines()
		return nil
	}}
	rep, err := newRunner(t, srv.JS, "p", "r").Run(context.Background(), []runner.Change{c})
	if err != nil {
		t.Fatal(err)
	}
	started := typesOf(t, srv.JS, "p", "a")
	if got == nil || got.LockToken != rep.LockToken || got.LockToken == 0 || got.Pipeline != "p" || got.ChangeID != "a" || len(started) != 2 {
		t.Fatalf("execution %+v, run token %d", got, rep.LockToken)
	}
	if last := lastEvent(t, srv, "p", "a"); last.ExecutionID != got.ExecutionID || last.LockToken != got.LockToken {
		t.Fatalf("recorded execution %s token %d, Apply saw %s token %d", last.ExecutionID, last.LockToken, got.ExecutionID, got.LockToken)
	}
	if !ok || !stopBy.Before(killBy) || time.Until(stopBy) <= 0 || time.Until(killBy) > lease {
		t.Fatalf("deadlines stop %s kill %s ok %v", time.Until(stopBy), time.Until(killBy), ok)
	}
	if runner.LockToken(context.Background()) != 0 {
		t.Fatal("a token outside an execution")
	}
}

// TestLostLeaseCancelsTheChange: when the lease is lost mid-change, Apply's
// context is cancelled with ErrLeaseLost as its cause, the outcome says so,
// and the run ends with ErrLeaseLost (exit 5), nothing else started.
func TestLostLeaseCancelsTheChange(t *testing.T) {
	srv := natstest.Start(t)
	var cause error
	changes := counted(2, make([]atomic.Int32, 2))
	changes[0].Apply = func(ctx context.Context) error {
		forceRelease(t, srv, "billing")
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
			return ctx.Err()
		case <-time.After(5 * lease):
			return errors.New("not cancelled")
		}
	}
	rep, err := newRunner(t, srv.JS, "billing", "r").Run(context.Background(), changes)
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrLeaseLost) || !errors.As(err, &ce) || !errors.Is(cause, runner.ErrLeaseLost) {
		t.Fatalf("Run = %v (Apply's cause %v), want ErrLeaseLost", err, cause)
	}
	if !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeInterrupted, runner.OutcomeNotRun}) {
		t.Fatalf("outcomes %v", outcomes(rep))
	}
	// Nobody else took the lock, so the plain outcome is the truth.
	if got := typesOf(t, srv.JS, "billing", changes[0].ID); !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionFailed}) {
		t.Fatalf("recorded %v", got)
	}
	if e := lastEvent(t, srv, "billing", changes[0].ID); !strings.Contains(e.ErrorMessage, "stopped: the pipeline lock was force-released by") {
		t.Fatalf("recorded %q", e.ErrorMessage)
	}
}

// blocker is an Apply that ignores its context (a paused process, or a
// change that does not honour cancellation) until released.
type blocker struct {
	started, release chan struct{}
}

func newBlocker() *blocker {
	return &blocker{started: make(chan struct{}), release: make(chan struct{})}
}

func (b *blocker) apply(context.Context) error {
	close(b.started)
	<-b.release
	return nil
}

// TestStaleHolderOutcomeIsRecordedAsOverlap: runner A's lease passes to B
// while A's change is still running and ignoring cancellation; B re-runs
// the change (ALWAYS_RETRY). When A finally finishes, its outcome is not
// dropped by the sequence guard: it is recorded as ExecutionOverlapped
// after B's events, the change waits for an operator (even though it is
// ALWAYS_RETRY), and A's run ends with ErrLeaseLost.
func TestStaleHolderOutcomeIsRecordedAsOverlap(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	a := newBlocker()
	change := runner.Change{ID: "x", Recovery: events.AlwaysRetry, Apply: a.apply}
	_, jsA := srv.Connect(t)
	runA := make(chan error, 1)
	go func() {
		_, err := newRunner(t, jsA, "billing", "runner-a").Run(ctx, []runner.Change{change})
		runA <- err
	}()
	<-a.started
	forceRelease(t, srv, "billing") // A's lease passes on while A is stuck

	var bRuns atomic.Int32
	retry := change
	retry.Apply = func(context.Context) error { bRuns.Add(1); return nil }
	repB, err := newRunner(t, srv.JS, "billing", "runner-b").Run(ctx, []runner.Change{retry})
	if err != nil || bRuns.Load() != 1 {
		t.Fatalf("B: %v (applied %d times)", err, bRuns.Load())
	}
	close(a.release)
	err = <-runA
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrLeaseLost) || !errors.As(err, &ce) || ce.State != events.StateOverlapped {
		t.Fatalf("A's run = %v, want ErrLeaseLost with state OVERLAPPED", err)
	}
	want := []events.Type{events.ExecutionStarted, events.ExecutionStarted, events.ExecutionSucceeded, events.ExecutionOverlapped}
	if got := typesOf(t, srv.JS, "billing", "x"); !slices.Equal(got, want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
	e := lastEvent(t, srv, "billing", "x")
	if e.LockToken >= repB.LockToken || e.RunnerID != "runner-a" || !strings.Contains(e.ErrorMessage, "ended APPLIED after its lease") ||
		!strings.Contains(e.ErrorMessage, "runner-b") {
		t.Fatalf("overlap record: token %d (B's %d), %q", e.LockToken, repB.LockToken, e.ErrorMessage)
	}
	// Even ALWAYS_RETRY waits for an operator now.
	_, err = newRunner(t, srv.JS, "billing", "runner-c").Run(ctx, []runner.Change{retry})
	if !errors.Is(err, runner.ErrManualIntervention) || !errors.As(err, &ce) || ce.State != events.StateOverlapped ||
		!strings.Contains(ce.Guidance("fix %s %s"), "overlapped") {
		t.Fatalf("next run = %v, want manual intervention on OVERLAPPED", err)
	}
	r := newRunner(t, srv.JS, "billing", "ops")
	if _, err := r.Resolve(ctx, runner.Resolution{ChangeID: "x", Resolution: events.ResolvedApplied, Operator: "carol", Reason: "checked: applied once"}); err != nil {
		t.Fatal(err)
	}
	if rep, err := r.Run(ctx, []runner.Change{retry}); err != nil || rep.Results[0].Outcome != runner.OutcomeSkipped || bRuns.Load() != 1 {
		t.Fatalf("after resolution: %v %v", err, rep)
	}
}

// TestNewHolderSeesTheOverlap: the stale holder's outcome lands while the
// new holder is still applying. The new holder's outcome is recorded too,
// as an overlap, and its run stops for an operator.
func TestNewHolderSeesTheOverlap(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	a, b := newBlocker(), newBlocker()
	_, jsA := srv.Connect(t)
	runA, runB := make(chan error, 1), make(chan error, 1)
	go func() {
		c := runner.Change{ID: "x", Recovery: events.AlwaysRetry, Apply: a.apply}
		_, err := newRunner(t, jsA, "billing", "runner-a").Run(ctx, []runner.Change{c})
		runA <- err
	}()
	<-a.started
	forceRelease(t, srv, "billing")
	go func() {
		c := runner.Change{ID: "x", Recovery: events.AlwaysRetry, Apply: b.apply}
		_, err := newRunner(t, srv.JS, "billing", "runner-b").Run(ctx, []runner.Change{c})
		runB <- err
	}()
	<-b.started
	close(a.release)
	if err := <-runA; !errors.Is(err, runner.ErrLeaseLost) {
		t.Fatalf("A: %v", err)
	}
	close(b.release)
	err := <-runB
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrManualIntervention) || !errors.As(err, &ce) || ce.State != events.StateOverlapped {
		t.Fatalf("B: %v, want manual intervention, OVERLAPPED", err)
	}
	want := []events.Type{events.ExecutionStarted, events.ExecutionStarted, events.ExecutionOverlapped, events.ExecutionOverlapped}
	if got := typesOf(t, srv.JS, "billing", "x"); !slices.Equal(got, want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
}

// interrupt is the cause a signal would give the run's context.
var errSIGTERM = errors.New("SIGTERM")

// TestInterruptRollsBackAndRetries: an interrupt during a transactional
// change with a rollback stops the change, runs the rollback on a context
// the interrupt did not cancel, records "interrupted" and ROLLED_BACK, and
// the next run applies the change again (not BLOCKED, no ROLLBACK_FAILED).
func TestInterruptRollsBackAndRetries(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	var rollbackCtxErr error
	rolledBack := false
	c := runner.Change{ID: "x", Transactional: true,
		Apply: func(actx context.Context) error {
			cancel(errSIGTERM)
			<-actx.Done()
			return context.Cause(actx)
		},
		Rollback: func(rctx context.Context) error {
			rollbackCtxErr, rolledBack = rctx.Err(), true
			if runner.LockToken(rctx) == 0 {
				return errors.New("rollback without the execution")
			}
			return nil
		},
	}
	r := newRunner(t, srv.JS, "billing", "r")
	rep, err := r.Run(ctx, []runner.Change{c})
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrInterrupted) || !errors.Is(err, errSIGTERM) || !errors.As(err, &ce) || ce.State != events.StateRolledBack {
		t.Fatalf("Run = %v, want ErrInterrupted (SIGTERM), ROLLED_BACK", err)
	}
	if !rolledBack || rollbackCtxErr != nil || rep.Results[0].Outcome != runner.OutcomeRolledBack {
		t.Fatalf("rollback ran %v on a context with err %v; outcome %s", rolledBack, rollbackCtxErr, rep.Results[0].Outcome)
	}
	if got := typesOf(t, srv.JS, "billing", "x"); !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionRolledBack}) {
		t.Fatalf("recorded %v", got)
	}
	plan, err := r.Plan(context.Background(), []runner.Change{c})
	if err != nil || plan[0].Action != runner.ActionRun {
		t.Fatalf("next plan %+v %v", plan, err)
	}
	// The failure says it was an interruption.
	prod, _ := producer.New(context.Background(), srv.JS, producer.Config{CreateStream: true})
	_, h, _ := prod.Last(context.Background(), "billing", "x")
	failed, err := verifyRecord(srv, h.Seq-1)
	if err != nil || !strings.HasPrefix(failed.ErrorMessage, "interrupted (SIGTERM)") {
		t.Fatalf("failure recorded as %q (%v)", failed.ErrorMessage, err)
	}
}

func verifyRecord(srv *natstest.Server, seq uint64) (events.Event, error) {
	s, err := srv.JS.Stream(context.Background(), producer.DefaultStreamName)
	if err != nil {
		return events.Event{}, err
	}
	m, err := s.GetMsg(context.Background(), seq)
	if err != nil {
		return events.Event{}, err
	}
	return events.Decode(m.Data)
}

// TestResolutionWaitsForTheRunner: a resolution is refused while a runner
// holds the pipeline lock or while a start is younger than the lease, and
// Force overrides.
func TestResolutionWaitsForTheRunner(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	b := newBlocker()
	done := make(chan error, 1)
	go func() {
		_, err := newRunner(t, srv.JS, "billing", "busy").Run(ctx, []runner.Change{{ID: "x", Apply: b.apply}})
		done <- err
	}()
	<-b.started
	ops := newRunner(t, srv.JS, "billing", "ops")
	res := runner.Resolution{ChangeID: "x", Resolution: events.ResolvedRolledBack, Operator: "carol", Reason: "looks stuck"}
	if _, err := ops.Resolve(ctx, res); !errors.Is(err, runner.ErrUnsafeResolution) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("resolve during a live apply = %v, want ErrUnsafeResolution naming the holder", err)
	}
	close(b.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A start without an end, younger than the lease, from a runner that
	// may be paused: refused even though nobody holds the lock.
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	e := events.New(events.ExecutionStarted, "billing", "y")
	e.ExecutionID, e.LockToken, e.RunnerID = "exec-y", 3, "paused"
	if _, err := prod.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	res.ChangeID = "y"
	if _, err := ops.Resolve(ctx, res); !errors.Is(err, runner.ErrUnsafeResolution) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("resolve of a young start = %v, want ErrUnsafeResolution", err)
	}
	res.Force = true
	if _, err := ops.Resolve(ctx, res); err != nil {
		t.Fatalf("forced: %v", err)
	}
	if last := lastEvent(t, srv, "billing", "y"); last.State() != events.StateManuallyRolledBack || last.LockToken != 0 {
		t.Fatalf("forced resolution recorded %s with token %d", last.State(), last.LockToken)
	}
}

// TestStalePlanIsReadAgain: the plan a run made when it took the lock can
// be stale by the time it reaches a change (on a cluster, a lagging
// replica may answer the read). A refused start makes the runner read the
// change again and decide anew, instead of failing with ErrConcurrentRun.
func TestStalePlanIsReadAgain(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]atomic.Int32, 2)
	changes := counted(2, counts)
	first := changes[0].Apply
	changes[0].Apply = func(ctx context.Context) error {
		// Meanwhile the second change is recorded as applied elsewhere.
		e := events.New(events.ExecutionSucceeded, "billing", changes[1].ID)
		e.ExecutionID = "elsewhere"
		if _, err := prod.Publish(ctx, e); err != nil {
			return err
		}
		return first(ctx)
	}
	rep, err := newRunner(t, srv.JS, "billing", "r").Run(ctx, changes)
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeApplied, runner.OutcomeSkipped}) || counts[1].Load() != 0 {
		t.Fatalf("outcomes %v, second applied %d times", outcomes(rep), counts[1].Load())
	}
}

// TestTokenBehindTheStreamIsRefused: a lock bucket created again without
// its history (by a tool that does not raise it above the stream's
// tokens) hands out tokens that already appear on the pipeline's changes;
// the runner applies nothing and says why.
func TestTokenBehindTheStreamIsRefused(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	counts := make([]atomic.Int32, 2)
	// Raise the bucket's revisions: a few other pipelines take and release.
	for i := range 4 {
		if _, err := newRunner(t, srv.JS, fmt.Sprint("other-", i), "r").Run(ctx, counted(1, make([]atomic.Int32, 1))); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := newRunner(t, srv.JS, "billing", "r").Run(ctx, counted(1, counts))
	if err != nil || rep.LockToken < 4 {
		t.Fatalf("first run: %v, token %d", err, rep.LockToken)
	}
	if err := srv.JS.DeleteKeyValue(ctx, lock.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	rep, err = newRunner(t, srv.JS, "billing", "r").Run(ctx, counted(2, counts))
	if !errors.Is(err, runner.ErrTokenBehind) || !strings.Contains(err.Error(), "auditflow init") || counts[1].Load() != 0 {
		t.Fatalf("run with a reset bucket (token %d): %v; second change ran %d times", rep.LockToken, err, counts[1].Load())
	}
}
