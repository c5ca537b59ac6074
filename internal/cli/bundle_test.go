package cli_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/bundle"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/trust"
)

var bundleReader, _ = filepath.Abs("../../tools/bundle-reader.py")

// exported runs the quickstart, exports it, and moves to a fresh
// directory with no .auditflow, as an auditor would be. It returns the
// bundle's path and the quickstart's trust list (the real one).
func exported(t *testing.T) (string, string) {
	t.Helper()
	dir := quickstart(t)
	out := filepath.Join(t.TempDir(), "audit.tar.gz")
	if code, stdout, stderr := auditflow(t, "export", "--out", out); code != cli.ExitOK {
		t.Fatalf("export: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Chdir(t.TempDir())
	return out, filepath.Join(dir, ".auditflow", trust.LocalTrustFile)
}

// members reads a bundle's files.
func members(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
}

// exportOrder is the order export writes a bundle's members in.
var exportOrder = []string{bundle.ManifestFile, bundle.SigFile, bundle.TrustFile, bundle.EventsFile, bundle.ReportFile}

// tampered writes a copy of the bundle at path with edit applied to its
// files, in export's order.
func tampered(t *testing.T, path string, edit func(files map[string][]byte)) string {
	t.Helper()
	return rewritten(t, path, exportOrder, edit)
}

// rewritten writes a copy of the bundle at path with edit applied to its
// files, in the given order.
func rewritten(t *testing.T, path string, order []string, edit func(files map[string][]byte)) string {
	t.Helper()
	files := members(t, path)
	edit(files)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range order {
		b, ok := files[n]
		if !ok {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	tw.Close()
	zw.Close()
	out := filepath.Join(t.TempDir(), "tampered.tar.gz")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// lines decodes events.ndjson.
func lines(t *testing.T, files map[string][]byte) []bundle.Line {
	t.Helper()
	var lines []bundle.Line
	for _, text := range bytes.Split(bytes.TrimSpace(files[bundle.EventsFile]), []byte("\n")) {
		var l bundle.Line
		if err := json.Unmarshal(text, &l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	return lines
}

// editLines applies edit to the decoded lines of events.ndjson.
func editLines(t *testing.T, files map[string][]byte, edit func([]bundle.Line) []bundle.Line) {
	t.Helper()
	var buf bytes.Buffer
	for _, l := range edit(lines(t, files)) {
		b, _ := json.Marshal(l)
		buf.Write(append(b, '\n'))
	}
	files[bundle.EventsFile] = buf.Bytes()
}

func TestExportThenVerifyBundle(t *testing.T) {
	path, _ := exported(t)
	code, out, stderr := auditflow(t, "verify-bundle", path)
	if code != cli.ExitOK || !strings.Contains(out, "8 events of 4 changes") || !strings.Contains(out, "OK") {
		t.Fatalf("verify-bundle: exit %d\n%s\n%s", code, out, stderr)
	}
	files := members(t, path)
	report := string(files[bundle.ReportFile])
	for _, bad := range []string{"<script", "http://", "https://", "src="} {
		if strings.Contains(report, bad) {
			t.Errorf("report.html holds %q: it must be self-contained, with no script", bad)
		}
	}
	var m bundle.Manifest
	if err := json.Unmarshal(files[bundle.ManifestFile], &m); err != nil || len(m.Changes) != 4 || m.Exporter.Name != trust.LocalName {
		t.Fatalf("manifest: %v %+v", err, m)
	}
}

func TestVerifyBundleCatchesTampering(t *testing.T) {
	path, realTrust := exported(t)
	attacker := trusttest.NewSigner(t)
	attackerList, err := trust.NewList(trust.Key{Key: attacker.PublicKey(), Name: "mallory", Roles: []trust.Role{trust.RoleRunner, trust.RoleOperator}, Pipelines: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	attackerYAML, _ := attackerList.Marshal()
	for _, tc := range []struct {
		name  string
		edit  func(files map[string][]byte)
		flags []string
		want  []string
	}{
		{name: "an event removed", edit: func(f map[string][]byte) {
			editLines(t, f, func(ls []bundle.Line) []bundle.Line { return append(ls[:2:2], ls[3:]...) }) // sequence 3
		}, want: []string{"sequence 4 (audit.exec.default.0002-add-customer-index): broken chain: written to follow stream sequence 3, but it is its change's first message",
			"0002-add-customer-index: 1 events (0 context), the manifest counts 2 (0 context): events missing"}},
		{name: "a byte of an event changed", edit: func(f map[string][]byte) {
			editLines(t, f, func(ls []bundle.Line) []bundle.Line {
				i := bytes.Index(ls[0].Data, []byte("orders"))
				ls[0].Data[i] = 'O'
				return ls
			})
		}, want: []string{"sequence 1 (audit.exec.default.0001-create-orders-schema): untrusted: bad signature",
			"sequence 2 (audit.exec.default.0001-create-orders-schema): broken chain: its prevHash is not the hash of stream sequence 1"}},
		{name: "a signature swapped", edit: func(f map[string][]byte) {
			editLines(t, f, func(ls []bundle.Line) []bundle.Line {
				ls[0].Headers[trust.Header] = ls[2].Headers[trust.Header]
				return ls
			})
		}, want: []string{"sequence 1 (audit.exec.default.0001-create-orders-schema): untrusted: bad signature"}},
		{name: "trust.yaml swapped", edit: func(f map[string][]byte) { f[bundle.TrustFile] = attackerYAML },
			want: []string{"manifest.sig: the manifest's signature is not trusted: key not trusted: unknown key",
				"trust.yaml: its digest", "untrusted: unknown key"}},
		{name: "trust.yaml swapped, checked with the real list", edit: func(f map[string][]byte) { f[bundle.TrustFile] = attackerYAML },
			flags: []string{"--trust", realTrust}, want: []string{"trust.yaml: its digest", "(--trust; the bundle's trust.yaml is not used)"}},
		{name: "the manifest edited", edit: func(f map[string][]byte) {
			f[bundle.ManifestFile] = bytes.Replace(f[bundle.ManifestFile], []byte(`"chainBreaks": 0`), []byte(`"chainBreaks": 1`), 1)
		}, want: []string{"manifest.sig: the manifest's signature is not trusted: key not trusted: bad signature"}},
		{name: "report.html edited", edit: func(f map[string][]byte) {
			f[bundle.ReportFile] = bytes.Replace(f[bundle.ReportFile], []byte("No manual resolutions."), []byte("Resolved by Bob."), 1)
		}, want: []string{"report.html: does not match the report regenerated from events.ndjson"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := tampered(t, path, tc.edit)
			code, out, stderr := auditflow(t, append([]string{"verify-bundle", bad}, tc.flags...)...)
			if code != cli.ExitProblems {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, cli.ExitProblems, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("missing %q in:\n%s", w, out)
				}
			}
		})
	}

	// Members in another order than export's (events.ndjson before what
	// checking it needs) are checked all the same, and an unknown member
	// is named.
	t.Run("members in another order", func(t *testing.T) {
		order := []string{bundle.EventsFile, bundle.ReportFile, bundle.SigFile, bundle.TrustFile, bundle.ManifestFile}
		if code, out, stderr := auditflow(t, "verify-bundle", rewritten(t, path, order, func(map[string][]byte) {})); code != cli.ExitOK {
			t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
		}
		bad := rewritten(t, path, append(order, "extra.txt"), func(f map[string][]byte) { f["extra.txt"] = []byte("hi") })
		if code, out, _ := auditflow(t, "verify-bundle", bad); code != cli.ExitProblems || !strings.Contains(out, "extra.txt: not a file of a bundle") {
			t.Fatalf("exit %d\n%s", code, out)
		}
	})

	// An attacker who re-signs everything with their own key and list
	// passes the bundle's own check — a bundle's list is only as good as
	// who handed it over — and fails with the real list.
	t.Run("re-signed by an attacker", func(t *testing.T) {
		files := members(t, path)
		var m bundle.Manifest
		if err := json.Unmarshal(files[bundle.ManifestFile], &m); err != nil {
			t.Fatal(err)
		}
		ls := lines(t, files)
		for i := range ls {
			ls[i].Headers[trust.Header] = []string{attacker.Sign(ls[i].Data)}
		}
		dir := t.TempDir()
		w, err := bundle.NewWriter(dir, attackerList, attacker, bundle.Manifest{Stream: m.Stream, SubjectPrefix: m.SubjectPrefix, ExportedAt: m.ExportedAt})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if err := w.Add(ls); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := w.Finish(&buf); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "forged.tar.gz")
		os.WriteFile(out, buf.Bytes(), 0o644)
		if code, stdout, _ := auditflow(t, "verify-bundle", out); code != cli.ExitOK {
			t.Fatalf("with its own list: exit %d\n%s", code, stdout)
		}
		code, stdout, _ := auditflow(t, "verify-bundle", out, "--trust", realTrust, "--json")
		var res bundle.Result
		if code != cli.ExitProblems || json.Unmarshal([]byte(stdout), &res) != nil || len(res.Problems) < 9 {
			t.Fatalf("with the real list: exit %d\n%s", code, stdout)
		}
		if !strings.Contains(stdout, "the manifest's signature is not trusted: key not trusted: unknown key") {
			t.Errorf("the manifest's signature passed:\n%s", stdout)
		}
	})
}

// TestBundleReaderPython holds tools/bundle-reader.py, the independent
// reader, to the bundle: it passes a good one and fails a tampered one.
func TestBundleReaderPython(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("AUDITFLOW_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("python3 is missing (AUDITFLOW_REQUIRE_INTEGRATION=1)")
		}
		t.Skip("python3 is missing")
	}
	path, _ := exported(t)
	out, err := exec.Command(python, bundleReader, path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "8 events of 4 changes, 0 broken links") {
		t.Fatalf("good bundle: %v\n%s", err, out)
	}
	bad := tampered(t, path, func(f map[string][]byte) {
		editLines(t, f, func(ls []bundle.Line) []bundle.Line {
			ls[0].Data[bytes.Index(ls[0].Data, []byte("orders"))] = 'O'
			return ls
		})
	})
	out, err = exec.Command(python, bundleReader, bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "sequence 2 (audit.exec.default.0001-create-orders-schema): broken chain") {
		t.Fatalf("tampered bundle: %v\n%s", err, out)
	}
}

// TestExportFilters exports one change, which verifies on its own.
func TestExportFilters(t *testing.T) {
	quickstart(t)
	out := filepath.Join(t.TempDir(), "one.tar.gz")
	if code, stdout, stderr := auditflow(t, "export", "--out", out, "--pipeline", "default", "--change", "0002-add-customer-index", "--since", "1h"); code != cli.ExitOK {
		t.Fatalf("export: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Chdir(t.TempDir())
	code, stdout, stderr := auditflow(t, "verify-bundle", out)
	if code != cli.ExitOK || !strings.Contains(stdout, "2 events of 1 changes") {
		t.Fatalf("verify-bundle: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// TestExportContext: --since between two events of a change exports the
// change from its first event, marked as context, drops the changes with
// nothing in the window, and the bundle verifies.
func TestExportContext(t *testing.T) {
	quickstart(t)
	all := filepath.Join(t.TempDir(), "all.tar.gz")
	if code, stdout, stderr := auditflow(t, "export", "--out", all); code != cli.ExitOK {
		t.Fatalf("export: exit %d\n%s\n%s", code, stdout, stderr)
	}
	ls := lines(t, members(t, all))
	last := ls[len(ls)-1] // the newest event; its change has an older one
	var e struct {
		Time string `json:"time"`
	}
	if err := json.Unmarshal(last.Data, &e); err != nil || e.Time == "" {
		t.Fatalf("%v %s", err, last.Data)
	}
	out := filepath.Join(t.TempDir(), "window.tar.gz")
	if code, stdout, stderr := auditflow(t, "export", "--out", out, "--since", e.Time); code != cli.ExitOK {
		t.Fatalf("export: exit %d\n%s\n%s", code, stdout, stderr)
	}
	got := lines(t, members(t, out))
	var before []uint64
	for _, l := range ls {
		if l.Subject == last.Subject && l.Seq < last.Seq {
			before = append(before, l.Seq)
		}
	}
	if len(before) == 0 || len(got) != len(before)+1 {
		t.Fatalf("exported %d events, want the change's %d before the window and the one in it", len(got), len(before))
	}
	for i, l := range got {
		if l.Subject != last.Subject || l.Context != (i < len(before)) {
			t.Fatalf("line %d: %s context=%v", i, l.Subject, l.Context)
		}
	}
	t.Chdir(t.TempDir())
	if code, stdout, stderr := auditflow(t, "verify-bundle", out); code != cli.ExitOK || !strings.Contains(stdout, fmt.Sprintf("%d events of 1 changes", len(got))) {
		t.Fatalf("verify-bundle: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
