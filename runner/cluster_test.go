package runner_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

const (
	auditStream = producer.DefaultStreamName
	lockStream  = "KV_" + lock.DefaultBucket
)

// TestClusterRacingRunnersSurviveLeaderKill: 16 runners, each with its own
// connection to a 3-node cluster (R3 audit stream and lock bucket), race to
// apply one pipeline of 8 changes while stream leaders are killed mid-run
// (and restarted). Each change must be applied exactly once, and the
// fail-overs must not show up as errors, conflicts or UNCERTAIN changes.
func TestClusterRacingRunnersSurviveLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills cluster nodes; takes 30-50 s")
	}
	for _, c := range []struct {
		name  string
		lease time.Duration // the lock's lease
		kills []kill
	}{
		// The lock bucket's leader is kept off the node killed for the audit
		// stream (see below).
		{"audit leader twice", 5 * time.Second, []kill{{change: 1, stream: auditStream}, {change: 4, stream: auditStream}}},
		// A lock stream fail-over stalls lease refreshes as long as it
		// stalls publishes (up to ~10 s): the lease must outlast that plus
		// its margin and refresh interval, about 2.5 stalls.
		{"lock leader then audit leader", 30 * time.Second, []kill{{change: 1, stream: lockStream, holdUntilLeader: true}, {change: 4, stream: auditStream}}},
	} {
		t.Run(c.name, func(t *testing.T) { raceThroughKills(t, c.lease, c.kills) })
	}
}

// kill is a node kill during a run: the leader of stream is killed while
// change is being applied; the change's Apply returns right after the
// kill (so that recording its outcome meets the fail-over), or, if
// holdUntilLeader, once the stream has a new leader.
type kill struct {
	change          int
	stream          string
	holdUntilLeader bool
}

func raceThroughKills(t *testing.T, lease time.Duration, kills []kill) {
	const (
		runners  = 16
		changes  = 8
		pipeline = "billing"
	)
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	logs := natstest.CountingLogger(t)
	log := logs.Logger

	counts := make([]atomic.Int32, changes)
	gates := make([]chan struct{}, changes) // closed by the test when a killing change may finish
	for _, k := range kills {
		gates[k.change] = make(chan struct{})
	}
	var defs []runner.Change
	for i := range changes {
		defs = append(defs, runner.Change{
			ID: fmt.Sprintf("%03d-change", i), Author: "alice", Order: fmt.Sprintf("%03d", i), TargetSystem: "orders-db",
			Apply: func(context.Context) error {
				counts[i].Add(1)
				if gates[i] != nil {
					<-gates[i]
				}
				time.Sleep(100 * time.Millisecond)
				return nil
			},
		})
	}
	rs := make([]*runner.Runner, runners)
	for i := range rs {
		_, js := c.Connect(t) // one connection per runner, as separate processes have
		id := fmt.Sprint("runner-", i)
		prod, err := producer.New(ctx, js, producer.Config{CreateStream: true, Stream: producer.StreamConfig{Replicas: 3}, RetryFor: 30 * time.Second, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true, Replicas: 3, Lease: lease, RetryInterval: 50 * time.Millisecond,
			GiveUpAfter: 2 * time.Minute, RetryFor: 30 * time.Second, Owner: id, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if rs[i], err = runner.New(prod, locker, runner.Config{Pipeline: pipeline, RunnerID: id, Logger: log.With("runner", id)}); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, runners)
	for i, r := range rs {
		wg.Go(func() {
			<-start
			_, errs[i] = r.Run(ctx, defs)
		})
	}
	t.Cleanup(func() { // let a failed test's runners finish
		for _, g := range gates {
			select {
			case <-g:
			default:
				if g != nil {
					close(g)
				}
			}
		}
		wg.Wait()
	})
	began := time.Now()
	close(start)

	waitFor := func(what string, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for !done() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 45s (applied: %v)", what, loadCounts(counts))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var report []string
	for n, k := range kills {
		waitFor(fmt.Sprintf("change %d started", k.change), func() bool { return counts[k.change].Load() > 0 })
		leader := c.WaitStreamLeader(k.stream, 15*time.Second)
		if k.stream == auditStream && c.WaitStreamLeader(lockStream, 15*time.Second) == leader {
			// Kill the audit leader only: with a short lease the lock would
			// not survive its own fail-over, and with a long one a release
			// that meets the fail-over (one attempt) leaves the others
			// waiting out the lease.
			c.StepDown(lockStream)
		}
		at := time.Since(began)
		c.Kill(leader)
		if k.holdUntilLeader {
			waitFor("new "+k.stream+" leader", func() bool { return c.StreamLeader(k.stream) >= 0 })
		}
		close(gates[k.change])
		next := k.change + 1
		if next < changes {
			waitFor(fmt.Sprintf("change %d started", next), func() bool { return counts[next].Load() > 0 })
		}
		report = append(report, fmt.Sprintf("kill %d: %s leader node %d at %s while change %d ran, next change started %s later",
			n+1, k.stream, leader, at.Round(10*time.Millisecond), k.change, (time.Since(began)-at).Round(10*time.Millisecond)))
		c.Restart(leader)
	}
	wg.Wait()
	took := time.Since(began)

	notObtained := 0
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, runner.ErrLockNotObtained):
			notObtained++
		default:
			t.Errorf("runner-%d: %v", i, err)
			if errors.Is(err, producer.ErrConflict) || errors.Is(err, runner.ErrConcurrentRun) {
				t.Errorf("runner-%d: a fail-over surfaced as a conflict", i)
			}
		}
	}
	for i := range counts {
		if n := counts[i].Load(); n != 1 {
			t.Errorf("change %d applied %d times", i, n)
		}
	}
	_, js := c.Connect(t)
	recorded := map[string][]events.Type{}
	for _, e := range natstest.ReadEvents(t, js, auditStream) {
		recorded[e.ChangeID] = append(recorded[e.ChangeID], e.Type)
	}
	uncertain := 0
	for _, d := range defs {
		got := recorded[d.ID]
		for _, typ := range got {
			if typ == events.ExecutionMarkedUncertain {
				uncertain++
			}
		}
		if !slices.Equal(got, []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}) {
			t.Errorf("change %s recorded %v", d.ID, got)
		}
	}
	if uncertain > 0 {
		t.Errorf("%d ExecutionMarkedUncertain events on the stream", uncertain)
	}
	t.Logf("%d runners, %d changes, lease %s, all done in %s; %s", runners, changes, lease, took.Round(10*time.Millisecond), strings.Join(report, "; "))
	t.Logf("each change applied once: %v; %d runners gave up on the lock; %d ExecutionMarkedUncertain; publishes retried %d times, "+
		"spurious wrong-last-sequence refusals %d (re-read lagging %d), last-event reads retried %d, lock releases failed %d",
		!t.Failed(), notObtained, uncertain, logs.Count("publish failed, retrying"),
		logs.Count("publish refused for a wrong last sequence although the change is at the expected one; retrying"),
		logs.Count("publish refused for a wrong last sequence and the change reads older than expected; retrying"),
		logs.Count("read last event failed, retrying"), logs.Count("lock release failed; it expires with its lease"))
}

func loadCounts(counts []atomic.Int32) []int32 {
	out := make([]int32, len(counts))
	for i := range counts {
		out[i] = counts[i].Load()
	}
	return out
}
