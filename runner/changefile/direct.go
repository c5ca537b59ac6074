package changefile

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/auditflow/auditflow/runner/supervisor"
)

// outputDrain bounds how long runDirect waits for the command's output
// once it has exited and its group was killed: a process that left the
// group may hold the pipe indefinitely.
const outputDrain = 2 * time.Second

// runDirect runs spec as a child of this process, without a supervisor
// (the binary's main did not install one, or the system has none). It
// stops the command as a supervisor would while this process lives — SIGTERM
// to the group on cancellation, SIGKILL after the grace or at the kill
// deadline — but nothing stops it if this process is killed or paused.
func runDirect(ctx context.Context, spec supervisor.Spec) (supervisor.Result, error) {
	grace := spec.Grace
	if grace <= 0 {
		grace = supervisor.DefaultGrace
	}
	res := supervisor.Result{Grace: grace}
	out := spec.Stdout
	if out == nil {
		out = io.Discard
	}
	// Output through a pipe of our own rather than os/exec's copying: Wait
	// then returns when the command exits, not when the last process that
	// inherited its output does, and what it left behind can be killed.
	pr, pw, err := os.Pipe()
	if err != nil {
		return res, err
	}
	cmd := exec.Command(spec.Args[0], spec.Args[1:]...)
	cmd.Dir, cmd.Env = spec.Dir, spec.Env
	cmd.Stdout, cmd.Stderr = pw, pw
	newGroup(cmd)
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return res, err
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, pr)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	start := time.Now()
	var termSent time.Time
	var killC <-chan time.Time
	cancelled := ctx.Done()
	var werr error
loop:
	for {
		select {
		case <-cancelled:
			cancelled = nil
			termSent = time.Now()
			res.TermSent, res.KillSent, res.Stopped = hasSIGTERM, !hasSIGTERM, supervisor.StopRequested
			wait := grace
			if spec.Deadlines != nil {
				if _, killBy, ok := spec.Deadlines(); ok && time.Until(killBy) < wait {
					wait, res.KillAtDeadline = max(time.Until(killBy), 0), true
				}
			}
			signalGroup(cmd, syscall.SIGTERM)
			t := time.NewTimer(wait)
			defer t.Stop()
			killC = t.C
		case <-killC:
			killC = nil
			res.KillSent = true
			signalGroup(cmd, syscall.SIGKILL)
		case werr = <-exited:
			break loop
		}
	}
	res.Runtime = time.Since(start)
	if !termSent.IsZero() {
		res.StopTook = time.Since(termSent)
	}
	var exitErr *exec.ExitError
	if werr != nil && !errors.As(werr, &exitErr) {
		pr.Close()
		<-copied
		return res, werr
	}
	res.ExitCode = cmd.ProcessState.ExitCode()
	res.Signal = exitSignal(cmd.ProcessState)
	if killLeftovers(cmd) {
		res.Leftovers = 1 // at least one; the group is all this path can see
	}
	select {
	case <-copied:
	case <-time.After(outputDrain):
		pr.Close()
		<-copied
	}
	pr.Close()
	return res, nil
}
