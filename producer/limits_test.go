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

// TestPublishTruncatesLongErrorOutput: a runner never fails to record an
// outcome because its output was long. A 1 MB trace and a 10 KB message
// are cut to their limits around a marker that says how much was left
// out, keeping the start and the end; so is a trace within its limit that
// JSON escaping would take over MaxEventBytes, and invalid UTF-8 (raw
// command output) is recorded as U+FFFD.
func TestPublishTruncatesLongErrorOutput(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	mb := "first line of the trace\n" + strings.Repeat("at frame\n", (1<<20)/9) + "last line: the real error"
	for name, c := range map[string]struct{ message, trace string }{
		"1 MB trace":            {strings.Repeat("m", 10<<10) + " the end", mb},
		"escaped trace":         {"boom", strings.Repeat("\x01", events.MaxTraceLen)},
		"invalid UTF-8 in both": {"bad \xff byte", "trace \xc3 cut mid-rune"},
	} {
		t.Run(name, func(t *testing.T) {
			change := strings.ReplaceAll(name, " ", "-")
			e := events.New(events.ExecutionFailed, "billing", change)
			e.ExecutionID, e.ErrorMessage, e.ErrorTrace = events.NewID(), c.message, c.trace
			h, err := p.Publish(ctx, e)
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			got, head, err := p.Last(ctx, "billing", change)
			if err != nil || head != h {
				t.Fatalf("Last: %v", err)
			}
			m, err := srv.JS.Stream(ctx, producer.DefaultStreamName)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := m.GetMsg(ctx, h.Seq)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw.Data) > events.MaxEventBytes || len(got.ErrorTrace) > events.MaxTraceLen || len(got.ErrorMessage) > events.MaxMessageLen {
				t.Fatalf("published %d bytes, trace %d, message %d: over the limits", len(raw.Data), len(got.ErrorTrace), len(got.ErrorMessage))
			}
			for what, pair := range map[string][2]string{"trace": {c.trace, got.ErrorTrace}, "message": {c.message, got.ErrorMessage}} {
				orig, kept := strings.ToValidUTF8(pair[0], "\uFFFD"), pair[1]
				if orig == kept {
					continue
				}
				head, rest, ok := strings.Cut(kept, "… [truncated ")
				_, tail, _ := strings.Cut(rest, " bytes] …")
				if !ok || !strings.HasPrefix(orig, head) || !strings.HasSuffix(orig, tail) || head == "" || tail == "" {
					t.Fatalf("%s not truncated with a marker between its start and end: %d bytes kept of %d", what, len(kept), len(orig))
				}
			}
			if name == "1 MB trace" && (!strings.HasPrefix(got.ErrorTrace, "first line") || !strings.HasSuffix(got.ErrorTrace, "the real error")) {
				t.Fatalf("the trace lost its start or its end")
			}
			if name == "invalid UTF-8 in both" && (got.ErrorMessage != "bad \uFFFD byte" || !strings.Contains(got.ErrorTrace, "\uFFFD")) {
				t.Fatalf("invalid UTF-8 recorded as %q / %q", got.ErrorMessage, got.ErrorTrace)
			}
		})
	}
}

// TestPublishRejectsOversizeMetadata: metadata is the caller's, not
// output to cut, so an oversize key, value or total is refused before
// anything is published, naming the key and the limit.
func TestPublishRejectsOversizeMetadata(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	for name, c := range map[string]struct {
		md   map[string]string
		want []string
	}{
		"value": {map[string]string{"ticket": "OPS-1", "diff": strings.Repeat("+", events.MaxMetadataValueLen+1)},
			[]string{`data.metadata["diff"]`, "4097 bytes", "events.MaxMetadataValueLen"}},
		"key": {map[string]string{strings.Repeat("k", 200): "v"}, []string{"data.metadata", "200 bytes", "events.MaxMetadataKeyLen"}},
		"total": {func() map[string]string {
			md := map[string]string{}
			for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} {
				md[k] = strings.Repeat("v", events.MaxMetadataValueLen)
			}
			return md
		}(), []string{"data.metadata", "events.MaxMetadataBytes"}},
	} {
		e := started("meta-" + name)
		e.Metadata = c.md
		_, err := p.Publish(ctx, e)
		if !errors.Is(err, events.ErrTooLarge) {
			t.Fatalf("%s: Publish = %v, want ErrTooLarge", name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v does not say %q", name, err, w)
			}
		}
		if _, _, err := p.Last(ctx, "billing", "meta-"+name); !errors.Is(err, producer.ErrNoEvents) {
			t.Errorf("%s: something was published: %v", name, err)
		}
	}
}

// TestLastReportsBadEvents: garbage on a change's subject, and another
// change's event published on it (both by hand, with the plain NATS
// client), are reported by Last and ReadLast as a *BadEventError that
// says where the message is, and a resolution published after its Head
// moves the change on.
func TestLastReportsBadEvents(t *testing.T) {
	srv := natstest.Start(t)
	p := newProducer(t, srv.JS)
	ctx := context.Background()
	if _, err := p.Publish(ctx, started("0001-change"), producer.ExpectLastSeq(0)); err != nil {
		t.Fatal(err)
	}
	other := events.New(events.ExecutionFailed, "billing", "0002-change")
	other.ExecutionID, other.ErrorMessage = "x", "boom"
	otherBytes, err := events.Encode(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, change string
		data         []byte
		wrongSubject bool
		want         error
		position     uint64 // messages on the subject once it is published
	}{
		{"garbage", "0003-change", []byte("garbage"), false, events.ErrMalformed, 1},
		{"another change's event", "0001-change", otherBytes, true, events.ErrWrongSubject, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			subject := p.Subject("billing", c.change)
			ack, err := srv.JS.Publish(ctx, subject, c.data)
			if err != nil {
				t.Fatal(err)
			}
			for reader, last := range map[string]func() (events.Event, producer.Head, error){
				"Last": func() (events.Event, producer.Head, error) { return p.Last(ctx, "billing", c.change) },
				"ReadLast": func() (events.Event, producer.Head, error) {
					return producer.ReadLast(ctx, srv.JS, producer.StreamConfig{}, "billing", c.change)
				},
			} {
				_, h, err := last()
				var bad *producer.BadEventError
				if !errors.As(err, &bad) || !errors.Is(err, producer.ErrBadEvent) || !errors.Is(err, c.want) {
					t.Fatalf("%s = %v, want a *BadEventError wrapping %v", reader, err, c.want)
				}
				want := producer.Head{Seq: ack.Sequence, Hash: events.Hash(c.data), Position: c.position}
				if bad.Head != want || h != want || bad.Subject != subject || bad.ChangeID != c.change || bad.Stream != "AUDIT" || bad.WrongSubject() != c.wrongSubject {
					t.Fatalf("%s: %+v (head %+v), want head %+v on %s", reader, bad, h, want, subject)
				}
				if !strings.Contains(err.Error(), "sequence") {
					t.Fatalf("%s: %v does not name the sequence", reader, err)
				}
				if c.wrongSubject && !strings.Contains(err.Error(), `event for change "0002-change" of pipeline "billing" published on change "0001-change"'s subject`) {
					t.Fatalf("%s: %v does not name both changes", reader, err)
				}
			}
			res := events.New(events.ManuallyResolved, "billing", c.change)
			res.Resolution, res.Operator, res.Reason = events.ResolvedApplied, "bob", "the message is not the change's"
			h, err := p.Publish(ctx, res, producer.After(producer.Head{Seq: ack.Sequence, Hash: events.Hash(c.data), Position: c.position}))
			if err != nil {
				t.Fatal(err)
			}
			if got, head, err := p.Last(ctx, "billing", c.change); err != nil || head != h || got.PrevHash != events.Hash(c.data) {
				t.Fatalf("after the resolution: %+v %+v %v", got, head, err)
			}
		})
	}
}
