//go:build stress && linux

// The process soak: runner processes racing on several pipelines while
// some are killed with SIGKILL and others paused with SIGSTOP past their
// lease and resumed, round after round; an operator (the test) resolves
// what needs resolving by looking at the target, as the guidance says.
// Run it with:
//
//	go test -tags stress -run Soak -timeout 30m ./internal/faulttest -soak.rounds 10
package faulttest

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	afrunner "github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/verify"
)

var soakRounds = flag.Int("soak.rounds", 4, "rounds of racing, killed and paused runner processes")

func TestProcessSoak(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	ctx := context.Background()
	const pipelines, newPerRound, runnersPer = 2, 3, 3
	rng := rand.New(rand.NewPCG(7, 9))
	dirs := make([]string, pipelines)
	for p := range dirs {
		dirs[p] = t.TempDir()
	}
	var kills, pauses, runs int
	addChanges := func(round int) {
		for p, dir := range dirs {
			for c := range newPerRound {
				id := fmt.Sprintf("%02d-%d", round, c)
				sleep := fmt.Sprintf("0.%d", 2+rng.IntN(6))
				changeFile(t, dir, id+".yaml", `id: `+id+`
order: "`+id+`"
grace: 1s
apply: |
  JOURNAL=`+filepath.Join(dir, "journal."+id)+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  sleep `+sleep+` & wait $!
  `+bin.fencing+` -db `+filepath.Join(dir, "target.db")+` -resource `+id+` -write "$AUDITFLOW_EXECUTION_ID" || exit 3
  log end
`)
				_ = p
			}
		}
	}
	prod, err := producer.New(ctx, srv.JS, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, srv.JS, lock.Config{Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	var overlapsRecorded, resolutions int
	// resolve plays the operator: every change that waits for one is
	// resolved by what the target holds, as the guidance says.
	resolve := func(p int) (waiting int) {
		entries, _ := os.ReadDir(dirs[p])
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".yaml")
			if !ok {
				continue
			}
			last, _, err := prod.Last(ctx, pipeline(p), id)
			if errors.Is(err, producer.ErrNoEvents) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			switch last.State() {
			case events.StateApplied, events.StateManuallyApplied, events.StateRolledBack, events.StateManuallyRolledBack:
				continue
			case events.StateOverlapped:
				overlapsRecorded++
			}
			res := events.ResolvedRolledBack
			if len(accepted(t, dirs[p], id)) > 0 {
				res = events.ResolvedApplied
			}
			_, err = afrunner.Resolve(ctx, prod, locker, afrunner.Resolution{Pipeline: pipeline(p), ChangeID: id, Resolution: res,
				Operator: "soak", Reason: "checked the target"})
			switch {
			case err == nil:
				resolutions++
			case errors.Is(err, afrunner.ErrUnsafeResolution), errors.Is(err, producer.ErrConflict):
				waiting++ // a runner may be on it: look again later
			default:
				t.Fatalf("resolve %s: %v", id, err)
			}
		}
		return waiting
	}

	for round := range *soakRounds {
		addChanges(round)
		for p := range dirs {
			for resolve(p) > 0 {
				time.Sleep(500 * time.Millisecond)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for p, dir := range dirs {
			for r := range runnersPer {
				pr := runner(t, srv.URL, dir, pipeline(p), fmt.Sprintf("r%d-%d-%d", round, p, r))
				runs++
				fate, delay := rng.IntN(4), time.Duration(200+rng.IntN(1500))*time.Millisecond
				wg.Go(func() {
					switch fate {
					case 0: // killed mid-run
						time.Sleep(delay)
						_ = pr.cmd.Process.Signal(syscall.SIGKILL)
						mu.Lock()
						kills++
						mu.Unlock()
					case 1: // paused past its lease, then resumed
						time.Sleep(delay)
						_ = pr.cmd.Process.Signal(syscall.SIGSTOP)
						time.Sleep(lease + time.Second)
						_ = pr.cmd.Process.Signal(syscall.SIGCONT)
						mu.Lock()
						pauses++
						mu.Unlock()
					}
					code := pr.wait(t, 3*time.Minute)
					switch code {
					case 0, 4, 5, 128 + int(syscall.SIGKILL):
					default:
						t.Errorf("runner exited %d:\n%s", code, pr.out.String())
					}
				})
			}
		}
		wg.Wait()
	}
	// A last, clean runner per pipeline finishes what is left, after the
	// operator has resolved what waits for one.
	for p, dir := range dirs {
		for attempt := 0; ; attempt++ {
			for resolve(p) > 0 {
				time.Sleep(500 * time.Millisecond)
			}
			pr := runner(t, srv.URL, dir, pipeline(p), fmt.Sprintf("final-%d", p))
			code := pr.wait(t, 3*time.Minute)
			if code == 0 {
				break
			}
			if attempt == 5 {
				t.Fatalf("final run of %s exited %d:\n%s", pipeline(p), code, pr.out.String())
			}
		}
	}

	// Exactly once: every change's effect landed on its target exactly
	// once, no two executions of a change were ever proctest.Running at once, and the
	// fence accepted no write from a stale token.
	var changes, executions, doubles, overlapping int
	for p, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".yaml")
			if !ok {
				continue
			}
			changes++
			ss := spans(readJournal(t, filepath.Join(dir, "journal."+id)))
			executions += len(ss)
			if o := overlaps(ss); len(o) > 0 {
				overlapping += len(o)
				t.Errorf("%s/%s: executions overlapped: %v", pipeline(p), id, o)
			}
			if w := accepted(t, dir, id); len(w) != 1 {
				doubles++
				t.Errorf("%s/%s: the target accepted %d writes: %v", pipeline(p), id, len(w), w)
			}
			last, _, err := prod.Last(ctx, pipeline(p), id)
			if err != nil || (last.State() != events.StateApplied && last.State() != events.StateManuallyApplied) {
				t.Errorf("%s/%s ends %s (%v)", pipeline(p), id, last.State(), err)
			}
		}
	}
	st, _ := project(t, srv.JS)
	rep, err := verify.Verify(ctx, srv.JS, st, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Drift() || rep.Tampered() || len(rep.Unacknowledged()) > 0 {
		t.Errorf("verify: drift %v, tampered %v, unacknowledged stale tokens %v", rep.Drift(), rep.Tampered(), rep.Unacknowledged())
	}
	t.Logf("process soak: %d rounds, %d runner processes (%d killed with SIGKILL, %d paused past the lease), %d changes, %d executions, "+
		"%d overlap records, %d operator resolutions, %d stale-token events (all acknowledged), %d stream events; "+
		"double executions %d, overlapping executions %d",
		*soakRounds, runs, kills, pauses, changes, executions, overlapsRecorded, resolutions, len(rep.StaleTokens), rep.StreamEvents, doubles, overlapping)
}

func pipeline(p int) string { return fmt.Sprint("pipeline-", p) }

// accepted lists the execution ids whose writes the target accepted for
// a change.
func accepted(t *testing.T, dir, resource string) []string {
	t.Helper()
	path := filepath.Join(dir, "target.db")
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT text FROM writes WHERE resource = ? ORDER BY id`, resource)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil
		}
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}
