package producer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

func newProducer(t testing.TB, js jetstream.JetStream) *producer.Producer {
	t.Helper()
	p, err := producer.New(context.Background(), js, producer.Config{CreateStream: true, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func started(change string) events.Event {
	e := events.New(events.ExecutionStarted, "billing", change)
	e.ExecutionID = events.NewID()
	return e
}

func TestEnsureStreamIsIdempotentAndSafe(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	s, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	before := s.CachedInfo()
	s2, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{})
	if err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	if after := s2.CachedInfo(); !after.Created.Equal(before.Created) || fmt.Sprint(after.Config) != fmt.Sprint(before.Config) {
		t.Fatalf("EnsureStream changed an existing stream:\n%+v\n%+v", before.Config, after.Config)
	}
	cfg := before.Config
	if cfg.Storage != jetstream.FileStorage || cfg.MaxAge != 0 || cfg.MaxBytes != -1 || cfg.MaxMsgsPerSubject != -1 || !cfg.DenyDelete || !cfg.DenyPurge {
		t.Fatalf("unsafe stream defaults: %+v", cfg)
	}
	// The source of truth refuses deletes and purges.
	p := newProducer(t, srv.JS)
	h, err := p.Publish(ctx, started("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, h.Seq); err == nil {
		t.Fatal("deleting an audit event succeeded")
	}
	if err := s.Purge(ctx); err == nil {
		t.Fatal("purging the audit stream succeeded")
	}
	// A stream of the same name with other limits is reported, not changed.
	_, err = producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{MaxAge: time.Hour})
	if !errors.Is(err, producer.ErrStreamMismatch) || !strings.Contains(err.Error(), "max age") {
		t.Fatalf("EnsureStream with a different max age = %v, want ErrStreamMismatch naming max age", err)
	}
}

func TestStreamConfigValidation(t *testing.T) {
	srv := natstest.Start(t)
	for _, c := range []producer.StreamConfig{
		{Name: "has.dot"}, {SubjectPrefix: "audit.*"}, {SubjectPrefix: "audit."}, {Replicas: 7},
		{MaxAge: time.Second, Duplicates: time.Minute}, {MaxBytes: -5},
	} {
		if _, err := producer.EnsureStream(context.Background(), srv.JS, c); !errors.Is(err, producer.ErrInvalidConfig) {
			t.Errorf("EnsureStream(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}

func TestPublishAndLast(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	if _, _, err := p.Last(ctx, "billing", "c1"); !errors.Is(err, producer.ErrNoEvents) {
		t.Fatalf("Last of an unknown change = %v, want ErrNoEvents", err)
	}
	e := started("db.users v2") // needs subject encoding
	h, err := p.Publish(ctx, e, producer.ExpectLastSeq(0))
	if err != nil {
		t.Fatal(err)
	}
	got, gotHead, err := p.Last(ctx, "billing", "db.users v2")
	if err != nil || gotHead != h || got.ID != e.ID || h.Hash == "" {
		t.Fatalf("Last = %v %+v %v; want %s %+v", got.ID, gotHead, err, e.ID, h)
	}
	// After chains: the successor carries its predecessor's hash.
	next := events.New(events.ExecutionSucceeded, "billing", "db.users v2")
	next.ExecutionID = e.ExecutionID
	h2, err := p.Publish(ctx, next, producer.After(h))
	if err != nil {
		t.Fatal(err)
	}
	got, gotHead, err = p.Last(ctx, "billing", "db.users v2")
	if err != nil || gotHead != h2 || got.PrevHash != h.Hash {
		t.Fatalf("chained event: prevHash %q (want %q), head %+v (want %+v), %v", got.PrevHash, h.Hash, gotHead, h2, err)
	}
	next.ID = events.NewID() // another event: not a retry of the last one
	if _, err := p.Publish(ctx, next, producer.After(h)); !errors.Is(err, producer.ErrConflict) {
		t.Fatalf("publishing after a stale head = %v, want ErrConflict", err)
	}
	if subj := p.Subject("billing", "db.users v2"); subj != "audit.exec.billing.db%2Eusers%20v2" {
		t.Fatalf("subject = %s", subj)
	}
}

func TestPublishDeduplicatesRetries(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	e := started("c1")
	first, err := p.Publish(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.Publish(ctx, e)
	if err != nil || again != first {
		t.Fatalf("republish = %+v, %v; want the first %+v", again, err, first)
	}
	// The same with an expected sequence: the server checks the expectation
	// before duplicates, so the producer must recognise its own event.
	e2 := started("c2")
	first, err = p.Publish(ctx, e2, producer.ExpectLastSeq(0))
	if err != nil {
		t.Fatal(err)
	}
	again, err = p.Publish(ctx, e2, producer.ExpectLastSeq(0))
	if err != nil || again != first {
		t.Fatalf("retried expected publish = %+v, %v; want %+v", again, err, first)
	}
	info, err := srv.JS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}
}

func TestRacingWritersOneWins(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	const writers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for range writers {
		_, js := srv.Connect(t)
		p := newProducer(t, js)
		wg.Go(func() {
			_, err := p.Publish(ctx, started("contested"), producer.ExpectLastSeq(0))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, producer.ErrConflict):
				conflicts++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 || conflicts != writers-1 {
		t.Fatalf("wins %d conflicts %d, want 1 and %d", wins, conflicts, writers-1)
	}
}

func TestPublishRejectsInvalidEvent(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	e := started("c1")
	e.ExecutionID = ""
	if _, err := p.Publish(context.Background(), e); !errors.Is(err, events.ErrMissingField) {
		t.Fatalf("Publish(invalid) = %v, want ErrMissingField", err)
	}
}

// TestPublishRetriesUntilStreamAnswers publishes while no stream listens
// (as during a leader election) and creates the stream a moment later: the
// publish must ride it out.
func TestPublishRetriesUntilStreamAnswers(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := newProducer(t, srv.JS)
	if err := srv.JS.DeleteStream(ctx, producer.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
			t.Error(err)
		}
	}()
	if _, err := p.Publish(ctx, started("c1"), producer.ExpectLastSeq(0)); err != nil {
		t.Fatalf("publish across a missing stream: %v", err)
	}
	// And a cancelled context stops the retries.
	if err := srv.JS.DeleteStream(ctx, producer.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := p.Publish(cctx, started("c2"), producer.ExpectLastSeq(0)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish with no stream and a deadline = %v, want DeadlineExceeded", err)
	}
}

func TestBatch(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	b := p.NewBatch()
	const n = 2000
	for i := range n {
		if err := b.Add(context.Background(), started(fmt.Sprintf("c%d", i%50))); err != nil {
			t.Fatal(err)
		}
	}
	bad := started("x")
	bad.Pipeline = ""
	if err := b.Add(context.Background(), bad); !errors.Is(err, events.ErrMissingField) {
		t.Fatalf("Add(invalid) = %v", err)
	}
	seqs, err := b.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, s := range seqs {
		if s == 0 || seen[s] {
			t.Fatalf("bad or repeated sequence %d", s)
		}
		seen[s] = true
	}
	if len(seen) != n || b.Len() != 0 {
		t.Fatalf("%d sequences, batch len %d after Wait", len(seen), b.Len())
	}
}

func BenchmarkPublish(b *testing.B) {
	srv := natstest.Start(b)
	p := newProducer(b, srv.JS)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := p.Publish(ctx, started(fmt.Sprintf("c%d", i%1000))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkPublishBatch(b *testing.B) {
	srv := natstest.Start(b)
	p := newProducer(b, srv.JS)
	batch := p.NewBatch()
	evs := make([]events.Event, 1000)
	for i := range evs {
		evs[i] = started(fmt.Sprintf("c%d", i))
	}
	b.ResetTimer()
	n := 0
	for b.Loop() {
		for _, e := range evs {
			e.ID = events.NewID()
			if err := batch.Add(context.Background(), e); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := batch.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
		n += len(evs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}
