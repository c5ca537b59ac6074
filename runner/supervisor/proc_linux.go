package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from <linux/prctl.h>
// (Linux 3.4+); the syscall package does not name it.
const prSetChildSubreaper = 36

// becomeSubreaper makes orphaned descendants (a double fork, setsid, a
// daemonizing tool) re-parent to the supervisor instead of init, so they
// stay findable and killable after they left the process group.
func becomeSubreaper() error {
	_, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0, 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// childAttr starts the command in its own process group, and has the
// kernel SIGKILL it should the supervisor die (kill -9): the runner then
// kills what is left of the group. (Pdeathsig follows the thread that
// forked; Go only ends threads of goroutines that locked them, which the
// supervisor never does.)
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

type proc struct {
	pid, pgid int
}

// descendants lists the live (not zombie) descendants of root, from one
// scan of /proc. The scan is not atomic: a process forked during it may be
// missed, which is why callers scan again until nothing is found.
func descendants(root int) []proc {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	type entry struct {
		ppid, pgid int
		zombie     bool
	}
	all := make(map[int]entry, len(names))
	children := map[int][]int{}
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/stat")
		if err != nil {
			continue // gone since the listing
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces and
		// parentheses, so parse after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(string(f[1]))
		pgid, err2 := strconv.Atoi(string(f[2]))
		if err1 != nil || err2 != nil {
			continue
		}
		all[pid] = entry{ppid: ppid, pgid: pgid, zombie: f[0][0] == 'Z' || f[0][0] == 'X'}
		children[ppid] = append(children[ppid], pid)
	}
	var out []proc
	queue := children[root]
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		e := all[pid]
		if !e.zombie {
			out = append(out, proc{pid: pid, pgid: e.pgid})
		}
		queue = append(queue, children[pid]...)
	}
	return out
}
