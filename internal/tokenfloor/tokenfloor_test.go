package tokenfloor_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/tokenfloor"
	"github.com/auditflow/auditflow/producer"
)

// publish writes n events with the given tokens straight to the stream,
// as runners' events are stored.
func publish(t *testing.T, js jetstream.JetStream, n int, token func(i int) uint64) {
	t.Helper()
	var futures []jetstream.PubAckFuture
	for i := range n {
		e := events.New(events.ExecutionStarted, "billing", fmt.Sprintf("%04d-change", i%50))
		e.ExecutionID, e.LockToken = fmt.Sprint("x", i), token(i)
		b, err := events.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		f, err := js.PublishAsync(events.Subject(events.DefaultSubjectPrefix, e.Pipeline, e.ChangeID), b)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
	for _, f := range futures {
		select {
		case err := <-f.Err():
			t.Fatal(err)
		default:
		}
	}
}

// TestHighestIsTheMaximumOverTheWholeStream: the floor is the highest
// token anywhere on the stream, not the last event's (a stale holder's
// late event carries an older token), and events without a token or
// messages that are not events do not move it.
func TestHighestIsTheMaximumOverTheWholeStream(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	if h, err := tokenfloor.Highest(ctx, srv.JS, producer.DefaultStreamName, nil); err != nil || h != 0 {
		t.Fatalf("no stream: %d %v, want 0", h, err)
	}
	if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if h, err := tokenfloor.Highest(ctx, srv.JS, producer.DefaultStreamName, nil); err != nil || h != 0 {
		t.Fatalf("empty stream: %d %v, want 0", h, err)
	}
	const n, peakAt, peak = 5000, 1234, 9_000_000
	rng := rand.New(rand.NewPCG(1, 2))
	publish(t, srv.JS, n, func(i int) uint64 {
		if i == peakAt {
			return peak
		}
		return uint64(rng.IntN(1000)) // 0: an event without a token
	})
	if _, err := srv.JS.Publish(ctx, "audit.exec.billing.garbage", []byte(`{"lockToken": 99999999999}`)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h, err := tokenfloor.Highest(ctx, srv.JS, producer.DefaultStreamName, natstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if h != peak {
		t.Fatalf("Highest = %d, want %d (the peak, in the middle of the stream)", h, uint64(peak))
	}
	t.Logf("read %d events in %s", n+1, time.Since(start).Round(time.Millisecond))
}
