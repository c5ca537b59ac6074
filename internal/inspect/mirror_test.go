package inspect_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// TestMirrorsOf: a mirror made by auditflow is listed with its distance
// to the stream, which reaches 0 once it has copied every event.
func TestMirrorsOf(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx := context.Background()
	sc := producer.StreamConfig{}
	p, err := producer.New(ctx, js, producer.Config{CreateStream: true, Stream: sc})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := producer.EnsureMirror(ctx, js, sc, producer.Mirror{Name: "AUDIT_MIRROR"}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		e := events.New(events.ExecutionStarted, "billing", "0001-x")
		e.ExecutionID = fmt.Sprint(i)
		if _, err := p.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms, err := inspect.MirrorsOf(ctx, js, producer.DefaultStreamName)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 1 || ms[0].Name != "AUDIT_MIRROR" || !ms[0].Durable || ms[0].StreamLastSeq != 5 {
			t.Fatalf("MirrorsOf = %+v", ms)
		}
		if ms[0].Behind == 0 && ms[0].MirrorLastSeq == 5 {
			if ms[0].Stalled() {
				t.Fatalf("caught up, yet stalled: %s", ms[0].Say())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror never caught up: %s", ms[0].Say())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
