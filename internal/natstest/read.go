package natstest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// ConnectURL connects to a server by URL (a TCP listener, a proxy, a
// cluster's URLs) with a client that reconnects forever, as a long-lived
// process would; it is closed when the test ends.
func ConnectURL(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.Name(t.Name()), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Stored is an event as the stream holds it.
type Stored struct {
	Seq  uint64
	Data []byte
	events.Event
}

// ReadEvents reads every event now on stream, oldest first, with an
// ordered consumer, optionally only those on the given subjects. A fetch
// right after the consumer is (re)created can get no responders on a
// cluster: those are retried, for up to 30 s in all. Undecodable messages
// fail the test.
func ReadEvents(t testing.TB, js jetstream.JetStream, stream string, subjects ...string) []Stored {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	// Read up to the newest message there is to read: the stream's, or
	// the newest on the subjects asked for.
	last := s.CachedInfo().State.LastSeq
	if len(subjects) > 0 {
		last = 0
		for _, subj := range subjects {
			m, err := s.GetLastMsgForSubject(ctx, subj)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			last = max(last, m.Sequence)
		}
	}
	if last == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		t.Fatal(err)
	}
	var out []Stored
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("read %d events of %s in 30s, not up to sequence %d", len(out), stream, last)
		}
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(200*time.Millisecond))
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			e, err := events.Decode(m.Data())
			if err != nil {
				t.Fatalf("%s seq %d: %v", stream, md.Sequence.Stream, err)
			}
			out = append(out, Stored{Seq: md.Sequence.Stream, Data: m.Data(), Event: e})
			if md.Sequence.Stream >= last {
				return out
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrNoResponders) {
			t.Fatal(err)
		}
	}
}
