package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
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
// If the plan has nothing to run it returns without taking the lock. It
// returns an error wrapping ErrChangeFailed, ErrManualIntervention,
// ErrLockNotObtained or ErrLeaseLost (as a *ChangeError where a change is
// at fault), or another error for infrastructure failures.
func (r *Runner) Run(ctx context.Context, changes []Change) (*Report, error) {
	rep := &Report{Pipeline: r.cfg.Pipeline}
	plan, err := r.Plan(ctx, changes)
	if err != nil {
		return rep, err
	}
	if allSkipped(plan) {
		for _, s := range plan {
			rep.Results = append(rep.Results, Result{ChangeID: s.Change.ID, Action: s.Action, Outcome: OutcomeSkipped})
		}
		return rep, nil
	}
	lease, err := r.locker.Acquire(ctx, r.cfg.Pipeline)
	if err != nil {
		if errors.Is(err, lock.ErrHeld) {
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
		return rep, err
	}
	r.log.Info("running", "changes", len(plan), "lockToken", lease.Token())
	for i, s := range plan {
		select {
		case <-lease.Lost():
			rep.Results = append(rep.Results, notRun(plan[i:])...)
			return rep, fmt.Errorf("%w: stopped before change %q", ErrLeaseLost, s.Change.ID)
		default:
		}
		res, err := r.step(ctx, s, lease.Token())
		rep.Results = append(rep.Results, res)
		if err != nil {
			rep.Results = append(rep.Results, notRun(plan[i+1:])...)
			return rep, err
		}
	}
	return rep, nil
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

func (r *Runner) step(ctx context.Context, s Step, token uint64) (Result, error) {
	res := Result{ChangeID: s.Change.ID, Action: s.Action}
	switch s.Action {
	case ActionSkip:
		res.Outcome = OutcomeSkipped
		return res, nil
	case ActionBlocked:
		res.Outcome = OutcomeBlocked
		if s.State == events.StateStarted {
			// We hold the lock, so nobody is still running it: record that
			// its outcome is unknown, which opens an issue for an operator.
			e := r.event(events.ExecutionMarkedUncertain, s.Change, s.last.ExecutionID, token)
			e.ErrorMessage = "found started without an end by " + r.cfg.RunnerID
			if _, err := r.record(ctx, e, producer.After(s.Head)); err != nil {
				r.log.Warn("could not mark change uncertain", "change", s.Change.ID, "err", err)
			}
			s.State = events.StateUncertain
		}
		res.Err = &ChangeError{Pipeline: r.cfg.Pipeline, ChangeID: s.Change.ID, TargetSystem: s.Change.TargetSystem, State: s.State,
			Reason: s.Reason, Err: ErrManualIntervention, lastError: s.last.ErrorMessage}
		return res, res.Err
	}
	return r.execute(ctx, s, token)
}

// execute runs one change: Started (acknowledged before anything is
// applied), Apply, then Succeeded or Failed (and the rollback's outcome).
func (r *Runner) execute(ctx context.Context, s Step, token uint64) (Result, error) {
	c := s.Change
	res := Result{ChangeID: c.ID, Action: s.Action}
	execID := events.NewID()
	t0 := time.Now()
	started := r.event(events.ExecutionStarted, c, execID, token)
	startHead, err := r.prod.Publish(ctx, started, producer.After(s.Head))
	if err != nil {
		if errors.Is(err, producer.ErrConflict) {
			return res, fmt.Errorf("%w: change %q was recorded by another runner while this one held the lock; nothing was applied: %w", ErrConcurrentRun, c.ID, err)
		}
		return res, fmt.Errorf("runner: record start of %q (nothing was applied): %w", c.ID, err)
	}
	r.log.Info("applying", "change", c.ID, "execution", execID, "action", s.Action)
	t1 := time.Now()
	applyErr := c.Apply(ctx)
	res.Duration = time.Since(t1)
	overhead := t1.Sub(t0)

	if applyErr == nil {
		done := r.event(events.ExecutionSucceeded, c, execID, token)
		done.Duration = res.Duration
		t2 := time.Now()
		_, err := r.record(ctx, done, producer.After(startHead))
		res.Overhead = overhead + time.Since(t2)
		if err != nil {
			return res, fmt.Errorf("runner: change %q was applied but its success could not be recorded; the next run will ask for manual intervention: %w", c.ID, err)
		}
		res.Outcome = OutcomeApplied
		r.log.Info("applied", "change", c.ID, "duration", res.Duration)
		return res, nil
	}

	r.log.Error("change failed", "change", c.ID, "err", applyErr)
	failed := r.event(events.ExecutionFailed, c, execID, token)
	failed.Duration, failed.ErrorMessage, failed.ErrorTrace = res.Duration, firstLine(applyErr.Error()), r.trace(applyErr)
	failedHead, err := r.record(ctx, failed, producer.After(startHead))
	res.Outcome, res.Overhead = OutcomeFailed, overhead
	cerr := &ChangeError{Pipeline: r.cfg.Pipeline, ChangeID: c.ID, TargetSystem: c.TargetSystem, State: events.StateFailed, Err: ErrChangeFailed, Cause: applyErr}
	if err != nil {
		cerr.Reason = "its failure could not be recorded: " + err.Error()
		res.Err = cerr
		return res, cerr
	}
	if c.Rollback != nil {
		rbErr := c.Rollback(ctx)
		typ, state := events.ExecutionRolledBack, events.StateRolledBack
		res.Outcome = OutcomeRolledBack
		if rbErr != nil {
			r.log.Error("rollback failed", "change", c.ID, "err", rbErr)
			typ, state, res.Outcome = events.RollbackFailed, events.StateRollbackFailed, OutcomeRollbackFailed
			cerr.Rollback = rbErr
		}
		e := r.event(typ, c, execID, token)
		if rbErr != nil {
			e.ErrorMessage, e.ErrorTrace = firstLine(rbErr.Error()), r.trace(rbErr)
		}
		if _, err := r.record(ctx, e, producer.After(failedHead)); err != nil {
			cerr.Reason = "the rollback's outcome could not be recorded: " + err.Error()
		}
		cerr.State = state
	}
	res.Err = cerr
	return res, cerr
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

func (r *Runner) event(t events.Type, c Change, execID string, token uint64) events.Event {
	e := events.New(t, r.cfg.Pipeline, c.ID)
	e.Author, e.ExecutionID, e.Order, e.TargetSystem = c.Author, execID, c.Order, c.TargetSystem
	e.Host, e.RunnerID, e.LockToken = r.cfg.Host, r.cfg.RunnerID, token
	e.Metadata, e.Recovery, e.Transactional = c.Metadata, c.Recovery, c.Transactional
	return e
}

func (r *Runner) trace(err error) string {
	s := err.Error()
	if len(s) > r.cfg.MaxTrace {
		s = s[:r.cfg.MaxTrace] + "\n… (truncated)"
	}
	return s
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			s = s[:i]
			break
		}
	}
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	if s == "" {
		s = "unknown error"
	}
	return s
}

// Resolve records an operator's decision about a change that needs manual
// intervention: resolution APPLIED (the change is in effect; runs skip it)
// or ROLLED_BACK (it is undone; the next run applies it again). It is
// refused if the change has moved since it was read, and when the change is
// not waiting for an operator.
func (r *Runner) Resolve(ctx context.Context, changeID string, res events.Resolution, operator, reason string) (uint64, error) {
	return Resolve(ctx, r.prod, Resolution{Pipeline: r.cfg.Pipeline, ChangeID: changeID, Resolution: res,
		Operator: operator, Reason: reason, Host: r.cfg.Host, RunnerID: r.cfg.RunnerID})
}

// Resolution is an operator's decision about a change, for Resolve.
type Resolution struct {
	Pipeline, ChangeID string
	Resolution         events.Resolution
	Operator, Reason   string
	Host, RunnerID     string // where the decision was recorded from
}

// Resolve publishes a ManuallyResolved event for a change that needs an
// operator (FAILED, ROLLBACK_FAILED, UNCERTAIN or STARTED), chained after
// its newest event; it is refused if the change has moved meanwhile
// (producer.ErrConflict) or needs no resolution (ErrNothingToResolve).
func Resolve(ctx context.Context, prod *producer.Producer, r Resolution) (uint64, error) {
	last, head, err := prod.Last(ctx, r.Pipeline, r.ChangeID)
	if errors.Is(err, producer.ErrNoEvents) {
		return 0, fmt.Errorf("%w: change %q of %q has never run", ErrNothingToResolve, r.ChangeID, r.Pipeline)
	}
	if err != nil {
		return 0, err
	}
	switch last.State() {
	case events.StateFailed, events.StateRollbackFailed, events.StateUncertain, events.StateStarted:
	default:
		return 0, fmt.Errorf("%w: change %q of %q is %s", ErrNothingToResolve, r.ChangeID, r.Pipeline, last.State())
	}
	e := events.New(events.ManuallyResolved, r.Pipeline, r.ChangeID)
	e.Resolution, e.Operator, e.Reason = r.Resolution, r.Operator, r.Reason
	e.Author, e.Order, e.TargetSystem, e.Host = last.Author, last.Order, last.TargetSystem, r.Host
	e.RunnerID, e.Recovery = r.RunnerID, last.Recovery
	h, err := prod.Publish(ctx, e, producer.After(head))
	return h.Seq, err
}
