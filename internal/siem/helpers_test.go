package siem_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
)

// line is what the tests read of a feed line, parsed independently of
// the feed's code.
type line struct {
	SpecVersion string  `json:"specversion"`
	ID          string  `json:"id"`
	Type        string  `json:"type"`
	Subject     string  `json:"subject"`
	DataBase64  string  `json:"data_base64"`
	Seq         *uint64 `json:"auditflowseq"`
	Signer      *string `json:"auditflowsigner"`
	Trust       *string `json:"auditflowtrust"`
	Chain       *string `json:"auditflowchain"`
	Error       string  `json:"auditflowerror"`
}

// parseLines checks that every line of out is one JSON object, a
// CloudEvents 1.0 document with the feed's four extensions, and returns
// them.
func parseLines(tb testing.TB, out []byte) []line {
	tb.Helper()
	var ls []line
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		raw := sc.Bytes()
		var attrs map[string]any
		if err := json.Unmarshal(raw, &attrs); err != nil {
			tb.Fatalf("line %d is not a JSON object: %v\n%s", len(ls)+1, err, raw)
		}
		var l line
		if err := json.Unmarshal(raw, &l); err != nil {
			tb.Fatal(err)
		}
		if l.SpecVersion != "1.0" || l.ID == "" || l.Type == "" {
			tb.Fatalf("line %d is not a CloudEvents 1.0 document: %s", len(ls)+1, raw)
		}
		if l.Seq == nil || l.Signer == nil || l.Trust == nil || l.Chain == nil {
			tb.Fatalf("line %d lacks an extension: %s", len(ls)+1, raw)
		}
		for k := range attrs {
			if !validAttributeName(k) {
				tb.Fatalf("line %d: attribute %q is not a valid CloudEvents name", len(ls)+1, k)
			}
		}
		ls = append(ls, l)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return ls
}

// validAttributeName: CloudEvents attribute names are lower-case letters
// and digits (data_base64 is the JSON format's own member).
func validAttributeName(k string) bool {
	if k == "data_base64" {
		return true
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return k != ""
}
