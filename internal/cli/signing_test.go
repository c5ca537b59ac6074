package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/trust"
	"github.com/auditflow/auditflow/verify"
)

// TestSignedEventsFromTheCLI: over the forgery scenario, verify --trust
// exits 3 naming every untrusted event, issue list and issue get show and
// explain them, issue fix refuses a resolution the list would not trust
// (unsigned, a runner's key, another name) and records one signed with
// the operator's key under the key's identity; once every forgery is so
// resolved, verify exits 0. keys new writes a key and the entry that
// trusts it.
func TestSignedEventsFromTheCLI(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	sc := trusttest.Publish(t, srv.JS)
	dir := t.TempDir()
	list := trusttest.WriteList(t, dir, sc.List)
	opKey, runnerKey := trusttest.WriteKey(t, dir, sc.Keys.Operator), trusttest.WriteKey(t, dir, sc.Keys.Runner)
	dbPath := filepath.Join(dir, "audit.db")
	st, err := sqlitestore.Open(context.Background(), dbPath, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	catchUp := func() {
		t.Helper()
		if _, err := projector.Replay(context.Background(), srv.JS, st, projector.ReplayConfig{Trust: sc.List}); err != nil {
			t.Fatal(err)
		}
	}
	catchUp()
	run := func(args ...string) (int, string, string) {
		t.Helper()
		full := append([]string{"--nats-url", srv.ClientURL(), "--store", "sqlite", "--sqlite-path", dbPath}, args...)
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), full, &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := run("verify", "--trust", list)
	if code != cli.ExitProblems || strings.Count(out, "UNTRUSTED: seq") != len(sc.Forgeries) || !strings.Contains(out, "replayed: a signature copied from seq") {
		t.Fatalf("verify --trust: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep verify.Report
	if code, out, _ = run("--json", "verify", "--trust", list); code != cli.ExitProblems || json.Unmarshal([]byte(out), &rep) != nil ||
		len(rep.OpenUntrusted()) != 2*len(sc.Forgeries) {
		t.Fatalf("verify --json: exit %d, %d open untrusted\n%s", code, len(rep.OpenUntrusted()), out)
	}
	t.Setenv("AUDITFLOW_TRUST", list) // from here on, as a deployment would set it

	code, out, errOut = run("issue", "list")
	if code != cli.ExitOK || strings.Count(out, "(UNTRUSTED)") != len(sc.Forgeries) || strings.Contains(out, "signed-ok") {
		t.Fatalf("issue list: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run("issue", "get", "-p", trusttest.Pipeline, "-c", "unsigned", "--guidance")
	if code != cli.ExitOK || !strings.Contains(out, "is not trusted: unsigned") || !strings.Contains(out, "--signing-key KEY") {
		t.Fatalf("issue get --guidance: exit %d\n%s\n%s", code, out, errOut)
	}

	fix := func(change string, extra ...string) (int, string, string) {
		return run(append([]string{"issue", "fix", "-p", trusttest.Pipeline, "-c", change, "-r", "rolled-back",
			"--reason", "forged: the target never had it", "--force"}, extra...)...)
	}
	for name, extra := range map[string][]string{
		"unsigned":       nil,
		"a runner's key": {"--signing-key", runnerKey},
		"another name":   {"--signing-key", opKey, "--operator", "mallory"},
		"a missing key":  {"--signing-key", filepath.Join(dir, "missing.nk")},
	} {
		if code, out, errOut := fix("unsigned", extra...); code != cli.ExitUsage {
			t.Errorf("issue fix with %s: exit %d, want %d\n%s\n%s", name, code, cli.ExitUsage, out, errOut)
		}
	}
	identity := "alice (" + sc.Keys.Operator.PublicKey() + ")"
	for _, f := range sc.Forgeries {
		code, out, errOut := fix(f.ChangeID, "--signing-key", opKey)
		if code != cli.ExitOK || !strings.Contains(out, "by "+identity) {
			t.Fatalf("issue fix %s: exit %d\n%s\n%s", f.ChangeID, code, out, errOut)
		}
	}
	catchUp()
	is, err := st.Issues(context.Background(), stores.IssueQuery{Pipeline: trusttest.Pipeline, ChangeID: "unsigned"})
	if err != nil || len(is) != 1 || is[0].Status != stores.IssueClosed || is[0].Operator != identity {
		t.Fatalf("issue after the fix: %+v %v", is, err)
	}
	if code, out, errOut := run("verify"); code != cli.ExitOK {
		t.Fatalf("verify after trusted resolutions: exit %d\n%s\n%s", code, out, errOut)
	}

	keyFile := filepath.Join(dir, "bob.nk")
	code, out, errOut = run("keys", "new", "--out", keyFile, "--name", "bob", "--role", "operator", "--pipeline", "billing")
	if code != cli.ExitOK {
		t.Fatalf("keys new: exit %d\n%s\n%s", code, out, errOut)
	}
	s, err := trust.LoadSigner(keyFile)
	if err != nil || !strings.Contains(out, s.PublicKey()) {
		t.Fatalf("keys new printed\n%s\nfor key %v (%v)", out, s, err)
	}
	entry := out[strings.Index(out, "  - key:"):]
	if l, err := trust.ParseList([]byte("keys:\n" + entry)); err != nil || l.Identity(s.PublicKey()) != "bob ("+s.PublicKey()+")" {
		t.Fatalf("the printed entry does not parse: %v\n%s", err, entry)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if code, _, _ := run("keys", "new", "--out", keyFile); code == cli.ExitOK {
		t.Fatal("keys new overwrote a key")
	}
	if code, out, _ := run("keys", "public", "--key", keyFile); code != cli.ExitOK || strings.TrimSpace(out) != s.PublicKey() {
		t.Fatalf("keys public: exit %d %q", code, out)
	}
}

// TestUnsignedRowsAreMarked: rows a projector stored without a trust
// list — a forged, unsigned ExecutionSucceeded under a copied runner id
// among them — are marked UNSIGNED in audit list --history, in its JSON
// and in the console's timeline; a signed row is not.
func TestUnsignedRowsAreMarked(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	ctx := context.Background()
	signer := trusttest.NewSigner(t)
	if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	signed, err := producer.New(ctx, srv.JS, producer.Config{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	unsigned, err := producer.New(ctx, srv.JS, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e := events.New(events.ExecutionStarted, "billing", "signed-change")
	e.ExecutionID, e.RunnerID = "exec-1", "runner-real"
	if _, err := signed.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	forged := events.New(events.ExecutionSucceeded, "billing", "forged-change")
	forged.ExecutionID, forged.RunnerID = "exec-2", "runner-real"
	if _, err := unsigned.Publish(ctx, forged); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(ctx, dbPath, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{}); err != nil { // no trust list
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		full := append([]string{"--nats-url", srv.ClientURL(), "--store", "sqlite", "--sqlite-path", dbPath}, args...)
		if code := cli.Main(ctx, full, &out, &errOut); code != cli.ExitOK {
			t.Fatalf("%v: exit %d\n%s\n%s", args, code, out.String(), errOut.String())
		}
		return out.String()
	}
	out := run("audit", "list", "--history")
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(line, "forged-change") && !strings.Contains(line, "APPLIED (UNSIGNED)"):
			t.Errorf("the forged row is not marked: %q", line)
		case strings.Contains(line, "signed-change") && strings.Contains(line, "UNSIGNED"):
			t.Errorf("the signed row is marked: %q", line)
		}
	}
	var rows []struct {
		ChangeID string `json:"changeId"`
		Mark     string `json:"mark"`
		Signer   string `json:"signer"`
	}
	if err := json.Unmarshal([]byte(run("--json", "audit", "list", "--history")), &rows); err != nil {
		t.Fatal(err)
	}
	marks := map[string]string{}
	for _, r := range rows {
		marks[r.ChangeID] = r.Mark
	}
	if marks["forged-change"] != stores.MarkUnsigned || marks["signed-change"] != "" || len(rows) != 2 {
		t.Fatalf("JSON marks %v (rows %+v)", marks, rows)
	}
}

// TestTrustListRequired: outside the embedded mode, verify, replay and
// repair refuse to run without a trust list (exit 2, saying how to give
// one or opt out); with --insecure-no-trust they run, and warn.
func TestTrustListRequired(t *testing.T) {
	t.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "")
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	if _, err := producer.EnsureStream(context.Background(), srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(context.Background(), dbPath, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		full := append([]string{"--nats-url", srv.ClientURL(), "--store", "sqlite", "--sqlite-path", dbPath}, args...)
		code := cli.Main(context.Background(), full, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	for _, cmd := range [][]string{{"replay"}, {"verify"}, {"repair"}} {
		code, out := run(cmd...)
		if code != cli.ExitUsage || !strings.Contains(out, "--insecure-no-trust") || !strings.Contains(out, "no trust list") {
			t.Errorf("%v without a trust list: exit %d, want %d naming --insecure-no-trust\n%s", cmd, code, cli.ExitUsage, out)
		}
	}
	code, out := run("replay", "--insecure-no-trust")
	if code != cli.ExitOK || !strings.Contains(out, "running without a trust list") {
		t.Fatalf("replay --insecure-no-trust: exit %d\n%s", code, out)
	}
}
