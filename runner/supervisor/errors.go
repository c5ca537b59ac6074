package supervisor

import "errors"

var (
	// ErrNotInstalled: Start was called in a process whose main never called
	// Main. Re-executing such a binary would run the program itself again,
	// so Start refuses; run the command directly instead.
	ErrNotInstalled = errors.New("supervisor: hook not installed (main did not call supervisor.Main)")
	// ErrUnsupported: this operating system has no supervisor (Windows).
	ErrUnsupported = errors.New("supervisor: not supported on this system")
	// ErrSupervisorDied: the supervisor process ended without reporting the
	// command's outcome (it was killed, or crashed). The error also says how
	// it ended, e.g. "supervisor died: signal: killed".
	ErrSupervisorDied = errors.New("supervisor died")
)
