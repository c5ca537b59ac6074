//go:build unix && !linux

package supervisor

import (
	"errors"
	"syscall"
)

// becomeSubreaper fails: without /proc and a subreaper (macOS, the BSDs)
// the supervisor only sees the command's process group.
func becomeSubreaper() error { return errors.ErrUnsupported }

func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

type proc struct {
	pid, pgid int
}

func descendants(int) []proc { return nil }
