package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// startInit starts the command under an init in a new PID namespace and
// waits for the init to report it running. retry says that nothing was
// started (the namespace could not be created), so that another
// containment may be tried.
func (s *supervisor) startInit(path string, args []string) (retry bool, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return true, err
	}
	// /proc/self/exe, not os.Executable's path: the very binary that runs
	// here, even if an upgrade replaced the file since.
	argv := append([]string{initName, initArg, "--", path}, args...)
	env := append(os.Environ(), modeEnv+"="+protocolVersion)
	pid, err := syscall.ForkExec("/proc/self/exe", argv, &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2, uintptr(fds[1])}, Sys: namespaceAttr()})
	syscall.Close(fds[1])
	if err != nil {
		syscall.Close(fds[0])
		return true, err
	}
	_ = syscall.SetNonblock(fds[0], true) // for the read deadline
	sock := os.NewFile(uintptr(fds[0]), "init")
	in := bufio.NewReader(sock)
	_ = sock.SetReadDeadline(time.Now().Add(initReportsWithin))
	var first initReport
	line, err := in.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &first)
	}
	_ = sock.SetReadDeadline(time.Time{})
	switch {
	case err == nil && first.Ev == evStarted:
	case err == nil && first.Ev == evDone:
		waitFor(pid) // the init exits at once
		sock.Close()
		return false, errors.New(first.Err)
	default:
		// The init died or hung before it said whether the command runs:
		// it may have run for a moment, so it is not started again.
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitFor(pid)
		sock.Close()
		if err == nil {
			err = fmt.Errorf("unexpected report %q", line)
		}
		return false, fmt.Errorf("the namespace's init failed: %w", err)
	}
	s.init, s.child, s.started = pid, first.Pid, time.Now()
	s.res.Containment = ContainPIDNamespace
	s.initMsgs = make(chan initReport, 4)
	go readInit(in, s.initMsgs, sock) // ends when the init is gone
	return false, nil
}

func readInit(in *bufio.Reader, msgs chan<- initReport, sock *os.File) {
	defer sock.Close()
	defer close(msgs)
	for {
		line, err := in.ReadBytes('\n')
		if err != nil {
			return
		}
		var r initReport
		if json.Unmarshal(line, &r) == nil {
			msgs <- r
		}
	}
}

func waitFor(pid int) {
	for {
		if _, err := syscall.Wait4(pid, nil, 0, nil); err != syscall.EINTR {
			return
		}
	}
}
