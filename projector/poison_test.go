package projector_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// refusingStore is the real store refusing, for good, every batch that
// holds one chosen event, as DynamoDB refuses a batch with an item over
// 400 KB: nothing of the batch is written.
type refusingStore struct {
	stores.Store
	refuse string // event id
	calls  atomic.Int32
}

func (s *refusingStore) Apply(ctx context.Context, b stores.Batch) error {
	s.calls.Add(1)
	for _, r := range b.Records {
		if r.ID == s.refuse {
			return fmt.Errorf("dynamodb: BatchWriteItem: ValidationException: Item size has exceeded the maximum allowed size (event %s): %w", r.ID, stores.ErrInvalidRecord)
		}
	}
	return s.Store.Apply(ctx, b)
}

// rawPublish publishes data as a hand-written message would be, with the
// producer's JetStream headers (which a dead letter must not copy as
// they are: they would steer its publish).
func rawPublish(t testing.TB, js jetstream.JetStream, subject string, data []byte) {
	t.Helper()
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data},
		jetstream.WithExpectStream(producer.DefaultStreamName), jetstream.WithMsgID(events.NewID())); err != nil {
		t.Fatal(err)
	}
}

// edited encodes a valid event of change and edits its JSON document.
func edited(t testing.TB, typ events.Type, change string, edit func(doc map[string]any)) []byte {
	t.Helper()
	e := events.New(typ, "billing", change)
	e.ExecutionID = "exec-" + change
	if typ == events.ExecutionFailed {
		e.ErrorMessage = "exit status 1"
	}
	b, err := events.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return b
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	edit(doc)
	if b, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	return b
}

// newerVersion makes an event of the next schema version.
func newerVersion(doc map[string]any) {
	doc["data"].(map[string]any)["schemaVersion"] = events.SchemaVersion + 1
}

// readNewer is what a build that reads the next schema version supplies
// as Config.Decode: it reads the newer version (here, one that differs
// only in its number) and the current ones.
func readNewer(b []byte) (events.Event, error) {
	var doc map[string]any
	if json.Unmarshal(b, &doc) == nil {
		if d, ok := doc["data"].(map[string]any); ok && d["schemaVersion"] == float64(events.SchemaVersion+1) {
			d["schemaVersion"] = events.SchemaVersion
			if nb, err := json.Marshal(doc); err == nil {
				b = nb
			}
		}
	}
	return events.Decode(b)
}

func subjectOf(change string) string {
	return events.Subject(events.DefaultSubjectPrefix, "billing", change)
}

// waitStored waits for a change to have a row and returns how long that took.
func waitStored(t testing.TB, s stores.Store, pipeline, change string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		rows, err := s.History(context.Background(), stores.HistoryQuery{Pipeline: pipeline, ChangeID: change})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) > 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s/%s not stored after %s", pipeline, change, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
	}
}

// deadLetters returns the dead-letter stream's messages.
func deadLetters(t testing.TB, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, projector.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// gathered returns a projector metric's value from reg.
func gathered(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s not gathered", name)
	return math.NaN()
}

// TestPoisonMessages publishes every kind of message that cannot be stored
// as it is, each followed by a valid event on another change: the valid
// event is stored within seconds; the poison is dead-lettered with a
// precise reason, or, for a newer schema version, held (left on the stream
// for a newer projector) and reported by Ready.
func TestPoisonMessages(t *testing.T) {
	refusedID := events.NewID()
	cases := []struct {
		name    string
		publish func(t *testing.T, e *env) (subject string, data []byte)
		held    bool
		reason  string // in the dead letter's reason
		copy    string
	}{
		{"invalid JSON", func(t *testing.T, e *env) (string, []byte) {
			data := []byte("not json at all")
			rawPublish(t, e.srv.JS, subjectOf("0001"), data)
			return subjectOf("0001"), data
		}, false, "events: malformed event: invalid character 'o' in literal null", projector.CopyFull},
		{"unknown type", func(t *testing.T, e *env) (string, []byte) {
			data := edited(t, events.ExecutionStarted, "0001", func(d map[string]any) { d["type"] = "io.auditflow.ExecutionExploded" })
			rawPublish(t, e.srv.JS, subjectOf("0001"), data)
			return subjectOf("0001"), data
		}, false, `events: unknown event type type: "io.auditflow.ExecutionExploded"`, projector.CopyFull},
		{"unknown field", func(t *testing.T, e *env) (string, []byte) {
			data := edited(t, events.ExecutionStarted, "0001", func(d map[string]any) { d["data"].(map[string]any)["colour"] = "red" })
			rawPublish(t, e.srv.JS, subjectOf("0001"), data)
			return subjectOf("0001"), data
		}, false, "data.colour: unknown field", projector.CopyFull},
		{"subject and payload disagree", func(t *testing.T, e *env) (string, []byte) {
			data := edited(t, events.ExecutionFailed, "0002", nil)
			rawPublish(t, e.srv.JS, subjectOf("0001"), data)
			return subjectOf("0001"), data
		}, false, `events: event on the wrong subject: event for change "0002" of pipeline "billing" published on change "0001"'s subject (audit.exec.billing.0001)`, projector.CopyFull},
		{"near-max-size junk", func(t *testing.T, e *env) (string, []byte) {
			// Just under the server's max payload, without headers: its
			// dead-letter copy with headers cannot fit.
			data := []byte(strings.Repeat("x", int(e.srv.Conn.MaxPayload())-16))
			if _, err := e.srv.JS.Publish(context.Background(), "audit.exec.poison.c4", data); err != nil {
				t.Fatal(err)
			}
			return "audit.exec.poison.c4", data
		}, false, "", projector.CopyReference},
		{"a record the store refuses", func(t *testing.T, e *env) (string, []byte) {
			ev := events.New(events.ExecutionStarted, "billing", "0001")
			ev.ID, ev.ExecutionID = refusedID, "exec-1"
			if _, err := e.prod.Publish(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			m, err := e.srv.JS.Stream(context.Background(), producer.DefaultStreamName)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := m.GetLastMsgForSubject(context.Background(), subjectOf("0001"))
			if err != nil {
				t.Fatal(err)
			}
			return subjectOf("0001"), raw.Data
		}, false, "the store refused the record: dynamodb: BatchWriteItem: ValidationException: Item size has exceeded the maximum allowed size", projector.CopyFull},
		{"newer schema version", func(t *testing.T, e *env) (string, []byte) {
			data := edited(t, events.ExecutionStarted, "0001", newerVersion)
			rawPublish(t, e.srv.JS, subjectOf("0001"), data)
			return subjectOf("0001"), data
		}, true, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := setup(t)
			store := &refusingStore{Store: e.store, refuse: refusedID}
			reg := prometheus.NewPedanticRegistry()
			p, stop := run(t, e.srv.JS, store, projector.Config{Registerer: reg})
			defer func() { // shutdown is quick whatever the poison
				start := time.Now()
				stop()
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("shutdown took %s", d)
				}
			}()
			subject, data := c.publish(t, e)
			next := events.New(events.ExecutionStarted, "billing", "valid-after")
			next.ExecutionID = "exec-2"
			if _, err := e.prod.Publish(context.Background(), next); err != nil {
				t.Fatal(err)
			}
			took := waitStored(t, e.store, "billing", "valid-after", 10*time.Second)
			t.Logf("%s: the next valid event was stored %s after its publish", c.name, took.Round(time.Millisecond))
			if took > 3*time.Second {
				t.Errorf("the valid event after the poison took %s", took)
			}
			ctx := context.Background()
			if c.held {
				waitFor(t, "the newer event held", 5*time.Second, func() bool { return p.Stats().Held > 0 })
				want := fmt.Sprintf("upgrade needed: 1 events of schema version %d", events.SchemaVersion+1)
				if err := p.Ready(ctx); !errors.Is(err, projector.ErrNotReady) || !strings.Contains(err.Error(), want) {
					t.Fatalf("Ready = %v, want %q", err, want)
				}
				if n := len(deadLetters(t, e.srv.JS)); n != 0 || p.Stats().DeadLettered != 0 {
					t.Fatalf("a newer event was dead-lettered (%d dead letters)", n)
				}
				if v := gathered(t, reg, "auditflow_projector_held_newer_version_events"); v != 1 {
					t.Fatalf("held gauge = %v", v)
				}
				return
			}
			waitFor(t, "the dead letter", 5*time.Second, func() bool { return p.Stats().DeadLettered == 1 })
			dls := deadLetters(t, e.srv.JS)
			if len(dls) != 1 {
				t.Fatalf("%d dead letters", len(dls))
			}
			dl := dls[0]
			h := dl.Header
			r := h.Get(projector.HeaderReason)
			if !strings.Contains(r, c.reason) {
				t.Errorf("reason %q, want it to contain %q", r, c.reason)
			}
			if _, err := events.Decode(data); err != nil && r != err.Error() {
				t.Errorf("reason %q, want the decoder's %q", r, err)
			}
			if dl.Subject != "audit.deadletter."+subject || h.Get(projector.HeaderSubject) != subject ||
				h.Get(projector.HeaderStream) != producer.DefaultStreamName || h.Get(projector.HeaderSequence) == "" ||
				h.Get(projector.HeaderHash) != events.Hash(data) || h.Get(projector.HeaderSize) != strconv.Itoa(len(data)) ||
				h.Get(projector.HeaderCopy) != c.copy {
				t.Errorf("dead letter on %s with headers %v", dl.Subject, h)
			}
			if c.copy == projector.CopyFull && string(dl.Data) != string(data) {
				t.Errorf("a full copy of %d bytes holds %d", len(data), len(dl.Data))
			}
			if c.copy == projector.CopyReference && len(dl.Data) > projector.ReferencePreview {
				t.Errorf("a reference holds %d bytes", len(dl.Data))
			}
			if err := p.Ready(ctx); err != nil {
				t.Errorf("Ready after the dead letter: %v", err)
			}
			waitCaughtUp(t, p) // the poison is terminated, not pending
		})
	}
}

// TestStoreRefusalDeadLettersOnlyTheRefusedRecord: a batch the store
// refuses because of one record is split until that record is alone; it is
// dead-lettered and the rest of the batch stored.
func TestStoreRefusalDeadLettersOnlyTheRefusedRecord(t *testing.T) {
	e := setup(t)
	evs := publish(t, e.prod, "billing", 50) // 100 events
	store := &refusingStore{Store: e.store, refuse: evs[37].ID}
	p, _ := run(t, e.srv.JS, store, projector.Config{Workers: 1, BatchSize: 200})
	waitCaughtUp(t, p)
	if n := countHistory(t, e.store); n != 99 {
		t.Fatalf("%d rows, want the 99 the store accepts", n)
	}
	st := p.Stats()
	if st.StoreRefusals != 1 || st.DeadLettered != 1 {
		t.Fatalf("stats %+v", st)
	}
	dls := deadLetters(t, e.srv.JS)
	if len(dls) != 1 || !strings.Contains(dls[0].Header.Get(projector.HeaderReason), "the store refused the record") {
		t.Fatalf("dead letters: %v", dls)
	}
	t.Logf("a 100-event batch with one refused record took %d store writes", store.calls.Load())
	if n := store.calls.Load(); n > 2*7+2 {
		t.Fatalf("%d store writes to isolate one record in 100", n)
	}
}

// TestFailingDeadLettersAreReportedAndRetried: while the dead-letter stream
// cannot be written, a poison message is left on the stream (not spun on),
// later events are stored, and Ready and the metrics say so; once the
// stream is back the poison is dead-lettered.
func TestFailingDeadLettersAreReportedAndRetried(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	p, _ := run(t, e.srv.JS, e.store, projector.Config{Registerer: reg})
	dlStream, err := e.srv.JS.Stream(ctx, projector.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	dlConfig := dlStream.CachedInfo().Config
	if err := e.srv.JS.DeleteStream(ctx, projector.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	rawPublish(t, e.srv.JS, subjectOf("0001"), []byte("not json"))
	publish(t, e.prod, "shipping", 5)
	waitStored(t, e.store, "shipping", "0004-change", 5*time.Second)
	waitFor(t, "a failed dead letter", 10*time.Second, func() bool { return p.Stats().DeadLetterFailures > 0 })
	if err := p.Ready(ctx); err == nil || !strings.Contains(err.Error(), "dead-letter publish failing") {
		t.Fatalf("Ready = %v, want the failing dead letter", err)
	}
	if v := gathered(t, reg, "auditflow_projector_dead_letter_failures_total"); v < 1 {
		t.Fatalf("dead-letter failures metric = %v", v)
	}
	if _, err := e.srv.JS.CreateStream(ctx, dlConfig); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter once its stream is back", 15*time.Second, func() bool { return p.Stats().DeadLettered == 1 })
	if err := p.Ready(ctx); err != nil {
		t.Fatalf("Ready after the dead letter went through: %v", err)
	}
	waitCaughtUp(t, p)
}

// stuckStore fails every write that holds one change's event until
// released: one loop's batch is stuck, the other loops' are not.
type stuckStore struct {
	stores.Store
	change   string
	released atomic.Bool
	failures atomic.Int32
}

func (s *stuckStore) Apply(ctx context.Context, b stores.Batch) error {
	for _, r := range b.Records {
		if r.ChangeID == s.change && !s.released.Load() {
			s.failures.Add(1)
			return errors.New("injected: throttled")
		}
	}
	return s.Store.Apply(ctx, b)
}

// TestOneStuckWorkerDoesNotHoldTheOthers: a loop whose write keeps failing
// does not stop the fetcher, so the other loop's changes are stored; the
// stuck write is reported by Ready after StallAfter. (The stuck loop's
// messages are handed back to the stream, but they stay in the consumer's
// ack-pending window until stored: MaxAckPending is set to hold them here.
// A write that failed for ever would in the end fill any window, and then
// Ready is what tells.)
func TestOneStuckWorkerDoesNotHoldTheOthers(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	var stuck string
	for i := 0; stuck == ""; i++ {
		if c := fmt.Sprintf("stuck-%d", i); projector.Route("ops", c, 2) == 0 {
			stuck = c
		}
	}
	store := &stuckStore{Store: e.store, change: stuck}
	p, _ := run(t, e.srv.JS, store, projector.Config{Workers: 2, BatchSize: 50, MaxAckPending: 2000,
		StallAfter: time.Second, RetryMax: 200 * time.Millisecond})
	ev := events.New(events.ExecutionStarted, "ops", stuck)
	ev.ExecutionID = "x"
	if _, err := e.prod.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stuck write", 5*time.Second, func() bool { return store.failures.Load() > 0 })
	// Enough events that the stuck loop's queue overflows many times over.
	evs := publish(t, e.prod, "billing", 1000)
	var free []string
	for _, ev := range evs {
		if projector.Route(ev.Pipeline, ev.ChangeID, 2) == 1 {
			free = append(free, ev.ChangeID)
		}
	}
	start := time.Now()
	waitFor(t, "the other loop's changes", 20*time.Second, func() bool {
		n := 0
		for _, s := range []stores.IssueStatus{stores.IssueOpen, stores.IssueClosed} {
			is, err := e.store.Issues(ctx, stores.IssueQuery{Pipeline: "billing", Status: s, Limit: stores.MaxLimit})
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range is {
				if projector.Route(i.Pipeline, i.ChangeID, 2) == 1 {
					n++
				}
			}
		}
		if n > len(free)/2 {
			t.Fatalf("%d issues for %d changes", n, len(free)/2)
		}
		return n == len(free)/2
	})
	t.Logf("with loop 0 stuck, loop 1's %d events were stored within %s (%d messages handed back meanwhile)",
		len(free), time.Since(start).Round(time.Millisecond), p.Stats().BusyNaks)
	waitFor(t, "Ready to report the stuck write", 5*time.Second, func() bool {
		err := p.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), "store write failing for")
	})
	store.released.Store(true)
	waitCaughtUp(t, p)
	checkProjection(t, e.store, "billing", 1000)
	if err := p.Ready(ctx); err != nil {
		t.Fatalf("Ready once the write went through: %v", err)
	}
}

// TestRollingUpgradeHoldsNewerEvents: events of the next schema version,
// published while only an old projector runs, are held, not dead-lettered,
// and Ready says an upgrade is needed; once a projector that reads the
// new version joins the consumer (and the old one stops), all of them are
// stored.
func TestRollingUpgradeHoldsNewerEvents(t *testing.T) {
	projector.SetHeldTimings(t, 200*time.Millisecond, time.Second)
	e := setup(t)
	ctx := context.Background()
	old, stopOld := run(t, e.srv.JS, e.store, projector.Config{})
	const n = 5
	for i := range n {
		c := fmt.Sprintf("newer-%d", i)
		rawPublish(t, e.srv.JS, subjectOf(c), edited(t, events.ExecutionStarted, c, newerVersion))
	}
	publish(t, e.prod, "shipping", 10) // current events go on meanwhile
	want := fmt.Sprintf("upgrade needed: %d events of schema version %d", n, events.SchemaVersion+1)
	waitFor(t, "the old projector to hold them all", 10*time.Second, func() bool {
		err := old.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), want)
	})
	waitStored(t, e.store, "shipping", "0009-change", 5*time.Second)
	checkProjection(t, e.store, "shipping", 10)
	if len(deadLetters(t, e.srv.JS)) != 0 {
		t.Fatal("newer events were dead-lettered")
	}
	_, js2 := e.srv.Connect(t)
	upgraded, _ := run(t, js2, e.store, projector.Config{Decode: readNewer})
	stopOld()
	start := time.Now()
	for i := range n {
		waitStored(t, e.store, "billing", fmt.Sprintf("newer-%d", i), 15*time.Second)
	}
	t.Logf("all %d held events stored %s after the old projector stopped", n, time.Since(start).Round(time.Millisecond))
	waitCaughtUp(t, upgraded)
	if err := upgraded.Ready(ctx); err != nil || upgraded.Stats().Held != 0 {
		t.Fatalf("upgraded projector: Ready %v, held %d", err, upgraded.Stats().Held)
	}
}

// slowStore is the real store behind a slow write: the first Apply takes
// first whatever its context says (a driver that does not honour
// cancellation), and every Apply takes perRecord per record, honouring
// its context. It counts how often each sequence was stored.
type slowStore struct {
	stores.Store
	first, perRecord time.Duration

	mu     sync.Mutex
	calls  int
	stored map[uint64]int
}

func (s *slowStore) Apply(ctx context.Context, b stores.Batch) error {
	s.mu.Lock()
	s.calls++
	firstCall := s.calls == 1
	s.mu.Unlock()
	if firstCall && s.first > 0 {
		time.Sleep(s.first)
		ctx = context.WithoutCancel(ctx)
	}
	select {
	case <-time.After(time.Duration(len(b.Records)) * s.perRecord):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := s.Store.Apply(ctx, b); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stored == nil {
		s.stored = map[uint64]int{}
	}
	for _, r := range b.Records {
		s.stored[r.Seq]++
	}
	return nil
}

// TestSlowWritesAreNotRedeliveredBehindThemselves: writes slower than
// AckWait, and messages queued behind them, are kept alive by heartbeats:
// every event is stored exactly once.
func TestSlowWritesAreNotRedeliveredBehindThemselves(t *testing.T) {
	check := func(t *testing.T, p *projector.Projector, s *slowStore, want int) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.stored) != want {
			t.Fatalf("%d sequences stored, want %d", len(s.stored), want)
		}
		for seq, n := range s.stored {
			if n != 1 {
				t.Fatalf("seq %d stored %d times: redelivered behind its own write", seq, n)
			}
		}
		// Messages fetched while the loop's queue is full may be handed
		// back (BusyNaks, timing-dependent on a loaded machine): that is
		// not a redelivery behind a write, and each is still stored once.
		if st := p.Stats(); st.Applied != uint64(want) {
			t.Fatalf("stats %+v", st)
		}
	}
	t.Run("a write that ignores its timeout", func(t *testing.T) {
		e := setup(t)
		s := &slowStore{Store: e.store, first: 3500 * time.Millisecond}
		p, _ := run(t, e.srv.JS, s, projector.Config{Workers: 1, BatchSize: 100, AckWait: time.Second})
		publish(t, e.prod, "billing", 15)
		waitFor(t, "the slow write", 5*time.Second, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.calls > 0 })
		publish(t, e.prod, "shipping", 10) // queued behind the slow write
		start := time.Now()
		waitCaughtUp(t, p)
		t.Logf("a %s write with AckWait 1s, and the batch queued behind it: caught up after %s", s.first, time.Since(start).Round(time.Millisecond))
		check(t, p, s, 50)
	})
	t.Run("a batch always slower than the write timeout", func(t *testing.T) {
		e := setup(t)
		s := &slowStore{Store: e.store, perRecord: 150 * time.Millisecond}
		publish(t, e.prod, "billing", 8)
		start := time.Now()
		p, _ := run(t, e.srv.JS, s, projector.Config{Workers: 1, BatchSize: 100, AckWait: time.Second})
		waitCaughtUp(t, p)
		t.Logf("16 events at 150ms each with a 500ms write timeout: stored in %s, %d attempts (%d timed out)",
			time.Since(start).Round(time.Millisecond), s.calls, p.Stats().WriteFailures)
		check(t, p, s, 16)
		if p.Stats().WriteFailures < 3 {
			t.Fatalf("%d write failures: the batch was not split on timeouts", p.Stats().WriteFailures)
		}
	})
}
