package runner

import (
	"context"
	"time"
)

// Execution is what a change's Apply is told about the execution it runs
// in. The runner puts it in Apply's context; ExecutionFrom reads it.
type Execution struct {
	Pipeline    string
	ChangeID    string
	ExecutionID string
	// LockToken is the fencing token of the pipeline lease this execution
	// runs under. It grows with every new holder, so a target system that
	// remembers the highest token it has seen can refuse a write from a
	// holder whose lease has passed to another (see examples/fencing).
	LockToken uint64
	// Bounds reports the execution's current deadlines (see Deadlines);
	// nil when no lease bounds the execution. The runner sets it from its
	// lease.
	Bounds func() (stopBy, killBy time.Time)
}

// Deadlines returns when the runner cancels Apply's context unless the
// lease is refreshed first (stopBy), and when every process of the change
// must be gone (killBy), which is still before another runner could take
// the lock. Both move forward with each refresh; ok is false when no lease
// bounds the execution.
//
// A supervisor that can no longer hear from the runner (it was paused or
// partitioned) enforces the last values it was given: that is what keeps a
// change from outliving its lease when its runner cannot stop it.
func (e *Execution) Deadlines() (stopBy, killBy time.Time, ok bool) {
	if e == nil || e.Bounds == nil {
		return time.Time{}, time.Time{}, false
	}
	stopBy, killBy = e.Bounds()
	return stopBy, killBy, true
}

type executionKey struct{}

// WithExecution returns a context carrying e, for code that runs changes
// outside a Runner (tests, custom drivers).
func WithExecution(ctx context.Context, e *Execution) context.Context {
	return context.WithValue(ctx, executionKey{}, e)
}

// ExecutionFrom returns the execution an Apply or Rollback context belongs
// to.
func ExecutionFrom(ctx context.Context) (*Execution, bool) {
	e, ok := ctx.Value(executionKey{}).(*Execution)
	return e, ok && e != nil
}

// LockToken returns the fencing token of the execution ctx belongs to, or
// 0 outside one.
func LockToken(ctx context.Context) uint64 {
	if e, ok := ExecutionFrom(ctx); ok {
		return e.LockToken
	}
	return 0
}

// leaseDeadlines maps a lease to an execution's deadlines: stop when the
// lease says so (Margin before it could expire), and kill halfway between
// that and the expiry, leaving the change's processes time to die and the
// supervisor's clock a safety margin before another runner can get in.
func leaseDeadlines(l interface {
	StopBy() time.Time
	Expiry() time.Time
}) func() (time.Time, time.Time) {
	return func() (time.Time, time.Time) {
		stop, expiry := l.StopBy(), l.Expiry()
		return stop, stop.Add(expiry.Sub(stop) / 2)
	}
}
