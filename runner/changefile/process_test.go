//go:build unix

package changefile_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/runner/changefile"
	"github.com/auditflow/auditflow/runner/supervisor"
)

// The test binary doubles as a "runner" process: started with
// helperDirEnv set, it loads that change directory and applies its first
// change as the runner would (with an Execution in the context), so that a
// test can kill -9 or SIGSTOP a real runner mid-change.
const (
	helperDirEnv    = "CHANGEFILE_TEST_RUNNER_DIR"
	helperBoundsEnv = "CHANGEFILE_TEST_RUNNER_BOUNDS" // "stopIn,killIn", renewed while the runner runs
)

func TestMain(m *testing.M) {
	supervisor.Main()
	// Under -race every Go process sleeps a second before exiting, the
	// supervisors this test starts included; that is not what is measured.
	if _, ok := os.LookupEnv("GORACE"); !ok {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(helperRunner(dir, os.Getenv(helperBoundsEnv)))
	}
	os.Exit(m.Run())
}

func helperRunner(dir, bounds string) int {
	changes, err := changefile.Load(dir, changefile.Options{Pipeline: "p", Output: os.Stdout})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ex := &runner.Execution{Pipeline: "p", ChangeID: changes[0].ID, ExecutionID: "exec-helper", LockToken: 42}
	if bounds != "" {
		stopIn, err1 := time.ParseDuration(strings.Split(bounds, ",")[0])
		killIn, err2 := time.ParseDuration(strings.Split(bounds, ",")[1])
		if err1 != nil || err2 != nil {
			fmt.Fprintln(os.Stderr, "bad bounds", bounds)
			return 2
		}
		// A lease refreshed for as long as this process runs: once it is
		// stopped, the deadlines last sent are all the supervisor has.
		ex.Bounds = func() (time.Time, time.Time) { return time.Now().Add(stopIn), time.Now().Add(killIn) }
	}
	err = changes[0].Apply(runner.WithExecution(context.Background(), ex))
	fmt.Printf("apply returned: %v\n", err)
	return 0
}

// startRunner starts the helper runner on a change directory holding one
// change whose apply is script.
func startRunner(t *testing.T, script, bounds string) (dir string, proc *exec.Cmd, out *proctest.Buffer) {
	t.Helper()
	dir = t.TempDir()
	write(t, dir, "c.yaml", "id: c\napply: |\n"+indent(script))
	proc = exec.Command(os.Args[0])
	proc.Env = append(os.Environ(), helperDirEnv+"="+dir, helperBoundsEnv+"="+bounds)
	out = &proctest.Buffer{}
	proc.Stdout, proc.Stderr = out, out
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = proc.Process.Kill()
		_ = proc.Wait()
	})
	return dir, proc, out
}

func indent(s string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		b.WriteString("  " + strings.TrimSpace(l) + "\n")
	}
	return b.String()
}

// writePid is a shell line that writes the shell's pid as this test sees
// it to file: in the PID namespace a supervisor may run the change in, $$
// is the namespace's pid. (A shell reads /proc/self itself, without
// forking; elsewhere there is only $$.)
func writePid(file string) string {
	return `{ read -r p _ < /proc/self/stat || p=$$; } 2>/dev/null; echo "$p" > ` + file
}

// supervisorOf finds the supervisor of the change whose script's pid is
// shPid: on Linux the ancestor named auditflow-super (the script's parent
// may be the init of its PID namespace), elsewhere the script's parent,
// which the script wrote to dir/supervisor.pid.
func supervisorOf(t *testing.T, dir string, shPid int) int {
	t.Helper()
	if runtime.GOOS != "linux" {
		return proctest.ReadPid(t, filepath.Join(dir, "supervisor.pid"))
	}
	for pid := shPid; pid > 1; {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			break
		}
		if strings.HasSuffix(s[:i], "(auditflow-super") {
			return pid
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			break
		}
		pid, _ = strconv.Atoi(f[1])
	}
	t.Fatalf("no supervisor above pid %d", shPid)
	return 0
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// The bug report: the runner is killed with SIGKILL while its change runs.
// Nothing of the change may keep running (not the script, not a process
// that double-forked out of its group with setsid), and nothing the change
// would have done later may happen.
func TestRunnerKilledMidChange(t *testing.T) {
	dir, proc, out := startRunner(t, `
		echo $PPID > supervisor.pid
		`+writePid("sh.pid")+`
		(setsid sh -c '`+writePid("escapee.pid")+`; sleep 2; echo late > marker2' &)
		sleep 2
		echo late > marker
	`, "")
	begun := time.Now()
	shPid := proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	supPid := supervisorOf(t, dir, shPid)
	escapee := proctest.ReadPid(t, filepath.Join(dir, "escapee.pid"))
	if !proctest.GroupRunning(shPid) || !proctest.Running(escapee) || !proctest.Running(supPid) {
		t.Fatalf("the change is not running before the kill\n%s", out)
	}
	if pg, _ := syscall.Getpgid(escapee); runtime.GOOS == "linux" && pg == shPid {
		t.Fatal("the escapee did not leave the process group; the test proves less than it says")
	}
	if err := proc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	proctest.WaitFor(t, "the change's processes to die", 3*time.Second, func() bool {
		return !proctest.GroupRunning(shPid) && (runtime.GOOS != "linux" || !proctest.Running(escapee))
	})
	gone := time.Since(killed)
	proctest.WaitFor(t, "the supervisor to exit", 3*time.Second, func() bool { return !proctest.Running(supPid) })
	t.Logf("kill -9 of the runner: last change process gone after %s, supervisor after %s", gone, time.Since(killed))
	if gone > time.Second {
		t.Errorf("the change outlived its runner by %s", gone)
	}
	time.Sleep(time.Until(begun.Add(2300 * time.Millisecond)))
	if exists(filepath.Join(dir, "marker")) {
		t.Error("the change's script ran to completion after its runner died")
	}
	if runtime.GOOS == "linux" && exists(filepath.Join(dir, "marker2")) {
		t.Error("the change's escaped background process ran to completion after its runner died")
	}
}

// A runner that is paused (SIGSTOP) stops renewing its lease; the
// supervisor alone must end the change by the last deadlines it was sent:
// SIGTERM first, then SIGKILL for a script that ignores SIGTERM.
func TestPausedRunnerChangeStoppedAtDeadline(t *testing.T) {
	const stopIn, killIn = 400 * time.Millisecond, 900 * time.Millisecond
	dir, proc, out := startRunner(t, `
		trap 'echo TERM >> got-term' TERM
		`+writePid("sh.pid")+`
		i=0; while [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
		echo late > marker
	`, stopIn.String()+","+killIn.String())
	begun := time.Now()
	shPid := proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	time.Sleep(200 * time.Millisecond) // a few renewals: the deadlines would have passed by now if they were not sent
	if !proctest.GroupRunning(shPid) {
		t.Fatalf("the change ended before the runner was paused\n%s", out)
	}
	if err := proc.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	proctest.WaitFor(t, "the supervisor to end the change", 3*time.Second, func() bool { return !proctest.GroupRunning(shPid) })
	gone := time.Since(paused)
	t.Logf("runner paused: change gone after %s (SIGTERM due within %s, SIGKILL within %s of the last renewal)", gone, stopIn, killIn)
	if !exists(filepath.Join(dir, "got-term")) {
		t.Error("no SIGTERM before the SIGKILL")
	}
	// The last renewal was at most one poll (100 ms) before the pause.
	if gone < killIn-150*time.Millisecond || gone > killIn+500*time.Millisecond {
		t.Errorf("change gone %s after the pause, want about %s", gone, killIn)
	}
	time.Sleep(time.Until(begun.Add(2300 * time.Millisecond)))
	if exists(filepath.Join(dir, "marker")) {
		t.Error("the change ran to completion although its runner's lease was not renewed")
	}
	_ = proc.Process.Signal(syscall.SIGCONT)
}

func load(t testing.TB, body string, opts changefile.Options) (runner.Change, string) {
	t.Helper()
	dir := t.TempDir()
	write(t, dir, "c.yaml", body)
	changes, err := changefile.Load(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return changes[0], dir
}

// applyCancelled runs c and cancels it with cause once file appears.
func applyCancelled(t *testing.T, c runner.Change, file string, cause error) (error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- c.Apply(ctx) }()
	proctest.ReadPid(t, file)
	start := time.Now()
	cancel(cause)
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(5 * time.Second):
		t.Fatal("Apply did not return after its context was cancelled")
		return nil, 0
	}
}

func testCancel(t *testing.T) {
	lost := errors.New("pipeline lock lost")
	t.Run("SIGTERM reaches the script", func(t *testing.T) {
		c, dir := load(t, `id: c
apply: |
  trap 'echo TERM > got-term; exit 143' TERM
  echo $$ > sh.pid
  while :; do sleep 0.05; done
`, changefile.Options{})
		err, took := applyCancelled(t, c, filepath.Join(dir, "sh.pid"), lost)
		first, _, _ := strings.Cut(fmt.Sprint(err), "\n")
		if !strings.HasPrefix(first, "stopped (pipeline lock lost): sent SIGTERM, exited 143 after ") {
			t.Fatalf("error %q", first)
		}
		if !errors.Is(err, changefile.ErrStopped) || !errors.Is(err, lost) {
			t.Errorf("error %v does not wrap ErrStopped and the cause", err)
		}
		if !exists(filepath.Join(dir, "got-term")) {
			t.Error("the trap did not run")
		}
		t.Logf("%s (Apply returned %s after the cancel)", first, took)
	})
	t.Run("SIGKILL after the grace", func(t *testing.T) {
		c, dir := load(t, `id: c
grace: 300ms
apply: |
  trap '' TERM
  echo $$ > sh.pid
  sleep 5; echo late > marker
`, changefile.Options{Grace: 5 * time.Second}) // the file's grace wins
		err, took := applyCancelled(t, c, filepath.Join(dir, "sh.pid"), lost)
		first, _, _ := strings.Cut(fmt.Sprint(err), "\n")
		if first != "stopped (pipeline lock lost): sent SIGTERM, killed with SIGKILL after the 300ms grace" {
			t.Fatalf("error %q", first)
		}
		if took < 300*time.Millisecond || took > 1500*time.Millisecond {
			t.Errorf("Apply returned %s after the cancel, want about 300ms", took)
		}
		t.Logf("%s (after %s)", first, took)
	})
}

func TestCancelStopsCommand(t *testing.T) { testCancel(t) }

func TestCancelStopsCommandDirectly(t *testing.T) {
	changefile.RunDirectly(t)
	testCancel(t)
}

func testExecutionEnv(t *testing.T) {
	t.Setenv("AUDITFLOW_LOCK_TOKEN", "99") // inherited from somewhere: must not reach the command
	c, dir := load(t, `id: c
apply: |
  echo "token=${AUDITFLOW_LOCK_TOKEN-unset} exec=${AUDITFLOW_EXECUTION_ID-unset} pipeline=$AUDITFLOW_PIPELINE change=$AUDITFLOW_CHANGE_ID" > env.txt
`, changefile.Options{Pipeline: "billing"})
	ctx := runner.WithExecution(context.Background(), &runner.Execution{Pipeline: "billing", ChangeID: "c", ExecutionID: "exec-1", LockToken: 7})
	if err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "env.txt"))
	if got := strings.TrimSpace(string(b)); got != "token=7 exec=exec-1 pipeline=billing change=c" {
		t.Errorf("in an execution: %q", got)
	}
	if err := c.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "env.txt"))
	if got := strings.TrimSpace(string(b)); got != "token=unset exec=unset pipeline=billing change=c" {
		t.Errorf("outside an execution: %q", got)
	}
}

func TestExecutionEnv(t *testing.T) { testExecutionEnv(t) }

func TestExecutionEnvDirectly(t *testing.T) {
	changefile.RunDirectly(t)
	testExecutionEnv(t)
}

// A supervisor killed with SIGKILL must not leave Apply hanging, nor the
// change running.
func TestSupervisorKilledMidChange(t *testing.T) {
	c, dir := load(t, `id: c
apply: |
  echo $PPID > supervisor.pid
  `+writePid("sh.pid")+`
  sleep 5 & wait
`, changefile.Options{})
	done := make(chan error, 1)
	go func() { done <- c.Apply(context.Background()) }()
	shPid := proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	supPid := supervisorOf(t, dir, shPid)
	// The script runs a moment before the supervisor reports its pid to
	// the runner; a kill in between is a different case (see the
	// supervisor's doc), so let the report arrive.
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(supPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Apply hangs after its supervisor was killed")
	}
	took := time.Since(start)
	if !errors.Is(err, supervisor.ErrSupervisorDied) || !strings.HasPrefix(err.Error(), "supervisor died: signal: killed") {
		t.Fatalf("Apply = %v", err)
	}
	proctest.WaitFor(t, "the change's group to die", time.Second, func() bool { return !proctest.GroupRunning(shPid) })
	t.Logf("Apply returned %s after the supervisor's kill: %v", took, err)
}

// The direct path (no supervisor installed) still runs commands, and
// kills what a command left in its group.
func TestDirectPath(t *testing.T) {
	changefile.RunDirectly(t)
	var out proctest.Buffer
	c, dir := load(t, `id: c
apply: |
  sleep 5 &
  echo $! > bg.pid
  echo 'psql: relation exists' >&2
  exit 3
`, changefile.Options{Output: &out})
	start := time.Now()
	err := c.Apply(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "exit status 3\n") || !strings.Contains(err.Error(), "relation exists") {
		t.Fatalf("Apply = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Apply waited %s for the background process", d)
	}
	bg := proctest.ReadPid(t, filepath.Join(dir, "bg.pid"))
	proctest.WaitFor(t, "the background process to die", time.Second, func() bool { return !proctest.Running(bg) })
	if !strings.Contains(out.String(), "relation exists") {
		t.Errorf("output not streamed: %q", out.String())
	}
}
