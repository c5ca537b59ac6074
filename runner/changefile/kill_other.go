//go:build !unix

package changefile

import (
	"os"
	"os/exec"
	"syscall"
)

// hasSIGTERM is false: stopping a command kills it at once.
const hasSIGTERM = false

// newGroup does nothing: there are no process groups to signal here.
func newGroup(*exec.Cmd) {}

// signalGroup kills the command's process: this system has no SIGTERM, so
// a stopped command gets no grace, and the processes it started are not
// reached.
func signalGroup(cmd *exec.Cmd, _ syscall.Signal) { _ = cmd.Process.Kill() }

func exitSignal(*os.ProcessState) syscall.Signal { return 0 }

func killLeftovers(*exec.Cmd) bool { return false }
