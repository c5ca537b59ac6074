package stores

import (
	"time"

	"github.com/auditflow/auditflow/events"
)

// IssueStatus says whether a change needs an operator.
type IssueStatus string

// Issue statuses.
const (
	// IssueInProgress: started and not yet finished. Not an issue yet; it
	// becomes one if it stays so (see Issue.Stale) or a runner marks it
	// uncertain.
	IssueInProgress IssueStatus = "IN_PROGRESS"
	// IssueOpen: failed, rollback failed, uncertain, overlapped or out of
	// its chain; needs an operator unless the change's recovery strategy
	// retries it (never for overlapped executions or an event out of its
	// chain).
	IssueOpen IssueStatus = "OPEN"
	// IssueClosed: applied, rolled back or manually resolved.
	IssueClosed IssueStatus = "CLOSED"
)

// Issue is a change's current state: the projection of the newest event
// about it (highest stream sequence). Because it is a function of one event,
// it converges under any delivery order. The history of how it got there is
// in the changeLog.
type Issue struct {
	Pipeline     string          `json:"pipeline"`
	ChangeID     string          `json:"changeId"`
	Status       IssueStatus     `json:"status"`
	State        events.State    `json:"state"`
	Seq          uint64          `json:"seq"` // sequence of the event it reflects
	EventID      string          `json:"eventId"`
	ExecutionID  string          `json:"executionId,omitempty"`
	Author       string          `json:"author,omitempty"`
	TargetSystem string          `json:"targetSystem,omitempty"`
	Recovery     events.Recovery `json:"recovery"`
	ErrorMessage string          `json:"errorMessage,omitempty"`
	ErrorTrace   string          `json:"-"`
	UpdatedAt    time.Time       `json:"updatedAt"` // when that event occurred
	// Operator and Reason are set when a manual resolution closed the issue.
	Operator string `json:"operator,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Trust is the event's Record.Trust: why it is not trusted, "" if it
	// is. An untrusted event keeps the issue OPEN whatever its state.
	Trust string `json:"trust,omitempty"`
	// Chain is the event's Record.Chain: how it fails to extend its
	// change's chain, "" if it does. State is then StateOutOfChain.
	Chain string `json:"chain,omitempty"`
}

// StatusOf maps a change state to an issue status.
func StatusOf(s events.State) IssueStatus {
	switch s {
	case events.StateStarted:
		return IssueInProgress
	case events.StateFailed, events.StateRollbackFailed, events.StateUncertain, events.StateOverlapped, events.StateOutOfChain:
		return IssueOpen
	}
	return IssueClosed
}

// IssueStatusOf is the status of an issue whose newest event leaves its
// change in state s with trust verdict trust (Record.Trust). An untrusted
// event is OPEN whatever it claims: a forged ExecutionSucceeded or
// ManuallyResolved must not close anything.
func IssueStatusOf(s events.State, trust string) IssueStatus {
	if trust != "" {
		return IssueOpen
	}
	return StatusOf(s)
}

// IssueOf is the issue row an event produces.
func IssueOf(r Record) Issue {
	state := StateOf(r)
	return Issue{
		Pipeline: r.Pipeline, ChangeID: r.ChangeID, Status: IssueStatusOf(state, r.Trust), State: state,
		Seq: r.Seq, EventID: r.ID, ExecutionID: r.ExecutionID, Author: r.Author,
		TargetSystem: r.TargetSystem, Recovery: r.Recovery, ErrorMessage: r.ErrorMessage,
		ErrorTrace: r.ErrorTrace, UpdatedAt: r.OccurredAt, Operator: r.Operator, Reason: r.Reason,
		Trust: r.Trust, Chain: r.Chain,
	}
}

// DefaultStaleAfter is how long an execution may stay IN_PROGRESS before it
// is reported as uncertain. Flamingock's lease is 60 s; a change still
// "running" long after any lease could have been refreshed is most likely
// abandoned by a crashed runner.
const DefaultStaleAfter = 15 * time.Minute

// Stale reports whether an in-progress issue has been in progress longer
// than staleAfter at now: the staleness-threshold path to UNCERTAIN. It is
// computed when reading rather than written, so a store stays a pure
// function of the stream and a rebuilt store shows exactly what a live one
// does.
func (i Issue) Stale(now time.Time, staleAfter time.Duration) bool {
	return i.Status == IssueInProgress && now.Sub(i.UpdatedAt) > staleAfter
}
