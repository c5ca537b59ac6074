package events

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/google/uuid"
)

// SchemaVersion is the newest schema version this package reads. Decoders
// reject events with a newer version instead of dropping what they do not
// understand. Version 2 added prevHash; version 3 added the
// ExecutionOverlapped type. Events are written with the lowest version that
// can express them (Type.MinVersion), so a reader one version behind still
// reads every event it could understand; version 1 events (no prevHash) are
// still read. Version 4 added prevSeq and position, which place an event on
// its change's subject so that a copy published again elsewhere is seen
// (see CheckChain); every type is written at 4.
const SchemaVersion = 4

// Type is the kind of an event. Names are past tense: each records a fact.
type Type string

// Event types.
const (
	ExecutionStarted   Type = "ExecutionStarted"
	ExecutionSucceeded Type = "ExecutionSucceeded"
	ExecutionFailed    Type = "ExecutionFailed"
	// ExecutionRolledBack records a successful rollback after a failure.
	ExecutionRolledBack Type = "ExecutionRolledBack"
	RollbackFailed      Type = "RollbackFailed"
	// ExecutionMarkedUncertain is published by a runner that, holding the
	// pipeline lock, finds a change that was started and never finished:
	// its outcome on the target system is unknown.
	ExecutionMarkedUncertain Type = "ExecutionMarkedUncertain"
	// ExecutionOverlapped records the end of an execution that overlapped
	// another: it ended after its runner's lease had passed to another
	// holder, or after another execution had written on the same change.
	// Both may have touched the target, so it opens an issue whatever the
	// outcome; ErrorMessage says what the execution did and what it
	// overlapped. Added in schema version 3.
	ExecutionOverlapped Type = "ExecutionOverlapped"
	// ManuallyResolved records an operator's decision about a change that
	// needed manual intervention.
	ManuallyResolved Type = "ManuallyResolved"
)

// Types lists every known event type, in lifecycle order.
var Types = []Type{
	ExecutionStarted, ExecutionSucceeded, ExecutionFailed, ExecutionRolledBack,
	RollbackFailed, ExecutionMarkedUncertain, ExecutionOverlapped, ManuallyResolved,
}

// MinVersion is the schema version that introduced type t: events of t
// with an older version are rejected.
func (t Type) MinVersion() int {
	if t == ExecutionOverlapped {
		return 3
	}
	return 1
}

// ChainVersion is the schema version that added PrevSeq and Position: an
// event at it or newer is placed on its change's subject, not only linked
// to its predecessor's bytes.
const ChainVersion = 4

// writeVersion is the version Encode and New give an event of type t: the
// lowest that can express it with its place in the chain (PrevSeq,
// Position).
func writeVersion(t Type) int { return max(ChainVersion, t.MinVersion()) }

// WriteVersion is the schema version writers give an event of type t (New
// does): the lowest that can express it with its place in the chain.
func WriteVersion(t Type) int { return writeVersion(t) }

// Known reports whether t is a type this package understands.
func (t Type) Known() bool {
	for _, k := range Types {
		if t == k {
			return true
		}
	}
	return false
}

// State is the state a change is in after an event.
type State string

// Change states, as shown in the changeLog and issues.
const (
	StateStarted        State = "STARTED"
	StateApplied        State = "APPLIED"
	StateFailed         State = "FAILED"
	StateRolledBack     State = "ROLLED_BACK"
	StateRollbackFailed State = "ROLLBACK_FAILED"
	StateUncertain      State = "UNCERTAIN"
	// StateOverlapped: two executions of the change overlapped (see
	// ExecutionOverlapped); an operator must say what the target holds.
	StateOverlapped         State = "OVERLAPPED"
	StateManuallyApplied    State = "MANUALLY_APPLIED"
	StateManuallyRolledBack State = "MANUALLY_ROLLED_BACK"
	// StateOutOfChain is not an event's own state but a row's: the event
	// does not extend its change's chain (CheckChain) — a replayed copy of
	// an earlier event, a fork, a repeated id, a downgrade — so whatever it
	// claims is not believed, and an operator must say what the target
	// holds. Event.State never returns it; stores show it (stores.StateOf).
	StateOutOfChain State = "OUT_OF_CHAIN"
)

// States lists every state.
var States = []State{
	StateStarted, StateApplied, StateFailed, StateRolledBack, StateRollbackFailed,
	StateUncertain, StateOverlapped, StateManuallyApplied, StateManuallyRolledBack, StateOutOfChain,
}

// Recovery says what a runner may do with a change whose last execution did
// not end cleanly.
type Recovery string

// Recovery strategies (Flamingock's names).
const (
	// ManualIntervention stops the pipeline until an operator resolves the
	// change. It is the default: re-running a half-applied change is unsafe
	// unless the change says otherwise.
	ManualIntervention Recovery = "MANUAL_INTERVENTION"
	// AlwaysRetry re-runs the change; use it for idempotent changes.
	AlwaysRetry Recovery = "ALWAYS_RETRY"
)

// Valid reports whether r is a known strategy.
func (r Recovery) Valid() bool { return r == ManualIntervention || r == AlwaysRetry }

// Resolution is an operator's verdict in a ManuallyResolved event.
type Resolution string

// Resolutions.
const (
	// ResolvedApplied: the operator confirmed the change is in effect.
	ResolvedApplied Resolution = "APPLIED"
	// ResolvedRolledBack: the operator undid the change; it will run again.
	ResolvedRolledBack Resolution = "ROLLED_BACK"
)

// Valid reports whether r is a known resolution.
func (r Resolution) Valid() bool { return r == ResolvedApplied || r == ResolvedRolledBack }

// Event is one immutable fact about one change of one pipeline.
//
// ID, Type and OccurredAt live in the CloudEvents envelope; everything else
// in its data. Which fields are required depends on the type (see Validate).
type Event struct {
	ID            string // time-ordered unique id (UUIDv7); the stream deduplicates on it
	Type          Type
	SchemaVersion int
	Pipeline      string // the service or fleet whose changes these are
	ChangeID      string
	Author        string
	ExecutionID   string // groups the events of one attempt at a change
	Order         string // the change's position in its pipeline
	TargetSystem  string
	Host          string
	RunnerID      string
	// LockToken is the revision of the pipeline lease the writer held: a
	// fencing token that grows with every new holder.
	LockToken     uint64
	OccurredAt    time.Time // UTC
	Duration      time.Duration
	ErrorMessage  string
	ErrorTrace    string
	Metadata      map[string]string
	Recovery      Recovery
	Transactional bool
	// Resolution, Operator and Reason are set on ManuallyResolved only.
	Resolution Resolution
	Operator   string
	Reason     string
	// PrevHash chains the events of a change: Hash of the exact bytes of
	// the change's previous event on the stream, "" for its first event
	// (or from a writer that does not chain). Altering a stored event
	// breaks the link from its successor, which verify reports.
	PrevHash string
	// PrevSeq is the stream sequence of that previous message, 0 for the
	// change's first (schema version 4). With it the link names a place:
	// an exact copy of an event published again lands after another
	// message than the one it names, so it cannot pass for its original
	// (CheckChain), and a reader can check it knowing only the message
	// before it.
	PrevSeq uint64
	// Position is the event's 1-based position among the messages on its
	// change's subject (schema version 4): what a reader that can count a
	// subject's messages but not read them checks (a copy keeps its
	// original's position, which is no longer the subject's count).
	Position uint64
}

// Hash is the hash an event's successor carries in PrevHash: "sha256:"
// and the hex SHA-256 of the event's exact bytes as published.
func Hash(encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// NewID returns a new time-ordered event id (UUIDv7), so ids sort roughly by
// creation time in every store.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// New returns an event of type t for a change with a fresh id, the lowest
// schema version that can express it, the current UTC time, and the place
// of a change's first event (Position 1). Callers fill in the rest; a
// producer places it after the change's newest message.
func New(t Type, pipeline, changeID string) Event {
	return Event{
		ID:            NewID(),
		Type:          t,
		SchemaVersion: writeVersion(t),
		Pipeline:      pipeline,
		ChangeID:      changeID,
		OccurredAt:    time.Now().UTC(),
		Recovery:      ManualIntervention,
		Position:      1, // its change's first, until placed after another (producer.After)
	}
}

// State returns the state the change is in after this event, or "" for an
// unknown type.
func (e Event) State() State {
	switch e.Type {
	case ExecutionStarted:
		return StateStarted
	case ExecutionSucceeded:
		return StateApplied
	case ExecutionFailed:
		return StateFailed
	case ExecutionRolledBack:
		return StateRolledBack
	case RollbackFailed:
		return StateRollbackFailed
	case ExecutionMarkedUncertain:
		return StateUncertain
	case ExecutionOverlapped:
		return StateOverlapped
	case ManuallyResolved:
		if e.Resolution == ResolvedRolledBack {
			return StateManuallyRolledBack
		}
		return StateManuallyApplied
	}
	return ""
}
