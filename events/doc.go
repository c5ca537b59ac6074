// Package events is auditflow's event model and its wire format.
//
// Every execution of a change unit is recorded as an immutable [Event] on a
// JetStream stream. The stream is the source of truth: audit stores are
// projections of it and can be rebuilt from it at any time, so everything a
// store shows must be derivable from the events alone.
//
// On the wire an event is a CloudEvents 1.0 JSON document in structured mode
// (specversion, id, source, type, time, subject, data). The envelope carries
// the event id, its type and the time it occurred; data carries the rest. The
// JSON Schema in schema/ (also available as [Schema]) lets fleets written in
// any language emit events that a projector accepts.
//
// Decoding is strict: an unknown type, a newer schema version, a missing or
// invalid required field, or an unknown field inside data each fail with a
// [*Error] that names the field and wraps one of the sentinel errors
// (ErrMalformed, ErrUnknownType, ErrUnsupportedVersion, ErrMissingField,
// ErrInvalidField, ErrTooLarge). So does JSON that readers may read
// differently (ErrNotStrict): a key twice in one object, invalid UTF-8 or a
// lone surrogate, one of the event's keys in another case. A signature
// covers the bytes, and such bytes have no one meaning to vouch for. A
// projector dead-letters such events instead of guessing.
//
// Every field has a size limit (MaxIDLen, MaxKeyLen, MaxTextLen,
// MaxMessageLen, MaxTraceLen, the metadata limits, and MaxEventBytes for the
// encoded event), chosen so that any event the stream accepts fits every
// store with room to spare; Encode and Decode enforce them alike, so an
// event that one writer could publish is one every reader can store.
// [Truncate] is how producers fit long error output.
//
// Each change has its own subject (see [Subject]), so the last message on a
// subject is that change's current state and a runner can read it with one
// direct get. That holds only if each event is on its own change's subject:
// readers check it with [CheckSubject], and treat an event on another
// change's subject (ErrWrongSubject) as they treat one that does not
// decode.
package events
