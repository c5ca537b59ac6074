package producer

import (
	"errors"
	"fmt"

	"github.com/auditflow/auditflow/events"
)

// Sentinel errors.
var (
	// ErrConflict: another writer published an event for the change after
	// the sequence this publish expected. The caller's view of the change is
	// stale; re-read it before deciding again.
	ErrConflict = errors.New("producer: change was updated concurrently")
	// ErrNoEvents: the change has no events on the stream.
	ErrNoEvents = errors.New("producer: change has no events")
	// ErrStreamMismatch: the stream exists with a configuration that differs
	// from the one asked for.
	ErrStreamMismatch = errors.New("producer: existing stream has a different configuration")
	// ErrNoStream: the audit stream does not exist, and the caller may not
	// create it (OpenStream; New without Config.CreateStream). It comes as
	// a *NoStreamError, which says how to create or restore it.
	ErrNoStream = errors.New("producer: the audit stream does not exist")
	// ErrInvalidConfig: a Config or StreamConfig value is not allowed.
	ErrInvalidConfig = errors.New("producer: invalid config")
)

// ErrBadEvent: the newest message on a change's subject is not a valid
// event of that change: it does not decode (garbage, a newer schema, over
// the size limits) or it is another change's event (events.ErrWrongSubject).
// Last returns it as a *BadEventError, which says where the message is.
var ErrBadEvent = errors.New("producer: the change's newest message is not a valid event of it")

// BadEventError is a change's newest message on the stream that is not a
// valid event of the change (ErrBadEvent). The stream keeps it for good
// (delete and purge are denied), so the way past it is a new event
// recorded after it: Head is its sequence and the hash of its bytes, to
// pass to After.
type BadEventError struct {
	Stream             string // the stream's name
	Subject            string // the subject it is on: the change's
	Pipeline, ChangeID string // the change whose subject it is on
	Head               Head
	Size               int   // its length in bytes
	Err                error // why it is not the change's event: an *events.Error
}

func (e *BadEventError) Error() string {
	return fmt.Sprintf("producer: the newest message of change %q of pipeline %q (stream %s sequence %d) is not a valid event of it: %v",
		e.ChangeID, e.Pipeline, e.Stream, e.Head.Seq, e.Err)
}

// Unwrap returns ErrBadEvent and the reason, so errors.Is matches both
// (events.ErrMalformed, events.ErrWrongSubject, …).
func (e *BadEventError) Unwrap() []error { return []error{ErrBadEvent, e.Err} }

// WrongSubject reports whether the message is a valid event of another
// change, rather than one that does not decode.
func (e *BadEventError) WrongSubject() bool { return errors.Is(e.Err, events.ErrWrongSubject) }

// ErrOutOfPlace: a change's newest event is not where it was written: it
// says it is the change's Nth message (events.Event.Position), and the
// change's subject holds another number of messages. A copy of an earlier
// event published again keeps its original's position, so it is caught
// here by a reader that may count the subject's messages but not read
// them. Last returns it as an *OutOfPlaceError with the event and its
// Head, which is what a resolution is recorded after.
var ErrOutOfPlace = errors.New("producer: the change's newest event is not where it was written")

// OutOfPlaceError is a change's newest event whose Position is not its
// subject's message count (ErrOutOfPlace).
type OutOfPlaceError struct {
	Stream, Subject    string
	Pipeline, ChangeID string
	Head               Head        // the event's sequence and hash; Head.Position is the subject's count
	Type               events.Type // what it claims
	Position           uint64      // the position it was written at
	PrevSeq            uint64      // the sequence it was written to follow
}

func (e *OutOfPlaceError) Error() string {
	return fmt.Sprintf("producer: the newest event of change %q of pipeline %q (stream %s sequence %d, %s) was written as message %d of its change, after sequence %d, but the change has %d messages: a copy of an earlier event published again, or a forgery",
		e.ChangeID, e.Pipeline, e.Stream, e.Head.Seq, e.Type, e.Position, e.PrevSeq, e.Head.Position)
}

// Unwrap returns ErrOutOfPlace and events.ErrOutOfChain.
func (e *OutOfPlaceError) Unwrap() []error { return []error{ErrOutOfPlace, events.ErrOutOfChain} }
