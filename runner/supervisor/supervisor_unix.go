//go:build unix

package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A process is a supervisor only if both its first argument and its
// environment say so: a stray argument alone (an operator typing it) or an
// inherited variable alone (a change command that runs another auditflow
// binary) must not turn a program into a supervisor.
const (
	modeArg         = "__auditflow_supervise"
	initArg         = "__auditflow_init" // the init of a command's PID namespace
	modeEnv         = "AUDITFLOW_SUPERVISOR_PROTOCOL"
	protocolVersion = "1"
)

// Process names. The supervisor is the runner's binary re-executed, but a
// `killall runner` or `pkill runner` must spare it, so that it can still
// end the change: it renames itself (the kernel's 15-character comm, which
// ps, top, killall and pkill show and match; Linux), and its argv[0], which
// ps and pkill -f show, is not the runner's path either.
const (
	supervisorName  = "auditflow-super"
	initName        = "auditflow-init"
	supervisorArgv0 = "auditflow-supervisor"
)

// pollEvery is how often the runner side reads Spec.Deadlines. Lease
// refreshes are seconds apart, so a tenth of a second loses nothing.
const pollEvery = 100 * time.Millisecond

// outputDrain bounds how long Wait waits for the command's output after
// the supervisor has exited: on systems without a subreaper a process that
// escaped the process group may still hold the output pipe, and so may the
// command's processes for a moment if the supervisor was killed.
const outputDrain = 2 * time.Second

var installed atomic.Bool

// Main must be the first call in main() of a binary that runs supervised
// commands (and in TestMain of tests that do). In a process started by
// Start it runs the supervisor and exits; otherwise it records that this
// binary can be re-executed as a supervisor and returns.
func Main() {
	// Reading the environment here, not in library code proper: Main is the
	// process's entry point, like a main function.
	if len(os.Args) > 1 && (os.Args[1] == modeArg || os.Args[1] == initArg) {
		if v, _ := os.LookupEnv(modeEnv); v == protocolVersion {
			if os.Args[1] == initArg {
				os.Exit(initMain(os.Args[2:]))
			}
			os.Exit(supervise(os.Args[2:]))
		}
	}
	installed.Store(true)
}

// Installed reports whether Main has been called in this process, that is
// whether Start may re-execute this binary as a supervisor. On systems
// without a supervisor (Windows) it is always false.
func Installed() bool { return installed.Load() }

// Process is a command running under a supervisor process.
type Process struct {
	spec   Spec
	cmd    *exec.Cmd
	out    *output
	ctl    *os.File // the only write end of the control pipe
	status *bufio.Reader
	stFile *os.File
	cmdPid int
	// How the command is held, as the supervisor reported it, and its
	// cgroup if it has one (killed here if the supervisor dies).
	containment Containment
	cgroup      string

	ctlMu sync.Mutex

	done   chan struct{}
	result Result
	err    error
}

// Start re-executes this binary as a supervisor, which starts spec.Args in
// a new process group and reports back. The supervisor sends the command
// SIGTERM, then SIGKILL after the grace, when ctx is cancelled (the
// cancellation's cause is the caller's to report), when spec.Deadlines
// passes, or at once when this process dies; see the package doc.
//
// Start returns once the command runs (or failed to start). Wait must be
// called to release the supervisor.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if !Installed() {
		return nil, ErrNotInstalled
	}
	if len(spec.Args) == 0 {
		return nil, errors.New("supervisor: no command")
	}
	if err := spec.MaxContainment.validate(); err != nil {
		return nil, err
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err // nothing started: better than starting it to stop it at once
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("supervisor: find own binary: %w", err)
	}
	// os.Pipe makes both ends close-on-exec: no other child of this process
	// inherits the control pipe's write end, so its EOF in the supervisor
	// means exactly "this process is gone".
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	stR, stW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	cmd := exec.Command(exe, append([]string{modeArg, "--"}, spec.Args...)...)
	cmd.Args[0] = supervisorArgv0
	env := spec.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(slices.Clip(env), modeEnv+"="+protocolVersion)
	cmd.Dir = spec.Dir
	out, err := newOutput(spec.Stdout, spec.Stderr)
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		stR.Close()
		stW.Close()
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out.stdout, out.stderr
	cmd.ExtraFiles = []*os.File{ctlR, stW}
	// Its own process group: a signal for the runner's job (Ctrl-C, or
	// `kill -9 -PGID` of the whole job) must not reach the supervisor,
	// which has to outlive the runner to clean up after it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	p := &Process{spec: spec, cmd: cmd, out: out, ctl: ctlW, stFile: stR, status: bufio.NewReader(stR), done: make(chan struct{})}
	first := control{Op: opStart, Grace: spec.grace(), MaxContainment: spec.MaxContainment}
	if spec.Deadlines != nil {
		if stopBy, killBy, ok := spec.Deadlines(); ok {
			first.Bounded, first.StopIn, first.KillIn = true, until(stopBy), until(killBy)
		}
	}
	// Written before the supervisor starts: it fits in the pipe's buffer,
	// and the supervisor reads it before it starts the command.
	if err := p.send(first); err != nil {
		ctlR.Close()
		ctlW.Close()
		stR.Close()
		stW.Close()
		out.closeWriters()
		out.wait(0)
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	err = cmd.Start()
	ctlR.Close()
	stW.Close()
	out.closeWriters()
	if err != nil {
		ctlW.Close()
		stR.Close()
		out.wait(0)
		return nil, fmt.Errorf("supervisor: start: %w", err)
	}
	st, err := p.readStatus()
	switch {
	case err == nil && st.Ev == evStarted:
		p.cmdPid, p.containment, p.cgroup = st.Pid, st.Containment, st.Cgroup
		logContainment(spec.Logger, st)
	case err == nil && st.Ev == evDone && st.Err != "":
		p.finish(nil)
		return nil, fmt.Errorf("supervisor: start %s: %s", spec.Args[0], st.Err)
	default:
		// Killed before it could tell the command's pid (which leaves the
		// command's group to Pdeathsig on Linux), or crashed.
		return nil, p.finish(nil)
	}
	go p.watch(ctx)
	return p, nil
}

// Pid is the supervisor's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// CommandPid is the command's process id, which is also its process group
// id (0 in the rare case that the init of its PID namespace could not find
// it in /proc).
func (p *Process) CommandPid() int { return p.cmdPid }

// Containment is how the command's processes are held together.
func (p *Process) Containment() Containment { return p.containment }

// Done is closed when the supervisor has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the supervisor to exit and returns how the command ended.
// A non-nil error means the supervisor itself failed (ErrSupervisorDied);
// a failing command is a Result, not an error.
func (p *Process) Wait() (Result, error) {
	<-p.done
	return p.result, p.err
}

func until(t time.Time) time.Duration { return max(time.Until(t), 0) }

// fellBack is set once this process has said, at Info, that a command got
// less than the strongest containment: the host will not change, so each
// later command says it at Debug only.
var fellBack atomic.Bool

func logContainment(log *slog.Logger, st status) {
	if log == nil {
		return
	}
	level := slog.LevelDebug
	if len(st.Unavailable) > 0 && !fellBack.Swap(true) {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "supervisor: change command contained", "containment", st.Containment, "unavailable", st.Unavailable)
}

// watch is the runner's half: it forwards cancellation and deadline
// changes until the supervisor exits, then collects the outcome.
func (p *Process) watch(ctx context.Context) {
	results := make(chan status, 1)
	go func() { // ends at EOF: when the supervisor exits
		defer close(results)
		for {
			st, err := p.readStatus()
			if err != nil {
				return
			}
			if st.Ev == evDone {
				results <- st
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()

	var tick <-chan time.Time
	var last [2]time.Time
	if p.spec.Deadlines != nil {
		// The first deadlines were read only once the supervisor had
		// started, late by its start-up time: send them again now, measured
		// from now.
		if stopBy, killBy, ok := p.spec.Deadlines(); ok {
			last = [2]time.Time{stopBy, killBy}
			_ = p.send(control{Op: opDeadlines, Bounded: true, StopIn: until(stopBy), KillIn: until(killBy)})
		}
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		tick = t.C
	}
	cancelled := ctx.Done()
	var final *status
	var werr error
loop:
	for {
		select {
		case <-cancelled:
			cancelled = nil
			_ = p.send(control{Op: opStop}) // if it fails the supervisor is gone; exited says how
		case <-tick:
			stopBy, killBy, ok := p.spec.Deadlines()
			if ok && (!stopBy.Equal(last[0]) || !killBy.Equal(last[1])) {
				last = [2]time.Time{stopBy, killBy}
				_ = p.send(control{Op: opDeadlines, Bounded: true, StopIn: until(stopBy), KillIn: until(killBy)})
			}
		case st, ok := <-results:
			if !ok {
				results = nil
				continue
			}
			final = &st
		case werr = <-exited:
			break loop
		}
	}
	// The status pipe's write end died with the supervisor (the command's
	// processes never had it), so EOF comes at once; the deadline only
	// guards against the impossible.
	_ = p.stFile.SetReadDeadline(time.Now().Add(time.Second))
	if results != nil {
		for st := range results {
			final = &st
		}
	}
	p.finishWith(final, werr)
}

// finish waits for a supervisor that failed during Start. Closing the
// control pipe first tells one that is somehow still running to clean up
// and exit.
func (p *Process) finish(final *status) error {
	p.ctl.Close()
	werr := p.cmd.Wait()
	p.finishWith(final, werr)
	return p.err
}

func (p *Process) finishWith(final *status, werr error) {
	p.ctl.Close()
	p.stFile.Close()
	if final != nil && final.Result != nil {
		p.result = *final.Result
	} else {
		if werr == nil {
			werr = errors.New("exited without reporting the command's outcome")
		}
		p.err = fmt.Errorf("%w: %w", ErrSupervisorDied, werr)
		// The supervisor cannot clean up any more. A PID namespace died
		// with it: the kernel killed its init, and so every process in it.
		// A cgroup is killed here, and so is a bare process group (its
		// escaped descendants, if any, were re-parented to init; nothing
		// can find them now).
		switch {
		case p.containment == ContainPIDNamespace:
		case p.cgroup != "":
			killCgroup(p.cgroup)
		case p.cmdPid > 0:
			_ = syscall.Kill(-p.cmdPid, syscall.SIGKILL)
		}
	}
	p.out.wait(outputDrain)
	close(p.done)
}

// send writes one control line. The write deadline keeps a stopped
// supervisor (its pipe full) from blocking the runner.
func (p *Process) send(c control) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	_ = p.ctl.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = p.ctl.Write(append(b, '\n'))
	return err
}

func (p *Process) readStatus() (status, error) {
	line, err := p.status.ReadBytes('\n')
	if err != nil {
		return status{}, err
	}
	var st status
	if err := json.Unmarshal(line, &st); err != nil {
		return status{}, fmt.Errorf("supervisor: bad status line %q: %w", line, err)
	}
	return st, nil
}

// output connects the supervisor's stdout and stderr to the caller's
// writers through pipes of its own rather than os/exec's: exec's Wait would
// not return before every process holding the pipes is gone, and Process
// needs to know as soon as the supervisor itself is (to kill what it left).
type output struct {
	stdout, stderr *os.File // given to the supervisor
	writers        []*os.File
	readers        []*os.File
	copies         sync.WaitGroup
}

func newOutput(stdout, stderr io.Writer) (*output, error) {
	o := &output{}
	var err error
	if o.stdout, err = o.pipe(stdout); err != nil {
		o.closeWriters()
		o.wait(0)
		return nil, err
	}
	if sameWriter(stdout, stderr) {
		o.stderr = o.stdout
	} else if o.stderr, err = o.pipe(stderr); err != nil {
		o.closeWriters()
		o.wait(0)
		return nil, err
	}
	return o, nil
}

func (o *output) pipe(w io.Writer) (*os.File, error) {
	if w == nil {
		return nil, nil // os/exec connects /dev/null
	}
	if f, ok := w.(*os.File); ok {
		return f, nil
	}
	r, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	o.writers, o.readers = append(o.writers, pw), append(o.readers, r)
	o.copies.Go(func() { _, _ = io.Copy(w, r) })
	return pw, nil
}

// closeWriters closes this process's copies of the write ends, once the
// supervisor has its own.
func (o *output) closeWriters() {
	for _, w := range o.writers {
		w.Close()
	}
}

// wait waits for the output to be copied, at most d once the command's
// processes should be gone; then it gives up on whoever still holds a pipe.
func (o *output) wait(d time.Duration) {
	done := make(chan struct{})
	go func() {
		o.copies.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	for _, r := range o.readers {
		r.Close() // ends the copies that were still blocked
	}
	<-done
}

// sameWriter reports whether stdout and stderr are the same writer (one
// pipe then keeps their order). Writers of uncomparable types are not.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a != nil && a == b
}
