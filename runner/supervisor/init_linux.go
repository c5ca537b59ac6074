package supervisor

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// initMain is the main of the init, the first process of a command's PID
// namespace (ContainPIDNamespace), which the supervisor starts with a socket
// on fd 3. argv is what follows initArg: "--", the program's path, then its
// arguments, argv[0] included.
//
// A namespace's first process is special: the kernel delivers to it only
// the signals it handles, its namespace's orphans are re-parented to it,
// and when it dies the kernel kills every other process in the namespace.
// So the init:
//
//   - starts the command in a process group of its own and reports its pid
//     (as the supervisor sees it) and, later, how it exited;
//   - forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to
//     every other process in the namespace: the supervisor stops a command
//     by sending SIGTERM to the init, and the command's shell, which is not
//     the namespace's first process, keeps its default signal handling;
//   - reaps every process that ends, the orphans included;
//   - exits once the command has exited and nothing else is left, or at
//     once when the supervisor is gone (EOF on the socket: a backstop for
//     the SIGKILL that Pdeathsig sends it), taking the namespace with it.
func initMain(argv []string) int {
	setProcessName(initName)
	if len(argv) < 2 || argv[0] != "--" {
		fmt.Fprintln(os.Stderr, "auditflow init: started without a command")
		return exitProtocol
	}
	sock := os.NewFile(3, "supervisor")
	if sock == nil {
		fmt.Fprintln(os.Stderr, "auditflow init: started without its socket")
		return exitProtocol
	}
	syscall.CloseOnExec(3)
	_ = os.Unsetenv(modeEnv)

	fwd := make(chan os.Signal, 8)
	signal.Notify(fwd, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	gone := make(chan struct{})
	go func() { // ends with the process, or when the supervisor is gone
		_, _ = io.Copy(io.Discard, sock)
		close(gone)
	}()

	enc := json.NewEncoder(sock)
	report := func(r initReport) { _ = enc.Encode(r) } // a lost report: the supervisor is gone, and so are we soon
	attr := &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}, Sys: &syscall.SysProcAttr{Setpgid: true}}
	cmd, err := syscall.ForkExec(argv[1], argv[2:], attr)
	if err != nil {
		report(initReport{Ev: evDone, Err: err.Error()})
		return exitOK
	}
	report(initReport{Ev: evStarted, Pid: hostPid(cmd)})
	exited := false
	for {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.ECHILD && exited {
				return exitOK // the namespace is empty
			}
			if err != nil || pid <= 0 {
				break
			}
			if pid == cmd {
				exited = true
				r := initReport{Ev: evExited, ExitCode: ws.ExitStatus()}
				if ws.Signaled() {
					r.Signal = ws.Signal()
				}
				report(r)
			}
		}
		select {
		case sig := <-fwd:
			// kill(-1) from a namespace's first process reaches every
			// process in the namespace but itself.
			_ = syscall.Kill(-1, sig.(syscall.Signal))
		case <-chld:
		case <-gone:
			return exitOK
		}
	}
}
