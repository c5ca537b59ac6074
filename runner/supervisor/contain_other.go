//go:build unix && !linux

package supervisor

import (
	"errors"
	"syscall"
)

// Neither PID namespaces nor cgroups exist here (macOS, the BSDs): the
// supervisor holds the command's process group only.

func setProcessName(string) {}

func (*supervisor) startInit(string, []string) (retry bool, err error) {
	return true, errors.ErrUnsupported
}

type cgroup struct{ dir string }

func newCgroup() (*cgroup, error) { return nil, errors.ErrUnsupported }

func (*cgroup) attr(a *syscall.SysProcAttr) *syscall.SysProcAttr { return a }
func (*cgroup) kill() error                                      { return errors.ErrUnsupported }
func (*cgroup) remove()                                          {}

func killCgroup(string) {}

// initMain is never reached here: the supervisor starts no init.
func initMain([]string) int { return exitProtocol }
