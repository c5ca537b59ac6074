//go:build unix

package changefile

import (
	"os/exec"
	"syscall"
)

// configureKill puts the command in its own process group and makes
// cancellation kill the group, so a timed-out script's children die too.
func configureKill(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
