//go:build unix

package faulttest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/proctest"
)

// TestKill9TakesTheChangeWithIt: kill -9 of a runner in the middle of a
// change that sleeps, then writes a marker. Every process of the change is
// gone within about a second, the marker never appears, and the runner
// that takes over (ALWAYS_RETRY) runs the change only after the old
// execution's last sign of life.
func TestKill9TakesTheChangeWithIt(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal, marker := filepath.Join(dir, "journal"), filepath.Join(dir, "marker")
	changeFile(t, dir, "1.yaml", `id: 0001-slow
recovery: ALWAYS_RETRY
apply: |
  JOURNAL=`+journal+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  if [ ! -f `+filepath.Join(dir, "fast")+` ]; then sleep 2; fi
  echo "$AUDITFLOW_EXECUTION_ID" >> `+marker+`
  log end
`)
	a := runner(t, srv.URL, dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
	pids := changeTree(t, a.cmd.Process.Pid)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	eventually(t, 3*time.Second, "every process of the change dies", func() bool {
		return !slices.ContainsFunc(pids, proctest.Running)
	})
	gone := time.Since(killed)
	t.Logf("kill -9 of the runner: the last of its %d change processes was gone after %s", len(pids), gone.Round(time.Millisecond))
	if gone > 1500*time.Millisecond {
		t.Errorf("change processes outlived their runner by %s", gone)
	}
	time.Sleep(2500 * time.Millisecond) // past the change's sleep
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the killed runner's change wrote its marker")
	}

	if err := os.WriteFile(filepath.Join(dir, "fast"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("takeover exited %d", code)
	}
	ss := spans(readJournal(t, journal))
	if len(ss) != 2 || ss[0].ended || !ss[1].ended {
		t.Fatalf("executions %+v", ss)
	}
	if o := overlaps(ss); len(o) > 0 {
		t.Fatalf("executions overlapped: %v", o)
	}
	t.Logf("old execution's last sign of life %s before the takeover started", ss[1].start.Sub(ss[0].end).Round(time.Millisecond))
	if b, _ := os.ReadFile(marker); strings.Count(string(b), "\n") != 1 {
		t.Fatalf("marker: %q", b)
	}
	want := []events.Type{events.ExecutionStarted, events.ExecutionStarted, events.ExecutionSucceeded}
	if got := typesOf(history(t, srv.JS, "billing", "0001-slow")); !slices.Equal(got, want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
}

// TestSIGTERMRollsBackATransactionalChange: SIGTERM to a runner during a
// transactional change with a rollback. The change gets SIGTERM, the
// rollback runs, the record says interrupted and ROLLED_BACK (not a false
// ROLLBACK_FAILED), the runner exits 143, and the next run applies the
// change again.
func TestSIGTERMRollsBackATransactionalChange(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	changeFile(t, dir, "1.yaml", `id: 0001-tx
transactional: true
apply: |
  JOURNAL=`+journal+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  trap 'echo term >> `+filepath.Join(dir, "got-term")+`; exit 143' TERM
  if [ ! -f `+filepath.Join(dir, "once")+` ]; then touch `+filepath.Join(dir, "once")+`; sleep 30 & wait $!; fi
  log end
rollback: echo rolled-back >> `+filepath.Join(dir, "rollback")+`
`)
	a := runner(t, srv.URL, dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change is in its long step", func() bool {
		_, err := os.Stat(filepath.Join(dir, "once"))
		return err == nil
	})
	time.Sleep(100 * time.Millisecond) // in the sleep, not between touch and sleep
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t, 20*time.Second); code != 143 {
		t.Fatalf("exit %d, want 143", code)
	}
	for _, f := range []string{"got-term", "rollback"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	es := history(t, srv.JS, "billing", "0001-tx")
	want := []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionRolledBack}
	if got := typesOf(es); !slices.Equal(got, want) || !strings.HasPrefix(es[1].ErrorMessage, "interrupted (SIGTERM)") {
		t.Fatalf("recorded %v (%q), want %v with an interrupted failure", got, es[1].ErrorMessage, want)
	}
	b := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := b.wait(t, 30*time.Second); code != 0 || !strings.Contains(b.out.String(), "APPLIED") {
		t.Fatalf("next run exited %d", code)
	}
}

// TestIssueFixDuringALiveApply: an operator's fix while a runner applies
// the change is refused (exit 5, naming the holder). Forced, it is
// recorded, and the runner's own outcome then lands as an overlap instead
// of silently winning or being dropped.
func TestIssueFixDuringALiveApply(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	changeFile(t, dir, "1.yaml", `id: 0001-slow
apply: |
  JOURNAL=`+journal+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  sleep 2
  log end
`)
	a := runner(t, srv.URL, dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
	cli := func(extra ...string) *proc {
		args := append([]string{"--store", "sqlite", "--sqlite-path", filepath.Join(dir, "cli.db"), "issue", "fix",
			"-p", "billing", "-c", "0001-slow", "-r", "rolled-back", "--reason", "looks stuck", "--operator", "carol"}, extra...)
		return start(t, srv.URL, bin.auditflow, args...)
	}
	fix := cli()
	if code := fix.wait(t, 20*time.Second); code != 5 || !strings.Contains(fix.out.String(), "runner-a") {
		t.Fatalf("issue fix during a live apply: exit %d, want 5 naming the holder:\n%s", code, fix.out.String())
	}
	forced := cli("--force")
	if code := forced.wait(t, 20*time.Second); code != 0 || !strings.Contains(forced.out.String(), "OVERLAPPED") {
		t.Fatalf("forced fix: exit %d, want 0 with a warning:\n%s", code, forced.out.String())
	}
	if code := a.wait(t, 30*time.Second); code != 4 {
		t.Fatalf("runner exited %d, want 4 (its execution overlapped the decision)", code)
	}
	want := []events.Type{events.ExecutionStarted, events.ManuallyResolved, events.ExecutionOverlapped}
	if got := typesOf(history(t, srv.JS, "billing", "0001-slow")); !slices.Equal(got, want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
}
