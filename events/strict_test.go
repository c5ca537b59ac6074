package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/auditflow/auditflow/events"
)

// strictCase is a document that readers may read differently, made from a
// valid encoded event, and the field Decode must name.
type strictCase struct {
	name, field, reason string
	edit                func(string) string
}

// replace returns an edit replacing old by new once.
func replace(old, new string) func(string) string {
	return func(s string) string { return strings.Replace(s, old, new, 1) }
}

var notStrict = []strictCase{
	{"two type keys", "type", "appears twice",
		replace(`"type":"io.auditflow.ExecutionFailed"`, `"type":"io.auditflow.ExecutionFailed","type":"io.auditflow.ExecutionSucceeded"`)},
	{"two type keys, one escaped", "type", "appears twice",
		replace(`"type":"io.auditflow.ExecutionFailed"`, `"type":"io.auditflow.ExecutionFailed","typ\u0065":"io.auditflow.ExecutionSucceeded"`)},
	{"escaped key twice", "id", "appears twice", replace(`"id":`, `"\u0069d":"other","i\u0064":`)},
	{"two authors in data", "data.author", "appears twice", replace(`"author":"alice"`, `"author":"alice","author":"mallory"`)},
	{"two errorMessages", "data.errorMessage", "appears twice", replace(`"errorMessage":"duplicate key"`, `"errorMessage":"x","errorMessage":"duplicate key"`)},
	{"two data objects", "data", "appears twice", replace(`"data":{`, `"data":{"schemaVersion":4},"data":{`)},
	{"metadata key twice", `data.metadata["ticket"]`, "appears twice", replace(`"ticket":"OPS-7"`, `"ticket":"OPS-7","ticket":"OPS-8"`)},
	{"metadata key twice, escaped", `data.metadata["ticket"]`, "appears twice", replace(`"ticket":"OPS-7"`, `"ticket":"OPS-7","tick\u0065t":"OPS-8"`)},
	{"duplicate in an extension attribute", "ext.a", "appears twice", replace(`{"specversion"`, `{"ext":{"a":1,"b":[{"c":1}],"a":2},"specversion"`)},
	{"duplicate deep in an extension array", "ext[1].c", "appears twice", replace(`{"specversion"`, `{"ext":[{"c":1},{"c":1,"c":2}],"specversion"`)},
	{"type in another case", "Type", "another case", replace(`"type":`, `"Type":`)},
	{"type and TYPE", "TYPE", "another case", replace(`{"specversion"`, `{"TYPE":"io.auditflow.ExecutionSucceeded","specversion"`)},
	{"data field in another case", "data.Author", "another case", replace(`"author":`, `"Author":`)},
	// U+212A KELVIN SIGN folds to k: encoding/json reads "locKToken" as lockToken.
	{"a key folding to ours", `data["loc` + "\u212a" + `Token"]`, "another case", replace(`"lockToken"`, `"loc`+"\u212a"+`Token"`)},
	{"invalid UTF-8 in author", "data.author", "invalid UTF-8", replace(`"author":"alice"`, "\"author\":\"al\xffice\"")},
	{"truncated rune in author", "data.author", "invalid UTF-8", replace(`"author":"alice"`, "\"author\":\"alice\xc3\"")},
	{"invalid UTF-8 in a key", "data.metadata", "invalid UTF-8", replace(`"ticket"`, "\"tick\xffet\"")},
	{"invalid UTF-8 in metadata", `data.metadata["ticket"]`, "invalid UTF-8", replace(`"OPS-7"`, "\"OPS\xed\xa0\x80\"")}, // an encoded surrogate
	{"invalid UTF-8 in an extension", "ext", "invalid UTF-8", replace(`{"specversion"`, "{\"ext\":\"\xc0\xaf\",\"specversion\"")},
	{"invalid UTF-8 in the trace", "data.errorTrace", "invalid UTF-8", replace(`"errorTrace":"trace`, "\"errorTrace\":\"\xfetrace")},
	{"lone high surrogate", "data.author", "lone surrogate", replace(`"author":"alice"`, `"author":"al\ud800ice"`)},
	{"lone low surrogate", "data.author", "lone surrogate", replace(`"author":"alice"`, `"author":"\udc00"`)},
	{"high surrogate then a letter", "data.author", "lone surrogate", replace(`"author":"alice"`, `"author":"\ud83d\u0041"`)},
	{"lone surrogate in a key", "data.metadata", "lone surrogate", replace(`"ticket"`, `"\ud800"`)},
}

// TestDecodeRefusesNonStrict: each document encoding/json would read one
// way among several is refused with ErrNotStrict (an ErrMalformed) naming
// the field, and without the strict check encoding/json would have read
// it (the check, not another rule, refuses it).
func TestDecodeRefusesNonStrict(t *testing.T) {
	valid, err := events.Encode(sample(events.ExecutionFailed))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range notStrict {
		t.Run(c.name, func(t *testing.T) {
			b := []byte(c.edit(string(valid)))
			if bytes.Equal(b, valid) {
				t.Fatalf("the edit changed nothing in %s", valid)
			}
			var lax map[string]any
			if err := json.Unmarshal(b, &lax); err != nil {
				t.Fatalf("encoding/json refuses the document itself (%v): not a strictness case", err)
			}
			_, err := events.Decode(b)
			if !errors.Is(err, events.ErrNotStrict) || !errors.Is(err, events.ErrMalformed) {
				t.Fatalf("Decode = %v, want ErrNotStrict\n%s", err, b)
			}
			var de *events.Error
			if !errors.As(err, &de) || de.Field != c.field || !strings.Contains(de.Reason, c.reason) {
				t.Fatalf("error %q: field %q, want %q with %q", err, de.Field, c.field, c.reason)
			}
		})
	}
}

// TestDecodeAcceptsStrictOddities: what is strict but unusual still decodes
// — escapes in values and keys, surrogate pairs, the same key in different
// objects, extension attributes of any shape — and reads as written.
func TestDecodeAcceptsStrictOddities(t *testing.T) {
	valid, err := events.Encode(sample(events.ExecutionFailed))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		edit  func(string) string
		check func(events.Event) bool
	}{
		"surrogate pair": {replace(`"author":"alice"`, `"author":"\ud83d\ude42 al\u0069ce"`),
			func(e events.Event) bool { return e.Author == "🙂 alice" }},
		"escaped metadata key": {replace(`"ticket":"OPS-7"`, `"tick\u0065t":"OPS-7"`),
			func(e events.Event) bool { return e.Metadata["ticket"] == "OPS-7" }},
		"same key in two objects": {replace(`{"specversion"`, `{"ext":{"id":"x","type":"y","data":{"author":1,"Author":2}},"specversion"`),
			func(e events.Event) bool { return e.Author == "alice" && e.Type == events.ExecutionFailed }},
		"extension key in another case than an extension": {replace(`{"specversion"`, `{"traceparent":"a","TraceParent":"b","specversion"`), nil},
	} {
		b := c.edit(string(valid))
		e, err := events.Decode([]byte(b))
		if err != nil {
			t.Errorf("%s: Decode = %v\n%s", name, err, b)
			continue
		}
		if c.check != nil && !c.check(e) {
			t.Errorf("%s: read %+v", name, e)
		}
	}
}

// FuzzDecodeStrict holds Decode to an independent reference: whatever it
// accepts is valid UTF-8 without escaped lone surrogates, has no key twice
// in any object (keys compared as encoding/json's tokens read them, escapes
// resolved), spells the event's own keys exactly, and re-encodes to an
// event that decodes to the same value; and what it refuses as not strict
// the reference finds not strict, or is not JSON at all.
//
//	go test ./events -run XXX -fuzz FuzzDecodeStrict -fuzztime 60s
func FuzzDecodeStrict(f *testing.F) {
	for _, typ := range events.Types {
		b, err := events.Encode(sample(typ))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		for _, c := range notStrict {
			f.Add([]byte(c.edit(string(b))))
		}
	}
	files, _ := filepath.Glob("testdata/examples/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","type":"io.auditflow.ExecutionStarted","time":"2026-01-01T00:00:00Z","data":{"schemaVersion":1,"pipeline":"p","changeId":"c","executionId":"x","metadata":{"a":"1","\u0061":"2"}}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","typ\u0065":"io.auditflow.ExecutionStarted","time":"2026-01-01T00:00:00Z","data":{"schemaVersion":1,"pipeline":"p","changeId":"c","executionId":"x"}}`))
	keys := eventKeys(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := events.Decode(b)
		problem := strictProblem(b, keys)
		if err != nil {
			if errors.Is(err, events.ErrNotStrict) && problem == "" && json.Valid(b) {
				t.Fatalf("refused as not strict (%v), but the reference finds it strict:\n%q", err, b)
			}
			return
		}
		if problem != "" {
			t.Fatalf("accepted, but %s:\n%q", problem, b)
		}
		again, err := events.Encode(e)
		if err != nil {
			t.Fatalf("the decoded event does not encode: %v\n%+v", err, e)
		}
		e2, err := events.Decode(again)
		if err != nil {
			t.Fatalf("the re-encoded event does not decode: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("the round trip changed the event:\n%+v\n%+v", e, e2)
		}
	})
}

// eventKeys are the keys Encode writes, in the envelope ("") and in data:
// the spellings a strict reader must see exactly.
func eventKeys(tb testing.TB) map[string][]string {
	keys := map[string][]string{}
	for _, typ := range events.Types {
		b, err := events.Encode(sample(typ))
		if err != nil {
			tb.Fatal(err)
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(b, &doc); err != nil {
			tb.Fatal(err)
		}
		var data map[string]json.RawMessage
		if err := json.Unmarshal(doc["data"], &data); err != nil {
			tb.Fatal(err)
		}
		for where, m := range map[string]map[string]json.RawMessage{"": doc, "data": data} {
			for k := range m {
				if !contains(keys[where], k) {
					keys[where] = append(keys[where], k)
				}
			}
		}
	}
	return keys
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// strictProblem is the reference: why b is not strict JSON, or "" if it is
// (or is not JSON at all up to its first problem: encoding/json refuses
// that). It shares no code with the decoder: encoding/json's tokenizer
// finds keys, utf8.Valid and a byte scan the rest.
func strictProblem(b []byte, keys map[string][]string) string {
	if !utf8.Valid(b) {
		return "it is not valid UTF-8"
	}
	if s := loneSurrogate(b); s != "" {
		return "it has an escaped lone surrogate " + s
	}
	type frame struct {
		obj       bool
		path      string // "" the envelope, "data" its data, "nested" any other
		keys      map[string]bool
		lastKey   string
		expectKey bool
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var stack []*frame
	valueEnded := func() bool { // reports whether the document ended
		if len(stack) == 0 {
			return true
		}
		if top := stack[len(stack)-1]; top.obj {
			top.expectKey = true
		}
		return false
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return "" // not JSON: not the reference's call
		}
		if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
			top := stack[n-1]
			k, ok := tok.(string)
			if !ok { // '}'
				stack = stack[:n-1]
				if valueEnded() {
					return ""
				}
				continue
			}
			if top.keys[k] {
				return "key " + strconv.Quote(k) + " appears twice in " + strconv.Quote(top.path)
			}
			top.keys[k] = true
			for _, ours := range keys[top.path] {
				if k != ours && strings.EqualFold(k, ours) {
					return "key " + strconv.Quote(k) + " is " + ours + " in another case"
				}
			}
			top.lastKey, top.expectKey = k, false
			continue
		}
		switch tok {
		case json.Delim('{'):
			path := "nested"
			switch {
			case len(stack) == 0:
				path = ""
			case len(stack) == 1 && stack[0].obj && stack[0].lastKey == "data":
				path = "data"
			}
			stack = append(stack, &frame{obj: true, path: path, keys: map[string]bool{}, expectKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if valueEnded() { // a scalar, or an array just closed
			return ""
		}
	}
}

// loneSurrogate finds a \u escape of a UTF-16 surrogate that is not a high
// one followed by an escaped low one. Backslashes occur only in strings, so
// the scan needs no notion of where strings are.
func loneSurrogate(b []byte) string {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] != 'u' || i+6 > len(b) {
			i++ // \\, \" and the rest: skip the escaped byte
			continue
		}
		r, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
		if err != nil {
			i++
			continue
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return string(b[i : i+6])
		case r >= 0xD800 && r <= 0xDBFF:
			if i+12 > len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
				return string(b[i : i+6])
			}
			lo, err := strconv.ParseUint(string(b[i+8:i+12]), 16, 32)
			if err != nil || lo < 0xDC00 || lo > 0xDFFF {
				return string(b[i : i+6])
			}
			i += 11
			continue
		}
		i += 5
	}
	return ""
}
