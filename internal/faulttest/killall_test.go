//go:build linux

package faulttest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/proctest"
)

// TestKillallTakesTheChangeWithIt: the real runner binary applies a change
// whose script starts a setsid escapee, a background child and a
// double-forked orphan, each writing a marker after 1.5 s. Then, as
// operators and the OOM killer do:
//
//   - killall: SIGKILL to every process named like the runner binary
//     (pkill -9 -x), which the supervisor and the init, named
//     auditflow-super and auditflow-init, are not: the supervisor is left
//     to end the change, and its SIGTERM reaches the script's trap;
//   - kill -9 of the runner and its supervisor at the same moment, which
//     leaves no process of ours to act: the kernel must end the change;
//   - kill -9 of the supervisor alone.
//
// Each time every process of the change (by pid, and by a scan of /proc
// for its sleepers) is gone within a second, and no marker is ever
// written. The runner alone is TestKill9TakesTheChangeWithIt.
func TestKillallTakesTheChangeWithIt(t *testing.T) {
	for _, kill := range []string{"killall", "runner+supervisor", "supervisor"} {
		t.Run(kill, func(t *testing.T) {
			srv := startServer(t)
			initAuditflow(t, srv.URL)
			dir := t.TempDir()
			// A name of its own, so that the killall reaches this test's
			// runner only, not another test's or another user's.
			name := fmt.Sprintf("rk%06d", rand.IntN(1_000_000))
			exe := proctest.CopyExecutable(t, bin.runner, filepath.Join(t.TempDir(), name))
			sleep := fmt.Sprintf("1.5%06d", rand.IntN(1_000_000)) // marks the change's sleepers
			marker := func(m string) string { return filepath.Join(dir, "marker-"+m) }
			// The trap witnesses the supervisor's SIGTERM; wait (unlike a
			// foreground sleep) lets it run at once. The shell ignores
			// SIGPIPE: the SIGTERM reaches its sleep too, and reporting
			// that death on the dead runner's pipe must not kill the shell
			// before its trap has run.
			changeFile(t, dir, "1.yaml", `id: 0001-escapes
apply: |
  trap '' PIPE
  trap 'echo term > `+filepath.Join(dir, "got-term")+`; exit 143' TERM
  (setsid sh -c 'sleep `+sleep+`; echo late > `+marker("escapee")+`' &)
  (sleep `+sleep+`; echo late > `+marker("background")+`) &
  ( (sleep `+sleep+`; echo late > `+marker("orphan")+`) & )
  sleep `+sleep+` & wait $!; echo late > `+marker("script")+`
`)
			a := start(t, srv.URL, exe, "--changes", dir, "--pipeline", "billing", "--runner-id", "runner-a",
				"--lock-lease", lease.String(), "--lock-retry", "100ms", "--lock-give-up", "1m", "--data-dir", filepath.Join(dir, ".data"))
			runnerPid := a.cmd.Process.Pid
			eventually(t, 20*time.Second, "the change's four sleepers", func() bool { return len(proctest.Sleepers(sleep)) == 4 })
			begun := time.Now()
			sup := childWithArg(runnerPid, "__auditflow_supervise")
			if sup == 0 {
				t.Fatalf("the runner has no supervisor:\n%s", psForest())
			}
			contained := childWithArg(sup, "__auditflow_init") != 0
			if !contained && kill != "killall" {
				msg := "the change does not run in a PID namespace (no auditflow-init under the supervisor)"
				if os.Getenv("AUDITFLOW_REQUIRE_INTEGRATION") == "1" && os.Geteuid() == 0 {
					t.Fatal(msg + "; AUDITFLOW_REQUIRE_INTEGRATION=1 as root on Linux: it must")
				}
				t.Skip(msg + "; only a PID namespace survives this kill")
			}
			change := slices.Concat([]int{sup}, proctest.Tree(sup), proctest.WithToken(sleep))
			slices.Sort(change)
			change = slices.Compact(change)
			t.Cleanup(func() {
				for _, pid := range proctest.WithToken(sleep) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			})

			killed := time.Now()
			switch kill {
			case "killall":
				if path, err := exec.LookPath("pkill"); err == nil {
					if out, err := exec.Command(path, "-9", "-x", name).CombinedOutput(); err != nil {
						t.Fatalf("pkill -9 -x %s: %v %s", name, err, out)
					}
				} else { // what pkill -x does: match the kernel's process name
					for _, pid := range proctest.Pids() {
						if comm, _ := proctest.Comm(pid); comm == name {
							_ = syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}
			case "runner+supervisor":
				// At the same instant: a stopped runner cannot act between
				// the two kills.
				_ = a.cmd.Process.Signal(syscall.SIGSTOP)
				_ = syscall.Kill(sup, syscall.SIGKILL)
				_ = a.cmd.Process.Kill()
			case "supervisor":
				_ = syscall.Kill(sup, syscall.SIGKILL)
			}
			live := func() []int {
				return slices.Concat(slices.DeleteFunc(slices.Clone(change), func(p int) bool { return !proctest.Running(p) }), proctest.WithToken(sleep))
			}
			deadline := time.Now().Add(3 * time.Second)
			for len(live()) > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			gone := time.Since(killed)
			if kill == "killall" {
				if proctest.Running(runnerPid) {
					t.Fatal("the killall did not kill the runner")
				}
				if _, err := os.Stat(filepath.Join(dir, "got-term")); err != nil {
					t.Error("the script got no SIGTERM: the killall took the supervisor too")
				}
			}
			time.Sleep(time.Until(begun.Add(2200 * time.Millisecond))) // past the sleeps
			var left []string
			for _, pid := range live() {
				b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				left = append(left, fmt.Sprintf("pid %d %q", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
			}
			for _, m := range []string{"escapee", "background", "orphan", "script"} {
				if _, err := os.Stat(marker(m)); err == nil {
					left = append(left, "marker-"+m+" written")
				}
			}
			if len(left) > 0 {
				t.Fatalf("%s: the change outlived it: %s", kill, strings.Join(left, "; "))
			}
			if gone > time.Second {
				t.Errorf("%s: the change outlived the kill by %s", kill, gone)
			}
			t.Logf("%s (PID namespace: %v): the last of the change's %d processes gone %s after the kill; no marker written",
				kill, contained, len(change), gone.Round(100*time.Microsecond))
		})
	}
}

// childWithArg returns parent's live child that has arg on its command
// line, or 0.
func childWithArg(parent int, arg string) int {
	for _, pid := range proctest.Pids() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if _, pp := proctest.Comm(pid); pp == parent && slices.Contains(strings.Split(string(b), "\x00"), arg) && proctest.Running(pid) {
			return pid
		}
	}
	return 0
}

func psForest() string {
	out, _ := exec.Command("ps", "-eo", "pid,ppid,pgid,stat,comm,args", "--forest").Output()
	return string(out)
}
