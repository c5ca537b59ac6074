//go:build unix

package changefile

import (
	"os"
	"os/exec"
	"syscall"
)

const hasSIGTERM = true

// newGroup puts the command in its own process group, so that stopping it
// reaches the processes it started too.
func newGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func signalGroup(cmd *exec.Cmd, sig syscall.Signal) {
	_ = syscall.Kill(-cmd.Process.Pid, sig)
}

func exitSignal(st *os.ProcessState) syscall.Signal {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal()
	}
	return 0
}

// killLeftovers kills what the command left running in its group and
// reports whether there was anything. Right after the leader was reaped
// its group id cannot have been reused while members remain.
func killLeftovers(cmd *exec.Cmd) bool {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) == nil
}
