package producer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// Log messages the cluster tests count (see producer.go and retry.go).
const (
	msgPublishRetry = "publish failed, retrying"
	msgSpurious     = "publish refused for a wrong last sequence although the change is at the expected one; retrying"
	msgBehind       = "publish refused for a wrong last sequence and the change reads older than expected; retrying"
)

// TestClusterPublishRidesOutLeaderKills: writers publish sequence-guarded
// chains of events (as runners do) on an R3 stream while the stream's
// leader is killed, twice. Every publish must succeed within the retry
// budget, land exactly once and keep its change's chain intact.
func TestClusterPublishRidesOutLeaderKills(t *testing.T) {
	if testing.Short() {
		t.Skip("kills cluster nodes; takes 10-25 s")
	}
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	logs := natstest.CountingLogger(t)
	cfg := producer.Config{CreateStream: true, Stream: producer.StreamConfig{Replicas: 3}, RetryFor: 30 * time.Second, Logger: logs.Logger}

	const writers = 8
	type chain struct {
		ids   []string
		heads []producer.Head
		err   error
	}
	chains := make([]chain, writers)
	var published atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		_, js := c.Connect(t) // one connection per writer, as separate processes have
		p, err := producer.New(ctx, js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			ch := &chains[w]
			change := fmt.Sprintf("change-%d", w)
			var head producer.Head
			execID := ""
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				typ := events.ExecutionSucceeded
				if i%2 == 0 {
					typ, execID = events.ExecutionStarted, events.NewID()
				}
				e := events.New(typ, "billing", change)
				e.ExecutionID = execID
				h, err := p.Publish(ctx, e, producer.After(head))
				if err != nil {
					ch.err = fmt.Errorf("%s event %d (%s): %w", change, i, typ, err)
					return
				}
				ch.ids, ch.heads, head = append(ch.ids, e.ID), append(ch.heads, h), h
				published.Add(1)
				time.Sleep(5 * time.Millisecond) // keep the event count (and the check) modest
			}
		})
	}

	const stream = producer.DefaultStreamName
	waitFor := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(40 * time.Second)
		for published.Load() < n {
			if time.Now().After(deadline) {
				t.Errorf("publishing stalled at %d events (waiting for %d)", published.Load(), n)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(200)
	var stalls []string
	for kill := range 2 {
		leader := c.WaitStreamLeader(stream, 10*time.Second)
		at := published.Load()
		killed := time.Now()
		c.Kill(leader)
		waitFor(at + writers) // every writer, or most, got through again
		stall := time.Since(killed)
		newLeader := c.StreamLeader(stream)
		stalls = append(stalls, fmt.Sprintf("kill %d: node %d at event %d, publishing again after %s (new leader node %d)",
			kill+1, leader, at, stall.Round(10*time.Millisecond), newLeader))
		time.Sleep(300 * time.Millisecond)
		c.Restart(leader)
		waitFor(published.Load() + 100)
	}
	close(stop)
	wg.Wait()

	total := 0
	for _, ch := range chains {
		if ch.err != nil {
			t.Error(ch.err)
		}
		total += len(ch.ids)
	}
	if t.Failed() {
		return
	}
	// The stream holds exactly the published events, each once, in each
	// change's order, chained.
	_, js := c.Connect(t)
	byChange := map[string][]natstest.Stored{}
	for _, e := range natstest.ReadEvents(t, js, stream) {
		byChange[e.ChangeID] = append(byChange[e.ChangeID], e)
	}
	stored := 0
	for w, ch := range chains {
		got := byChange[fmt.Sprintf("change-%d", w)]
		stored += len(got)
		if len(got) != len(ch.ids) {
			t.Errorf("change-%d: %d events stored, %d published", w, len(got), len(ch.ids))
			continue
		}
		prev := ""
		for i, m := range got {
			if m.ID != ch.ids[i] || m.Seq != ch.heads[i].Seq || m.PrevHash != prev {
				t.Errorf("change-%d event %d: stored %s at %d after %q; published %s at %d after %q",
					w, i, m.ID, m.Seq, m.PrevHash, ch.ids[i], ch.heads[i].Seq, prev)
				break
			}
			prev = ch.heads[i].Hash
		}
	}
	if stored != total {
		t.Errorf("stream holds %d events, %d were published", stored, total)
	}
	t.Logf("%d writers published %d sequence-guarded events on an R3 stream; %v", writers, total, stalls)
	t.Logf("publish retries %d, spurious wrong-last-sequence refusals %d, refusals with a lagging re-read %d",
		logs.Count(msgPublishRetry), logs.Count(msgSpurious), logs.Count(msgBehind))
}

// TestClusterNewWhileLeaderDown: a producer started right after the
// stream's leader was killed waits for the new leader instead of failing
// after one request timeout.
func TestClusterNewWhileLeaderDown(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a cluster node; takes 5-10 s")
	}
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	logs := natstest.CountingLogger(t)
	cfg := producer.Config{CreateStream: true, Stream: producer.StreamConfig{Replicas: 3}, RetryFor: 30 * time.Second, Logger: logs.Logger}
	_, js := c.Connect(t)
	p, err := producer.New(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := events.New(events.ExecutionStarted, "billing", "c1")
	first.ExecutionID = events.NewID()
	h, err := p.Publish(ctx, first, producer.ExpectLastSeq(0))
	if err != nil {
		t.Fatal(err)
	}

	leader := c.WaitStreamLeader(producer.DefaultStreamName, 10*time.Second)
	meta := c.MetaLeader()
	c.Kill(leader)
	start := time.Now()
	_, js2 := c.Connect(t)
	p2, err := producer.New(ctx, js2, cfg)
	if err != nil {
		t.Fatalf("New while the stream leader is down: %v (after %s)", err, time.Since(start))
	}
	took := time.Since(start)
	next := events.New(events.ExecutionSucceeded, "billing", "c1")
	next.ExecutionID = first.ExecutionID
	if _, err := p2.Publish(ctx, next, producer.After(h)); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed stream leader node %d (meta leader was node %d); New took %s with %d retries; new stream leader node %d",
		leader, meta, took.Round(10*time.Millisecond), logs.Count("ensure stream AUDIT failed, retrying"), c.StreamLeader(producer.DefaultStreamName))

	// Not everything is worth retrying: a mismatched config fails at once.
	start = time.Now()
	_, err = producer.New(ctx, js2, producer.Config{Stream: producer.StreamConfig{Replicas: 1}, RetryFor: 30 * time.Second})
	if !errors.Is(err, producer.ErrStreamMismatch) || time.Since(start) > 5*time.Second {
		t.Fatalf("New with another replica count = %v after %s, want ErrStreamMismatch at once", err, time.Since(start))
	}
}

// TestClusterConcurrentRetryOfOneEvent publishes each event of a chain
// twice at once, as a retry racing its own original would (after a
// timeout during a fail-over): the stream stores it once, and both calls
// return its Head. On a replicated stream the second one usually arrives
// while the first is still being proposed and is answered "duplicate
// message id is in process" (10158): that must be retried, not reported.
func TestClusterConcurrentRetryOfOneEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	logs := natstest.CountingLogger(t)
	cfg := producer.Config{CreateStream: true, Stream: producer.StreamConfig{Replicas: 3}, Logger: logs.Logger}
	_, js1 := c.Connect(t)
	_, js2 := c.Connect(t)
	p1, err := producer.New(ctx, js1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := producer.New(ctx, js2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	var head producer.Head
	for i := range n {
		e := events.New(events.ExecutionStarted, "billing", "c1")
		e.ExecutionID = events.NewID()
		var h1, h2 producer.Head
		var err1, err2 error
		var wg sync.WaitGroup
		wg.Go(func() { h1, err1 = p1.Publish(ctx, e, producer.After(head)) })
		wg.Go(func() { h2, err2 = p2.Publish(ctx, e, producer.After(head)) })
		wg.Wait()
		if err1 != nil || err2 != nil || h1 != h2 {
			t.Fatalf("event %d published twice at once: %+v, %v and %+v, %v; want one Head twice", i, h1, err1, h2, err2)
		}
		head = h1
	}
	s, err := js1.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().State.Msgs; got != n {
		t.Fatalf("stream holds %d events, want %d", got, n)
	}
	t.Logf("%d events each published twice at once: spurious wrong-last-sequence refusals retried %d, with a lagging re-read %d",
		n, logs.Count(msgSpurious), logs.Count(msgBehind))
}

// TestClusterRacingWritersOneWins races writers of different events on one
// change, round after round, on an R3 stream: each round exactly one wins
// and the others get ErrConflict. A loser often arrives while the winner
// is still being proposed and is refused (10164) before the winner is
// readable: the re-read shows the expected sequence, so it retries and is
// refused again once the winner is stored, now as a real conflict.
func TestClusterRacingWritersOneWins(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	logs := natstest.CountingLogger(t)
	cfg := producer.Config{CreateStream: true, Stream: producer.StreamConfig{Replicas: 3}, Logger: logs.Logger}
	const writers, rounds = 4, 50
	ps := make([]*producer.Producer, writers)
	for i := range ps {
		_, js := c.Connect(t)
		p, err := producer.New(ctx, js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ps[i] = p
	}
	var head producer.Head
	for r := range rounds {
		heads := make([]producer.Head, writers)
		errs := make([]error, writers)
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Go(func() {
				e := events.New(events.ExecutionStarted, "billing", "contested")
				e.ExecutionID = events.NewID()
				heads[i], errs[i] = p.Publish(ctx, e, producer.After(head))
			})
		}
		wg.Wait()
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
				head = heads[i]
			case !errors.Is(err, producer.ErrConflict):
				t.Fatalf("round %d writer %d: %v", r, i, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners, want 1 (%v)", r, wins, errs)
		}
	}
	t.Logf("%d rounds of %d racing writers: one winner each; spurious wrong-last-sequence refusals retried %d, with a lagging re-read %d",
		rounds, writers, logs.Count(msgSpurious), logs.Count(msgBehind))
}
