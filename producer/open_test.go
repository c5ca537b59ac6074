package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// TestNewNeverCreatesTheStream: without Config.CreateStream, New opens the
// stream and reports a missing one as ErrNoStream, saying how to create or
// restore it, at once; the stream is still missing afterwards. A stream
// deleted under runners must not come back empty.
func TestNewNeverCreatesTheStream(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	start := time.Now()
	_, err := producer.New(ctx, srv.JS, producer.Config{})
	if !errors.Is(err, producer.ErrNoStream) || !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("New without a stream = %v, want ErrNoStream", err)
	}
	for _, want := range []string{"AUDIT does not exist", "auditflow init", "restore it from its backup or mirror"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("New took %s to report a missing stream: it is not worth retrying", took)
	}
	if _, err := srv.JS.Stream(ctx, producer.DefaultStreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream after New: %v, want none", err)
	}

	if _, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := producer.New(ctx, srv.JS, producer.Config{}); err != nil {
		t.Fatalf("New once the stream exists: %v", err)
	}
	if _, err := producer.OpenStream(ctx, srv.JS, producer.StreamConfig{Replicas: 1, MaxAge: time.Hour}); !errors.Is(err, producer.ErrStreamMismatch) {
		t.Fatalf("OpenStream with another configuration = %v, want ErrStreamMismatch", err)
	}
}
