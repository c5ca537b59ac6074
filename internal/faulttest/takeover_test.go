//go:build unix

package faulttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/lock"
)

// TestRemovedLockIsNotRunTwice: as processes, 20 rounds. A runner applies a
// slow ALWAYS_RETRY change; a second runner waits for the pipeline lock;
// the live lock is then removed under the first — its key deleted, a purge
// marker written on it, or force-released by an operator at its current
// revision, in turn. The second runner takes the lock and runs the change
// again (it is ALWAYS_RETRY), but never while the first one's may still
// run: the journal each execution keeps, with timestamps, shows no two
// executions overlapping in time, in any round.
func TestRemovedLockIsNotRunTwice(t *testing.T) {
	const rounds = 20
	const leaseFlag = "1500ms" // a short lease: a round waits one out
	srv := startServer(t)
	if out, err := exec.Command(bin.auditflow, "init", "--nats-url", srv.URL, "--lock-lease", leaseFlag).CombinedOutput(); err != nil {
		t.Fatalf("auditflow init: %v\n%s", err, out)
	}
	ctx := context.Background()
	ops, err := lock.New(ctx, srv.JS, lock.Config{Lease: 1500 * time.Millisecond, Owner: "operator-in-test"})
	if err != nil {
		t.Fatal(err)
	}
	removals := []struct {
		name   string
		remove func(t *testing.T)
	}{
		{"key deleted", func(t *testing.T) {
			kv, err := srv.JS.KeyValue(ctx, lock.DefaultBucket)
			if err == nil {
				err = kv.Delete(ctx, "billing")
			}
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"purge marker", func(t *testing.T) {
			m := nats.NewMsg("$KV." + lock.DefaultBucket + ".billing")
			m.Header.Set("KV-Operation", "PURGE")
			if _, err := srv.JS.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}},
		{"force-released", func(t *testing.T) {
			h, err := ops.Holder(ctx, "billing")
			if err == nil {
				err = ops.ForceRelease(ctx, "billing", h.Revision)
			}
			if err != nil {
				t.Fatal(err)
			}
		}},
	}
	dir := t.TempDir()
	var all []span
	for round := range rounds {
		rm := removals[round%len(removals)]
		journal := filepath.Join(dir, fmt.Sprintf("journal-%02d", round))
		for _, f := range []string{"change.yaml"} {
			_ = os.Remove(filepath.Join(dir, f))
		}
		// A new change each round; the sleep is read when the change
		// starts: long for the first runner, short for the one after.
		changeFile(t, dir, "change.yaml", fmt.Sprintf(`id: %02d-slow
recovery: ALWAYS_RETRY
grace: 1s
apply: |
  JOURNAL=%s
  %s
  sleep "$(cat %s)" & wait $!
  log end
`, round, journal, strings.ReplaceAll(journalScript, "\n", "\n  "), filepath.Join(dir, "sleep")))
		setSleep(t, dir, "30")
		a := runner(t, srv.URL, dir, "billing", "runner-a", "--lock-lease", leaseFlag, "--stop-grace", "1s")
		eventually(t, 20*time.Second, "the first runner's change starts", func() bool { return len(readJournal(t, journal)) > 0 })
		b := runner(t, srv.URL, dir, "billing", "runner-b", "--lock-lease", leaseFlag, "--stop-grace", "1s")
		time.Sleep(200 * time.Millisecond) // b is waiting for the lock
		setSleep(t, dir, "0.2")
		rm.remove(t)
		if code := a.wait(t, 30*time.Second); code != 5 {
			t.Fatalf("round %d (%s): the first runner exited %d, want 5 (lock lost):\n%s", round, rm.name, code, a.out.String())
		}
		if code := b.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("round %d (%s): the second runner exited %d, want 0:\n%s", round, rm.name, code, b.out.String())
		}
		ss := spans(readJournal(t, journal))
		if len(ss) != 2 || ss[0].ended || !ss[1].ended {
			t.Fatalf("round %d (%s): executions %+v, want the first stopped and the second finished", round, rm.name, ss)
		}
		if o := overlaps(ss); len(o) > 0 {
			t.Fatalf("round %d (%s): executions overlapped: %v", round, rm.name, o)
		}
		t.Logf("round %d (%s): the first execution's last sign of life %s before the second started",
			round, rm.name, ss[1].start.Sub(ss[0].end).Round(time.Millisecond))
		all = append(all, ss...)
	}
	if o := overlaps(all); len(o) > 0 {
		t.Fatalf("executions overlapped across rounds: %v", o)
	}
}
