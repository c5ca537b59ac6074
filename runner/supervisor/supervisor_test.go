//go:build unix

package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/runner/supervisor"
)

// helperEnv makes the test binary a "runner": it supervises the script in
// the named directory and waits, so a test can kill it as the bug report's
// kill -9 did. helperContainEnv is the Spec's MaxContainment.
const (
	helperEnv        = "SUPERVISOR_TEST_RUNNER_DIR"
	helperContainEnv = "SUPERVISOR_TEST_RUNNER_CONTAINMENT"
)

func TestMain(m *testing.M) {
	supervisor.Main()
	// Under -race every Go process sleeps a second before exiting, the
	// supervisors this test starts included; that is not what is measured.
	if _, ok := os.LookupEnv("GORACE"); !ok {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(helperRunner(dir))
	}
	os.Exit(m.Run())
}

func helperRunner(dir string) int {
	script, err := os.ReadFile(filepath.Join(dir, "script.sh"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	p, err := supervisor.Start(context.Background(), supervisor.Spec{
		Args: []string{"sh", "-c", string(script)}, Dir: dir, Stdout: os.Stdout, Stderr: os.Stderr,
		MaxContainment: supervisor.Containment(os.Getenv(helperContainEnv)),
	})
	if err != nil {
		fmt.Println("start:", err)
		return 2
	}
	fmt.Printf("supervisor %d containment %s\n", p.Pid(), p.Containment())
	res, err := p.Wait()
	fmt.Printf("result %+v err %v\n", res, err)
	return 0
}

func sh(script string) []string { return []string{"sh", "-c", script} }

// writePid is a shell line that writes the shell's pid as this test sees
// it to file: in a PID namespace, $$ is the namespace's pid. (A shell reads
// /proc/self itself, without forking; elsewhere there is only $$.)
func writePid(file string) string {
	return `{ read -r p _ < /proc/self/stat || p=$$; } 2>/dev/null; echo "$p" > ` + file
}

func TestExitStatusOutputDirEnv(t *testing.T) {
	dir := t.TempDir()
	var out proctest.Buffer
	res, err := supervisor.Run(context.Background(), supervisor.Spec{
		Args: sh(`echo "out $FOO $(pwd)"; echo err >&2; echo "marker=${AUDITFLOW_SUPERVISOR_PROTOCOL-unset}"; exit 3`),
		Dir:  dir, Env: append(os.Environ(), "FOO=bar"), Stdout: &out, Stderr: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || res.Signal != 0 || res.Stopped != supervisor.NotStopped || res.Success() || res.Exit() != "exit status 3" {
		t.Fatalf("result %+v", res)
	}
	realDir, _ := filepath.EvalSymlinks(dir)
	for _, want := range []string{"out bar " + realDir, "err", "marker=unset"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}

	res, err = supervisor.Run(context.Background(), supervisor.Spec{Args: sh(`kill -KILL $$`)})
	if err != nil || res.Signal != syscall.SIGKILL || res.ExitCode != -1 || res.Exit() != "signal: killed" {
		t.Fatalf("self-killed: %+v %v", res, err)
	}
	if _, err := supervisor.Run(context.Background(), supervisor.Spec{Args: []string{"/nonexistent/program"}}); err == nil {
		t.Fatal("starting a missing program succeeded")
	}
}

// A command that exits leaving a process behind, even one that left the
// process group, does not leave it running.
func TestLeftoversAreKilled(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("descendants outside the process group are only found on Linux")
	}
	dir := t.TempDir()
	start := time.Now()
	res, err := supervisor.Run(context.Background(), supervisor.Spec{Dir: dir, Args: sh(`
		(setsid sh -c '` + writePid("escapee.pid") + `; sleep 2; echo late > marker' &)
		(` + writePid("bg.pid") + `; exec sleep 5) &
		while [ ! -s escapee.pid ] || [ ! -s bg.pid ]; do sleep 0.01; done
		exit 0`)})
	if err != nil || !res.Success() {
		t.Fatalf("%+v %v", res, err)
	}
	escapee, bg := proctest.ReadPid(t, filepath.Join(dir, "escapee.pid")), proctest.ReadPid(t, filepath.Join(dir, "bg.pid"))
	if proctest.Running(escapee) || proctest.Running(bg) {
		t.Fatalf("left running after Run returned: escapee %v, background %v", proctest.Running(escapee), proctest.Running(bg))
	}
	if res.Leftovers < 2 {
		t.Errorf("Leftovers = %d, want 2", res.Leftovers)
	}
	t.Logf("leftovers killed (%s); Run took %s", res.Containment, time.Since(start))
}

// stopTrapped starts, under spec (its Dir, Grace and Args set here), a
// script that traps SIGTERM, cancels it once it runs, and returns its
// result, failing unless the trap ran.
func stopTrapped(t *testing.T, spec supervisor.Spec) supervisor.Result {
	t.Helper()
	dir := t.TempDir()
	spec.Dir, spec.Grace, spec.Args = dir, 5*time.Second, sh(`
		trap 'echo TERM > got-term; exit 143' TERM
		`+writePid("sh.pid")+`
		while :; do sleep 0.05; done`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := supervisor.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	cancel()
	res, err := p.Wait()
	if err != nil {
		t.Fatalf("stopped: %+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "got-term")); err != nil {
		t.Fatal("the trap did not run")
	}
	return res
}

func TestStopOnCancel(t *testing.T) {
	t.Run("SIGTERM reaches the script", func(t *testing.T) {
		res := stopTrapped(t, supervisor.Spec{})
		if res.Stopped != supervisor.StopRequested || !res.TermSent || res.KillSent || res.ExitCode != 143 {
			t.Fatalf("result %+v", res)
		}
		t.Logf("exited 143 %s after SIGTERM", res.StopTook)
	})
	t.Run("SIGKILL after the grace", func(t *testing.T) {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		grace := 300 * time.Millisecond
		p, err := supervisor.Start(ctx, supervisor.Spec{Dir: dir, Grace: grace, Args: sh(`
			trap '' TERM
			` + writePid("sh.pid") + `
			sleep 5; echo late > marker`)})
		if err != nil {
			t.Fatal(err)
		}
		proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
		cancel()
		res, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if !res.TermSent || !res.KillSent || res.KillAtDeadline || res.Signal != syscall.SIGKILL || res.StopTook < grace || res.StopTook > grace+time.Second {
			t.Fatalf("result %+v", res)
		}
		if proctest.GroupRunning(p.CommandPid()) {
			t.Fatal("the command's group outlived Wait")
		}
		t.Logf("killed %s after SIGTERM (grace %s)", res.StopTook, grace)
	})
}

// The deadlines alone stop the command: SIGTERM at stopBy, SIGKILL at
// killBy, with nothing else from the runner.
func TestDeadlinesEnforcedBySupervisor(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var stopBy, killBy time.Time // set once the script runs, so a slow start-up (-race) does not eat the window
	p, err := supervisor.Start(context.Background(), supervisor.Spec{
		Dir: dir, Grace: 10 * time.Second,
		Deadlines: func() (time.Time, time.Time, bool) {
			mu.Lock()
			defer mu.Unlock()
			return stopBy, killBy, !stopBy.IsZero()
		},
		Args: sh(`
			trap 'echo TERM >> got-term' TERM
			` + writePid("sh.pid") + `
			i=0; while [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done
			echo late > marker`),
	})
	if err != nil {
		t.Fatal(err)
	}
	proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	start := time.Now()
	mu.Lock()
	stopBy, killBy = start.Add(300*time.Millisecond), start.Add(700*time.Millisecond)
	mu.Unlock()
	res, err := p.Wait()
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stopped != supervisor.StopDeadline || !res.TermSent || !res.KillSent || !res.KillAtDeadline || res.Signal != syscall.SIGKILL {
		t.Fatalf("result %+v", res)
	}
	if _, err := os.Stat(filepath.Join(dir, "got-term")); err != nil {
		t.Fatal("no SIGTERM before the SIGKILL")
	}
	if _, err := os.Stat(filepath.Join(dir, "marker")); err == nil {
		t.Fatal("the command ran to completion")
	}
	// The runner polls the deadlines every 100ms.
	if took < 700*time.Millisecond || took > 1500*time.Millisecond {
		t.Fatalf("stopped after %s, want about 700ms (%+v)", took, res)
	}
	t.Logf("SIGTERM due at 300ms, SIGKILL at 700ms: command gone after %s", took)
}

func TestSupervisorKilled(t *testing.T) {
	dir := t.TempDir()
	p, err := supervisor.Start(context.Background(), supervisor.Spec{Dir: dir, Args: sh(`
		` + writePid("sh.pid") + `
		sleep 5 & wait`)})
	if err != nil {
		t.Fatal(err)
	}
	proctest.ReadPid(t, filepath.Join(dir, "sh.pid"))
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-p.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("Wait hangs after the supervisor was killed")
	}
	_, err = p.Wait()
	if !errors.Is(err, supervisor.ErrSupervisorDied) || !strings.Contains(err.Error(), "supervisor died: signal: killed") {
		t.Fatalf("Wait = %v", err)
	}
	proctest.WaitFor(t, "the command's group to die", time.Second, func() bool { return !proctest.GroupRunning(p.CommandPid()) })
	t.Logf("Wait returned %s after the kill: %v", time.Since(start), err)
}

// TestDeadlinePassedBeforeStart: a runner paused between deciding to run a
// change and starting it wakes up with its lease's deadline behind it. The
// supervisor starts nothing: another runner may hold the lock by now.
func TestDeadlinePassedBeforeStart(t *testing.T) {
	dir := t.TempDir()
	past := time.Now().Add(-time.Second)
	_, err := supervisor.Run(context.Background(), supervisor.Spec{
		Args: sh("touch ran"), Dir: dir,
		Deadlines: func() (time.Time, time.Time, bool) { return past, past, true },
	})
	if err == nil || !strings.Contains(err.Error(), "not started") {
		t.Fatalf("Run with a passed deadline = %v, want not started", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
		t.Fatal("the command ran after its deadline")
	}
}
