package projector

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

const prefix = events.DefaultSubjectPrefix

// encoded returns a valid event's bytes, edited by edit (on the decoded
// JSON document) if not nil, and the subject its change belongs on.
func encoded(t testing.TB, typ events.Type, change string, edit func(doc map[string]any)) ([]byte, string) {
	t.Helper()
	e := events.New(typ, "billing", change)
	e.ExecutionID = "exec-1"
	if typ == events.ExecutionFailed {
		e.ErrorMessage = "exit status 1"
	}
	b, err := events.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		edit(doc)
		if b, err = json.Marshal(doc); err != nil {
			t.Fatal(err)
		}
	}
	return b, events.Subject(prefix, "billing", change)
}

func setData(k string, v any) func(map[string]any) {
	return func(doc map[string]any) { doc["data"].(map[string]any)[k] = v }
}

// poisonSeeds are one message of every kind the fetcher must judge, with
// the outcome it must reach.
func poisonSeeds(t testing.TB) []struct {
	name    string
	subject string
	data    []byte
	want    outcome
	reason  string // in the dead-letter reason
} {
	valid, subj := encoded(t, events.ExecutionStarted, "0001", nil)
	failed2, _ := encoded(t, events.ExecutionFailed, "0002", nil)
	unknownType, _ := encoded(t, events.ExecutionStarted, "0001", func(d map[string]any) { d["type"] = "io.auditflow.ExecutionExploded" })
	unknownField, _ := encoded(t, events.ExecutionStarted, "0001", setData("colour", "red"))
	newer, _ := encoded(t, events.ExecutionStarted, "0001", setData("schemaVersion", events.SchemaVersion+1))
	newerUnknownField, _ := encoded(t, events.ExecutionStarted, "0001", func(d map[string]any) {
		setData("schemaVersion", events.SchemaVersion+1)(d)
		setData("colour", "red")(d)
	})
	farFuture, _ := encoded(t, events.ExecutionStarted, "0001", setData("schemaVersion", 99))
	zero, _ := encoded(t, events.ExecutionStarted, "0001", setData("schemaVersion", 0))
	float, _ := encoded(t, events.ExecutionStarted, "0001", setData("schemaVersion", 4.5))
	text, _ := encoded(t, events.ExecutionStarted, "0001", setData("schemaVersion", "4"))
	noVersion, _ := encoded(t, events.ExecutionStarted, "0001", func(d map[string]any) { delete(d["data"].(map[string]any), "schemaVersion") })
	noData, _ := encoded(t, events.ExecutionStarted, "0001", func(d map[string]any) { delete(d, "data") })
	return []struct {
		name    string
		subject string
		data    []byte
		want    outcome
		reason  string
	}{
		{"valid", subj, valid, outStore, ""},
		{"invalid JSON", subj, []byte("not json at all"), outDeadLetter, "malformed"},
		{"empty", subj, nil, outDeadLetter, "malformed"},
		{"junk", "audit.exec.poison.c4", []byte(strings.Repeat("x", 4096)), outDeadLetter, "malformed"},
		{"unknown type", subj, unknownType, outDeadLetter, "unknown event type"},
		{"unknown field", subj, unknownField, outDeadLetter, "unknown field"},
		{"subject mismatch", subj, failed2, outDeadLetter, `events: event on the wrong subject: event for change "0002" of pipeline "billing" published on change "0001"'s subject (audit.exec.billing.0001)`},
		{"newer version", subj, newer, outHold, ""},
		{"newer version, unknown field", subj, newerUnknownField, outHold, ""},
		{"version 99: junk, not the future", subj, farFuture, outDeadLetter, "unsupported schema version"},
		{"version 0", subj, zero, outDeadLetter, "unsupported schema version"},
		{"fractional version", subj, float, outDeadLetter, "unsupported schema version"},
		{"version as text", subj, text, outDeadLetter, "unsupported schema version"},
		{"no version", subj, noVersion, outDeadLetter, "missing required field data.schemaVersion"},
		{"no data", subj, noData, outDeadLetter, "missing required field data"},
	}
}

func TestDecide(t *testing.T) {
	for _, c := range poisonSeeds(t) {
		t.Run(c.name, func(t *testing.T) {
			d := decide(events.Decode, prefix, nil, StreamMsg{Seq: 7, Subject: c.subject, Data: c.data})
			checkDecision(t, c.subject, 7, c.data, d)
			if d.outcome != c.want {
				t.Fatalf("outcome %s (reason %v), want %s", d.outcome, d.reason, c.want)
			}
			if c.reason != "" && !strings.Contains(d.reason.Error(), c.reason) {
				t.Fatalf("reason %q, want it to contain %q", d.reason, c.reason)
			}
			if d.outcome == outHold && d.version != events.SchemaVersion+1 {
				t.Fatalf("held version %d", d.version)
			}
		})
	}
	// A decoder that reads the newer version (what an upgraded build
	// supplies) stores what this build holds.
	newer := poisonSeeds(t)[7]
	d := decide(func(b []byte) (events.Event, error) {
		return events.Decode([]byte(strings.Replace(string(b), fmt.Sprintf(`"schemaVersion":%d`, events.SchemaVersion+1), fmt.Sprintf(`"schemaVersion":%d`, events.SchemaVersion), 1)))
	}, prefix, nil, StreamMsg{Seq: 7, Subject: newer.subject, Data: newer.data})
	if d.outcome != outStore || d.rec.Hash != events.Hash(newer.data) {
		t.Fatalf("upgraded decoder: %s %v, hash %s", d.outcome, d.reason, d.rec.Hash)
	}
	// A decoder that returns a newer version without an error is held too.
	d = decide(func([]byte) (events.Event, error) {
		e := events.New(events.ExecutionStarted, "billing", "0001")
		e.ExecutionID, e.SchemaVersion = "x", events.SchemaVersion+2
		return e, nil
	}, prefix, nil, StreamMsg{Seq: 7, Subject: newer.subject, Data: newer.data})
	if d.outcome != outHold || d.version != events.SchemaVersion+2 {
		t.Fatalf("custom decoder's newer event: %s version %d", d.outcome, d.version)
	}
}

// checkDecision asserts what every decision must satisfy: exactly one
// outcome with what it needs, a stored record that every store accepts,
// and a dead letter that fits whatever the message's size.
func checkDecision(t *testing.T, subject string, seq uint64, data []byte, d decision) {
	t.Helper()
	switch d.outcome {
	case outStore:
		if d.reason != nil || d.version != 0 {
			t.Fatalf("store with reason %v version %d", d.reason, d.version)
		}
		r := d.rec
		if r.Seq != seq || r.Hash != events.Hash(data) || events.Subject(prefix, r.Pipeline, r.ChangeID) != subject {
			t.Fatalf("record seq %d hash %s on %s for %s/%s", r.Seq, r.Hash, subject, r.Pipeline, r.ChangeID)
		}
		if err := (stores.Batch{Checkpoint: "c", Records: []stores.Record{r}}).Validate(); err != nil {
			t.Fatalf("a record every store refuses was routed to the store: %v", err)
		}
		if i := route(r.Event, 3); i < 0 || i >= 3 {
			t.Fatalf("route %d", i)
		}
	case outDeadLetter:
		if d.reason == nil || d.rec.Seq != 0 || d.version != 0 {
			t.Fatalf("dead letter with reason %v seq %d version %d", d.reason, d.rec.Seq, d.version)
		}
		for _, limit := range []int64{1 << 20, 4096} {
			checkDeadLetter(t, original{stream: "AUDIT", subject: subject, seq: seq, data: data}, d.reason.Error(), limit)
		}
	case outHold:
		if d.reason != nil || d.rec.Seq != 0 || d.version <= events.SchemaVersion {
			t.Fatalf("hold with reason %v seq %d version %d", d.reason, d.rec.Seq, d.version)
		}
	default:
		t.Fatalf("no outcome: %+v", d)
	}
}

func checkDeadLetter(t *testing.T, o original, reason string, limit int64) {
	t.Helper()
	m := deadLetterMsg(DefaultDeadLetterPrefix, "projector-x", o, reason, limit, false)
	h := m.Header
	if h.Get(HeaderReason) == "" || h.Get(HeaderSubject) != o.subject ||
		h.Get(HeaderSequence) != strconv.FormatUint(o.seq, 10) || h.Get(HeaderHash) != events.Hash(o.data) ||
		h.Get(HeaderSize) != strconv.Itoa(len(o.data)) || h.Get(HeaderStream) != o.stream {
		t.Fatalf("dead letter headers %v", h)
	}
	for k := range h {
		if strings.HasPrefix(k, "Nats-") && k != "Nats-Msg-Id" {
			t.Fatalf("a JetStream header would steer the dead-letter publish: %s", k)
		}
	}
	full := deadLetterMsg(DefaultDeadLetterPrefix, "projector-x", o, reason, 1<<62, false)
	switch h.Get(HeaderCopy) {
	case CopyFull:
		if string(m.Data) != string(o.data) || payloadSize(m) > limit {
			t.Fatalf("full copy of %d bytes as %d, payload %d > %d", len(o.data), len(m.Data), payloadSize(m), limit)
		}
	case CopyReference:
		if payloadSize(full) <= limit {
			t.Fatalf("a reference for a copy that fits (%d <= %d)", payloadSize(full), limit)
		}
		if len(m.Data) > ReferencePreview || payloadSize(m) > limit && len(m.Data) > 0 {
			t.Fatalf("reference body %d bytes, payload %d > %d", len(m.Data), payloadSize(m), limit)
		}
		// A reference always fits unless the headers alone cannot (an
		// original subject of kilobytes against a tiny limit).
		if payloadSize(m) > limit && limit >= 1<<20 {
			t.Fatalf("a reference of %d bytes does not fit in %d", payloadSize(m), limit)
		}
	default:
		t.Fatalf("copy header %q", h.Get(HeaderCopy))
	}
}

// FuzzDecide runs the fetcher's per-message judgement on random subjects,
// bytes and signature headers: it never panics, and every message ends as
// exactly one of a record every store accepts (whatever the header), a
// dead letter with a reason that fits in a message, or a held
// newer-version event.
//
//	go test ./projector -run XXX -fuzz FuzzDecide -fuzztime 5m
func FuzzDecide(f *testing.F) {
	signer, list := fuzzTrust(f)
	for i, c := range poisonSeeds(f) {
		sig := []string{"", signer.Sign(c.data), "garbage", signer.PublicKey() + " " + strings.Repeat("\xff", 90)}[i%4]
		f.Add(c.subject, c.data, sig)
	}
	f.Fuzz(func(t *testing.T, subject string, data []byte, sig string) {
		m := StreamMsg{Seq: 42, Subject: subject, Data: data, Header: nats.Header{trust.Header: {sig}}}
		d := decide(events.Decode, prefix, list, m)
		checkDecision(t, subject, 42, data, d)
		if d.outcome == outStore && (sig == signer.Sign(data)) != (d.rec.Trust == "") {
			t.Fatalf("verdict %q for header %q", d.rec.Trust, sig)
		}
	})
}

func fuzzTrust(t testing.TB) (*trust.Signer, *trust.List) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := trust.NewSigner(kp)
	if err != nil {
		t.Fatal(err)
	}
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "runner", Roles: []trust.Role{trust.RoleRunner, trust.RoleOperator},
		Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		t.Fatal(err)
	}
	return signer, list
}

func TestDeadLetterMsg(t *testing.T) {
	hdr := nats.Header{"Nats-Msg-Id": {"e1"}, "Nats-Expected-Stream": {"AUDIT"}, "Nats-Expected-Last-Subject-Sequence": {"3"},
		"Traceparent": {"00-abc"}, "bad key": {"x"}}
	o := original{stream: "AUDIT", subject: "audit.exec.billing.0001", seq: 9, data: []byte("not json"), header: hdr}
	m := deadLetterMsg("audit.deadletter", "projector-sqlite", o, "events: malformed event:\ninvalid character", 1<<20, false)
	if m.Subject != "audit.deadletter.audit.exec.billing.0001" || m.Header.Get(HeaderCopy) != CopyFull || string(m.Data) != "not json" {
		t.Fatalf("full copy: %s %v %q", m.Subject, m.Header, m.Data)
	}
	want := map[string]string{
		"Nats-Msg-Id": "projector-sqlite-9", "Auditflow-Original-Nats-Msg-Id": "e1",
		"Auditflow-Original-Nats-Expected-Stream": "AUDIT", "Traceparent": "00-abc",
		HeaderReason: "events: malformed event: invalid character", HeaderSize: "8",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := m.Header["Nats-Expected-Stream"]; ok {
		t.Error("Nats-Expected-Stream copied: the dead-letter stream would refuse it")
	}
	if _, ok := m.Header["bad key"]; ok {
		t.Error("an invalid header key copied: nats.go would refuse to publish")
	}

	// Just under max payload: the copy with its headers does not fit.
	big := original{stream: "AUDIT", subject: "audit.exec.poison.c4", seq: 10, data: []byte(strings.Repeat("x", 1<<20-16))}
	m = deadLetterMsg("audit.deadletter", "projector-sqlite", big, "malformed", 1<<20, false)
	if m.Header.Get(HeaderCopy) != CopyReference || len(m.Data) != ReferencePreview || payloadSize(m) > 2048 {
		t.Fatalf("reference: copy %q body %d payload %d", m.Header.Get(HeaderCopy), len(m.Data), payloadSize(m))
	}
	// Exactly at the limit a full copy still goes.
	full := deadLetterMsg("audit.deadletter", "projector-sqlite", o, "r", 1<<20, false)
	if lim := payloadSize(full); deadLetterMsg("audit.deadletter", "projector-sqlite", o, "r", lim, false).Header.Get(HeaderCopy) != CopyFull ||
		deadLetterMsg("audit.deadletter", "projector-sqlite", o, "r", lim-1, false).Header.Get(HeaderCopy) != CopyReference {
		t.Fatal("the full copy is not used exactly up to the limit")
	}
	// A very long original subject goes to a fixed dead-letter subject.
	long := original{stream: "AUDIT", subject: "audit.exec." + strings.Repeat("p", 600) + ".c", seq: 1, data: []byte("x")}
	if m := deadLetterMsg("audit.deadletter", "c", long, "r", 1<<20, false); m.Subject != "audit.deadletter.oversized-subject" || m.Header.Get(HeaderSubject) != long.subject {
		t.Fatalf("long subject: %s", m.Subject)
	}
	if !errors.Is(refusalReason(stores.ErrInvalidRecord), ErrStoreRefused) {
		t.Fatal("refusal reason")
	}
}

func TestGrowingDelay(t *testing.T) {
	for _, c := range []struct {
		delivered uint64
		want      string
	}{{0, "1s"}, {1, "1s"}, {2, "2s"}, {3, "4s"}, {7, "1m0s"}, {1 << 40, "1m0s"}} {
		if got := growingDelay(c.delivered, 1e9, 60e9).String(); got != c.want {
			t.Errorf("delivery %d: %s, want %s", c.delivered, got, c.want)
		}
	}
}
