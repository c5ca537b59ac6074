//go:build unix

package proctest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
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

// CopyExecutable copies the executable src to dst (mode 0755, which must
// not exist yet): a binary under a name of the test's own, to start or to
// kill by name.
func CopyExecutable(t testing.TB, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
