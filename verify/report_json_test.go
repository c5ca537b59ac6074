package verify_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/verify"
)

// TestReportJSON: camelCase names, [] for empty lists, milliseconds.
func TestReportJSON(t *testing.T) {
	rep := verify.Report{StreamEvents: 3, LastSeq: 9, Elapsed: 1500 * time.Millisecond,
		Missing:    []verify.Row{{Pipeline: "p", ChangeID: "c", Seq: 4, EventID: "e", Type: "ExecutionStarted"}},
		Mismatched: []verify.Mismatch{{Row: verify.Row{Seq: 5}}}}
	for _, v := range []any{rep, &rep} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out := string(b)
		for _, want := range []string{`"streamEvents":3`, `"lastSeq":9`, `"elapsedMs":1500`, `"extra":[]`, `"issues":[]`,
			`"storeChain":[]`, `"untrusted":[]`, `"drift":true`, `"problems":true`, `"tampered":false`,
			`"missing":[{"pipeline":"p","changeId":"c","seq":4,"eventId":"e","type":"ExecutionStarted"}]`, `"fields":[]`} {
			if !strings.Contains(out, want) {
				t.Errorf("want %s in\n%s", want, out)
			}
		}
		for _, bad := range []string{"null", "StreamEvents", "Elapsed\""} {
			if strings.Contains(out, bad) {
				t.Errorf("%s in\n%s", bad, out)
			}
		}
	}
}
