package projector_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

type env struct {
	srv   *natstest.Server
	prod  *producer.Producer
	store *sqlitestore.Store
}

func setup(t testing.TB) *env {
	t.Helper()
	srv := natstest.Start(t)
	prod, err := producer.New(context.Background(), srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return &env{srv: srv, prod: prod, store: st}
}

// run starts a projector into store and returns it with a stop function
// that cancels it and waits for Run to return.
func run(t testing.TB, js jetstream.JetStream, store stores.Store, cfg projector.Config) (*projector.Projector, func()) {
	t.Helper()
	if cfg.StoreName == "" {
		cfg.StoreName = "sqlite"
	}
	if cfg.Logger == nil {
		cfg.Logger = natstest.Logger(t)
	}
	cfg.CreateStreams = true // a fresh test server: create what auditflow init would
	p, err := projector.New(context.Background(), js, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

func waitCaughtUp(t testing.TB, p *projector.Projector) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitCaughtUp(ctx); err != nil {
		t.Fatalf("projector did not catch up: %v (stats %+v)", err, p.Stats())
	}
}

// publish emits n events: for each of changes changes, Started then
// Succeeded, except every fifth change fails.
func publish(t testing.TB, prod *producer.Producer, pipeline string, changes int) []events.Event {
	t.Helper()
	b := prod.NewBatch()
	var out []events.Event
	for c := range changes {
		id := fmt.Sprintf("%04d-change", c)
		s := events.New(events.ExecutionStarted, pipeline, id)
		s.ExecutionID = events.NewID()
		end := events.New(events.ExecutionSucceeded, pipeline, id)
		if c%5 == 0 {
			end = events.New(events.ExecutionFailed, pipeline, id)
			end.ErrorMessage = "exit status 1"
		}
		end.ExecutionID = s.ExecutionID
		for _, e := range []events.Event{s, end} {
			if err := b.Add(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	if _, err := b.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out
}

func countHistory(t testing.TB, s stores.Store) int {
	t.Helper()
	n, q := 0, stores.HistoryQuery{Limit: stores.MaxLimit}
	for {
		page, err := s.History(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return n
		}
		n += len(page)
		q.BeforeSeq = page[len(page)-1].Seq
	}
}

func checkProjection(t testing.TB, s stores.Store, pipeline string, changes int) {
	t.Helper()
	rows, err := s.History(context.Background(), stores.HistoryQuery{Pipeline: pipeline, Limit: stores.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2*changes {
		t.Fatalf("changeLog has %d rows for %s, want %d", len(rows), pipeline, 2*changes)
	}
	open, err := s.Issues(context.Background(), stores.IssueQuery{Pipeline: pipeline, Status: stores.IssueOpen, Limit: stores.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if want := (changes + 4) / 5; len(open) != want {
		t.Fatalf("%d open issues, want %d", len(open), want)
	}
	all, err := s.Issues(context.Background(), stores.IssueQuery{Pipeline: pipeline, Limit: stores.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != changes {
		t.Fatalf("%d issue rows, want %d", len(all), changes)
	}
	for _, i := range all {
		if i.Status == stores.IssueInProgress {
			t.Fatalf("change %s still in progress: a start overwrote its end", i.ChangeID)
		}
	}
}

func TestProjectsEverything(t *testing.T) {
	e := setup(t)
	writes := make(chan projector.AuditWrite, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := projector.NewWriteSubscription(ctx, e.srv.Conn, "", "sqlite")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = sub.Run(ctx, func(w projector.AuditWrite) { writes <- w }) })
	defer wg.Wait()
	defer cancel()
	publish(t, e.prod, "billing", 500)
	p, _ := run(t, e.srv.JS, e.store, projector.Config{BatchSize: 100, Workers: 3})
	waitCaughtUp(t, p)
	checkProjection(t, e.store, "billing", 500)
	// The last batch may claim less than the end (another worker's was
	// still being written); the projector records the rest right after.
	waitFor(t, "the checkpoint to reach the end", 5*time.Second, func() bool {
		cp, _ := e.store.Checkpoint(context.Background(), "projector-sqlite")
		return cp == 1000
	})
	// AuditWrite events account for every write.
	total := 0
	deadline := time.After(5 * time.Second)
	for total < 1000 {
		select {
		case w := <-writes:
			if w.Error != "" || w.Count == 0 || w.FirstSeq == 0 || w.LastSeq < w.FirstSeq {
				t.Fatalf("bad AuditWrite %+v", w)
			}
			total += w.Count
		case <-deadline:
			t.Fatalf("AuditWrites cover %d events, want 1000", total)
		}
	}
}

// flakyStore is the real store with faults injected around it.
type flakyStore struct {
	stores.Store
	failBefore atomic.Int32 // fail this many Applies without writing
	failAfter  atomic.Int32 // write, then report failure: a crash before the ack
	block      chan struct{}
	afterWrite func() // called when a write is about to be reported failed
	calls      atomic.Int32
}

func (f *flakyStore) Apply(ctx context.Context, b stores.Batch) error {
	f.calls.Add(1)
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.failBefore.Add(-1) >= 0 {
		return errors.New("injected: store unavailable")
	}
	if err := f.Store.Apply(ctx, b); err != nil {
		return err
	}
	if f.failAfter.Add(-1) >= 0 {
		if f.afterWrite != nil {
			f.afterWrite()
		}
		return errors.New("injected: written, but the process died before acknowledging")
	}
	return nil
}

func TestRedeliveredAndReplayedBatchesLeaveNoDuplicates(t *testing.T) {
	e := setup(t)
	publish(t, e.prod, "billing", 300)

	// 1. Batches written but reported failed (as if the ack were lost) are
	// applied again by the projector's own retry.
	flaky := &flakyStore{Store: e.store}
	flaky.failAfter.Store(6)
	p, stop := run(t, e.srv.JS, flaky, projector.Config{BatchSize: 50, Workers: 2, RetryMax: 20 * time.Millisecond})
	waitCaughtUp(t, p)
	stop()
	if r := p.Stats().Retries; r < 6 {
		t.Fatalf("%d retries, want at least 6: the fault was not injected", r)
	}
	checkProjection(t, e.store, "billing", 300)

	// 2. A projector that dies after writing and before acknowledging:
	// the server redelivers the batch to another projector.
	publish(t, e.prod, "shipping", 40)
	nc, js := e.srv.Connect(t)
	dying := &flakyStore{Store: e.store}
	dying.failAfter.Store(1 << 30)
	dying.afterWrite = func() { nc.Close() }
	_, stopDying := run(t, js, dying, projector.Config{BatchSize: 1000, AckWait: time.Second, ShutdownTimeout: 50 * time.Millisecond})
	for dying.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	stopDying()
	p2, _ := run(t, e.srv.JS, e.store, projector.Config{BatchSize: 1000, AckWait: time.Second})
	waitCaughtUp(t, p2)
	if p2.Stats().Applied != 80 {
		t.Fatalf("the survivor applied %d events, want the 80 redelivered", p2.Stats().Applied)
	}
	checkProjection(t, e.store, "shipping", 40)

	// 3. A replay from the start by a second consumer into the same store.
	p3, _ := run(t, e.srv.JS, e.store, projector.Config{Consumer: "replay", BatchSize: 77})
	waitCaughtUp(t, p3)
	if p3.Stats().Applied != 680 {
		t.Fatalf("replay applied %d events, want 680", p3.Stats().Applied)
	}
	checkProjection(t, e.store, "billing", 300)
	if n := countHistory(t, e.store); n != 680 {
		t.Fatalf("%d rows after replay, want 680", n)
	}
}

func TestStoreOutageIsRetriedWithoutLoss(t *testing.T) {
	e := setup(t)
	publish(t, e.prod, "billing", 100)
	flaky := &flakyStore{Store: e.store}
	flaky.failBefore.Store(8)
	p, _ := run(t, e.srv.JS, flaky, projector.Config{BatchSize: 40, RetryMax: 20 * time.Millisecond})
	waitCaughtUp(t, p)
	checkProjection(t, e.store, "billing", 100)
	if r := p.Stats().Retries; r < 8 {
		t.Fatalf("retries = %d, want at least 8", r)
	}
}

// TestCrashedProjectorLosesNothing stops a projector's connection while a
// batch is stuck in the store (a crash before the ack): a new projector
// picks the unacknowledged events up.
func TestCrashedProjectorLosesNothing(t *testing.T) {
	e := setup(t)
	publish(t, e.prod, "billing", 50)
	nc, js := e.srv.Connect(t)
	stuck := &flakyStore{Store: e.store, block: make(chan struct{})}
	_, stop := run(t, js, stuck, projector.Config{BatchSize: 30, AckWait: time.Second, ShutdownTimeout: 100 * time.Millisecond})
	for stuck.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	nc.Close() // the process dies with a batch in flight
	stop()
	if n := countHistory(t, e.store); n != 0 {
		t.Fatalf("%d rows written by a batch that never completed", n)
	}
	p2, _ := run(t, e.srv.JS, e.store, projector.Config{BatchSize: 30, AckWait: time.Second})
	waitCaughtUp(t, p2)
	checkProjection(t, e.store, "billing", 50)
}

// TestShutdownFinishesTheBatchInFlight cancels Run while a batch is in the
// store: Run waits for it, acknowledges it, and returns nil.
func TestShutdownFinishesTheBatchInFlight(t *testing.T) {
	e := setup(t)
	publish(t, e.prod, "billing", 10)
	slow := &flakyStore{Store: e.store, block: make(chan struct{})}
	p, stop := run(t, e.srv.JS, slow, projector.Config{BatchSize: 100})
	for slow.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Run returned before its batch was stored")
	case <-time.After(200 * time.Millisecond):
	}
	close(slow.block)
	<-stopped
	if n := countHistory(t, e.store); n != 20 {
		t.Fatalf("%d rows after shutdown, want 20", n)
	}
	if p.Stats().Applied != 20 {
		t.Fatalf("applied %d", p.Stats().Applied)
	}
	cons, err := e.srv.JS.Consumer(context.Background(), producer.DefaultStreamName, "projector-sqlite")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch not acknowledged at shutdown: %+v", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSeveralProcessesShareOneConsumer runs two projectors (separate
// connections, as separate processes would) on one durable consumer.
func TestSeveralProcessesShareOneConsumer(t *testing.T) {
	e := setup(t)
	_, js2 := e.srv.Connect(t)
	p1, _ := run(t, e.srv.JS, e.store, projector.Config{BatchSize: 25})
	p2, _ := run(t, js2, e.store, projector.Config{BatchSize: 25})
	publish(t, e.prod, "billing", 400)
	waitCaughtUp(t, p1)
	checkProjection(t, e.store, "billing", 400)
	if p1.Stats().Applied == 0 || p2.Stats().Applied == 0 {
		t.Logf("work was not shared (p1 %d, p2 %d); correctness holds either way", p1.Stats().Applied, p2.Stats().Applied)
	}
	if got := p1.Stats().Applied + p2.Stats().Applied; got < 800 {
		t.Fatalf("applied %d, want at least 800", got)
	}
}

func TestConfigValidation(t *testing.T) {
	e := setup(t)
	for _, c := range []projector.Config{
		{}, {StoreName: "s", Workers: 100}, {StoreName: "s", BatchSize: -1},
		{StoreName: "s", BatchSize: 100, MaxAckPending: 10}, {StoreName: "s", AckWait: time.Millisecond},
	} {
		if _, err := projector.New(context.Background(), e.srv.JS, e.store, c); !errors.Is(err, projector.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}

// TestFlagsStaleLockTokens: an event whose lock token is lower than one
// already recorded for its pipeline (a runner writing after its lease
// passed to another) is flagged, and still stored: the store stays a
// projection of the stream.
func TestFlagsStaleLockTokens(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	publish := func(change string, typ events.Type, token uint64) {
		t.Helper()
		pipeline := "billing"
		if change == "other" {
			pipeline = "shipping"
		}
		ev := events.New(typ, pipeline, change)
		ev.ExecutionID, ev.LockToken = "exec-"+change, token
		if typ == events.ExecutionOverlapped {
			ev.ErrorMessage = "ended after the lock passed on"
		}
		if _, err := e.prod.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	publish("a", events.ExecutionStarted, 5)
	publish("a", events.ExecutionSucceeded, 5)
	publish("b", events.ExecutionStarted, 9) // a new holder
	publish("c", events.ExecutionStarted, 5) // the old one starts another change: stale
	publish("c", events.ExecutionOverlapped, 5)
	publish("other", events.ExecutionStarted, 2) // another pipeline's tokens are its own
	p, _ := run(t, e.srv.JS, e.store, projector.Config{})
	waitCaughtUp(t, p)
	if n := p.Stats().StaleTokens; n != 2 {
		t.Fatalf("flagged %d stale-token events, want 2", n)
	}
	rows, err := e.store.History(ctx, stores.HistoryQuery{Pipeline: "billing", ChangeID: "c"})
	if err != nil || len(rows) != 2 {
		t.Fatalf("stale events not stored: %d rows (%v)", len(rows), err)
	}
}
