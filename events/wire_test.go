package events_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
)

// sample returns a fully populated, valid event of type t.
func sample(t events.Type) events.Event {
	e := events.New(t, "billing-service", "0042-add-invoice-index")
	e.OccurredAt = time.Date(2026, 11, 26, 10, 30, 0, 123456789, time.UTC)
	e.Author, e.ExecutionID, e.Order = "alice", "exec-1", "0042"
	e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "billing-db", "host-a", "runner-1", 17
	e.Duration = 1500 * time.Millisecond
	e.Metadata = map[string]string{"ticket": "OPS-7", "ünïcode": "✓"}
	e.Recovery, e.Transactional = events.AlwaysRetry, true
	e.PrevHash, e.PrevSeq, e.Position = events.Hash([]byte("the previous event")), 41, 3
	switch t {
	case events.ExecutionFailed, events.RollbackFailed, events.ExecutionOverlapped:
		e.ErrorMessage, e.ErrorTrace = "duplicate key", "trace\n\tat line 1"
	case events.ManuallyResolved:
		e.ExecutionID = ""
		e.Resolution, e.Operator, e.Reason = events.ResolvedApplied, "bob", "verified by hand"
	}
	return e
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, typ := range events.Types {
		t.Run(string(typ), func(t *testing.T) {
			want := sample(typ)
			b, err := events.Encode(want)
			if err != nil {
				t.Fatal(err)
			}
			got, err := events.Decode(b)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestEncodeIsCloudEvent(t *testing.T) {
	b, err := events.Encode(sample(events.ExecutionSucceeded))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"specversion": "1.0", "type": "io.auditflow.ExecutionSucceeded",
		"subject": "0042-add-invoice-index", "source": "urn:auditflow:pipeline:billing-service",
		"time": "2026-11-26T10:30:00.123456789Z", "datacontenttype": "application/json",
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
}

// TestDecodeErrors checks that each kind of bad input gives its sentinel and
// names the field at fault.
func TestDecodeErrors(t *testing.T) {
	valid, err := events.Encode(sample(events.ExecutionFailed))
	if err != nil {
		t.Fatal(err)
	}
	// edit returns valid with one change applied to its JSON tree.
	edit := func(f func(env, data map[string]any)) []byte {
		var env map[string]any
		if err := json.Unmarshal(valid, &env); err != nil {
			t.Fatal(err)
		}
		f(env, env["data"].(map[string]any))
		b, _ := json.Marshal(env)
		return b
	}
	cases := []struct {
		name  string
		in    []byte
		want  error
		field string
	}{
		{"not json", []byte("{"), events.ErrMalformed, ""},
		{"json array", []byte("[]"), events.ErrMalformed, ""},
		{"wrong specversion", edit(func(e, d map[string]any) { e["specversion"] = "0.3" }), events.ErrMalformed, "specversion"},
		{"xml data", edit(func(e, d map[string]any) { e["datacontenttype"] = "text/xml" }), events.ErrMalformed, "datacontenttype"},
		{"no data", edit(func(e, d map[string]any) { delete(e, "data") }), events.ErrMissingField, "data"},
		{"unknown type", edit(func(e, d map[string]any) { e["type"] = "io.auditflow.ExecutionExploded" }), events.ErrUnknownType, "type"},
		{"foreign type", edit(func(e, d map[string]any) { e["type"] = "com.example.Thing" }), events.ErrUnknownType, "type"},
		{"newer version", edit(func(e, d map[string]any) { d["schemaVersion"] = events.SchemaVersion + 1; d["newField"] = 1 }), events.ErrUnsupportedVersion, "data.schemaVersion"},
		{"bad prev hash", edit(func(e, d map[string]any) { d["prevHash"] = "md5:abc" }), events.ErrInvalidField, "data.prevHash"},
		{"prev hash in v1", edit(func(e, d map[string]any) { d["schemaVersion"] = 1; d["prevHash"] = events.Hash([]byte("x")) }), events.ErrInvalidField, "data.prevHash"},
		{"version zero", edit(func(e, d map[string]any) { d["schemaVersion"] = 0 }), events.ErrUnsupportedVersion, "data.schemaVersion"},
		{"version string", edit(func(e, d map[string]any) { d["schemaVersion"] = "1" }), events.ErrUnsupportedVersion, "data.schemaVersion"},
		{"no version", edit(func(e, d map[string]any) { delete(d, "schemaVersion") }), events.ErrMissingField, "data.schemaVersion"},
		{"unknown data field", edit(func(e, d map[string]any) { d["colour"] = "red" }), events.ErrInvalidField, "data.colour"},
		{"no id", edit(func(e, d map[string]any) { delete(e, "id") }), events.ErrMissingField, "id"},
		{"long id", edit(func(e, d map[string]any) { e["id"] = strings.Repeat("x", 129) }), events.ErrInvalidField, "id"},
		{"no time", edit(func(e, d map[string]any) { delete(e, "time") }), events.ErrMissingField, "time"},
		{"bad time", edit(func(e, d map[string]any) { e["time"] = "yesterday" }), events.ErrInvalidField, "time"},
		{"no source", edit(func(e, d map[string]any) { delete(e, "source") }), events.ErrMissingField, "source"},
		{"subject mismatch", edit(func(e, d map[string]any) { e["subject"] = "other" }), events.ErrInvalidField, "subject"},
		{"no pipeline", edit(func(e, d map[string]any) { delete(d, "pipeline") }), events.ErrMissingField, "data.pipeline"},
		{"no change", edit(func(e, d map[string]any) { d["changeId"] = ""; delete(e, "subject") }), events.ErrMissingField, "data.changeId"},
		{"no execution", edit(func(e, d map[string]any) { delete(d, "executionId") }), events.ErrMissingField, "data.executionId"},
		{"failure without error", edit(func(e, d map[string]any) { delete(d, "errorMessage") }), events.ErrMissingField, "data.errorMessage"},
		{"bad recovery", edit(func(e, d map[string]any) { d["recovery"] = "SOMETIMES" }), events.ErrInvalidField, "data.recovery"},
		{"negative duration", edit(func(e, d map[string]any) { d["durationMs"] = -1 }), events.ErrInvalidField, "data.durationMs"},
		{"lock token string", edit(func(e, d map[string]any) { d["lockToken"] = "7" }), events.ErrInvalidField, "data.lockToken"},
		{"metadata number", edit(func(e, d map[string]any) { d["metadata"] = map[string]any{"a": 1} }), events.ErrInvalidField, "data.metadata"},
		{"resolution on failure", edit(func(e, d map[string]any) { d["resolution"] = "APPLIED" }), events.ErrInvalidField, "data.resolution"},
		{"resolution without operator", edit(func(e, d map[string]any) {
			e["type"] = "io.auditflow.ManuallyResolved"
			d["resolution"], d["reason"] = "APPLIED", "checked"
		}), events.ErrMissingField, "data.operator"},
		{"bad resolution", edit(func(e, d map[string]any) {
			e["type"] = "io.auditflow.ManuallyResolved"
			d["resolution"], d["reason"], d["operator"] = "MAYBE", "checked", "bob"
		}), events.ErrInvalidField, "data.resolution"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := events.Decode(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("Decode(%s) = %v, want %v", c.in, err, c.want)
			}
			var de *events.Error
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not *events.Error", err)
			}
			if de.Field != c.field {
				t.Fatalf("field = %q, want %q (%v)", de.Field, c.field, err)
			}
		})
	}
}

func TestDecodeAcceptsExtensionsAndDefaults(t *testing.T) {
	in := `{"specversion":"1.0","id":"e1","source":"x","type":"io.auditflow.ExecutionStarted",
	 "time":"2026-01-02T03:04:05+02:00","traceparent":"00-abc-def-01",
	 "data":{"schemaVersion":1,"pipeline":"p","changeId":"c","executionId":"x1"}}`
	e, err := events.Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if e.Recovery != events.ManualIntervention {
		t.Errorf("recovery default = %q", e.Recovery)
	}
	if want := time.Date(2026, 1, 2, 1, 4, 5, 0, time.UTC); !e.OccurredAt.Equal(want) || e.OccurredAt.Location() != time.UTC {
		t.Errorf("time = %v, want %v in UTC", e.OccurredAt, want)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	e := sample(events.ExecutionFailed)
	e.ErrorMessage = ""
	if _, err := events.Encode(e); !errors.Is(err, events.ErrMissingField) {
		t.Fatalf("Encode without error message = %v", err)
	}
}

func TestStateOf(t *testing.T) {
	seen := map[events.State]bool{}
	for _, typ := range events.Types {
		e := sample(typ)
		seen[e.State()] = true
		if typ == events.ManuallyResolved {
			e.Resolution = events.ResolvedRolledBack
			seen[e.State()] = true
		}
	}
	for _, s := range events.States {
		if !seen[s] && s != events.StateOutOfChain { // a row's state, never an event's
			t.Errorf("no event leads to state %s", s)
		}
	}
}

// TestSchemaMatchesDecoder keeps the published JSON Schema and the Go
// decoder describing the same format.
func TestSchemaMatchesDecoder(t *testing.T) {
	var schema struct {
		Properties struct {
			Type struct {
				Enum []string `json:"enum"`
			} `json:"type"`
		} `json:"properties"`
		Defs struct {
			Data struct {
				Required   []string                   `json:"required"`
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"data"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(events.Schema, &schema); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, typ := range events.Types {
		types = append(types, events.TypePrefix+string(typ))
	}
	if !slices.Equal(schema.Properties.Type.Enum, types) {
		t.Errorf("schema types %v, decoder types %v", schema.Properties.Type.Enum, types)
	}
	// Every field the encoder may write is in the schema, and no other.
	b, err := events.Encode(sample(events.ExecutionFailed))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	mr, _ := events.Encode(sample(events.ManuallyResolved))
	var env2 struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(mr, &env2); err != nil {
		t.Fatal(err)
	}
	for k, v := range env2.Data {
		if _, ok := env.Data[k]; !ok {
			env.Data[k] = v
		}
	}
	var wrote, documented []string
	for k := range env.Data {
		wrote = append(wrote, k)
	}
	for k := range schema.Defs.Data.Properties {
		documented = append(documented, k)
	}
	slices.Sort(wrote)
	slices.Sort(documented)
	if !slices.Equal(wrote, documented) {
		t.Errorf("encoder writes %v\nschema documents %v", wrote, documented)
	}
	for _, f := range schema.Defs.Data.Required {
		d := map[string]any{}
		for k, v := range env.Data {
			d[k] = v
		}
		delete(d, "resolution")
		delete(d, "operator")
		delete(d, "reason")
		delete(d, f)
		raw, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": "x", "source": "s",
			"type": "io.auditflow.ExecutionFailed", "time": "2026-01-01T00:00:00Z", "data": d})
		if _, err := events.Decode(raw); !errors.Is(err, events.ErrMissingField) {
			t.Errorf("schema requires %s but the decoder accepts its absence: %v", f, err)
		}
	}
}

// TestExampleEventsDecode keeps the example documents in testdata valid.
func TestExampleEventsDecode(t *testing.T) {
	files, _ := filepath.Glob("testdata/examples/*.json")
	if len(files) == 0 {
		t.Fatal("no example events in testdata/examples")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := events.Decode(b); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, typ := range events.Types {
		b, err := events.Encode(sample(typ))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	files, _ := filepath.Glob("testdata/examples/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"specversion":"1.0","data":{"schemaVersion":99}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","type":"io.auditflow.ExecutionStarted","time":"2026-01-01T00:00:00Z","data":{"schemaVersion":1,"pipeline":"p","changeId":"c","executionId":"x","durationMs":9223372036854}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := events.Decode(b)
		if err != nil {
			var de *events.Error
			if !errors.As(err, &de) || de.Err == nil {
				t.Fatalf("error %v (%T) is not an *events.Error with a sentinel", err, err)
			}
			return
		}
		// Whatever decodes must encode, and decode again to the same event.
		again, err := events.Encode(e)
		if err != nil {
			t.Fatalf("decoded event does not encode: %v\n%+v", err, e)
		}
		e2, err := events.Decode(again)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", e, e2)
		}
	})
}

func FuzzSubjectToken(f *testing.F) {
	for _, s := range []string{"", "a", "001-create-users", "db.users", "a b", "%", "*", ">", "ü", "%41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := events.EncodeToken(s)
		if tok == "" || strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("EncodeToken(%q) = %q is not a NATS token", s, tok)
		}
		back, err := events.DecodeToken(tok)
		if err != nil || back != s {
			t.Fatalf("DecodeToken(EncodeToken(%q)) = %q, %v", s, back, err)
		}
		// Decoding arbitrary input either fails or is canonical.
		if d, err := events.DecodeToken(s); err == nil && events.EncodeToken(d) != s {
			t.Fatalf("DecodeToken(%q) = %q, which encodes as %q", s, d, events.EncodeToken(d))
		}
	})
}

func TestSubject(t *testing.T) {
	for _, c := range []struct{ pipeline, change, want string }{
		{"billing", "0001-init", "audit.exec.billing.0001-init"},
		{"billing.eu", "v1.2 fix*", "audit.exec.billing%2Eeu.v1%2E2%20fix%2A"},
		{"p", "100%", "audit.exec.p.100%25"},
	} {
		if got := events.Subject(events.DefaultSubjectPrefix, c.pipeline, c.change); got != c.want {
			t.Errorf("Subject(%q, %q) = %q, want %q", c.pipeline, c.change, got, c.want)
		}
	}
}

// TestOverlappedNeedsVersion3: ExecutionOverlapped came with schema
// version 3, and a version-2 claim of it is rejected; every type is now
// written at version 4, which places it on its change's subject.
func TestOverlappedNeedsVersion3(t *testing.T) {
	for typ, want := range map[events.Type]int{events.ExecutionStarted: 4, events.ManuallyResolved: 4, events.ExecutionOverlapped: 4} {
		b, err := events.Encode(sample(typ))
		if err != nil {
			t.Fatal(err)
		}
		e, err := events.Decode(b)
		if err != nil || e.SchemaVersion != want {
			t.Errorf("%s: version %d (%v), want %d", typ, e.SchemaVersion, err, want)
		}
	}
	e := sample(events.ExecutionOverlapped)
	e.SchemaVersion = 2
	if _, err := events.Encode(e); !errors.Is(err, events.ErrInvalidField) {
		t.Fatalf("ExecutionOverlapped at version 2: %v, want ErrInvalidField", err)
	}
	if s := sample(events.ExecutionOverlapped).State(); s != events.StateOverlapped {
		t.Fatalf("state %s", s)
	}
}
