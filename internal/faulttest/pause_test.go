//go:build linux

package faulttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/stores"
)

// fencedChange is a change (ALWAYS_RETRY) that journals its life, waits
// as long as the file "sleep" says, then writes to a fenced target with
// its lock token, and exits with the fence's answer.
func fencedChange(t *testing.T, dir string) (journal, target string) {
	t.Helper()
	journal, target = filepath.Join(dir, "journal"), filepath.Join(dir, "target.db")
	changeFile(t, dir, "1.yaml", `id: 0001-fenced
recovery: ALWAYS_RETRY
grace: 1s
apply: |
  JOURNAL=`+journal+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  sleep "$(cat `+filepath.Join(dir, "sleep")+`)" & wait $!
  `+bin.fencing+` -db `+target+` -resource orders -write "$AUDITFLOW_EXECUTION_ID"
  rc=$?
  log end
  exit $rc
`)
	setSleep(t, dir, "8")
	return journal, target
}

func setSleep(t *testing.T, dir, secs string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "sleep"), []byte(secs), 0o644); err != nil {
		t.Fatal(err)
	}
}

func signal(t *testing.T, sig syscall.Signal, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
			t.Fatal(err)
		}
	}
}

// fenceWrites lists the writes the target accepted, as "token exec".
func fenceWrites(t *testing.T, target string) string {
	t.Helper()
	out, err := exec.Command(bin.fencing, "-db", target, "-show").CombinedOutput()
	if err != nil {
		t.Fatalf("fencing -show: %v\n%s", err, out)
	}
	return string(out)
}

// TestSIGSTOPPastTheLease: a runner paused (SIGSTOP) in the middle of a
// change, past its lease. Its supervisor stops the change at the lease's
// deadline, before another runner can take the lock; the next runner
// takes over and applies the change (ALWAYS_RETRY) without overlapping
// it. Resumed (SIGCONT), the paused runner does not print a false story:
// its stale outcome is recorded as ExecutionOverlapped after the new
// holder's events, the store shows an open OVERLAPPED issue with
// guidance, and the runner exits 5.
func TestSIGSTOPPastTheLease(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal, target := fencedChange(t, dir)
	a := runner(t, srv.URL, dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
	changePids := changeTree(t, a.cmd.Process.Pid)
	signal(t, syscall.SIGSTOP, a.cmd.Process.Pid)
	paused := time.Now()
	eventually(t, 2*lease, "the supervisor stops the paused runner's change", func() bool {
		return !slices.ContainsFunc(changePids[1:], proctest.Running) // [0] is the supervisor
	})
	t.Logf("runner paused: its change was stopped %s later (lease %s)", time.Since(paused).Round(time.Millisecond), lease)

	setSleep(t, dir, "0.2")
	b := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("takeover exited %d", code)
	}
	signal(t, syscall.SIGCONT, a.cmd.Process.Pid)
	if code := a.wait(t, 30*time.Second); code != 5 {
		t.Fatalf("resumed runner exited %d, want 5 (lock lost)", code)
	}
	if strings.Contains(a.out.String(), "will ask for manual intervention") {
		t.Fatalf("resumed runner printed a false story:\n%s", a.out.String())
	}
	ss := spans(readJournal(t, journal))
	if len(ss) != 2 || ss[0].ended || !ss[1].ended {
		t.Fatalf("executions %+v", ss)
	}
	if o := overlaps(ss); len(o) > 0 {
		t.Fatalf("executions overlapped: %v", o)
	}
	if w := fenceWrites(t, target); strings.Count(w, "\n") < 1 || strings.Contains(w, ss[0].exec) {
		t.Fatalf("target writes:\n%s", w)
	}
	es := history(t, srv.JS, "billing", "0001-fenced")
	want := []events.Type{events.ExecutionStarted, events.ExecutionStarted, events.ExecutionSucceeded, events.ExecutionOverlapped}
	if got := typesOf(es); !slices.Equal(got, want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
	stale := es[3]
	if stale.ExecutionID != es[0].ExecutionID || stale.LockToken >= es[1].LockToken || !strings.Contains(stale.ErrorMessage, "after its lease") {
		t.Fatalf("stale outcome: %+v", stale)
	}
	st, path := project(t, srv.JS)
	if i := issue(t, st, "billing", "0001-fenced"); i.Status != stores.IssueOpen || i.State != events.StateOverlapped {
		t.Fatalf("issue %+v", i)
	}
	get := start(t, srv.URL, bin.auditflow, "--store", "sqlite", "--sqlite-path", path, "issue", "get", "-p", "billing", "-c", "0001-fenced", "--guidance")
	if code := get.wait(t, 20*time.Second); code != 0 || !strings.Contains(get.out.String(), "overlapped") || !strings.Contains(get.out.String(), "issue fix") {
		t.Fatalf("issue get --guidance: exit %d\n%s", code, get.out.String())
	}
}

// TestPausedMachineIsFenced: the whole runner — runner, supervisor and
// change — is paused (a frozen VM) just before the change writes to its
// target, past the lease. Another runner takes over and writes. When the
// machine wakes, the old change's write goes out before anything can stop
// it — and the target's fence on AUDITFLOW_LOCK_TOKEN refuses it. The old
// runner then records its stale outcome as an overlap.
func TestPausedMachineIsFenced(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal, target := fencedChange(t, dir)
	setSleep(t, dir, "1.5")
	a := runner(t, srv.URL, dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
	// Freeze everything: supervisor first, so nothing can kill the change.
	all := append([]int{a.cmd.Process.Pid}, changeTree(t, a.cmd.Process.Pid)...)
	signal(t, syscall.SIGSTOP, all[1])
	signal(t, syscall.SIGSTOP, all...)

	setSleep(t, dir, "0")
	time.Sleep(lease) // the lease runs out on the server
	b := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("takeover exited %d", code)
	}
	// The machine wakes; the change runs first.
	signal(t, syscall.SIGCONT, all[2:]...)
	eventually(t, 10*time.Second, "the old change reaches its end", func() bool {
		ss := spans(readJournal(t, journal))
		return len(ss) == 2 && ss[0].ended
	})
	signal(t, syscall.SIGCONT, all[:2]...)
	if code := a.wait(t, 30*time.Second); code != 5 {
		t.Fatalf("resumed runner exited %d, want 5", code)
	}
	ss := spans(readJournal(t, journal))
	w := fenceWrites(t, target)
	if strings.Contains(w, ss[0].exec) || !strings.Contains(w, ss[1].exec) {
		t.Fatalf("the target accepted the stale write:\n%s", w)
	}
	es := history(t, srv.JS, "billing", "0001-fenced")
	last := es[len(es)-1]
	if last.Type != events.ExecutionOverlapped || last.ExecutionID != ss[0].exec || !strings.Contains(last.ErrorTrace+last.ErrorMessage, "fenced") {
		t.Fatalf("stale outcome %s %q\n%s", last.Type, last.ErrorMessage, last.ErrorTrace)
	}
	t.Logf("stale write refused by the target: %s", firstLine(last.ErrorTrace))
	st, _ := project(t, srv.JS)
	if i := issue(t, st, "billing", "0001-fenced"); i.State != events.StateOverlapped {
		t.Fatalf("issue %+v", i)
	}
}

func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, "fenced") {
			return strings.TrimSpace(line)
		}
	}
	return s
}

// TestPartitionLongerThanTheLease: a runner is cut off from NATS (a TCP
// proxy that stops carrying bytes both ways) in the middle of a change,
// for longer than its lease. It cannot refresh, so it stops its change
// before the lease runs out on the server; another runner (on the other
// side of the partition) takes over without overlapping it. When the
// partition heals, the cut-off runner records what happened: its change
// was stopped because the lease ran out, after another holder took over.
func TestPartitionLongerThanTheLease(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	cut := natstest.NewPartition(t, srv.URL)
	dir := t.TempDir()
	journal, target := fencedChange(t, dir)
	a := runner(t, cut.URL(), dir, "billing", "runner-a")
	eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
	changePids := changeTree(t, a.cmd.Process.Pid)
	cut.Cut()
	parted := time.Now()
	eventually(t, 2*lease, "the partitioned runner stops its change", func() bool {
		return !slices.ContainsFunc(changePids, proctest.Running)
	})
	t.Logf("partitioned: the change was stopped %s later (lease %s)", time.Since(parted).Round(time.Millisecond), lease)

	setSleep(t, dir, "0.2")
	b := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("takeover exited %d", code)
	}
	cut.Heal()
	t.Logf("partition healed after %s", time.Since(parted).Round(time.Millisecond))
	if code := a.wait(t, 60*time.Second); code != 5 {
		t.Fatalf("partitioned runner exited %d, want 5", code)
	}
	ss := spans(readJournal(t, journal))
	if len(ss) != 2 || ss[0].ended || !ss[1].ended {
		t.Fatalf("executions %+v", ss)
	}
	if o := overlaps(ss); len(o) > 0 {
		t.Fatalf("executions overlapped: %v", o)
	}
	if w := fenceWrites(t, target); strings.Contains(w, ss[0].exec) {
		t.Fatalf("target writes:\n%s", w)
	}
	es := history(t, srv.JS, "billing", "0001-fenced")
	last := es[len(es)-1]
	// The runner cancels its change and the supervisor enforces the same
	// deadline on its own: whichever acts first is recorded.
	byLease := strings.Contains(last.ErrorMessage, "lease ran out") || strings.Contains(last.ErrorMessage, "at the lease's deadline")
	if last.Type != events.ExecutionOverlapped || last.ExecutionID != ss[0].exec || !byLease {
		t.Fatalf("partitioned runner's record: %v, last %s %q", typesOf(es), last.Type, last.ErrorMessage)
	}
	t.Logf("recorded: %s", last.ErrorMessage)
}
