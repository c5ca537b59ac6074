package runner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
)

// Sentinel errors; cmd/runner maps each to its own exit code.
var (
	// ErrChangeFailed: a change's Apply failed; the run stopped there.
	ErrChangeFailed = errors.New("change failed")
	// ErrManualIntervention: a change's last execution did not end cleanly
	// and its recovery strategy does not allow a re-run.
	ErrManualIntervention = errors.New("manual intervention required")
	// ErrLockNotObtained: another runner held the pipeline lock for longer
	// than the lock's give-up time.
	ErrLockNotObtained = errors.New("pipeline lock not obtained")
	// ErrLeaseLost: the lock's lease was lost mid-run. The change running
	// then was stopped (its outcome recorded, as ExecutionOverlapped if
	// another holder had taken over) and no further change was started.
	ErrLeaseLost = errors.New("pipeline lock lost")
	// ErrInterrupted: the run's context was cancelled (SIGINT, SIGTERM).
	// The change running then was stopped and its outcome recorded; its
	// rollback, if any, ran. The error also wraps the context's cause.
	ErrInterrupted = errors.New("run interrupted")
	// ErrConcurrentRun: another writer recorded an event for a change this
	// runner was about to start, although this runner held the lock (its
	// lease must have expired unnoticed). Nothing was applied.
	ErrConcurrentRun = errors.New("change recorded concurrently")
	// ErrInvalidChange: a change definition is unusable.
	ErrInvalidChange = errors.New("invalid change")
	// ErrInvalidConfig: a Config value is not allowed.
	ErrInvalidConfig = errors.New("invalid runner config")
	// ErrUnsafeResolution: Resolve refused because a runner may still be
	// applying the change (it holds the pipeline lock, or the change's start
	// is younger than the lease); Resolution.Force overrides.
	ErrUnsafeResolution = errors.New("resolution refused: the change may still be running")
	// ErrNothingToResolve: Resolve was asked about a change that does not
	// need an operator.
	ErrNothingToResolve = errors.New("nothing to resolve")
	// ErrTokenBehind: the lock's fencing token is not above one already
	// recorded on the pipeline's changes (the lock bucket was recreated
	// without its history). Nothing was applied.
	ErrTokenBehind = errors.New("fencing token behind the stream")
)

// ChangeError says which change stopped a run, in what state, and what an
// operator can do about it.
type ChangeError struct {
	Pipeline     string
	ChangeID     string
	TargetSystem string
	State        events.State
	Reason       string
	// Err is ErrChangeFailed, ErrManualIntervention, ErrInterrupted or
	// ErrLeaseLost.
	Err      error
	Cause    error // the Apply error, if the change failed in this run
	Rollback error // the Rollback error, if it failed too
	// Stop is why the change was stopped before it finished (the
	// context's cause: an interrupt, or the lease running out), if it was.
	Stop error
	// Bad is the change's newest message when it is not a valid event of
	// the change (State is then ""): the change is blocked until an
	// operator records its state after that message.
	Bad *producer.BadEventError
	// Untrusted is the change's newest event when the trust list does not
	// accept it (State is what it claims): the change is blocked until a
	// trusted operator records its state after it.
	Untrusted *UntrustedEvent
	// OutOfPlace is the change's newest event when it is not where it was
	// written (State is events.StateOutOfChain): the change is blocked
	// until an operator records its state after it.
	OutOfPlace *producer.OutOfPlaceError

	lastError  string // the last recorded error, for guidance
	notStarted bool   // the run stopped before this change: it was not run
}

func (e *ChangeError) Error() string {
	var b strings.Builder
	if e.Bad != nil {
		fmt.Fprintf(&b, "%s: change %q of pipeline %q: its newest message (stream %s sequence %d) is not a valid event of it: %s",
			e.Err, e.ChangeID, e.Pipeline, e.Bad.Stream, e.Bad.Head.Seq, badReason(e.Bad))
		return b.String()
	}
	if u := e.Untrusted; u != nil {
		fmt.Fprintf(&b, "%s: change %q of pipeline %q: its newest event (stream sequence %d, %s) is not trusted: %s",
			e.Err, e.ChangeID, e.Pipeline, u.Seq, u.Type, u.Verdict.Problem)
		return b.String()
	}
	if o := e.OutOfPlace; o != nil {
		fmt.Fprintf(&b, "%s: change %q of pipeline %q is %s: its newest event (stream sequence %d, %s) was written as message %d of the change, after sequence %d, but the change has %d messages",
			e.Err, e.ChangeID, e.Pipeline, events.StateOutOfChain, o.Head.Seq, o.Type, o.Position, o.PrevSeq, o.Head.Position)
		return b.String()
	}
	if e.notStarted {
		fmt.Fprintf(&b, "%s: stopped before change %q of pipeline %q: %s", e.Err, e.ChangeID, e.Pipeline, describeStop(e.Stop))
		return b.String()
	}
	fmt.Fprintf(&b, "%s: change %q of pipeline %q is %s", e.Err, e.ChangeID, e.Pipeline, e.State)
	if e.Stop != nil {
		fmt.Fprintf(&b, ": %s", describeStop(e.Stop))
	}
	if e.Cause != nil {
		fmt.Fprintf(&b, ": %v", firstLine(e.Cause.Error()))
	}
	if e.Rollback != nil {
		fmt.Fprintf(&b, "; rollback failed: %v", firstLine(e.Rollback.Error()))
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " (%s)", e.Reason)
	}
	return b.String()
}

func (e *ChangeError) Unwrap() []error {
	out := []error{e.Err}
	for _, err := range []error{e.Stop, e.Cause} {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// Guidance tells an operator what to do next. resolve is the command line
// that records a manual resolution in the caller's tool, with %s for the
// pipeline and the change id (shell-quoted).
func (e *ChangeError) Guidance(resolve string) string {
	fix := fmt.Sprintf(resolve, shellQuote(e.Pipeline), shellQuote(e.ChangeID))
	switch {
	case e.Bad != nil:
		return badGuidance(e, fix)
	case e.Untrusted != nil:
		return untrustedGuidance(e, fix)
	case e.OutOfPlace != nil:
		return outOfPlaceGuidance(e, fix)
	case e.State == events.StateOverlapped:
		return "An execution of this change overlapped another writer: it ended after the pipeline lock had passed to another holder, or after someone else recorded an event on the change (the record's error says who, and whether they ran the change or only marked it uncertain or resolved it). " +
			"What it ran may have changed " + target(e) + ". Inspect it (a target that checks AUDITFLOW_LOCK_TOKEN refused the stale holder's writes), then record what it holds:\n  " + fix
	case e.notStarted:
		return "The run " + describeStop(e.Stop) + " before this change, so it was not started (the changes before it were applied and recorded). Run again to continue."
	case e.Stop != nil && e.State == events.StateRolledBack:
		return "The run was stopped (" + describeStop(e.Stop) + ") and the change was rolled back. Run again: it will be applied again."
	case e.State == events.StateApplied && e.Stop != nil:
		return "The change was applied and recorded, but the run stopped (" + describeStop(e.Stop) + ") before the next change. Run again to continue."
	case e.State == events.StateApplied && errors.Is(e.Err, ErrLeaseLost):
		return "The change was applied and recorded, but the pipeline lock's lease was lost meanwhile (the runner was paused, cut off from NATS, or the lock was force-released), so no further change was started. Run again to continue."
	case errors.Is(e.Err, ErrChangeFailed) && e.State == events.StateRolledBack:
		return "The change failed and was rolled back. Fix the change (or the target system) and run again: it will be applied again."
	case e.Stop != nil && e.State == events.StateFailed:
		return "The run was stopped (" + describeStop(e.Stop) + ") while the change was running, and the change has no rollback: it may be partly applied. If it is transactional or ALWAYS_RETRY, the next run retries it; otherwise inspect " + target(e) + " and record what you find:\n  " + fix
	case errors.Is(e.Err, ErrChangeFailed):
		return "The change failed and may be partly applied. Inspect " + target(e) + ", then either finish or undo the change by hand and record what you did:\n  " + fix +
			"\nIf the change is idempotent, set its recovery to ALWAYS_RETRY instead and run again."
	case e.State == events.StateUncertain || e.State == events.StateStarted:
		return "The change started but its runner never recorded an outcome (it crashed, was killed, or lost the stream). Check whether it took effect on " + target(e) +
			", then record it:\n  " + fix + "\nIf the change is idempotent, set its recovery to ALWAYS_RETRY instead and run again."
	default:
		msg := "The last execution ended " + string(e.State)
		if e.lastError != "" {
			msg += " (" + e.lastError + ")"
		}
		return msg + ". Inspect " + target(e) + ", repair it by hand, then record what you did:\n  " + fix
	}
}

// badGuidance explains a change blocked by a newest message that is not
// its event, and the way past it.
func badGuidance(e *ChangeError, fix string) string {
	b := e.Bad
	what := "It does not decode: " + badReason(b) + "."
	if b.WrongSubject() {
		what = "It is another change's event: " + badReason(b) +
			". It says nothing about this change, and the change it names does not see it either: runners read a change's own subject, and projectors dead-letter it."
	}
	return fmt.Sprintf("The newest message on this change's subject (stream %s, sequence %d, subject %s, %d bytes) is not a valid event of the change. %s\n"+
		"The runner cannot tell from it what state the change is in, so runs stop here. The stream keeps the message (delete and purge are denied); the way past it is your decision, recorded after it.\n"+
		"Inspect the message (nats stream get %s %d), the change's earlier events (auditflow audit list --history -p %s -c %s) and %s, then record what the target holds:\n  %s\n"+
		"applied: runs skip the change; rolled-back: the next run applies it.",
		b.Stream, b.Head.Seq, b.Subject, b.Size, what, b.Stream, b.Head.Seq, shellQuote(e.Pipeline), shellQuote(e.ChangeID), target(e), fix)
}

// untrustedGuidance explains a change blocked by a newest event the trust
// list does not accept, and the way past it.
func untrustedGuidance(e *ChangeError, fix string) string {
	u := e.Untrusted
	by := "It carries no signature"
	if u.Signer != "" {
		by = "It is signed by " + u.Signer
	}
	return fmt.Sprintf("The newest event of this change (stream sequence %d, %s, claiming %s) is not trusted: %s. %s.\n"+
		"Anyone who can publish on the audit subjects could have written it, so the runner does not believe it: runs stop here instead of skipping or re-running the change. The stream keeps the event; the way past it is a trusted operator's decision, recorded after it.\n"+
		"Inspect the event (nats stream get AUDIT %d; auditflow audit list --history -p %s -c %s), find out who could publish it, inspect %s, then record what the target holds, signed with an operator key the trust list names:\n  %s\n"+
		"applied: runs skip the change; rolled-back: the next run applies it.",
		u.Seq, u.Type, e.State, u.Verdict.Problem, by, u.Seq, shellQuote(e.Pipeline), shellQuote(e.ChangeID), target(e), fix)
}

// outOfPlaceGuidance explains a change blocked by a newest event that is
// not where it was written, and the way past it.
func outOfPlaceGuidance(e *ChangeError, fix string) string {
	o := e.OutOfPlace
	return fmt.Sprintf("The newest event of this change (stream sequence %d, %s) is not where it was written: it says it is message %d of the change, written after stream sequence %d, but the change's subject holds %d messages. "+
		"It is a copy of an earlier event published again (a replay: its bytes and signature are an old event's), or a forgery, by someone who may publish on the change's subject. Whatever it claims, the runner does not believe it: runs stop here instead of skipping or re-running the change.\n"+
		"Inspect it (nats stream get %s %d; auditflow audit list --history -p %s -c %s shows it as %s beside the event it copies), find out who published it, inspect %s, then record what the target holds:\n  %s\n"+
		"applied: runs skip the change; rolled-back: the next run applies it.",
		o.Head.Seq, o.Type, o.Position, o.PrevSeq, o.Head.Position, o.Stream, o.Head.Seq, shellQuote(e.Pipeline), shellQuote(e.ChangeID), events.StateOutOfChain, target(e), fix)
}

// badReason is why a message is not the change's event.
func badReason(b *producer.BadEventError) string {
	var ee *events.Error
	if b.WrongSubject() && errors.As(b.Err, &ee) {
		return ee.Reason // "event for change … published on change …'s subject"
	}
	return strings.TrimPrefix(b.Err.Error(), "events: ")
}

func target(e *ChangeError) string {
	if e.TargetSystem != "" {
		return "the target system " + e.TargetSystem
	}
	return "the target system"
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r == '/' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
