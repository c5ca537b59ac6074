package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// Change is a change unit: a versioned step applied once to a target system.
type Change struct {
	ID     string
	Author string
	// Order positions the change in its pipeline; changes run in ascending
	// Order (byte-wise), then ID. Zero-pad numbers ("0042") so they sort.
	Order string
	Apply func(ctx context.Context) error
	// Rollback, if set, undoes a failed Apply. Without it a failure leaves
	// the change FAILED for its recovery strategy or an operator to settle.
	Rollback     func(ctx context.Context) error
	Recovery     events.Recovery // default MANUAL_INTERVENTION
	TargetSystem string
	Metadata     map[string]string
	// Transactional says Apply runs in one transaction on the target, so a
	// failure leaves nothing behind and the change may simply run again.
	Transactional bool
}

// Config configures a Runner.
type Config struct {
	Pipeline string // required: the fleet or service whose changes these are
	RunnerID string // default host-pid
	Host     string // default os.Hostname()
	// MaxTrace bounds the error trace recorded in events: longer ones keep
	// their start and end around a "… [truncated N bytes] …" marker.
	// Default 64 KiB; at most events.MaxTraceLen (128 KiB), the most any
	// event may carry.
	MaxTrace int
	// RecordTimeout bounds recording an outcome after the caller's context
	// is cancelled (Ctrl-C during a change): the outcome is still recorded.
	// Default 30s.
	RecordTimeout time.Duration
	// RollbackTimeout bounds a rollback, which runs on a context of its
	// own so that the interrupt that stopped a change does not also stop
	// its rollback. Default 10m.
	RollbackTimeout time.Duration
	// Trust, if set, is the trust list a change's newest event must pass
	// (see package trust): an untrusted one — a forged success, say —
	// blocks its change for an operator instead of being believed. Run
	// then also requires the producer to sign as a runner this list
	// trusts for the pipeline, and Resolve as an operator. Nil checks
	// nothing.
	Trust *trust.List
	// Redact, if set, rewrites the text of a change's error (from Apply or
	// Rollback) before the runner records it — the execution's error
	// message and trace, on a stream nobody may purge — logs it or returns
	// it. cmd/runner masks credentials with it (the values of its secrets,
	// and secrets by their form: DB_PASS=…, a URL's password). Package
	// changefile masks its commands' output already; this covers an Apply
	// written in Go as well.
	Redact func(string) string
	Logger *slog.Logger // nil discards
}

// DefaultMaxTrace is Config.MaxTrace's default.
const DefaultMaxTrace = 64 << 10

// Runner applies a pipeline's changes under the pipeline lock, recording
// each execution on the audit stream.
type Runner struct {
	prod   *producer.Producer
	locker *lock.Locker
	cfg    Config
	log    *slog.Logger
}

// New returns a Runner.
func New(prod *producer.Producer, locker *lock.Locker, cfg Config) (*Runner, error) {
	if cfg.Pipeline == "" {
		return nil, fmt.Errorf("%w: pipeline is required", ErrInvalidConfig)
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.RunnerID == "" {
		cfg.RunnerID = fmt.Sprintf("%s-%d", cfg.Host, os.Getpid())
	}
	if cfg.MaxTrace == 0 {
		cfg.MaxTrace = DefaultMaxTrace
	}
	if cfg.MaxTrace < 0 || cfg.MaxTrace > events.MaxTraceLen {
		return nil, fmt.Errorf("%w: MaxTrace %d is outside 1..%d (events.MaxTraceLen)", ErrInvalidConfig, cfg.MaxTrace, events.MaxTraceLen)
	}
	// What goes on every event must fit the event limits: say so now, not
	// when the first change's start is refused.
	trial := events.New(events.ExecutionStarted, cfg.Pipeline, "trial")
	trial.ExecutionID, trial.Host, trial.RunnerID = events.NewID(), cfg.Host, cfg.RunnerID
	if err := events.Validate(trial); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.RecordTimeout == 0 {
		cfg.RecordTimeout = 30 * time.Second
	}
	if cfg.RollbackTimeout == 0 {
		cfg.RollbackTimeout = 10 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{prod: prod, locker: locker, cfg: cfg, log: log.With("pipeline", cfg.Pipeline)}, nil
}

// Action is what a plan will do with a change.
type Action string

// Actions.
const (
	ActionSkip  Action = "SKIP"  // applied already
	ActionRun   Action = "RUN"   // never run, or rolled back
	ActionRetry Action = "RETRY" // last run did not finish cleanly; its recovery allows a re-run
	// ActionBlocked: the last run did not finish cleanly and only an
	// operator can say what state the target is in.
	ActionBlocked Action = "BLOCKED"
)

// Step is one change's entry in a plan.
type Step struct {
	Change Change
	Action Action
	// State and Head describe the change's newest event ("" and the zero
	// Head if none).
	State  events.State
	Head   producer.Head
	Reason string
	// Bad is set when the change's newest message is not a valid event of
	// it (garbage, or another change's event): the change is BLOCKED until
	// an operator records a decision after it (Resolve). Head is then the
	// message's, State "".
	Bad *producer.BadEventError
	// Untrusted is set when the change's newest event fails the trust list
	// (Config.Trust): the change is BLOCKED, whatever the event claims,
	// until a trusted operator records a decision after it.
	Untrusted *UntrustedEvent
	// OutOfPlace is set when the change's newest event is not where it was
	// written (a copy of an earlier event published again): the change is
	// BLOCKED, State is events.StateOutOfChain, whatever the event claims,
	// until an operator records a decision after it.
	OutOfPlace *producer.OutOfPlaceError
	last       events.Event
}

// UntrustedEvent is a change's newest event that the trust list does not
// accept: unsigned, signed by an unknown, revoked or out-of-scope key, or
// whose signature is not over its bytes (altered, or copied from another
// event).
type UntrustedEvent struct {
	Seq     uint64
	Type    events.Type
	Signer  string // its signer's identity (trust list name and key), "" if unsigned
	Verdict trust.Verdict
}

// Plan reads each change's newest event from the stream and decides what a
// run would do. It takes no lock: Run plans again once it holds the lock.
func (r *Runner) Plan(ctx context.Context, changes []Change) ([]Step, error) {
	sorted, err := sortChanges(r.cfg.Pipeline, changes)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(sorted))
	for i, c := range sorted {
		ids[i] = c.ID
	}
	newest, err := r.prod.LastOf(ctx, r.cfg.Pipeline, ids)
	if err != nil {
		return nil, fmt.Errorf("runner: plan: %w", err)
	}
	plan := make([]Step, 0, len(sorted))
	for i, c := range sorted {
		s, err := r.judge(c, newest[i].Event, newest[i].Head, newest[i].Err)
		if err != nil {
			return nil, fmt.Errorf("runner: plan: %w", err)
		}
		plan = append(plan, s)
	}
	return plan, nil
}

// read reads a change's newest event and decides what to do with it. A
// newest message that is not a valid event of the change blocks it: the
// runner cannot know the change's state, and failing the whole run (as it
// once did, with "malformed event") left no way forward.
func (r *Runner) read(ctx context.Context, c Change) (Step, error) {
	last, head, err := r.prod.Last(ctx, r.cfg.Pipeline, c.ID)
	return r.judge(c, last, head, err)
}

// judge decides what to do with a change whose newest event, read as
// producer.Last reads it, is last at head (err: Last's error).
func (r *Runner) judge(c Change, last events.Event, head producer.Head, err error) (Step, error) {
	var bad *producer.BadEventError
	var oop *producer.OutOfPlaceError
	switch {
	case errors.Is(err, producer.ErrNoEvents):
		return Step{Change: c, Action: ActionRun, Reason: "never run"}, nil
	case errors.As(err, &bad):
		what := "does not decode"
		if bad.WrongSubject() {
			what = "is another change's event"
		}
		return Step{Change: c, Action: ActionBlocked, Head: head, Bad: bad,
			Reason: fmt.Sprintf("its newest message (stream sequence %d) %s: an operator must record the change's state after it", head.Seq, what)}, nil
	case errors.As(err, &oop):
		return Step{Change: c, Action: ActionBlocked, State: events.StateOutOfChain, Head: head, OutOfPlace: oop, last: last,
			Reason: fmt.Sprintf("its newest event (stream sequence %d, %s) was written as message %d of the change, after sequence %d, but the change has %d messages: a copy of an earlier event published again (or a forgery); an operator must record the change's state after it",
				head.Seq, last.Type, oop.Position, oop.PrevSeq, head.Position)}, nil
	case err != nil:
		return Step{}, err
	}
	if u := r.untrusted(last, head); u != nil {
		return Step{Change: c, Action: ActionBlocked, State: last.State(), Head: head, Untrusted: u, last: last,
			Reason: fmt.Sprintf("its newest event (stream sequence %d, %s) is not trusted: %s", head.Seq, last.Type, u.Verdict.Problem)}, nil
	}
	return decide(c, last, head), nil
}

// untrusted judges a change's newest event, read at head, against
// Config.Trust; nil if it is trusted (or there is no list).
func (r *Runner) untrusted(last events.Event, head producer.Head) *UntrustedEvent {
	return Judge(r.cfg.Trust, last, head)
}

// Judge judges a change's newest event, last, read at head (whose
// Signature is its header), against list: nil if it is trusted, or list
// is nil.
func Judge(list *trust.List, last events.Event, head producer.Head) *UntrustedEvent {
	if list == nil {
		return nil
	}
	signer, _, v := list.CheckHeader(head.Signature, trust.Signed{Pipeline: last.Pipeline, Type: last.Type, Seq: head.Seq, Hash: head.Hash})
	if v.Trusted() {
		return nil
	}
	u := &UntrustedEvent{Seq: head.Seq, Type: last.Type, Verdict: v}
	if signer != "" {
		u.Signer = list.Identity(signer)
	}
	return u
}

// decide maps a change's newest event to an action (Flamingock's rules).
func decide(c Change, last events.Event, head producer.Head) Step {
	s := Step{Change: c, State: last.State(), Head: head, last: last}
	retry := c.Recovery == events.AlwaysRetry
	switch s.State {
	case events.StateApplied, events.StateManuallyApplied:
		s.Action, s.Reason = ActionSkip, "applied"
	case events.StateRolledBack, events.StateManuallyRolledBack:
		s.Action, s.Reason = ActionRun, "rolled back"
	case events.StateFailed:
		switch {
		case retry:
			s.Action, s.Reason = ActionRetry, "failed; recovery is ALWAYS_RETRY"
		case last.Transactional:
			s.Action, s.Reason = ActionRetry, "failed inside a transaction, so nothing was applied"
		default:
			s.Action, s.Reason = ActionBlocked, "failed and may have been partly applied"
		}
	case events.StateOverlapped:
		// Even an idempotent change waits: two executions ran at once, and
		// only an operator can say what the target holds now.
		s.Action, s.Reason = ActionBlocked, "two executions overlapped: "+last.ErrorMessage
	case events.StateStarted, events.StateUncertain, events.StateRollbackFailed:
		what := map[events.State]string{
			events.StateStarted:        "started and never finished (the runner died or lost the stream)",
			events.StateUncertain:      "started and never finished (the runner died or lost the stream)",
			events.StateRollbackFailed: "failed and its rollback failed too",
		}[s.State]
		if retry {
			s.Action, s.Reason = ActionRetry, what+"; recovery is ALWAYS_RETRY"
		} else {
			s.Action, s.Reason = ActionBlocked, what
		}
	default:
		s.Action, s.Reason = ActionBlocked, fmt.Sprintf("unknown state %q", s.State)
	}
	return s
}

func sortChanges(pipeline string, changes []Change) ([]Change, error) {
	seen := make(map[string]bool, len(changes))
	for i, c := range changes {
		switch {
		case c.ID == "":
			return nil, fmt.Errorf("%w: change %d has no id", ErrInvalidChange, i)
		case seen[c.ID]:
			return nil, fmt.Errorf("%w: duplicate change id %q", ErrInvalidChange, c.ID)
		case c.Apply == nil:
			return nil, fmt.Errorf("%w: change %q has no apply", ErrInvalidChange, c.ID)
		case c.Recovery != "" && !c.Recovery.Valid():
			return nil, fmt.Errorf("%w: change %q: recovery %q is not %s or %s", ErrInvalidChange, c.ID, c.Recovery, events.ManualIntervention, events.AlwaysRetry)
		case len(c.ID) > events.MaxKeyLen:
			return nil, fmt.Errorf("%w: change id %q is longer than %d bytes", ErrInvalidChange, c.ID, events.MaxKeyLen)
		}
		// Everything of the change that goes on its events must fit the
		// event limits (oversize metadata, a long author): refuse the
		// change before anything runs rather than fail to record its start.
		trial := events.New(events.ExecutionStarted, pipeline, c.ID)
		trial.ExecutionID, trial.Author, trial.Order, trial.TargetSystem = events.NewID(), c.Author, c.Order, c.TargetSystem
		trial.Metadata = c.Metadata
		if err := events.Validate(trial); err != nil {
			return nil, fmt.Errorf("%w: change %q: %w", ErrInvalidChange, c.ID, err)
		}
		seen[c.ID] = true
	}
	sorted := slices.Clone(changes)
	slices.SortStableFunc(sorted, func(a, b Change) int {
		return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.ID, b.ID))
	})
	for i := range sorted {
		if sorted[i].Recovery == "" {
			sorted[i].Recovery = events.ManualIntervention
		}
	}
	return sorted, nil
}
