package producer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// checkChains reads the whole stream and judges every event against the
// message before it on its subject: what a projector and verify do.
func checkChains(t *testing.T, srv *natstest.Server) int {
	t.Helper()
	ctx := context.Background()
	s, err := srv.JS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prev := map[string]events.Prev{}
	count := map[string]uint64{}
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		e, err := events.Decode(m.Data)
		if err != nil {
			t.Fatalf("sequence %d: %v", seq, err)
		}
		count[m.Subject]++
		if err := events.CheckChain(e, prev[m.Subject]); err != nil {
			t.Errorf("sequence %d (%s): %v", seq, m.Subject, err)
		}
		if e.Position != count[m.Subject] {
			t.Errorf("sequence %d: position %d, the subject's message %d", seq, e.Position, count[m.Subject])
		}
		prev[m.Subject] = events.PrevOf(seq, events.Hash(m.Data), e, nil)
	}
	return int(info.State.LastSeq)
}

// TestEveryPublishIsPlaced: events published with After, without it, with
// ExpectLastSeq(0), and in batches (several per change, interleaved with
// other changes) each name the message before them on their subject.
func TestEveryPublishIsPlaced(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := newProducer(t, srv.JS)
	h, err := p.Publish(ctx, started("a"), producer.ExpectLastSeq(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, started("a"), producer.After(h)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := p.Publish(ctx, started("b")); err != nil { // placed after what it reads
			t.Fatal(err)
		}
	}
	b := p.NewBatch()
	for i := range 200 {
		if err := b.Add(ctx, started(fmt.Sprintf("c%d", i%7))); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			if _, err := b.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.Add(ctx, started("a")); err != nil { // a change with history, read once
		t.Fatal(err)
	}
	if _, err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if n := checkChains(t, srv); n != 206 {
		t.Fatalf("%d events on the stream, want 206", n)
	}
}

// TestLastRefusesACopy: an exact copy of a signed, placed event published
// again with a new message id, as a replay does, is not believed as the
// change's newest: Last returns it with an *OutOfPlaceError naming both
// places, and a resolution recorded after it is believed again.
func TestLastRefusesACopy(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := newProducer(t, srv.JS)
	first, err := p.Publish(ctx, started("c"))
	if err != nil {
		t.Fatal(err)
	}
	done := events.New(events.ExecutionSucceeded, "billing", "c")
	done.ExecutionID = "x"
	second, err := p.Publish(ctx, done, producer.After(first))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := srv.JS.Stream(ctx, producer.DefaultStreamName)
	orig, err := s.GetMsg(ctx, first.Seq)
	if err != nil {
		t.Fatal(err)
	}
	copyMsg := &nats.Msg{Subject: orig.Subject, Data: orig.Data, Header: nats.Header{"Nats-Msg-Id": []string{"replay-1"}}}
	ack, err := srv.JS.PublishMsg(ctx, copyMsg)
	if err != nil {
		t.Fatal(err)
	}
	for reader, last := range map[string]func() (events.Event, producer.Head, error){
		"Last": func() (events.Event, producer.Head, error) { return p.Last(ctx, "billing", "c") },
		"ReadLast": func() (events.Event, producer.Head, error) {
			return producer.ReadLast(ctx, srv.JS, producer.StreamConfig{}, "billing", "c")
		},
	} {
		e, h, err := last()
		var oop *producer.OutOfPlaceError
		if !errors.As(err, &oop) || !errors.Is(err, events.ErrOutOfChain) || e.Type != events.ExecutionStarted {
			t.Fatalf("%s after a copy = %v, %v; want an *OutOfPlaceError with the event", reader, e.Type, err)
		}
		if h.Seq != ack.Sequence || h.Position != 3 || oop.Position != 1 || oop.PrevSeq != 0 {
			t.Fatalf("%s: head %+v, error %+v", reader, h, oop)
		}
	}
	// Before names the message the copy follows: the success.
	prev, err := producer.Before(ctx, srv.JS, s, events.DefaultSubjectPrefix, orig.Subject, ack.Sequence)
	if err != nil || prev.Seq != second.Seq || prev.Hash != second.Hash || prev.ID != done.ID {
		t.Fatalf("Before(copy) = %+v, %v; want the success at %d", prev, err, second.Seq)
	}
	if prev, err := producer.Before(ctx, srv.JS, s, events.DefaultSubjectPrefix, orig.Subject, first.Seq); err != nil || prev != (events.Prev{}) {
		t.Fatalf("Before(first) = %+v, %v; want none", prev, err)
	}
	_, h, _ := p.Last(ctx, "billing", "c")
	res := events.New(events.ManuallyResolved, "billing", "c")
	res.Resolution, res.Operator, res.Reason = events.ResolvedApplied, "bob", "the copy changed nothing"
	if _, err := p.Publish(ctx, res, producer.After(h)); err != nil {
		t.Fatal(err)
	}
	if e, _, err := p.Last(ctx, "billing", "c"); err != nil || e.ID != res.ID {
		t.Fatalf("after the resolution: %v %v", e.ID, err)
	}
}

// TestLastOfAgreesWithLast: the plan's batched read gives each change what
// Last gives it — an event in its place, none, an event out of its place.
func TestLastOfAgreesWithLast(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := newProducer(t, srv.JS)
	for _, c := range []string{"a", "b", "b", "c"} {
		if _, err := p.Publish(ctx, started(c)); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := srv.JS.Stream(ctx, producer.DefaultStreamName)
	orig, _ := s.GetMsg(ctx, 2) // b's first start
	if _, err := srv.JS.PublishMsg(ctx, &nats.Msg{Subject: orig.Subject, Data: orig.Data, Header: nats.Header{"Nats-Msg-Id": []string{"copy"}}}); err != nil {
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c", "never"}
	got, err := p.LastOf(ctx, "billing", ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		e, h, err := p.Last(ctx, "billing", id)
		if got[i].Event.ID != e.ID || got[i].Head != h || fmt.Sprint(got[i].Err) != fmt.Sprint(err) {
			t.Errorf("%s: LastOf %+v, Last %v %+v %v", id, got[i], e.ID, h, err)
		}
	}
	var oop *producer.OutOfPlaceError
	if !errors.As(got[1].Err, &oop) || !errors.Is(got[3].Err, producer.ErrNoEvents) || got[0].Err != nil {
		t.Fatalf("LastOf: %v %v %v", got[0].Err, got[1].Err, got[3].Err)
	}
}
