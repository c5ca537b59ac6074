//go:build unix

// Package proctest helps tests that run real processes and kill, pause or
// wait for them: the runner, the supervisor and change commands. It tells
// a live process from a zombie (which kill(pid, 0) does not), finds a
// process's descendants and the members of a process group on Linux, and
// collects output that a test reads while the process still writes it.
package proctest

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Buffer is an output writer a test may read while a process writes it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WaitFor polls cond until it holds and returns how long that took, or
// fails the test after timeout.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// ReadPid waits for a file holding a pid and a newline (a script's
// `echo $$ > file`) and returns the pid.
func ReadPid(t testing.TB, path string) int {
	t.Helper()
	var pid int
	WaitFor(t, path, 5*time.Second, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

// stat returns the state letter, parent and process group of pid from
// /proc; ok is false if there is no such process (or no /proc).
func stat(pid int) (state byte, ppid, pgid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 {
		return 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(string(f[1]))
	pgid, _ = strconv.Atoi(string(f[2]))
	return f[0][0], ppid, pgid, true
}

func dead(state byte) bool { return state == 'Z' || state == 'X' }

// Running reports whether pid is a live process: a zombie is dead.
// Without /proc (not Linux) kill(pid, 0) is all there is.
func Running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	st, _, _, ok := stat(pid)
	if !ok {
		return runtime.GOOS != "linux"
	}
	return !dead(st)
}

// GroupRunning reports whether process group pgid has a live member.
func GroupRunning(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	if runtime.GOOS != "linux" {
		return true
	}
	found := false
	eachProc(func(pid int, st byte, _, pg int) {
		if pg == pgid && !dead(st) {
			found = true
		}
	})
	return found
}

// Tree returns pid's live descendants, children before their children
// (Linux; none elsewhere).
func Tree(pid int) []int {
	kids := map[int][]int{}
	eachProc(func(p int, st byte, ppid, _ int) {
		if !dead(st) {
			kids[ppid] = append(kids[ppid], p)
		}
	})
	var out []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		out = append(out, kids[queue[0]]...)
		queue = append(queue, kids[queue[0]]...)
	}
	return out
}

func eachProc(f func(pid int, state byte, ppid, pgid int)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ppid, pgid, ok := stat(pid); ok {
			f(pid, st, ppid, pgid)
		}
	}
}

// PeakRSSKB reads this process's peak resident set size in KiB (VmHWM;
// Linux), or -1 where it cannot: memory benchmarks run in a child process
// that reports it.
func PeakRSSKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// SampleHeap samples this process's in-use Go heap every interval until
// the returned function is called, which stops sampling and returns the
// peak seen (memory benchmarks report it beside PeakRSSKB).
func SampleHeap(interval time.Duration) (peak func() uint64) {
	var top uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			top = max(top, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-done
		return top
	}
}

// CPUTime is the CPU time (user and system) this process has used, 0 if
// the system cannot say: benchmarks compare what two pipelines cost in it,
// which others' load on the machine moves less than wall-clock time.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ReportLoad reports the 1-minute load average as b's metric load1: the
// machine's other work while measuring, which the benchmarks' same-run
// ratios are meant to see through.
func ReportLoad(b *testing.B) {
	if s, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f, err := strconv.ParseFloat(strings.Fields(string(s))[0], 64); err == nil {
			b.ReportMetric(f, "load1")
		}
	}
}
