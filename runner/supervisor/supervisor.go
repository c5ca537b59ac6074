package supervisor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"time"
)

// DefaultGrace is how long a command has between SIGTERM and SIGKILL when
// Spec.Grace is not set.
const DefaultGrace = 10 * time.Second

// goneGrace is the grace left to a command whose runner died: short,
// because nobody is left to record what the command does from now on, and
// another runner may take the lock as soon as the lease expires.
const goneGrace = 500 * time.Millisecond

// leftoverGrace is the SIGTERM-to-SIGKILL time for processes a command left
// running when it exited.
const leftoverGrace = 500 * time.Millisecond

// Spec describes one command to run under a supervisor.
type Spec struct {
	// Args is the program and its arguments, e.g. {"sh", "-c", script}. A
	// program name without a slash is looked up in Env's PATH.
	Args []string
	// Dir is the command's working directory ("" is the caller's).
	Dir string
	// Env is the command's environment; nil means the caller's.
	Env []string
	// Stdout and Stderr receive the command's output (nil discards).
	Stdout, Stderr io.Writer
	// Grace is how long the command has between SIGTERM and SIGKILL when it
	// is stopped; <= 0 means DefaultGrace.
	Grace time.Duration
	// Deadlines, if set, bounds the command by the caller's lease: SIGTERM
	// at stopBy, SIGKILL at killBy (or stopBy + Grace if sooner). It is
	// polled while the command runs and each change is forwarded, so a
	// refreshed lease extends the command's time; a runner that stops
	// forwarding (paused, partitioned) leaves the supervisor enforcing the
	// last values it got. ok false means unbounded.
	Deadlines func() (stopBy, killBy time.Time, ok bool)
	// MaxContainment, if set, is the strongest containment the supervisor
	// may use: ContainCgroup, for instance, keeps the command out of a PID
	// namespace (for a command that must signal processes outside it by
	// pid), at the cost of what only a namespace guarantees. Empty means
	// the strongest the host allows.
	MaxContainment Containment
	// Logger receives a line saying which containment each command got,
	// and why a stronger one was not available; nil discards it.
	Logger *slog.Logger
}

func (s Spec) grace() time.Duration {
	if s.Grace <= 0 {
		return DefaultGrace
	}
	return s.Grace
}

// StopReason says why the supervisor signalled a command.
type StopReason string

const (
	// NotStopped: the command ended on its own.
	NotStopped StopReason = ""
	// StopRequested: the caller's context was cancelled.
	StopRequested StopReason = "stop requested"
	// StopDeadline: the last deadline the runner sent passed.
	StopDeadline StopReason = "deadline"
	// StopRunnerGone: the runner died (its end of the control pipe closed).
	StopRunnerGone StopReason = "runner gone"
)

// Result is how a supervised command ended.
type Result struct {
	// ExitCode is the command's exit status, or -1 if a signal ended it.
	ExitCode int `json:"exitCode"`
	// Signal is the signal that ended the command, if one did.
	Signal syscall.Signal `json:"signal,omitempty"`
	// Stopped is why the supervisor signalled the command, if it did.
	Stopped StopReason `json:"stopped,omitempty"`
	// TermSent and KillSent say which signals the supervisor sent to the
	// command's processes before the command exited.
	TermSent bool `json:"termSent,omitempty"`
	KillSent bool `json:"killSent,omitempty"`
	// KillAtDeadline: the SIGKILL came at the kill deadline, before the
	// grace was over (or without any SIGTERM).
	KillAtDeadline bool `json:"killAtDeadline,omitempty"`
	// Grace is the grace that was in force.
	Grace time.Duration `json:"grace,omitempty"`
	// Runtime is from the command's start to its exit.
	Runtime time.Duration `json:"runtime"`
	// StopTook is from the first signal the supervisor sent to the
	// command's exit.
	StopTook time.Duration `json:"stopTook,omitempty"`
	// Leftovers counts the processes the command left running when it
	// exited; the supervisor killed them (SIGTERM, then SIGKILL).
	Leftovers int `json:"leftovers,omitempty"`
	// Unkillable counts processes still there after SIGKILL when the
	// supervisor gave up on them (stuck in the kernel, e.g. on a dead NFS
	// mount). Zero unless something is badly wrong on the host.
	Unkillable int `json:"unkillable,omitempty"`
	// Containment is how the command's processes were held together.
	Containment Containment `json:"containment,omitempty"`
}

// Success reports whether the command exited 0 on its own.
func (r Result) Success() bool { return r.ExitCode == 0 && r.Signal == 0 && r.Stopped == NotStopped }

// Exit describes how the command's process ended, in os/exec's words
// ("exit status 3", "signal: terminated").
func (r Result) Exit() string {
	if r.Signal != 0 {
		return "signal: " + r.Signal.String()
	}
	return fmt.Sprintf("exit status %d", r.ExitCode)
}

// Run starts spec under a supervisor and waits for it; see Start.
func Run(ctx context.Context, spec Spec) (Result, error) {
	p, err := Start(ctx, spec)
	if err != nil {
		return Result{}, err
	}
	return p.Wait()
}
