package natstest

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// Drain reads a whole stream with an ordered consumer, touching each
// message's data, and returns how many messages and bytes it read.
func Drain(t testing.TB, js jetstream.JetStream, stream string) (int, int64) {
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	it, err := c.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	n, bytes := 0, int64(0)
	for {
		m, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		n++
		bytes += int64(len(m.Data()))
		if md.Sequence.Stream >= last {
			return n, bytes
		}
	}
}
