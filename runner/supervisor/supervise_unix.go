//go:build unix

package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

// Exit codes of the supervisor process itself. The runner reads the
// outcome from the status pipe, not from these; they only help someone
// looking at the process table.
const (
	exitOK       = 0
	exitProtocol = 125
)

// stopTick is how often a stopping supervisor re-scans for processes to
// signal and reap: new ones may appear (forked, or re-parented to it) until
// the last one is gone.
const stopTick = 20 * time.Millisecond

// giveUpAfter is how long processes may survive SIGKILL before the
// supervisor stops waiting for them and reports them as unkillable.
const giveUpAfter = 2 * time.Second

// initReportsWithin bounds the wait for the init's first report (a loaded
// machine starting a Go binary: tens of milliseconds, rarely more).
const initReportsWithin = 10 * time.Second

// supervise is the supervisor process's main. argv is what follows modeArg.
// errDeadlinePassed is why a command whose deadline had passed before it
// started was not started.
const errDeadlinePassed = "not started: the lease's deadline had passed before the command could start"

func supervise(argv []string) int {
	setProcessName(supervisorName)
	// Pdeathsig, given to the command (or to the init of its namespace),
	// fires when the thread that forked it ends, not the process. This
	// goroutine does every fork; locked, it keeps its thread until the
	// process exits.
	runtime.LockOSThread()
	if len(argv) < 2 || argv[0] != "--" {
		fmt.Fprintln(os.Stderr, "auditflow supervisor: started without a command")
		return exitProtocol
	}
	args := argv[1:]
	ctl, st := os.NewFile(3, "control"), os.NewFile(4, "status")
	if ctl == nil || st == nil {
		fmt.Fprintln(os.Stderr, "auditflow supervisor: started without its pipes")
		return exitProtocol
	}
	// The command must not inherit the pipes: a process holding the
	// control pipe's read end is harmless, but one holding the status
	// pipe's write end would keep the runner from seeing this process die.
	syscall.CloseOnExec(3)
	syscall.CloseOnExec(4)
	_ = os.Unsetenv(modeEnv)

	// The runner decides when its change stops; a terminal's Ctrl-C or a
	// service manager's SIGTERM reaches it, and it tells us. The signals are
	// caught (and dropped), not ignored: an ignored signal stays ignored in
	// the command we exec, and a shell cannot even trap it then.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)

	in := bufio.NewReader(ctl)
	var first control
	if line, err := in.ReadBytes('\n'); err != nil {
		return exitOK // the runner died before it asked for anything
	} else if err := json.Unmarshal(line, &first); err != nil || first.Op != opStart {
		fmt.Fprintf(os.Stderr, "auditflow supervisor: bad first control line %q\n", line)
		return exitProtocol
	}

	s := &supervisor{self: os.Getpid(), grace: first.Grace, out: st}
	if first.MaxContainment.allows(ContainSubreaper) {
		// Best effort: without it (an old kernel, a seccomp filter, not
		// Linux) only the process group is covered, unless a namespace or
		// a cgroup holds the command.
		err := becomeSubreaper()
		s.subreaper = err == nil
		if err != nil && !errors.Is(err, errors.ErrUnsupported) {
			s.unavailable = append(s.unavailable, "subreaper: "+err.Error())
		}
	}
	if s.grace <= 0 {
		s.grace = DefaultGrace
	}
	if first.Bounded && first.StopIn <= 0 {
		// The runner was paused, or cut off, between deciding to run the
		// change and asking for it: its lease's deadline has passed, and
		// another runner may hold the lock by now. Start nothing.
		s.report(status{Ev: evDone, Err: errDeadlinePassed})
		return exitOK
	}
	if err := s.start(args, first.MaxContainment); err != nil {
		s.report(status{Ev: evDone, Err: err.Error()})
		return exitOK
	}
	started := status{Ev: evStarted, Pid: s.child, Containment: s.res.Containment, Unavailable: s.unavailable}
	if s.cg != nil {
		started.Cgroup = s.cg.dir
	}
	s.report(started)
	if first.Bounded {
		s.setDeadlines(first, time.Now())
	}

	msgs := make(chan control)
	go readControl(in, msgs) // ends with the process; it only ever blocks on the pipe
	s.loop(msgs, chld)
	s.cleanup(chld)
	if s.cg != nil {
		s.cg.remove()
	}
	s.report(status{Ev: evDone, Result: &s.res})
	return exitOK
}

// readControl forwards control lines; it closes msgs when the runner's
// end of the pipe closes, which is how the supervisor learns that the
// runner died, however it died.
func readControl(in *bufio.Reader, msgs chan<- control) {
	defer close(msgs)
	for {
		line, err := in.ReadBytes('\n')
		if err != nil {
			return
		}
		var c control
		if json.Unmarshal(line, &c) == nil {
			msgs <- c
		}
	}
}

type supervisor struct {
	self        int
	grace       time.Duration
	out         *os.File
	subreaper   bool     // orphaned descendants come to us, and descendants() sees them all
	unavailable []string // why stronger containments were not used

	child   int // the command; also its process group id (0: unknown)
	started time.Time

	// ContainPIDNamespace: the namespace's init, our only child, and its
	// reports (closed when it is gone).
	init     int
	initMsgs chan initReport
	initGone bool
	// ContainCgroup: the command's cgroup.
	cg *cgroup

	termAt, killAt time.Time // zero: not scheduled
	termSent       time.Time // zero: no SIGTERM yet
	killSent       bool
	exited         bool

	res Result
}

// start starts the command under the strongest containment that limit
// allows and the host offers, noting why each stronger one was not used.
// A failed attempt started nothing, so the next one is safe; only an init
// that failed after it had started the command ends the search.
func (s *supervisor) start(args []string, limit Containment) error {
	path, err := exec.LookPath(args[0]) // in the command's PATH: it is ours too
	if err != nil {
		return err
	}
	s.res.Grace = s.grace
	if limit.allows(ContainPIDNamespace) {
		retry, err := s.startInit(path, args)
		if err == nil || !retry {
			return err
		}
		s.unavailable = append(s.unavailable, "pid-namespace: "+err.Error())
	}
	if limit.allows(ContainCgroup) {
		cg, err := newCgroup()
		if err == nil {
			if err = s.forkCommand(path, args, cg.attr(childAttr())); err == nil {
				s.cg, s.res.Containment = cg, ContainCgroup
				return nil
			}
			cg.remove()
			err = fmt.Errorf("starting the command in it: %w", err)
		}
		s.unavailable = append(s.unavailable, "cgroup: "+err.Error())
	}
	s.res.Containment = ContainProcessGroup
	if s.subreaper {
		s.res.Containment = ContainSubreaper
	}
	return s.forkCommand(path, args, childAttr())
}

func (s *supervisor) forkCommand(path string, args []string, sys *syscall.SysProcAttr) error {
	attr := &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}, Sys: sys}
	// syscall.ForkExec rather than os/exec: the supervisor reaps every
	// child itself (wait4(-1), it is a subreaper), which os/exec's own Wait
	// would race with.
	pid, err := syscall.ForkExec(path, args, attr)
	if err != nil {
		return err
	}
	s.child, s.started = pid, time.Now()
	return nil
}

func (s *supervisor) report(st status) {
	b, _ := json.Marshal(st)
	// The runner may be dead or stopped; a lost report must not keep us
	// from cleaning up. The lines are small enough never to fill the pipe.
	_, _ = s.out.Write(append(b, '\n'))
}

// setDeadlines applies the runner's latest deadlines. Before SIGTERM they
// replace the old ones (a refreshed lease moves them forward); once the
// command is being stopped they may only bring the SIGKILL closer.
func (s *supervisor) setDeadlines(c control, now time.Time) {
	term, kill := now.Add(c.StopIn), now.Add(c.KillIn)
	if s.termSent.IsZero() {
		s.termAt, s.killAt = term, kill
		return
	}
	if kill.Before(s.killAt) {
		s.killAt, s.res.KillAtDeadline = kill, true
	}
}

// stop sends SIGTERM now (once) and schedules SIGKILL after grace, or at
// the kill deadline if that comes first.
func (s *supervisor) stop(why StopReason, grace time.Duration, now time.Time) {
	if s.res.Stopped == NotStopped {
		s.res.Stopped = why
	}
	if !s.termSent.IsZero() {
		s.killAt = earliest(s.killAt, now.Add(grace))
		return
	}
	s.termSent = now
	s.res.TermSent = true
	if !s.killAt.IsZero() && s.killAt.Before(now.Add(grace)) {
		s.res.KillAtDeadline = true
	} else {
		s.killAt = now.Add(grace)
	}
	s.signalAll(syscall.SIGTERM)
}

// loop runs until the command's main process has exited.
func (s *supervisor) loop(msgs <-chan control, chld <-chan os.Signal) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		s.reap(now)
		if s.exited {
			return
		}
		if !s.termAt.IsZero() && !now.Before(s.termAt) && s.termSent.IsZero() {
			s.stop(StopDeadline, s.grace, now)
		}
		if !s.killAt.IsZero() && !now.Before(s.killAt) {
			if !s.killSent {
				s.killSent, s.res.KillSent = true, true
				if s.res.Stopped == NotStopped {
					s.res.Stopped, s.res.KillAtDeadline = StopDeadline, true
				}
				if s.termSent.IsZero() {
					s.termSent = now // StopTook counts from the first signal
				}
			}
			s.signalAll(syscall.SIGKILL) // again each round: processes may appear until all are gone
		}
		timer.Reset(s.nextWake(now))
		select {
		case c, ok := <-msgs:
			if !ok {
				msgs = nil
				s.stop(StopRunnerGone, goneGrace, time.Now())
				continue
			}
			switch c.Op {
			case opDeadlines:
				s.setDeadlines(c, time.Now())
			case opStop:
				s.stop(StopRequested, s.grace, time.Now())
			}
		case r, ok := <-s.initMsgs:
			s.fromInit(r, ok, time.Now())
		case <-chld:
		case <-timer.C:
		}
	}
}

// fromInit takes one of the init's reports; ok false: the init is gone.
func (s *supervisor) fromInit(r initReport, ok bool, now time.Time) {
	if !ok {
		s.initMsgs = nil
		return
	}
	if r.Ev == evExited && !s.exited {
		s.commandExited(r.ExitCode, r.Signal, now)
	}
}

func (s *supervisor) nextWake(now time.Time) time.Duration {
	if s.killSent {
		return stopTick
	}
	// SIGCHLD wakes us when a child exits; the periodic wake-up is only a
	// safety net for a lost one.
	next := now.Add(time.Second)
	if s.termSent.IsZero() && !s.termAt.IsZero() {
		next = earliest(next, s.termAt)
	}
	if !s.killAt.IsZero() {
		next = earliest(next, s.killAt)
	}
	return max(next.Sub(now), 0)
}

// reap collects every exited child without blocking: the command's main
// process and whatever was re-parented to us; with a PID namespace, our only
// child, its init.
func (s *supervisor) reap(now time.Time) {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		switch {
		case s.init != 0 && pid == s.init:
			// The kernel killed the namespace's other processes before the
			// init could be reaped. Its reports are all in the socket now.
			s.initGone = true
			if s.initMsgs != nil {
				for r := range s.initMsgs {
					s.fromInit(r, true, now)
				}
				s.initMsgs = nil
			}
			if !s.exited { // killed with its namespace before the init could say
				s.commandExited(-1, syscall.SIGKILL, now)
			}
		case s.init == 0 && pid == s.child:
			sig := syscall.Signal(0)
			if ws.Signaled() {
				sig = ws.Signal()
			}
			s.commandExited(ws.ExitStatus(), sig, now)
		}
	}
}

func (s *supervisor) commandExited(code int, sig syscall.Signal, now time.Time) {
	s.exited = true
	s.res.Runtime = now.Sub(s.started)
	if !s.termSent.IsZero() {
		s.res.StopTook = now.Sub(s.termSent)
	}
	s.res.ExitCode, s.res.Signal = code, sig
}

// signalAll signals every process of the command. With a PID namespace
// that is one signal to its init: SIGTERM, which it forwards to every other
// process in the namespace, or SIGKILL, after which the kernel kills them
// all. With a cgroup, SIGKILL is cgroup.kill. Otherwise the command's
// process group and, where the system lets us find them, the descendants
// that left it: only while the main process is unreaped is its group id
// sure to be the command's, as a reaped leader's id may be reused.
func (s *supervisor) signalAll(sig syscall.Signal) {
	if s.init != 0 {
		if !s.initGone {
			_ = syscall.Kill(s.init, sig)
		}
		return
	}
	if sig == syscall.SIGKILL && s.cg != nil && s.cg.kill() == nil {
		return
	}
	if !s.exited {
		_ = syscall.Kill(-s.child, sig)
	}
	for _, p := range descendants(s.self) {
		if s.exited || p.pgid != s.child { // the group kill reached the others
			_ = syscall.Kill(p.pid, sig)
		}
	}
}

// members lists the command's live processes other than its main one (and
// the init): after the main process exited, what it left.
func (s *supervisor) members() []proc {
	if s.init != 0 {
		if s.initGone {
			return nil
		}
		return descendants(s.init)
	}
	return descendants(s.self)
}

// cleanup runs after the command's main process has exited: whatever it
// left running gets SIGTERM, then SIGKILL, until nothing is left.
func (s *supervisor) cleanup(chld <-chan os.Signal) {
	now := time.Now()
	killAt := now.Add(leftoverGrace)
	if s.killSent || (!s.killAt.IsZero() && s.killAt.Before(now)) {
		killAt = now
	} else if !s.killAt.IsZero() {
		killAt = earliest(killAt, s.killAt)
	}
	if s.leftGroup() {
		// On systems where descendants cannot be listed, the group is all
		// we can see; its id is still safe to use for a moment after the
		// leader was reaped (it stays reserved while any member lives).
		s.res.Leftovers = 1
		_ = syscall.Kill(-s.child, syscall.SIGTERM)
	}
	termed := map[int]bool{} // counted as leftovers, and sent SIGTERM if it was still time
	tick := time.NewTicker(stopTick)
	defer tick.Stop()
	for {
		now := time.Now()
		s.reap(now)
		left := s.members()
		group := s.leftGroup()
		// The init exits by itself once its namespace is empty.
		if len(left) == 0 && !group && (s.init == 0 || s.initGone) {
			return
		}
		killing := !now.Before(killAt)
		for _, p := range left {
			if !termed[p.pid] {
				termed[p.pid] = true
				s.res.Leftovers++
				if !killing {
					_ = syscall.Kill(p.pid, syscall.SIGTERM)
				}
			}
		}
		if killing {
			switch {
			case s.init != 0:
				s.signalAll(syscall.SIGKILL)
			case s.cg != nil && s.cg.kill() == nil:
			default:
				if group {
					_ = syscall.Kill(-s.child, syscall.SIGKILL)
				}
				for _, p := range left {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
			}
			if now.Sub(killAt) > giveUpAfter {
				s.res.Unkillable = len(left)
				if group {
					s.res.Unkillable++
				}
				return
			}
		}
		select {
		case r, ok := <-s.initMsgs:
			s.fromInit(r, ok, time.Now())
		case <-chld:
		case <-tick.C:
		}
	}
}

// leftGroup reports whether the command's process group still has
// members, on systems where that is the only way to see leftovers.
func (s *supervisor) leftGroup() bool {
	if s.subreaper || s.init != 0 || s.child <= 0 {
		return false // descendants() sees every member, without the pid-reuse risk
	}
	return syscall.Kill(-s.child, 0) == nil
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
