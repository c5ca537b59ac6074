package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/auditflow/auditflow/events"
)

// maxed returns a ManuallyResolved event with every field at its limit:
// the largest event Validate accepts (the one type that may carry every
// field).
func maxed() events.Event {
	e := sample(events.ManuallyResolved)
	e.ID = strings.Repeat("i", events.MaxIDLen)
	e.Pipeline = strings.Repeat("p", events.MaxKeyLen)
	e.ChangeID = strings.Repeat("c", events.MaxKeyLen)
	e.ExecutionID = strings.Repeat("x", events.MaxIDLen)
	e.Order = strings.Repeat("o", events.MaxKeyLen)
	e.Author = strings.Repeat("a", events.MaxTextLen)
	e.TargetSystem = strings.Repeat("t", events.MaxTextLen)
	e.Host = strings.Repeat("h", events.MaxTextLen)
	e.RunnerID = strings.Repeat("r", events.MaxTextLen)
	e.Operator = strings.Repeat("O", events.MaxTextLen)
	e.Reason = strings.Repeat("R", events.MaxMessageLen)
	e.ErrorMessage = strings.Repeat("m", events.MaxMessageLen)
	e.ErrorTrace = strings.Repeat("T", events.MaxTraceLen)
	e.Metadata = maxMetadata()
	return e
}

// maxMetadata has MaxMetadataKeys keys of MaxMetadataKeyLen bytes, one
// value of MaxMetadataValueLen bytes, and MaxMetadataBytes in all.
func maxMetadata() map[string]string {
	md := map[string]string{}
	left := events.MaxMetadataBytes - events.MaxMetadataKeys*events.MaxMetadataKeyLen - events.MaxMetadataValueLen
	for i := range events.MaxMetadataKeys {
		k := fmt.Sprintf("k%03d", i)
		k += strings.Repeat("-", events.MaxMetadataKeyLen-len(k))
		n := left / (events.MaxMetadataKeys - i)
		if i == 0 {
			n = events.MaxMetadataValueLen
		} else {
			left -= n
		}
		md[k] = strings.Repeat("v", n)
	}
	return md
}

func metadataBytes(md map[string]string) int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// TestLimits checks each limit at its value (accepted by Encode and
// Decode) and one byte over (rejected by both with ErrTooLarge, naming the
// field and the limit).
func TestLimits(t *testing.T) {
	atLimit := maxed()
	if n := metadataBytes(atLimit.Metadata); n != events.MaxMetadataBytes {
		t.Fatalf("test metadata is %d bytes, want %d", n, events.MaxMetadataBytes)
	}
	b, err := events.Encode(atLimit)
	if err != nil {
		t.Fatalf("an event with every field at its limit: %v", err)
	}
	t.Logf("every field at its limit: %d bytes encoded", len(b))
	if got, err := events.Decode(b); err != nil || got.ErrorTrace != atLimit.ErrorTrace || len(got.Metadata) != events.MaxMetadataKeys {
		t.Fatalf("decode of the event at every limit: %v", err)
	}
	cases := []struct {
		name, field, limit string
		over               func(*events.Event)
	}{
		{"id", "id", "MaxIDLen", func(e *events.Event) { e.ID += "i" }},
		{"pipeline", "data.pipeline", "MaxKeyLen", func(e *events.Event) { e.Pipeline += "p" }},
		{"change", "data.changeId", "MaxKeyLen", func(e *events.Event) { e.ChangeID += "c" }},
		{"execution", "data.executionId", "MaxIDLen", func(e *events.Event) { e.ExecutionID += "x" }},
		{"order", "data.order", "MaxKeyLen", func(e *events.Event) { e.Order += "o" }},
		{"author", "data.author", "MaxTextLen", func(e *events.Event) { e.Author += "a" }},
		{"target", "data.targetSystem", "MaxTextLen", func(e *events.Event) { e.TargetSystem += "t" }},
		{"host", "data.host", "MaxTextLen", func(e *events.Event) { e.Host += "h" }},
		{"runner", "data.runnerId", "MaxTextLen", func(e *events.Event) { e.RunnerID += "r" }},
		{"operator", "data.operator", "MaxTextLen", func(e *events.Event) { e.Operator += "O" }},
		{"reason", "data.reason", "MaxMessageLen", func(e *events.Event) { e.Reason += "R" }},
		{"message", "data.errorMessage", "MaxMessageLen", func(e *events.Event) { e.ErrorMessage += "m" }},
		{"trace", "data.errorTrace", "MaxTraceLen", func(e *events.Event) { e.ErrorTrace += "T" }},
		{"metadata keys", "data.metadata", "MaxMetadataKeys", func(e *events.Event) {
			e.Metadata = map[string]string{}
			for i := range events.MaxMetadataKeys + 1 {
				e.Metadata[fmt.Sprint("k", i)] = ""
			}
		}},
		{"metadata key", `data.metadata["` + strings.Repeat("k", 40) + `…"]`, "MaxMetadataKeyLen", func(e *events.Event) {
			e.Metadata = map[string]string{strings.Repeat("k", events.MaxMetadataKeyLen+1): "v"}
		}},
		{"metadata value", `data.metadata["ticket"]`, "MaxMetadataValueLen", func(e *events.Event) {
			e.Metadata = map[string]string{"ticket": strings.Repeat("v", events.MaxMetadataValueLen+1)}
		}},
		{"metadata total", "data.metadata", "MaxMetadataBytes", func(e *events.Event) {
			for k, v := range e.Metadata {
				if len(v) < events.MaxMetadataValueLen {
					e.Metadata[k] = v + "v"
					return
				}
			}
		}},
		{"encoded event", "", "MaxEventBytes", func(e *events.Event) {
			// Within every field's limit, but JSON writes each control
			// character as \u00XX: 6 bytes.
			e.ErrorTrace = strings.Repeat("\x01", events.MaxTraceLen)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := maxed()
			c.over(&e)
			_, err := events.Encode(e)
			checkTooLarge(t, "Encode", err, c.field, c.limit)
			if c.field == "" { // a property of the encoding, not of the event
				if !events.EventTooLarge(err) {
					t.Fatalf("EventTooLarge(%v) = false", err)
				}
				return
			}
			checkTooLarge(t, "Validate", events.Validate(e), c.field, c.limit)
			if events.EventTooLarge(err) {
				t.Fatalf("EventTooLarge(%v) = true for a field", err)
			}
			// The same event as another writer would publish it: Decode
			// rejects it too.
			raw := encodeUnchecked(t, e)
			_, err = events.Decode(raw)
			checkTooLarge(t, "Decode", err, c.field, c.limit)
		})
	}
	t.Run("decode over MaxEventBytes", func(t *testing.T) {
		var env map[string]any
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		env["traceparent"] = strings.Repeat("z", events.MaxEventBytes) // an extension: ignored, but counted
		raw, _ := json.Marshal(env)
		_, err := events.Decode(raw)
		checkTooLarge(t, "Decode", err, "", "MaxEventBytes")
	})
}

func checkTooLarge(t *testing.T, what string, err error, field, limit string) {
	t.Helper()
	var de *events.Error
	if !errors.Is(err, events.ErrTooLarge) || !errors.Is(err, events.ErrInvalidField) || !errors.As(err, &de) {
		t.Fatalf("%s = %v, want ErrTooLarge (an ErrInvalidField)", what, err)
	}
	if de.Field != field || !strings.Contains(err.Error(), "events."+limit) {
		t.Fatalf("%s: %v: want field %q and the limit events.%s named", what, err, field, limit)
	}
}

// encodeUnchecked encodes e as Encode would, without validating it: what a
// writer that ignores the limits publishes.
func encodeUnchecked(t *testing.T, e events.Event) []byte {
	t.Helper()
	valid := sample(events.ManuallyResolved)
	b, err := events.Encode(valid)
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	env["id"], env["subject"] = e.ID, e.ChangeID
	d := env["data"].(map[string]any)
	for k, v := range map[string]string{"pipeline": e.Pipeline, "changeId": e.ChangeID, "executionId": e.ExecutionID,
		"order": e.Order, "author": e.Author, "targetSystem": e.TargetSystem, "host": e.Host, "runnerId": e.RunnerID,
		"operator": e.Operator, "reason": e.Reason, "errorMessage": e.ErrorMessage, "errorTrace": e.ErrorTrace} {
		d[k] = v
	}
	d["metadata"] = e.Metadata
	raw, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestInvalidUTF8IsRejected: JSON would replace each invalid byte by
// U+FFFD, changing the event (and its size) on the way; Encode refuses
// instead.
func TestInvalidUTF8IsRejected(t *testing.T) {
	for name, edit := range map[string]func(*events.Event){
		"trace":          func(e *events.Event) { e.ErrorTrace = "ok \xff" },
		"author":         func(e *events.Event) { e.Author = "\xc3" },
		"metadata key":   func(e *events.Event) { e.Metadata = map[string]string{"\xff": "v"} },
		"metadata value": func(e *events.Event) { e.Metadata = map[string]string{"k": "\xff"} },
	} {
		e := sample(events.ExecutionFailed)
		edit(&e)
		if _, err := events.Encode(e); !errors.Is(err, events.ErrInvalidField) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("%s: Encode = %v, want ErrInvalidField for invalid UTF-8", name, err)
		}
	}
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("a", 600) + strings.Repeat("é", 300) + strings.Repeat("z", 600) // 1800 bytes
	for _, max := range []int{1800, 1799, 1000, 100, 41, 40, 30, 5, 1, 0} {
		got := events.Truncate(long, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("Truncate(%d bytes, %d) = %d bytes, valid UTF-8 %v", len(long), max, len(got), utf8.ValidString(got))
		}
		if max >= len(long) {
			if got != long {
				t.Fatalf("Truncate changed a string within its limit")
			}
			continue
		}
		if max < 40 {
			continue // no room for the marker: a plain cut
		}
		head, rest, ok := strings.Cut(got, "… [truncated ")
		n, tail, _ := strings.Cut(rest, " bytes] …")
		if !ok || !strings.HasPrefix(long, head) || !strings.HasSuffix(long, tail) || n != fmt.Sprint(len(long)-len(head)-len(tail)) {
			t.Fatalf("Truncate(…, %d) = %q: want start … [truncated N bytes] … end, N the bytes left out", max, got)
		}
		if max > 100 && (len(head) < max/3 || len(tail) < max/3) {
			t.Fatalf("Truncate(…, %d) kept %d bytes of the start and %d of the end", max, len(head), len(tail))
		}
	}
	if got := events.Truncate("short", 100); got != "short" {
		t.Fatalf("Truncate(short) = %q", got)
	}
}

func TestParseAndCheckSubject(t *testing.T) {
	const prefix = events.DefaultSubjectPrefix
	for _, c := range []struct{ pipeline, change string }{{"billing", "0001-init"}, {"billing.eu", "v1.2 fix*"}, {"p", ""}} {
		p, ch, err := events.ParseSubject(prefix, events.Subject(prefix, c.pipeline, c.change))
		if err != nil || p != c.pipeline || ch != c.change {
			t.Errorf("ParseSubject(Subject(%q, %q)) = %q, %q, %v", c.pipeline, c.change, p, ch, err)
		}
	}
	for _, s := range []string{"audit.exec", "audit.exec.p", "audit.exec.p.c.d", "other.p.c", "audit.exec.p.a%2e", "audit.exec.p.a b"} {
		if _, _, err := events.ParseSubject(prefix, s); err == nil {
			t.Errorf("ParseSubject(%q) accepted it", s)
		}
	}

	e := events.New(events.ExecutionFailed, "real", "0002-change")
	if err := events.CheckSubject(prefix, "audit.exec.real.0002-change", e); err != nil {
		t.Fatalf("CheckSubject on its own subject: %v", err)
	}
	for subject, want := range map[string]string{
		"audit.exec.real.0001-change":  `event for change "0002-change" of pipeline "real" published on change "0001-change"'s subject (audit.exec.real.0001-change)`,
		"audit.exec.other.0002-change": `published on change "0002-change" of pipeline "other"'s subject`,
		"audit.exec.stray":             `published on subject audit.exec.stray, which is no change's subject`,
	} {
		err := events.CheckSubject(prefix, subject, e)
		var de *events.Error
		if !errors.Is(err, events.ErrWrongSubject) || !errors.As(err, &de) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckSubject(%s) = %v, want ErrWrongSubject saying %q", subject, err, want)
		}
	}
}

// TestSchemaDocumentsTheLimits keeps the JSON Schema's bounds equal to the
// constants the decoder enforces.
func TestSchemaDocumentsTheLimits(t *testing.T) {
	var schema struct {
		Properties map[string]struct {
			MaxLength int `json:"maxLength"`
		} `json:"properties"`
		Defs struct {
			Data struct {
				Properties map[string]struct {
					MaxLength            int `json:"maxLength"`
					MaxProperties        int `json:"maxProperties"`
					AdditionalProperties struct {
						MaxLength int `json:"maxLength"`
					} `json:"additionalProperties"`
					PropertyNames struct {
						MaxLength int `json:"maxLength"`
					} `json:"propertyNames"`
				} `json:"properties"`
			} `json:"data"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(events.Schema, &schema); err != nil {
		t.Fatal(err)
	}
	if got := schema.Properties["id"].MaxLength; got != events.MaxIDLen {
		t.Errorf("schema id maxLength %d, want %d", got, events.MaxIDLen)
	}
	data := schema.Defs.Data.Properties
	for field, want := range map[string]int{
		"pipeline": events.MaxKeyLen, "changeId": events.MaxKeyLen, "order": events.MaxKeyLen, "executionId": events.MaxIDLen,
		"author": events.MaxTextLen, "targetSystem": events.MaxTextLen, "host": events.MaxTextLen, "runnerId": events.MaxTextLen,
		"operator": events.MaxTextLen, "errorMessage": events.MaxMessageLen, "reason": events.MaxMessageLen, "errorTrace": events.MaxTraceLen,
	} {
		if got := data[field].MaxLength; got != want {
			t.Errorf("schema data.%s maxLength %d, want %d", field, got, want)
		}
	}
	md := data["metadata"]
	if md.MaxProperties != events.MaxMetadataKeys || md.PropertyNames.MaxLength != events.MaxMetadataKeyLen || md.AdditionalProperties.MaxLength != events.MaxMetadataValueLen {
		t.Errorf("schema metadata bounds %+v", md)
	}
	for _, n := range []int{events.MaxMetadataBytes, events.MaxEventBytes} {
		if !strings.Contains(string(events.Schema), fmt.Sprint(n)) {
			t.Errorf("the schema does not mention the limit %d", n)
		}
	}
}
