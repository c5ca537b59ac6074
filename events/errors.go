package events

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every decoding failure is a *Error wrapping one of
// them, so callers can branch with errors.Is and still show which field.
var (
	// ErrMalformed: not JSON, or not a CloudEvents 1.0 structured event.
	ErrMalformed = errors.New("malformed event")
	// ErrUnknownType: the type is not one this version knows.
	ErrUnknownType = errors.New("unknown event type")
	// ErrUnsupportedVersion: the schema version is newer than SchemaVersion
	// (or not a positive integer).
	ErrUnsupportedVersion = errors.New("unsupported schema version")
	// ErrMissingField: a field required for this type is absent or empty.
	ErrMissingField = errors.New("missing required field")
	// ErrInvalidField: a field is present but its value is not allowed.
	ErrInvalidField = errors.New("invalid field")
	// ErrTooLarge: a field, the metadata or the encoded event is over its
	// size limit (see MaxTraceLen and the other limits). It wraps
	// ErrInvalidField: a value over its limit is not allowed.
	ErrTooLarge error = &subError{msg: "too large", parent: ErrInvalidField}
	// ErrNotStrict: the document is JSON that readers may read
	// differently — a key twice in one object, invalid UTF-8 or an escaped
	// lone surrogate, a key of the event's in another case — so it has no
	// one meaning for a signature to vouch for. It wraps ErrMalformed.
	ErrNotStrict error = &subError{msg: "not strict JSON", parent: ErrMalformed}
	// ErrWrongSubject: a valid event was found on another change's subject
	// (see CheckSubject). The message is not that change's event.
	ErrWrongSubject = errors.New("event on the wrong subject")
)

// subError is a sentinel that is also a case of a broader one.
type subError struct {
	msg    string
	parent error
}

func (e *subError) Error() string { return e.msg }
func (e *subError) Unwrap() error { return e.parent }

// Error says what is wrong with an encoded (or about to be encoded)
// event. Field is the JSON path of the offending field ("data.changeId"),
// empty when the document as a whole is at fault.
type Error struct {
	Field  string
	Reason string
	Err    error // one of the sentinels above
}

func (e *Error) Error() string {
	msg := "events: " + e.Err.Error()
	if e.Field != "" {
		msg += " " + e.Field
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

func fieldErr(sentinel error, field, format string, args ...any) *Error {
	return &Error{Field: field, Reason: fmt.Sprintf(format, args...), Err: sentinel}
}
