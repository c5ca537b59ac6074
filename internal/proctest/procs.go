//go:build unix

package proctest

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
)

// Pids lists the processes in /proc (none without it).
func Pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// Comm returns a process's kernel name (its comm) and parent from /proc,
// "" and 0 if there is no such process.
func Comm(pid int) (comm string, ppid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0
	}
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return "", 0
	}
	if f := bytes.Fields(b[j+1:]); len(f) > 1 {
		ppid, _ = strconv.Atoi(string(f[1]))
	}
	return string(b[i+1 : j]), ppid
}

// WithToken lists the live processes, this one aside, whose command line
// contains token: a unique string a test put there to find its own.
func WithToken(token string) []int {
	var out []int
	for _, pid := range Pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte(token)) && pid != os.Getpid() && Running(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// Sleepers lists the live `sleep <duration>` processes: a test's
// background children, found by a duration nothing else uses.
func Sleepers(duration string) []int {
	return slices.DeleteFunc(WithToken(duration), func(pid int) bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return !bytes.Equal(b, []byte("sleep\x00"+duration+"\x00"))
	})
}
