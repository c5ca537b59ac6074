package bundle_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/bundle"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/trust"
)

// history makes n signed, chained lines over the given number of
// changes, in sequence order from 1.
func history(t *testing.T, signer *trust.Signer, changes, n int) []bundle.Line {
	t.Helper()
	var out []bundle.Line
	trusttest.Chained(t, signer, "billing", changes, n, 0, func(seq uint64, m *nats.Msg) {
		out = append(out, bundle.Line{Seq: seq, Subject: m.Subject, Headers: m.Header, Data: m.Data})
	})
	return out
}

// build writes a bundle of lines signed by an operator of list.
func build(t *testing.T, list *trust.List, operator *trust.Signer, lines []bundle.Line) []byte {
	t.Helper()
	w, err := bundle.NewWriter(t.TempDir(), list, operator, bundle.Manifest{Stream: "AUDIT", SubjectPrefix: events.DefaultSubjectPrefix, ExportedAt: time.Unix(1e9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for len(lines) > 0 { // in batches, as export adds them
		n := min(len(lines), 300)
		if err := w.Add(lines[:n]); err != nil {
			t.Fatal(err)
		}
		lines = lines[n:]
	}
	var buf bytes.Buffer
	if _, err := w.Finish(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func keys(t *testing.T) (*trust.Signer, *trust.Signer, *trust.List) {
	runner, operator := trusttest.NewSigner(t), trusttest.NewSigner(t)
	list, err := trust.NewList(
		trust.Key{Key: runner.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}},
		trust.Key{Key: operator.PublicKey(), Name: "exporter", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	return runner, operator, list
}

// TestLongChangeReport: a change of 100 events with one removed from the
// middle. Checked whole (the break is found); the report shows the first
// and last events and the broken one between, says how many it leaves
// out, and is regenerated identically.
func TestLongChangeReport(t *testing.T) {
	runner, operator, list := keys(t)
	lines := history(t, runner, 1, 100)
	lines = append(lines[:49:49], lines[50:]...) // sequence 50
	b := build(t, list, operator, lines)
	res, err := bundle.Check(bytes.NewReader(b), list, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 99 || len(res.Problems) != 1 || !strings.Contains(res.Problems[0].String(),
		"sequence 51 (audit.exec.billing.change-000000): broken chain: written to follow stream sequence 50") {
		t.Fatalf("%+v", res)
	}
	report := member(t, b, bundle.ReportFile)
	for _, want := range []string{"<td>1</td>", "<td>5</td>", "<td>51</td>", "<td>81</td>", "<td>100</td>", "73 events of this change not shown"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, not := range []string{"<td>6</td>", "<td>80</td>"} {
		if strings.Contains(report, not) {
			t.Errorf("report shows %q, which it leaves out", not)
		}
	}
}

// TestManyChangesReport: past the first 1000 changes, the report names
// each change without its timeline.
func TestManyChangesReport(t *testing.T) {
	runner, operator, list := keys(t)
	b := build(t, list, operator, history(t, runner, 1003, 1003))
	res, err := bundle.Check(bytes.NewReader(b), list, t.TempDir())
	if err != nil || len(res.Problems) != 0 || res.Changes != 1003 {
		t.Fatalf("%v %+v", err, res)
	}
	if n := strings.Count(member(t, b, bundle.ReportFile), "Timeline not shown"); n != 3 {
		t.Fatalf("%d changes without a timeline, want 3", n)
	}
}

// TestProblemsBounded: a bundle of 1500 events none of which the list
// trusts lists 1000 problems and counts the rest.
func TestProblemsBounded(t *testing.T) {
	runner, operator, list := keys(t)
	b := build(t, list, operator, history(t, runner, 10, 1500))
	other, err := trust.NewList(trust.Key{Key: operator.PublicKey(), Name: "exporter", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := bundle.Check(bytes.NewReader(b), other, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	last := res.Problems[len(res.Problems)-1].String()
	if res.Events != 1500 || res.Unlisted != 500 || len(res.Problems) != 1001 || !strings.Contains(last, "500 more problems") {
		t.Fatalf("events %d, unlisted %d, problems %d, last %q", res.Events, res.Unlisted, len(res.Problems), last)
	}
}

// TestWriterRefusesDisorder: lines out of sequence order are an error,
// not a bundle.
func TestWriterRefusesDisorder(t *testing.T) {
	runner, operator, list := keys(t)
	lines := history(t, runner, 2, 4)
	w, err := bundle.NewWriter(t.TempDir(), list, operator, bundle.Manifest{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(lines[2:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(lines[:2]); err == nil || !strings.Contains(err.Error(), "sequence 1 added after 4") {
		t.Fatalf("got %v", err)
	}
}

// member is one member of a bundle.
func member(t *testing.T, b []byte, name string) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h.Name == name {
			m, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(m)
		}
	}
}

// TestEmptyBatches: a batch with nothing in it (a window that chose
// nothing of what was read) and a bundle of no events are fine.
func TestEmptyBatches(t *testing.T) {
	_, operator, list := keys(t)
	w, err := bundle.NewWriter(t.TempDir(), list, operator, bundle.Manifest{SubjectPrefix: events.DefaultSubjectPrefix})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := w.Finish(&buf); err != nil {
		t.Fatal(err)
	}
	res, err := bundle.Check(&buf, list, t.TempDir())
	if err != nil || res.Events != 0 || len(res.Problems) != 0 {
		t.Fatalf("%v %+v", err, res)
	}
}
