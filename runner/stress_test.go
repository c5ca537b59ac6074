//go:build stress

// The soak test: many runners racing on many pipelines while runners are
// killed mid-change and projectors crash around their store writes; at the
// end the store must equal the stream and no change may have been applied
// twice. Run it with:
//
//	go test -tags stress -run Soak -timeout 30m ./runner -soak.rounds 20
package runner_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

var soakRounds = flag.Int("soak.rounds", 5, "rounds of racing runners")

// crashyStore fails some writes before or after doing them (a crash
// before the ack), around the real store.
type crashyStore struct {
	stores.Store
	rng *rand.Rand
	mu  sync.Mutex
}

func (c *crashyStore) Apply(ctx context.Context, b stores.Batch) error {
	c.mu.Lock()
	roll := c.rng.IntN(10)
	c.mu.Unlock()
	if roll == 0 {
		return errors.New("injected: store unavailable")
	}
	if err := c.Store.Apply(ctx, b); err != nil {
		return err
	}
	if roll == 1 {
		return errors.New("injected: crashed after writing")
	}
	return nil
}

func TestSoak(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	crashy := &crashyStore{Store: st, rng: rand.New(rand.NewPCG(1, 2))}
	pctx, stopProjectors := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	for i := range 2 {
		_, js := srv.Connect(t)
		p, err := projector.New(ctx, js, crashy, projector.Config{CreateStreams: true, StoreName: "sqlite", BatchSize: 64, RetryMax: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		pwg.Go(func() { _ = p.Run(pctx) })
		_ = i
	}

	// Each round adds changesPer new changes to every pipeline, and
	// runnersPer runners race to apply them.
	const pipelines, changesPer, runnersPer = 4, 12, 5
	rounds := *soakRounds
	applied := make([][]atomic.Int32, pipelines)
	for p := range applied {
		applied[p] = make([]atomic.Int32, changesPer*rounds)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var rngMu sync.Mutex
	chance := func(n int) bool { rngMu.Lock(); defer rngMu.Unlock(); return rng.IntN(n) == 0 }

	for round := range rounds {
		var wg sync.WaitGroup
		for p := range pipelines {
			for r := range runnersPer {
				nc, js := srv.Connect(t)
				killed := atomic.Bool{}
				var changes []runner.Change
				for c := range changesPer * (round + 1) {
					changes = append(changes, runner.Change{
						ID: fmt.Sprintf("%03d", c), Order: fmt.Sprintf("%03d", c), Recovery: events.AlwaysRetry,
						Apply: func(context.Context) error {
							if chance(40) { // killed after Started, before applying
								killed.Store(true)
								nc.Close()
								return errors.New("killed")
							}
							applied[p][c].Add(1)
							return nil
						},
					})
				}
				rn := soakRunner(t, js, fmt.Sprint("pipeline-", p), fmt.Sprintf("r%d-%d", round, r))
				wg.Go(func() {
					_, err := rn.Run(ctx, changes)
					if err != nil && !killed.Load() && !errors.Is(err, runner.ErrLockNotObtained) {
						t.Errorf("round %d runner %d: %v", round, r, err)
					}
				})
			}
		}
		wg.Wait()
	}
	// A last, clean runner per pipeline finishes whatever kills left open.
	for p := range pipelines {
		var changes []runner.Change
		for c := range changesPer * rounds {
			changes = append(changes, runner.Change{ID: fmt.Sprintf("%03d", c), Order: fmt.Sprintf("%03d", c), Recovery: events.AlwaysRetry,
				Apply: func(context.Context) error { applied[p][c].Add(1); return nil }})
		}
		if _, err := soakRunner(t, srv.JS, fmt.Sprint("pipeline-", p), "final").Run(ctx, changes); err != nil {
			t.Fatal(err)
		}
	}

	// Every change applied exactly once: kills happened before Apply, and
	// the lock and expected sequences kept racers off each other.
	doubles := 0
	for p := range applied {
		for c := range applied[p] {
			if n := applied[p][c].Load(); n != 1 {
				t.Errorf("pipeline-%d change %03d applied %d times", p, c, n)
				doubles++
			}
		}
	}
	// The store equals the stream, despite the injected crashes.
	s, err := srv.JS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	total := s.CachedInfo().State.Msgs
	deadline := time.Now().Add(time.Minute)
	for {
		n := 0
		q := stores.HistoryQuery{Limit: stores.MaxLimit}
		for {
			page, err := st.History(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			n += len(page)
			q.BeforeSeq = page[len(page)-1].Seq
		}
		if uint64(n) == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store has %d rows, stream %d events", n, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopProjectors()
	pwg.Wait()
	prod, _ := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	for p := range pipelines {
		for c := range changesPer * rounds {
			last, head, err := prod.Last(ctx, fmt.Sprint("pipeline-", p), fmt.Sprintf("%03d", c))
			seq := head.Seq
			if err != nil {
				t.Fatal(err)
			}
			is, err := st.Issues(ctx, stores.IssueQuery{Pipeline: last.Pipeline, ChangeID: last.ChangeID})
			if err != nil || len(is) != 1 || is[0].Seq != seq || is[0].State != events.StateApplied {
				t.Fatalf("issue for %s/%s = %+v (%v); stream's last is seq %d %s", last.Pipeline, last.ChangeID, is, err, seq, last.State())
			}
		}
	}
	t.Logf("%d events, %d rounds, stream and store agree; double executions %d", total, rounds, doubles)
}

func soakRunner(t *testing.T, js jetstream.JetStream, pipeline, id string) *runner.Runner {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true, RetryFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true, Lease: time.Second, RetryInterval: 20 * time.Millisecond, GiveUpAfter: time.Minute, Owner: id})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: pipeline, RunnerID: id})
	if err != nil {
		t.Fatal(err)
	}
	return r
}
