//go:build !unix

package supervisor

import "context"

// Main does nothing on this system: there is no supervisor to run.
func Main() {}

// Installed reports whether Start may re-execute this binary as a
// supervisor: never on this system, so callers run commands directly.
func Installed() bool { return false }

// Process is a supervised command; on this system there are none.
type Process struct{}

// Start returns ErrUnsupported: this system has no supervisor.
func Start(context.Context, Spec) (*Process, error) { return nil, ErrUnsupported }

// Pid is the supervisor's process id.
func (*Process) Pid() int { return 0 }

// CommandPid is the command's process id.
func (*Process) CommandPid() int { return 0 }

// Containment is how the command's processes are held: here, not at all.
func (*Process) Containment() Containment { return "" }

// Done is closed when the supervisor has exited.
func (*Process) Done() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// Wait returns ErrUnsupported.
func (*Process) Wait() (Result, error) { return Result{}, ErrUnsupported }
