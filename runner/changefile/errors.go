package changefile

import "errors"

var (
	// ErrInvalid wraps every problem with a change file.
	ErrInvalid = errors.New("invalid change file")
	// ErrStopped: a command was stopped before it finished (its context
	// was cancelled, its timeout or its lease's deadline passed). The error
	// also wraps the cause (context.Cause, or context.DeadlineExceeded).
	ErrStopped = errors.New("command stopped")
)

// stopError is a stopped command's error: its text says what happened,
// and it matches ErrStopped and the cause.
type stopError struct {
	msg   string
	cause error
}

func (e *stopError) Error() string { return e.msg }

func (e *stopError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrStopped}
	}
	return []error{ErrStopped, e.cause}
}
