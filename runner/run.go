package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// Outcome is what happened to a change in a run.
type Outcome string

// Outcomes.
const (
	OutcomeSkipped        Outcome = "SKIPPED"
	OutcomeApplied        Outcome = "APPLIED"
	OutcomeFailed         Outcome = "FAILED"
	OutcomeRolledBack     Outcome = "ROLLED_BACK"
	OutcomeRollbackFailed Outcome = "ROLLBACK_FAILED"
	OutcomeBlocked        Outcome = "BLOCKED"
	OutcomeNotRun         Outcome = "NOT_RUN" // an earlier change stopped the run
	// OutcomeInterrupted: the change was stopped (a signal, or the lease
	// ran out) before it finished, and not rolled back.
	OutcomeInterrupted Outcome = "INTERRUPTED"
	// OutcomeOverlapped: the execution ended after another holder took
	// over, or another execution wrote on the change meanwhile; it was
	// recorded as ExecutionOverlapped, an issue for an operator.
	OutcomeOverlapped Outcome = "OVERLAPPED"
)

// Result is one change's part in a run.
type Result struct {
	ChangeID string
	Action   Action
	Outcome  Outcome
	// Duration is how long Apply took; Overhead the time the runner spent
	// recording it on the stream.
	Duration time.Duration
	Overhead time.Duration
	Err      error
}

// Report is what a run did, change by change, in order.
type Report struct {
	Pipeline  string
	LockToken uint64 // 0 if the run needed no lock
	Results   []Result
}

// Run applies the pipeline's pending changes in order, under the pipeline
// lock, and stops at the first change that fails or needs an operator.
//
// Apply runs on a context that carries the Execution (fencing token,
// deadlines) and is cancelled when ctx is (an interrupt) or when the lease
// is about to be lost; a change that returns early because of either is
// recorded as interrupted, and a rollback then still runs on a detached,
// bounded context (unless the lease is gone: the next holder decides).
//
// If the plan has nothing to run it returns without taking the lock. It
// returns an error wrapping ErrChangeFailed, ErrManualIntervention,
// ErrLockNotObtained, ErrLeaseLost or ErrInterrupted (as a *ChangeError
// where a change is at fault), or another error for infrastructure
// failures.
func (r *Runner) Run(ctx context.Context, changes []Change) (*Report, error) {
	rep := &Report{Pipeline: r.cfg.Pipeline}
	if err := r.checkSigner(); err != nil {
		return rep, err
	}
	plan, err := r.Plan(ctx, changes)
	if err != nil {
		return rep, interruptedOr(ctx, err)
	}
	if allSkipped(plan) {
		for _, s := range plan {
			rep.Results = append(rep.Results, Result{ChangeID: s.Change.ID, Action: s.Action, Outcome: OutcomeSkipped})
		}
		return rep, nil
	}
	lease, err := r.locker.Acquire(ctx, r.cfg.Pipeline)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return rep, fmt.Errorf("%w while waiting for the pipeline lock: %w", ErrInterrupted, context.Cause(ctx))
		case errors.Is(err, lock.ErrHeld):
			return rep, fmt.Errorf("%w: %w", ErrLockNotObtained, err)
		}
		return rep, fmt.Errorf("runner: lock %q: %w", r.cfg.Pipeline, err)
	}
	rep.LockToken = lease.Token()
	defer func() {
		rctx, cancel := r.recordContext(ctx)
		defer cancel()
		if err := lease.Release(rctx); err != nil {
			r.log.Warn("lock release failed; it expires with its lease", "err", err)
		}
	}()
	// Another runner may have applied changes while we waited for the lock.
	if plan, err = r.Plan(ctx, changes); err != nil {
		return rep, interruptedOr(ctx, err)
	}
	r.log.Info("running", "changes", len(plan), "lockToken", lease.Token())
	if err := r.checkToken(plan, lease); err != nil {
		rep.Results = append(rep.Results, notRun(plan)...)
		return rep, err
	}
	for i, s := range plan {
		var stop error
		switch {
		case s.Action == ActionSkip: // nothing to do: needs no lock
		case ctx.Err() != nil:
			stop = fmt.Errorf("%w before change %q: %w", ErrInterrupted, s.Change.ID, context.Cause(ctx))
		case !lease.Valid():
			stop = &ChangeError{Pipeline: r.cfg.Pipeline, ChangeID: s.Change.ID, TargetSystem: s.Change.TargetSystem, State: s.State,
				Err: ErrLeaseLost, Stop: leaseLost(lease), Reason: "not started", notStarted: true}
		}
		if stop != nil {
			rep.Results = append(rep.Results, notRun(plan[i:])...)
			return rep, stop
		}
		res, err := r.stepFresh(ctx, s, lease)
		rep.Results = append(rep.Results, res)
		if err != nil {
			rep.Results = append(rep.Results, notRun(plan[i+1:])...)
			return rep, err
		}
	}
	return rep, nil
}

// checkToken refuses a lease whose fencing token is not above every token
// already recorded on the plan's changes: lock tokens only grow, so one
// that does not was handed out by a lock bucket recreated without its
// history, and a target fencing on tokens would take the new writes for
// stale ones (or, worse, an old holder's for new ones). Only events the
// runner believes count: a forged token must not stop the pipeline.
func (r *Runner) checkToken(plan []Step, lease *lock.Lease) error {
	for _, s := range plan {
		if s.Bad != nil || s.Untrusted != nil || s.OutOfPlace != nil || s.last.LockToken < lease.Token() {
			continue
		}
		return fmt.Errorf("%w: this runner's fencing token %d is not above token %d, recorded on change %q (stream sequence %d): "+
			"lock tokens only grow, so the lock bucket was recreated without its history; run `auditflow init`, which recreates it "+
			"above the highest token on the stream, and check the targets fencing on AUDITFLOW_LOCK_TOKEN; nothing was applied",
			ErrTokenBehind, lease.Token(), s.last.LockToken, s.Change.ID, s.Head.Seq)
	}
	return nil
}

// interruptedOr returns err, marked as an interruption if ctx was
// cancelled (a signal), so the caller can tell the two apart.
func interruptedOr(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ErrInterrupted) {
		return fmt.Errorf("%w: %w (%w)", ErrInterrupted, context.Cause(ctx), err)
	}
	return err
}

func allSkipped(plan []Step) bool {
	for _, s := range plan {
		if s.Action != ActionSkip {
			return false
		}
	}
	return true
}

func notRun(steps []Step) []Result {
	out := make([]Result, len(steps))
	for i, s := range steps {
		out[i] = Result{ChangeID: s.Change.ID, Action: s.Action, Outcome: OutcomeNotRun}
	}
	return out
}

// stepFresh runs a step, and if its start was refused because the change
// moved since it was planned, reads the change again and decides anew. A
// plan can be stale without anyone misbehaving: on a cluster a replica
// that is a few milliseconds behind may answer the read, just after the
// previous holder recorded the change. If the change keeps moving under a
// runner that holds the lock, someone else is writing: ErrConcurrentRun.
func (r *Runner) stepFresh(ctx context.Context, s Step, lease *lock.Lease) (Result, error) {
	res, err := r.step(ctx, s, lease)
	for attempt := 1; errors.Is(err, errMoved) && attempt <= 5; attempt++ {
		r.log.Info("change moved since it was planned; reading it again", "change", s.Change.ID, "attempt", attempt)
		sleep(ctx, time.Duration(attempt)*50*time.Millisecond)
		again, lerr := r.read(ctx, s.Change)
		if lerr != nil {
			return res, interruptedOr(ctx, fmt.Errorf("runner: plan %q again: %w", s.Change.ID, lerr))
		}
		s = again
		res, err = r.step(ctx, s, lease)
	}
	if errors.Is(err, errMoved) {
		return res, fmt.Errorf("%w: change %q kept being recorded by another writer while this runner held the lock; nothing was applied: %w", ErrConcurrentRun, s.Change.ID, err)
	}
	return res, err
}

// errMoved: a start was refused because the change moved since it was
// read (stepFresh reads it again).
var errMoved = errors.New("the change moved since it was planned")

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (r *Runner) step(ctx context.Context, s Step, lease *lock.Lease) (Result, error) {
	res := Result{ChangeID: s.Change.ID, Action: s.Action}
	switch s.Action {
	case ActionSkip:
		res.Outcome = OutcomeSkipped
		return res, nil
	case ActionBlocked:
		res.Outcome = OutcomeBlocked
		if s.State == events.StateStarted && s.Untrusted == nil {
			// We hold the lock, so nobody is still running it: record that
			// its outcome is unknown, which opens an issue for an operator.
			e := r.event(events.ExecutionMarkedUncertain, s.Change, &Execution{ExecutionID: s.last.ExecutionID, LockToken: lease.Token()})
			e.ErrorMessage = "found started without an end by " + r.cfg.RunnerID
			if _, err := r.record(ctx, e, producer.After(s.Head)); err != nil {
				r.log.Warn("could not mark change uncertain", "change", s.Change.ID, "err", err)
			}
			s.State = events.StateUncertain
		}
		res.Err = &ChangeError{Pipeline: r.cfg.Pipeline, ChangeID: s.Change.ID, TargetSystem: s.Change.TargetSystem, State: s.State,
			Reason: s.Reason, Err: ErrManualIntervention, Bad: s.Bad, Untrusted: s.Untrusted, OutOfPlace: s.OutOfPlace, lastError: s.last.ErrorMessage}
		return res, res.Err
	}
	return r.execute(ctx, s, lease)
}

// execute runs one change: Started (acknowledged before anything is
// applied), Apply under the lease, then Succeeded or Failed (and the
// rollback's outcome), each recorded by finish.
func (r *Runner) execute(ctx context.Context, s Step, lease *lock.Lease) (Result, error) {
	c := s.Change
	res := Result{ChangeID: c.ID, Action: s.Action}
	ex := &Execution{Pipeline: r.cfg.Pipeline, ChangeID: c.ID, ExecutionID: events.NewID(), LockToken: lease.Token(), Bounds: leaseDeadlines(lease)}
	t0 := time.Now()
	// The last look before the stream and the target are touched: a runner
	// paused since the loop's check must not start.
	if !lease.Valid() {
		return res, fmt.Errorf("%w: stopped before change %q; nothing was applied", ErrLeaseLost, c.ID)
	}
	startHead, err := r.prod.Publish(ctx, r.event(events.ExecutionStarted, c, ex), producer.After(s.Head))
	if err != nil {
		if errors.Is(err, producer.ErrConflict) {
			return res, fmt.Errorf("%w: %w", errMoved, err)
		}
		return res, interruptedOr(ctx, fmt.Errorf("runner: record start of %q (nothing was applied): %w", c.ID, err))
	}
	cerr := &ChangeError{Pipeline: r.cfg.Pipeline, ChangeID: c.ID, TargetSystem: c.TargetSystem, State: events.StateFailed, Err: ErrChangeFailed}

	// Interrupted or lease lost between the start and the apply: nothing
	// was applied, and the record says so (a failure undone), so the next
	// run may simply apply it.
	if stop := stopCause(ctx, lease); stop != nil {
		failed := r.event(events.ExecutionFailed, c, ex)
		failed.ErrorMessage = describeStop(stop) + " before the change was applied: nothing was run"
		res.Outcome, cerr.Stop, cerr.Err, cerr.Reason = OutcomeInterrupted, stop, stopErr(stop), "nothing was applied"
		h, overlapped, err := r.finish(ctx, lease, failed, startHead)
		if err == nil && !overlapped {
			_, overlapped, err = r.finish(ctx, lease, r.event(events.ExecutionRolledBack, c, ex), h)
			cerr.State, res.Outcome = events.StateRolledBack, OutcomeRolledBack
		}
		r.settle(cerr, &res, overlapped, err, lease)
		res.Err = cerr
		return res, cerr
	}

	r.log.Info("applying", "change", c.ID, "execution", ex.ExecutionID, "action", s.Action, "lockToken", ex.LockToken)
	applyCtx, stopApply := context.WithCancelCause(WithExecution(ctx, ex))
	unwatch := watchLease(applyCtx, lease, stopApply)
	t1 := time.Now()
	applyErr := r.redacted(c.Apply(applyCtx))
	res.Duration = time.Since(t1)
	stop := context.Cause(applyCtx) // nil unless interrupted or the lease ran out
	unwatch()
	stopApply(nil)
	overhead := t1.Sub(t0)

	if applyErr == nil {
		done := r.event(events.ExecutionSucceeded, c, ex)
		done.Duration = res.Duration
		t2 := time.Now()
		_, overlapped, err := r.finish(ctx, lease, done, startHead)
		res.Overhead = overhead + time.Since(t2)
		if err != nil {
			return res, fmt.Errorf("runner: change %q was applied but its success could not be recorded (%w); the stream shows it started without an end, so the next run will mark it UNCERTAIN (or retry it, if ALWAYS_RETRY)", c.ID, err)
		}
		if overlapped {
			cerr.State, cerr.Cause = events.StateApplied, nil
			res.Outcome = OutcomeApplied
			r.settle(cerr, &res, overlapped, nil, lease)
			res.Err = cerr
			return res, cerr
		}
		res.Outcome = OutcomeApplied
		if !lease.Valid() {
			// Applied and recorded, and nobody else acted on the change
			// (finish checked): the change is done. The run stops before
			// the next change that needs the lock.
			r.log.Warn("applied and recorded, but the pipeline lock's lease was lost meanwhile; no further change will start",
				"change", c.ID, "why", lostWhy(lease))
		}
		r.log.Info("applied", "change", c.ID, "duration", res.Duration)
		return res, nil
	}

	failed := r.event(events.ExecutionFailed, c, ex)
	failed.Duration, failed.ErrorMessage, failed.ErrorTrace = res.Duration, firstLine(applyErr.Error()), r.trace(applyErr)
	res.Outcome, res.Overhead, cerr.Cause = OutcomeFailed, overhead, applyErr
	if stop != nil {
		failed.ErrorMessage = firstLine(describeStop(stop) + ": " + applyErr.Error())
		res.Outcome, cerr.Stop, cerr.Err = OutcomeInterrupted, stop, stopErr(stop)
		r.log.Warn("change stopped", "change", c.ID, "why", describeStop(stop), "err", applyErr)
	} else {
		r.log.Error("change failed", "change", c.ID, "err", applyErr)
	}
	failedHead, overlapped, err := r.finish(ctx, lease, failed, startHead)
	if err != nil || overlapped {
		r.settle(cerr, &res, overlapped, err, lease)
		res.Err = cerr
		return res, cerr
	}
	if c.Rollback != nil {
		r.rollback(ctx, lease, ex, c, failedHead, cerr, &res)
	}
	r.settle(cerr, &res, false, nil, lease)
	res.Err = cerr
	return res, cerr
}

// rollback undoes a failed change on a context of its own: detached from
// ctx, so an interrupt that stopped the change does not also stop its
// rollback, bounded by RollbackTimeout, and cancelled if the lease runs out.
// With the lease already gone it does not run: another holder may be
// applying the change, and undoing it under them would be worse.
func (r *Runner) rollback(ctx context.Context, lease *lock.Lease, ex *Execution, c Change, prev producer.Head, cerr *ChangeError, res *Result) {
	if !lease.Valid() {
		cerr.Reason = "its rollback was not run: the pipeline lock was lost, so another runner may be working on the change"
		return
	}
	rctx, cancel := context.WithTimeoutCause(WithExecution(context.WithoutCancel(ctx), ex), r.cfg.RollbackTimeout,
		fmt.Errorf("rollback timed out after %s", r.cfg.RollbackTimeout))
	rctx, stopRollback := context.WithCancelCause(rctx)
	unwatch := watchLease(rctx, lease, stopRollback)
	rbErr := r.redacted(c.Rollback(rctx))
	unwatch()
	stopRollback(nil)
	cancel()
	typ, state, outcome := events.ExecutionRolledBack, events.StateRolledBack, OutcomeRolledBack
	if rbErr != nil {
		r.log.Error("rollback failed", "change", c.ID, "err", rbErr)
		typ, state, outcome = events.RollbackFailed, events.StateRollbackFailed, OutcomeRollbackFailed
		cerr.Rollback = rbErr
	}
	e := r.event(typ, c, ex)
	if rbErr != nil {
		e.ErrorMessage, e.ErrorTrace = firstLine(rbErr.Error()), r.trace(rbErr)
	}
	_, overlapped, err := r.finish(ctx, lease, e, prev)
	if err != nil {
		cerr.Reason = "the rollback's outcome could not be recorded: " + err.Error()
	}
	cerr.State, res.Outcome = state, outcome
	if overlapped {
		r.settle(cerr, res, true, nil, lease)
	}
}

// settle fixes a change error's kind and a result's outcome once the
// outcome is recorded (or not): an overlap needs an operator, a lost lease
// ends the run with ErrLeaseLost, and a failure to record is said.
func (r *Runner) settle(cerr *ChangeError, res *Result, overlapped bool, recordErr error, lease *lock.Lease) {
	if recordErr != nil {
		cerr.Reason = "its outcome could not be recorded: " + recordErr.Error()
	}
	if overlapped {
		cerr.State, res.Outcome = events.StateOverlapped, OutcomeOverlapped
		cerr.Err = ErrManualIntervention
		cerr.Reason = "another execution overlapped it; recorded as OVERLAPPED for an operator"
	}
	if !lease.Valid() && !errors.Is(cerr.Err, ErrInterrupted) {
		cerr.Err = ErrLeaseLost
	}
}

// stopCause says why work must stop now: ctx's cause (an interrupt), or
// the lease running out; nil if neither.
func stopCause(ctx context.Context, lease *lock.Lease) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if !lease.Valid() {
		return leaseLost(lease)
	}
	return nil
}

// leaseLost is the cause Apply's context is cancelled with when the lease
// is lost: ErrLeaseLost, with why (lostWhy).
func leaseLost(lease *lock.Lease) error {
	return fmt.Errorf("%w: %s", ErrLeaseLost, lostWhy(lease))
}

// stopErr is the sentinel a stopped change's error wraps.
func stopErr(stop error) error {
	if errors.Is(stop, ErrLeaseLost) {
		return ErrLeaseLost
	}
	return ErrInterrupted
}

// describeStop renders why a change was stopped, for its record.
func describeStop(stop error) string {
	if errors.Is(stop, ErrLeaseLost) {
		return "stopped: " + strings.TrimPrefix(stop.Error(), ErrLeaseLost.Error()+": ")
	}
	if stop == nil || errors.Is(stop, context.Canceled) {
		return "interrupted"
	}
	return "interrupted (" + stop.Error() + ")"
}

// watchLease cancels with leaseLost when the lease is lost, until the
// returned stop is called (which waits for the watcher to end).
func watchLease(ctx context.Context, lease *lock.Lease, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-lease.Lost():
			cancel(leaseLost(lease))
		case <-ctx.Done():
		case <-done:
		}
	})
	return func() { close(done); wg.Wait() }
}

// finish records e, an outcome of its execution, as the successor of prev
// (the execution's previous event), and never loses it:
//
//   - holding a valid lease, it publishes e after prev, as usual;
//   - if the lease is no longer valid, or the change moved since prev
//     (another execution wrote on it), it looks at what happened: if nobody
//     else wrote on the change and no other holder has the lock, e is still
//     the truth and is published after prev; otherwise e is recorded as
//     ExecutionOverlapped, chained after the change's newest event, saying
//     what this execution did and what it overlapped. Both holders' records
//     stay, and the change waits for an operator.
//
// It publishes on a detached context bounded by RecordTimeout, so an
// interrupt does not lose an outcome.
func (r *Runner) finish(ctx context.Context, lease *lock.Lease, e events.Event, prev producer.Head) (producer.Head, bool, error) {
	rctx, cancel := r.recordContext(ctx)
	defer cancel()
	if lease.Valid() {
		h, err := r.prod.Publish(rctx, e, producer.After(prev))
		if !errors.Is(err, producer.ErrConflict) {
			return h, false, err
		}
		r.log.Warn("the change moved while this runner applied it", "change", e.ChangeID, "err", err)
	}
	var lastErr error
	for rctx.Err() == nil {
		last, head, err := r.prod.Last(rctx, e.Pipeline, e.ChangeID)
		if err != nil && head.Seq == 0 {
			return producer.Head{}, false, fmt.Errorf("runner: record %s of %q: read the change's newest event: %w", e.Type, e.ChangeID, err)
		}
		holder, herr := r.locker.Holder(rctx, e.Pipeline)
		moved := head.Seq != prev.Seq
		taken := herr == nil && holder.Token != e.LockToken
		unknown := herr != nil && !errors.Is(herr, lock.ErrNotHeld)
		if taken || errors.Is(herr, lock.ErrNotHeld) {
			// The lock is another's, or gone: whatever the lease's own
			// bookkeeping says (it learns at its next refresh), it is lost.
			lease.Forfeit("the lock is no longer this holder's")
		}
		if !moved && !unknown {
			// Nobody wrote on the change since this execution's last
			// record, so nobody ran it meanwhile: e is the truth, even if
			// the lock passed to another holder (which waits out this
			// lease before it starts anything, and whose start on this
			// change would make the publish below conflict). What this
			// execution ran is over: Apply has returned.
			h, err := r.prod.Publish(rctx, e, producer.After(prev))
			if errors.Is(err, producer.ErrConflict) {
				lastErr = err
				continue
			}
			return h, false, err
		}
		o := e
		o.ID, o.Type, o.SchemaVersion = events.NewID(), events.ExecutionOverlapped, events.WriteVersion(events.ExecutionOverlapped)
		o.ErrorMessage = overlapMessage(e, lease.Valid(), moved, last, err, holder, herr)
		h, err := r.prod.Publish(rctx, o, producer.After(head))
		if errors.Is(err, producer.ErrConflict) {
			lastErr = err
			continue
		}
		if err == nil {
			r.log.Error("execution overlapped another; recorded for an operator", "change", e.ChangeID, "execution", e.ExecutionID, "what", o.ErrorMessage)
		}
		return h, err == nil, err
	}
	return producer.Head{}, false, fmt.Errorf("runner: record %s of %q: %w (last: %v)", e.Type, e.ChangeID, rctx.Err(), lastErr)
}

// overlapMessage says what an overlapped execution did and what it
// overlapped, for the record an operator reads.
func overlapMessage(e events.Event, valid, moved bool, last events.Event, lastErr error, holder lock.Info, holderErr error) string {
	outcome := string(e.State())
	if e.ErrorMessage != "" {
		outcome += " (" + e.ErrorMessage + ")"
	}
	held := "while holding the pipeline lock"
	if !valid {
		held = "after its lease on the pipeline lock was lost"
	}
	var what []string
	switch {
	case moved && lastErr != nil:
		what = append(what, "the change's newest event could not be read ("+firstLine(lastErr.Error())+")")
	case moved:
		what = append(what, "meanwhile "+actedAs(last))
	}
	switch {
	case holderErr == nil && holder.Token != e.LockToken:
		what = append(what, fmt.Sprintf("the pipeline lock is now held by %s (token %d)", holder.Owner, holder.Token))
	case errors.Is(holderErr, lock.ErrNotHeld):
		what = append(what, "the pipeline lock is no longer held (released, expired or deleted)")
	case holderErr != nil:
		what = append(what, "the pipeline lock could not be read ("+firstLine(holderErr.Error())+")")
	}
	risk := "only this execution ran the change, but its record did not come first"
	switch {
	case moved && lastErr == nil && ranIt(last):
		risk = "both may have changed the target"
	case moved && lastErr != nil:
		risk = "another writer may have changed the target too"
	}
	return firstLine(fmt.Sprintf("execution %s (lock token %d, runner %s) ended %s %s; %s: %s",
		e.ExecutionID, e.LockToken, dash(e.RunnerID), outcome, held, strings.Join(what, "; "), risk))
}

// ranIt reports whether last was written by an execution that ran its
// change (as opposed to marking it uncertain or resolving it by hand).
func ranIt(last events.Event) bool {
	return last.Type != events.ExecutionMarkedUncertain && last.Type != events.ManuallyResolved
}

// actedAs says what the writer of last, a change's newest event, did to
// the change: another execution ran it, a runner only marked it
// uncertain, an operator resolved it (with or without the lock).
func actedAs(last events.Event) string {
	token := fmt.Sprintf("lock token %d", last.LockToken)
	if last.LockToken == 0 {
		token = "without the pipeline lock"
	}
	switch last.Type {
	case events.ExecutionMarkedUncertain:
		return fmt.Sprintf("runner %s (%s) found the change started without an end and marked it UNCERTAIN, without running it", dash(last.RunnerID), token)
	case events.ManuallyResolved:
		return fmt.Sprintf("operator %s recorded it %s by hand (%s)", dash(last.Operator), last.Resolution, token)
	}
	return fmt.Sprintf("execution %s (%s, runner %s) recorded %s on this change", dash(last.ExecutionID), token, dash(last.RunnerID), last.State())
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// record publishes an outcome even if ctx was cancelled while the change
// ran: an applied change must not go unrecorded because of a Ctrl-C.
func (r *Runner) record(ctx context.Context, e events.Event, opts ...producer.PublishOpt) (producer.Head, error) {
	rctx, cancel := r.recordContext(ctx)
	defer cancel()
	return r.prod.Publish(rctx, e, opts...)
}

func (r *Runner) recordContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), r.cfg.RecordTimeout)
}

func (r *Runner) event(t events.Type, c Change, ex *Execution) events.Event {
	e := events.New(t, r.cfg.Pipeline, c.ID)
	e.Author, e.ExecutionID, e.Order, e.TargetSystem = c.Author, ex.ExecutionID, c.Order, c.TargetSystem
	e.Host, e.RunnerID, e.LockToken = r.cfg.Host, r.cfg.RunnerID, ex.LockToken
	e.Metadata, e.Recovery, e.Transactional = c.Metadata, c.Recovery, c.Transactional
	return e
}

// redacted is a change's error as the runner records, logs and returns
// it: its text through Config.Redact. errors.Is and errors.As see through
// it to err.
func (r *Runner) redacted(err error) error {
	if err == nil || r.cfg.Redact == nil {
		return err
	}
	return &redactedError{err: err, redact: r.cfg.Redact}
}

type redactedError struct {
	err    error
	redact func(string) string
}

func (e *redactedError) Error() string { return e.redact(e.err.Error()) }
func (e *redactedError) Unwrap() error { return e.err }

// trace is an error's text as recorded, cut to MaxTrace the way the
// producer cuts anything longer than the event limit (start and end kept).
func (r *Runner) trace(err error) string { return events.Truncate(err.Error(), r.cfg.MaxTrace) }

// firstLine is the first line of s, at most 1000 bytes (cut on a rune
// boundary, with the truncation marker).
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if s == "" {
		return "unknown error"
	}
	return events.Truncate(s, 1000)
}

// Resolve records an operator's decision about a change that needs manual
// intervention (see the package function Resolve): r.Pipeline, Host and
// RunnerID default to this runner's.
func (r *Runner) Resolve(ctx context.Context, res Resolution) (uint64, error) {
	if res.Pipeline == "" {
		res.Pipeline = r.cfg.Pipeline
	}
	if res.Host == "" {
		res.Host = r.cfg.Host
	}
	if res.RunnerID == "" {
		res.RunnerID = r.cfg.RunnerID
	}
	if res.Trust == nil {
		res.Trust = r.cfg.Trust
	}
	return Resolve(ctx, r.prod, r.locker, res)
}

// checkSigner refuses to run with a trust list that would not trust what
// this runner writes: every event it recorded would block its change.
func (r *Runner) checkSigner() error {
	if r.cfg.Trust == nil {
		return nil
	}
	s := r.prod.Signer()
	if s == nil {
		return fmt.Errorf("%w: a trust list is configured but the runner signs nothing: every event it wrote would be untrusted; give it a signing key the list trusts as a runner", ErrInvalidConfig)
	}
	if err := r.cfg.Trust.Allows(s.PublicKey(), events.ExecutionStarted, r.cfg.Pipeline); err != nil {
		return fmt.Errorf("%w: the signing key would not be trusted for what the runner writes on pipeline %q: %w", ErrInvalidConfig, r.cfg.Pipeline, err)
	}
	return nil
}

// needsResolution returns nil if the change, whose newest event is last
// (at head), needs an operator's decision, else ErrNothingToResolve.
//
// A change also needs one when its newest event is a downgrade: written
// at schema version 1 (no hash chain) after the change's chain had
// started, as an old writer or a forger would write it — verify reports
// it until an operator has recorded what the change's target holds.
func needsResolution(ctx context.Context, prod *producer.Producer, r Resolution, last events.Event, head producer.Head) error {
	switch last.State() {
	case events.StateFailed, events.StateRollbackFailed, events.StateUncertain, events.StateOverlapped, events.StateStarted:
		return nil
	}
	if last.SchemaVersion < 2 {
		first, fh, err := prod.First(ctx, r.Pipeline, r.ChangeID)
		if err == nil && fh.Seq != head.Seq && first.SchemaVersion >= 2 {
			return nil
		}
		if err != nil && !errors.Is(err, producer.ErrBadEvent) {
			return err
		}
	}
	return fmt.Errorf("%w: change %q of %q is %s", ErrNothingToResolve, r.ChangeID, r.Pipeline, last.State())
}

// Resolution is an operator's decision about a change, for Resolve.
type Resolution struct {
	Pipeline, ChangeID string
	// Resolution is APPLIED (the change is in effect; runs skip it) or
	// ROLLED_BACK (it is undone; the next run applies it again).
	Resolution events.Resolution
	// Operator says who decides. When the producer signs (it has a
	// Signer), the recorded operator is the key's identity, not this
	// text: with a Trust list "<name> (<key>)", and Operator may only be
	// empty or that name; without one, "<Operator> (<key>)", or the key.
	// Unsigned, it is recorded as given.
	Operator, Reason string
	Host, RunnerID   string // where the decision was recorded from
	// Trust, if set, is the trust list the resolution must pass: the
	// producer must sign with a key it trusts as an operator for the
	// pipeline. A change whose newest event it does not trust needs a
	// resolution whatever that event claims.
	Trust *trust.List
	// Force records the decision without the pipeline lock and without
	// waiting out a young start. If a runner is still applying the change,
	// it will run beside the decision: its outcome is then recorded as
	// overlapping, and a rolled-back resolution can make the change run
	// twice.
	Force bool
}

// Resolve publishes a ManuallyResolved event for a change that needs an
// operator (FAILED, ROLLBACK_FAILED, UNCERTAIN, OVERLAPPED or STARTED; a
// newest message that is not a valid event of the change, see
// producer.BadEventError; or a schema-version-1 event after the change's
// hash chain had started), chained after its newest message.
//
// A decision about a change some runner may still be applying would be
// overtaken by that runner's outcome, or make the change run twice. So,
// unless r.Force, Resolve takes the pipeline lock for the moment it
// records (refusing with ErrUnsafeResolution, naming the holder, while a
// runner holds it) and refuses a STARTED change younger than the lease,
// whose runner may be alive but paused. The event carries the lock's
// fencing token. It is refused if the change moves meanwhile
// (producer.ErrConflict) or needs no resolution (ErrNothingToResolve).
func Resolve(ctx context.Context, prod *producer.Producer, locker *lock.Locker, r Resolution) (uint64, error) {
	operator, err := OperatorOf(prod.Signer(), r)
	if err != nil {
		return 0, err
	}
	var token uint64
	var lease *lock.Lease
	if !r.Force {
		if locker == nil {
			return 0, fmt.Errorf("%w: no lock to take; resolve with Force", ErrInvalidConfig)
		}
		var err error
		lease, err = locker.TryAcquire(ctx, r.Pipeline)
		if errors.Is(err, lock.ErrHeld) {
			return 0, fmt.Errorf("%w: a runner holds the pipeline lock and may be applying change %q: %w; wait for it to finish (see lock list), or force it and risk the change running beside your decision",
				ErrUnsafeResolution, r.ChangeID, err)
		}
		if err != nil {
			return 0, err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = lease.Release(rctx)
		}()
		token = lease.Token()
	}
	last, head, err := prod.Last(ctx, r.Pipeline, r.ChangeID)
	var bad *producer.BadEventError
	var oop *producer.OutOfPlaceError
	switch {
	case errors.Is(err, producer.ErrNoEvents):
		return 0, fmt.Errorf("%w: change %q of %q has never run", ErrNothingToResolve, r.ChangeID, r.Pipeline)
	case errors.As(err, &bad):
		// Its newest message is not its event, so its state is unknown:
		// the decision is recorded after that message, which stays.
	case errors.As(err, &oop):
		// Its newest event is not where it was written (a copy published
		// again): whatever it claims, the decision is recorded after it.
	case err != nil:
		return 0, err
	case Judge(r.Trust, last, head) != nil:
		// Whatever it claims, the change's newest event is not trusted:
		// the decision is recorded after it.
	default:
		if err := needsResolution(ctx, prod, r, last, head); err != nil {
			return 0, err
		}
	}
	if age := time.Since(last.OccurredAt); !r.Force && bad == nil && oop == nil && last.State() == events.StateStarted && age < locker.Lease() {
		return 0, fmt.Errorf("%w: change %q was started %s ago by runner %s (lock token %d), less than the lease (%s): its runner may still be applying it; wait until the lease has passed, or force it and risk the change running beside your decision",
			ErrUnsafeResolution, r.ChangeID, age.Round(100*time.Millisecond), dash(last.RunnerID), last.LockToken, locker.Lease())
	}
	e := events.New(events.ManuallyResolved, r.Pipeline, r.ChangeID)
	e.Resolution, e.Operator, e.Reason = r.Resolution, operator, r.Reason
	e.Author, e.Order, e.TargetSystem, e.Host = last.Author, last.Order, last.TargetSystem, r.Host
	e.RunnerID, e.Recovery, e.LockToken = r.RunnerID, last.Recovery, token
	if lease != nil && !lease.Valid() { // paused since it took the lock: a runner may have it now
		return 0, fmt.Errorf("%w: the pipeline lock's lease ran out while the resolution was prepared; nothing was recorded, try again", ErrUnsafeResolution)
	}
	h, err := prod.Publish(ctx, e, producer.After(head))
	return h.Seq, err
}

// OperatorOf is the operator a resolution signed by s (nil: unsigned)
// records (see Resolution.Operator): the key's identity, checked against
// r.Trust if set. The error wraps ErrInvalidConfig.
func OperatorOf(s *trust.Signer, r Resolution) (string, error) {
	switch {
	case s == nil && r.Trust != nil:
		return "", fmt.Errorf("%w: a trust list is configured, and an unsigned resolution would be untrusted: sign it with an operator's key (auditflow keys new; --signing-key)", ErrInvalidConfig)
	case s == nil:
		return r.Operator, nil
	case r.Trust == nil && r.Operator == "":
		return s.PublicKey(), nil
	case r.Trust == nil:
		return r.Operator + " (" + s.PublicKey() + ")", nil
	}
	if err := r.Trust.Allows(s.PublicKey(), events.ManuallyResolved, r.Pipeline); err != nil {
		return "", fmt.Errorf("%w: the signing key may not record a resolution on pipeline %q: %w", ErrInvalidConfig, r.Pipeline, err)
	}
	if k, _ := r.Trust.Lookup(s.PublicKey()); r.Operator != "" && r.Operator != k.Name {
		return "", fmt.Errorf("%w: operator %q is not the signing key's name in the trust list (%q): with a trust list the operator recorded is the key's identity", ErrInvalidConfig, r.Operator, k.Name)
	}
	return r.Trust.Identity(s.PublicKey()), nil
}

// lostWhy says why a lease is no longer valid, for the stop reason and
// the record: lock.Lease.LostCause names the cause (the lease ran out,
// the lock was deleted or force-released, another holder took it).
func lostWhy(lease *lock.Lease) string {
	var le *lock.LostError
	if !errors.As(lease.LostCause(), &le) {
		return "the pipeline lock was not refreshed in time (its lease ran out)"
	}
	return "the pipeline lock " + le.Why()
}
