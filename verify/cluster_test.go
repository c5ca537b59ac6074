package verify_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/verify"
)

// publishMany publishes n events over changes changes (a start and a
// success each run) with the producer's asynchronous batch.
func publishMany(t *testing.T, prod *producer.Producer, pipeline string, n, changes int) {
	t.Helper()
	batch := prod.NewBatch()
	for i := range n {
		typ := events.ExecutionStarted
		if i%2 == 1 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, pipeline, fmt.Sprintf("%05d-change", (i/2)%changes))
		e.ExecutionID, e.Author, e.Order = fmt.Sprint("exec-", i/2), "alice@example.com", fmt.Sprintf("%05d", (i/2)%changes)
		if err := batch.Add(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		if i%2000 == 1999 || i == n-1 {
			if _, err := batch.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// waitCurrent waits until every replica of stream is current.
func waitCurrent(t *testing.T, js jetstream.JetStream, stream string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, stream)
		cancel()
		if err == nil && s.CachedInfo().Cluster != nil && s.CachedInfo().Cluster.Leader != "" {
			ok := len(s.CachedInfo().Cluster.Replicas) == 2
			for _, r := range s.CachedInfo().Cluster.Replicas {
				ok = ok && r.Current && !r.Offline
			}
			if ok {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("stream %s: replicas not current after %s", stream, timeout)
}

// scanConsumerHost is the node that hosts the scan's consumer, -1 if
// there is none.
func scanConsumerHost(t *testing.T, js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	l := s.ListConsumers(ctx)
	host := -1
	for ci := range l.Info() {
		if strings.HasPrefix(ci.Name, "auditflow-scan-") && ci.Cluster != nil {
			_, _ = fmt.Sscanf(ci.Cluster.Leader, "n%d", &host)
		}
	}
	return host
}

// msgRetry is what projector.Scan logs when it starts over.
const msgRetry = "read stream: retrying"

// consumersLeft lists the consumers on stream, waiting up to timeout for
// there to be none.
func consumersLeft(t *testing.T, js jetstream.JetStream, stream string, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var names []string
		s, err := js.Stream(ctx, stream)
		if err == nil {
			l := s.ConsumerNames(ctx)
			for n := range l.Name() {
				names = append(names, n)
			}
			err = l.Err()
		}
		cancel()
		if err == nil && len(names) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("list consumers: %v", err)
			}
			return names
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestReplayAndVerifyRideOutLeaderLoss: on a 3-node cluster with an R3
// stream, the node that leads the stream and hosts the scan's consumer is
// killed while replay reads the stream, and again while verify reads it. Both complete: the replayed store holds
// every event, verify finds no drift, and no consumer is left behind.
func TestReplayAndVerifyRideOutLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("kills cluster nodes; takes 20-40 s")
	}
	const n = 20_000
	start := time.Now()
	c := natstest.StartCluster(t, 3)
	_, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs := natstest.CountingLogger(t)
	log := logs.Logger
	streamCfg := producer.StreamConfig{Replicas: 3}
	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true, Stream: streamCfg, RetryFor: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	publishMany(t, prod, "billing", n, 500)
	t.Logf("cluster up, %d events published in %s", n, time.Since(start).Round(time.Millisecond))

	// Once the reader is under way, move the stream's leadership (step
	// downs) to the node that hosts the scan's consumer, then kill that
	// node: the stream loses its leader and the scan its consumer. The
	// callback blocks until it is done, so the scan is mid-stream.
	killAt := func(what string, at int, read func() int) (func(), *int) {
		killed := -1
		return func() {
			if killed >= 0 || read() < at {
				return
			}
			host := scanConsumerHost(t, js)
			for range 6 {
				if l := c.WaitStreamLeader("AUDIT", 10*time.Second); l == host || host < 0 {
					break
				}
				t.Logf("%s: stream leader stepped down to node %d", what, c.StepDown("AUDIT"))
			}
			killed = c.WaitStreamLeader("AUDIT", 10*time.Second)
			t.Logf("%s: killing node %d, the stream leader, after %d events (the scan's consumer is on node %d)", what, killed, read(), host)
			c.Kill(killed)
		}, &killed
	}

	st, _ := openSQLite(t)
	var applied uint64
	kill, killed := killAt("replay", 5_000, func() int { return int(applied) })
	t0 := time.Now()
	prog, err := projector.Replay(ctx, js, st, projector.ReplayConfig{Logger: log, Progress: func(p projector.ReplayProgress) {
		applied = p.Applied
		kill()
	}})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if *killed < 0 {
		t.Fatal("replay ended before the leader was killed")
	}
	t.Logf("replay: %d events in %s across the kill, %d retries", prog.Applied, time.Since(t0).Round(time.Millisecond), logs.Count(msgRetry))
	if prog.Applied != n || prog.Seq != n {
		t.Fatalf("replay applied %d events up to seq %d, want %d", prog.Applied, prog.Seq, n)
	}
	c.Restart(*killed)
	waitCurrent(t, js, "AUDIT", 30*time.Second)

	var read int
	kill, killed = killAt("verify", 8_000, func() int { return read })
	t0 = time.Now()
	rep, err := verify.Verify(ctx, js, st, verify.Config{Logger: log, Progress: func(streamRead, _ int) {
		read = streamRead
		kill()
	}})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if *killed < 0 {
		t.Fatal("verify ended before the leader was killed")
	}
	t.Logf("verify: %d events in %s across the kill, %d retries in all", rep.StreamEvents, time.Since(t0).Round(time.Millisecond), logs.Count(msgRetry))
	if rep.Drift() || rep.Tampered() || len(rep.OutOfChain) > 0 || rep.StreamEvents != n || rep.StoreRows != n || rep.LastSeq != n {
		t.Fatalf("want no drift and every event in its chain over %d events, got %+v", n, rep)
	}
	c.Restart(*killed)

	// A replay from the middle asks the cluster what precedes the first
	// event of each change it meets (any replica may answer a direct get):
	// its verdicts are the full replay's.
	tail, _ := openSQLite(t)
	if _, err := projector.Replay(ctx, js, tail, projector.ReplayConfig{Logger: log, FromSeq: n / 2}); err != nil {
		t.Fatalf("replay from %d: %v", n/2, err)
	}
	full, _ := st.History(ctx, stores.HistoryQuery{Limit: n / 2})
	half, _ := tail.History(ctx, stores.HistoryQuery{Limit: n / 2})
	if len(half) != len(full) || len(half) == 0 {
		t.Fatalf("replay from %d: %d rows, want %d", n/2, len(half), len(full))
	}
	for i := range half {
		if half[i].Seq != full[i].Seq || half[i].Chain != full[i].Chain || half[i].Chain != "" {
			t.Fatalf("replay from %d: row %d chain %q, the full replay's %q", n/2, half[i].Seq, half[i].Chain, full[i].Chain)
		}
	}
	t0 = time.Now()
	if left := consumersLeft(t, js, "AUDIT", 30*time.Second); len(left) > 0 {
		t.Fatalf("consumers left on the stream: %v", left)
	}
	t.Logf("no consumer left on the stream %s after the restart", time.Since(t0).Round(time.Millisecond))
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
