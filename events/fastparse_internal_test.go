package events

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fastSample is a valid event of type t whose text needs every kind of
// JSON escaping Encode does.
func fastSample(t Type, text string) Event {
	e := New(t, "billing-service", "0042-"+text)
	e.OccurredAt = time.Date(2026, 11, 26, 10, 30, 0, 123456789, time.UTC)
	e.Author, e.ExecutionID, e.Order = text, "exec-1", "0042"
	e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "db", "host-a", "runner-1", 1<<63+5
	e.Duration = 1500 * time.Millisecond
	e.Metadata = map[string]string{"ticket": "OPS-7", text: text, "ünïcode": "✓"}
	e.PrevHash, e.PrevSeq, e.Position = Hash([]byte("previous")), 7, 2
	switch t {
	case ExecutionFailed, RollbackFailed, ExecutionOverlapped:
		e.ErrorMessage, e.ErrorTrace = text, "trace\n\tat "+text
	case ManuallyResolved:
		e.ExecutionID = ""
		e.Resolution, e.Operator, e.Reason = ResolvedApplied, "bob", text
	}
	return e
}

var fastTexts = []string{
	"plain", `quote " backslash \ slash /`, "<script>alert(1)</script> & more",
	"tabs\tnew\nlines\r\x00\x01\x1f", "ünïcödé ✓ 𝄞 🙂", "\u2028\u2029", "\x7f",
}

// Every event Encode writes takes the fast path, so the speed measured by
// BenchmarkDecode is what projectors get.
func TestEncodedEventsTakeTheFastPath(t *testing.T) {
	for _, typ := range Types {
		for _, text := range fastTexts {
			b, err := Encode(fastSample(typ, text))
			if err != nil {
				t.Fatal(err)
			}
			var env envelope
			var d data
			if !parseFast(b, &env, &d) {
				t.Errorf("%s %q: the fast path refused what Encode wrote:\n%s", typ, text, b)
				continue
			}
			want, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := build(env, d); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("%s %q: fast path read %+v, %v", typ, text, got, err)
			}
		}
	}
}

// What the fast path refuses goes to encoding/json, which judges it.
func TestParseFastRefusesWhatItDoesNotJudge(t *testing.T) {
	good, err := Encode(fastSample(ExecutionSucceeded, "x"))
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(string) string{
		"extension attribute": func(s string) string {
			return strings.Replace(s, `{"specversion"`, `{"traceparent":"00-1","specversion"`, 1)
		},
		"key in another case": func(s string) string { return strings.Replace(s, `"changeId"`, `"ChangeId"`, 1) },
		"duplicate key":       func(s string) string { return strings.Replace(s, `"author":"x"`, `"author":"x","author":"y"`, 1) },
		"duplicate metadata": func(s string) string {
			return strings.Replace(s, `"ticket":"OPS-7"`, `"ticket":"OPS-7","ticket":"OPS-8"`, 1)
		},
		"null":         func(s string) string { return strings.Replace(s, `"author":"x"`, `"author":null`, 1) },
		"fraction":     func(s string) string { return strings.Replace(s, `"durationMs":1500`, `"durationMs":1500.0`, 1) },
		"leading zero": func(s string) string { return strings.Replace(s, `"durationMs":1500`, `"durationMs":01500`, 1) },
		"negative":     func(s string) string { return strings.Replace(s, `"durationMs":1500`, `"durationMs":-1`, 1) },
		"too big for int64": func(s string) string {
			return strings.Replace(s, `"durationMs":1500`, `"durationMs":9223372036854775808`, 1)
		},
		"newer version":      func(s string) string { return strings.Replace(s, `"schemaVersion":4`, `"schemaVersion":5`, 1) },
		"lone surrogate":     func(s string) string { return strings.Replace(s, `"author":"x"`, `"author":"\ud800"`, 1) },
		"invalid UTF-8":      func(s string) string { return strings.Replace(s, `"author":"x"`, "\"author\":\"\xff\"", 1) },
		"trailing data":      func(s string) string { return s + "{}" },
		"escaped key":        func(s string) string { return strings.Replace(s, `"author"`, `"auth\u006fr"`, 1) },
		"other spec version": func(s string) string { return strings.Replace(s, `"1.0"`, `"0.3"`, 1) },
	} {
		b := []byte(mutate(string(good)))
		if bytes.Equal(b, good) {
			t.Fatalf("%s: the mutation changed nothing in %s", name, good)
		}
		var env envelope
		var d data
		if parseFast(b, &env, &d) {
			t.Errorf("%s: the fast path accepted %s", name, b)
		}
	}
}

// FuzzParseFastAgrees checks that whatever the fast path accepts, the
// encoding/json path accepts too and reads the same way, with the same
// verdict from build.
func FuzzParseFastAgrees(f *testing.F) {
	for _, typ := range Types {
		for _, text := range fastTexts {
			b, err := Encode(fastSample(typ, text))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	files, _ := filepath.Glob("testdata/examples/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","type":"io.auditflow.ExecutionStarted","time":"2026-01-01T00:00:00Z","data":{"schemaVersion":1,"pipeline":"p","changeId":"c","executionId":"x","metadata":{}}}`))
	f.Add([]byte(` { "specversion" : "1.0" , "data" : { "schemaVersion" : 3 , "metadata" : { "\u00e9" : "\ud83d\ude42" } } } `))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fe envelope
		var fd data
		if !parseFast(b, &fe, &fd) {
			return
		}
		var se envelope
		var sd data
		if err := parseSlow(b, &se, &sd); err != nil {
			t.Fatalf("the fast path accepted what encoding/json refuses (%v):\n%q", err, b)
		}
		se.Data = nil // the fast path reads data in place
		if !reflect.DeepEqual(fe, se) || !reflect.DeepEqual(fd, sd) {
			fj, _ := json.Marshal(fd)
			sj, _ := json.Marshal(sd)
			t.Fatalf("the paths disagree on %q:\nfast %+v %s\nslow %+v %s", b, fe, fj, se, sj)
		}
		fev, ferr := build(fe, fd)
		sev, serr := build(se, sd)
		if !reflect.DeepEqual(fev, sev) || (ferr == nil) != (serr == nil) || (ferr != nil && ferr.Error() != serr.Error()) {
			t.Fatalf("build disagrees: %v / %v", ferr, serr)
		}
	})
}

// BenchmarkDecode measures Decode beside its encoding/json path on the
// same events in the same run: the ratio is the fast path's gain.
func BenchmarkDecode(b *testing.B) {
	for _, typ := range []Type{ExecutionSucceeded, ExecutionFailed} {
		enc, err := Encode(fastSample(typ, "plain <text> & \"quotes\""))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(typ)+"/Decode", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if _, err := Decode(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(typ)+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				var env envelope
				var d data
				if err := parseSlow(enc, &env, &d); err != nil {
					b.Fatal(err)
				}
				if _, err := build(env, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
