package runnercmd_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/runnercmd"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	start := time.Now()
	code := runnercmd.Main(context.Background(), args, &out, &errOut)
	if d := time.Since(start); d > 5*time.Second {
		t.Logf("slow (%s): %v\n%s\n%s", d, args, out.String(), errOut.String())
	}
	return code, out.String(), errOut.String()
}

// TestEmbeddedQuickstart is the README's first command, twice.
func TestEmbeddedQuickstart(t *testing.T) {
	data := t.TempDir()
	code, out, stderr := runCmd(t, "--embedded", "--data-dir", data, "--changes", "../../examples/changes")
	if code != runnercmd.ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if n := strings.Count(out, "APPLIED"); n != 8 { // 4 in the report, 4 in the changeLog
		t.Fatalf("want 4 changes applied and shown, got %d APPLIED:\n%s", n, out)
	}
	if !strings.Contains(out, "changeLog of pipeline default (8 events") {
		t.Fatalf("changeLog not printed:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(data, "target", "flags", "checkout.json")); err != nil {
		t.Fatalf("example change did not apply: %v", err)
	}
	code, out, stderr = runCmd(t, "--embedded", "--data-dir", data, "--changes", "../../examples/changes")
	if code != runnercmd.ExitOK || strings.Count(out, "SKIPPED") != 4 {
		t.Fatalf("second run: exit %d\n%s\n%s", code, out, stderr)
	}
	// A deleted audit store is rebuilt from the local stream, not refused
	// as behind its consumer.
	for _, f := range []string{"audit.db", "audit.db-wal", "audit.db-shm"} {
		if err := os.Remove(filepath.Join(data, f)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	code, out, stderr = runCmd(t, "--embedded", "--data-dir", data, "--changes", "../../examples/changes")
	if code != runnercmd.ExitOK || strings.Count(out, "SKIPPED") != 4 || !strings.Contains(out, "changeLog of pipeline default (8 events") {
		t.Fatalf("run after deleting audit.db: exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestExitCodesAndOperatorFix(t *testing.T) {
	data, changes := t.TempDir(), t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(changes, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1.yaml", "id: 001-ok\norder: '1'\napply: 'true'\n")
	write("2.yaml", "id: 002-broken\norder: '2'\ntargetSystem: users-db\napply: |\n  echo 'duplicate key' >&2\n  exit 1\n")
	write("3.yaml", "id: 003-later\norder: '3'\napply: 'true'\n")
	args := []string{"--embedded", "--data-dir", data, "--changes", changes, "--pipeline", "billing"}

	code, out, stderr := runCmd(t, args...)
	if code != runnercmd.ExitChangeFailed || !strings.Contains(stderr, "duplicate key") || !strings.Contains(out, "NOT_RUN") {
		t.Fatalf("failing change: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCmd(t, args...)
	if code != runnercmd.ExitManualIntervention || !strings.Contains(stderr, "issue fix -p billing -c 002-broken") || !strings.Contains(stderr, "users-db") {
		t.Fatalf("blocked change: exit %d, want guidance naming the change and target\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCmd(t, "--embedded", "--data-dir", data, "--pipeline", "billing",
		"--resolve", "002-broken", "--resolution", "applied", "--reason", "fixed by hand", "--operator", "bob")
	if code != runnercmd.ExitOK || !strings.Contains(out, "resolved as APPLIED by bob") {
		t.Fatalf("resolve: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCmd(t, args...)
	if code != runnercmd.ExitOK || !strings.Contains(out, "003-later                 APPLIED") && !strings.Contains(out, "003-later") {
		t.Fatalf("after resolution: exit %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(out, "MANUALLY_APPLIED") || !strings.Contains(out, "operator bob") {
		t.Fatalf("changeLog does not show the manual resolution:\n%s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "x.yaml"), []byte("id: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no changes":      {},
		"unknown flag":    {"--bogus"},
		"bad resolution":  {"--resolve", "x", "--resolution", "maybe", "--reason", "r"},
		"no reason":       {"--resolve", "x", "--resolution", "applied"},
		"bad change file": {"--embedded", "--data-dir", t.TempDir(), "--changes", bad},
		"bad log level":   {"--changes", bad, "--log-level", "loud"},
	} {
		if code, _, stderr := runCmd(t, args...); code != runnercmd.ExitUsage || stderr == "" {
			t.Errorf("%s: exit %d, want %d with a message; stderr %q", name, code, runnercmd.ExitUsage, stderr)
		}
	}
}

// TestEmbeddedSignsWithALocalKey: the quickstart needs no key setup, yet
// every event it writes is signed by a local key its own trust list
// believes — so a forged event on its stream is caught like anywhere else.
func TestEmbeddedSignsWithALocalKey(t *testing.T) {
	data := t.TempDir()
	if code, out, stderr := runCmd(t, "--embedded", "--data-dir", data, "--changes", "../../examples/changes"); code != runnercmd.ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	list, err := trust.LoadList(filepath.Join(data, trust.LocalTrustFile))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(data, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := srv.Connect("check")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, e := range natstest.ReadEvents(t, js, producer.DefaultStreamName) {
		m, err := mustStream(t, js).GetMsg(context.Background(), e.Seq)
		if err != nil {
			t.Fatal(err)
		}
		_, _, v := list.CheckHeader(m.Header.Get(trust.Header), trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: e.Seq, Hash: events.Hash(e.Data)})
		if v.Problem != "" || m.Header.Get(trust.Header) == "" {
			t.Fatalf("seq %d %s: %s", e.Seq, e.Type, v.Problem)
		}
	}
}

func mustStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(context.Background(), producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTrustListRequired: outside the embedded mode a runner refuses to
// start without a trust list (exit 2, naming --trust and
// --insecure-no-trust) — even with a signing key, which alone would sign
// its own events and believe anyone's — and starts with either.
func TestTrustListRequired(t *testing.T) {
	t.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "")
	changes := t.TempDir()
	for name, args := range map[string][]string{
		"nothing":          {"--changes", changes, "--nats-url", "nats://127.0.0.1:1"},
		"signing key only": {"--changes", changes, "--nats-url", "nats://127.0.0.1:1", "--signing-key", filepath.Join(changes, "k.nk")},
		"dry run":          {"--changes", changes, "--nats-url", "nats://127.0.0.1:1", "--dry-run"},
	} {
		code, _, stderr := runCmd(t, args...)
		if code != runnercmd.ExitUsage || !strings.Contains(stderr, "--insecure-no-trust") || !strings.Contains(stderr, "--trust") {
			t.Errorf("%s: exit %d, want %d naming --trust and --insecure-no-trust; stderr %q", name, code, runnercmd.ExitUsage, stderr)
		}
	}
	// With --insecure-no-trust it goes on, to read the change files.
	code, _, stderr := runCmd(t, "--changes", changes, "--nats-url", "nats://127.0.0.1:1", "--insecure-no-trust")
	if strings.Contains(stderr, "no trust list") || !strings.Contains(stderr, "no *.yaml change files") {
		t.Fatalf("--insecure-no-trust: exit %d; stderr %q", code, stderr)
	}
	// The embedded mode needs neither (TestEmbeddedSignsWithALocalKey).
}
