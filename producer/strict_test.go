package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// TestPublishRefusesTextReadersReadDifferently: an event whose text is not
// valid UTF-8 (anywhere but the error output, which the producer records
// as U+FFFD: it is a command's raw output) is refused by Publish and by a
// Batch with an error naming the field and wrapping events.ErrInvalidField,
// and nothing is published. The producer encodes from a struct, so it
// cannot write a key twice; invalid UTF-8 is what JSON would silently turn
// into U+FFFD, the signature then vouching for bytes readers read
// differently.
func TestPublishRefusesTextReadersReadDifferently(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	for name, c := range map[string]struct {
		field string
		edit  func(*events.Event)
	}{
		"author":         {"data.author", func(e *events.Event) { e.Author = "al\xffice" }},
		"host":           {"data.host", func(e *events.Event) { e.Host = "host-\xc3" }},
		"metadata key":   {"data.metadata", func(e *events.Event) { e.Metadata = map[string]string{"tick\xffet": "OPS-1"} }},
		"metadata value": {"data.metadata", func(e *events.Event) { e.Metadata = map[string]string{"ticket": "OPS-\xed\xa0\x80"} }},
	} {
		t.Run(name, func(t *testing.T) {
			change := strings.ReplaceAll(name, " ", "-")
			e := events.New(events.ExecutionStarted, "billing", change)
			e.ExecutionID = events.NewID()
			c.edit(&e)
			_, err := p.Publish(ctx, e)
			if !errors.Is(err, events.ErrInvalidField) || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), "not valid UTF-8") {
				t.Fatalf("Publish = %v, want ErrInvalidField naming %s and UTF-8", err, c.field)
			}
			if err := p.NewBatch().Add(ctx, e); !errors.Is(err, events.ErrInvalidField) {
				t.Fatalf("Batch.Add = %v, want ErrInvalidField", err)
			}
			if _, _, err := p.Last(ctx, "billing", change); !errors.Is(err, producer.ErrNoEvents) {
				t.Fatalf("Last = %v, want nothing published", err)
			}
		})
	}
}
