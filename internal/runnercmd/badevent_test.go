package runnercmd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/runnercmd"
)

// TestGarbageOnAChangeSubject is issue 8's part 3 end to end, with the
// real commands against a NATS server: garbage published with the plain
// client on a change's subject stops the runner with exit 4 and guidance
// naming the sequence and the fix (not exit 1, "malformed event");
// --dry-run shows the change BLOCKED; issue get --guidance explains it
// although the store has no row of it; issue fix records the decision
// after the garbage; the next run goes on (exit 0). Another change's event
// on a subject is resolved the other way, with runner --resolve
// rolled-back, and the change runs again.
func TestGarbageOnAChangeSubject(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	url := srv.ClientURL()
	changes := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(changes, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1.yaml", "id: 0001-change\norder: '1'\ntargetSystem: users-db\napply: 'true'\n")
	write("2.yaml", "id: 0002-change\norder: '2'\ntargetSystem: users-db\napply: 'true'\n")
	runner := func(args ...string) (int, string, string) {
		return runCmd(t, append([]string{"--nats-url", url, "--pipeline", "real", "--lock-lease", "2s"}, args...)...)
	}
	auditflow := func(args ...string) (int, string, string) {
		full := append([]string{"--nats-url", url, "--store", "sqlite", "--sqlite-path", filepath.Join(t.TempDir(), "audit.db")}, args...)
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), full, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, out, stderr := auditflow("init", "--lock-lease", "2s"); code != cli.ExitOK {
		t.Fatalf("init: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr := runner("--changes", changes); code != runnercmd.ExitOK {
		t.Fatalf("first run: exit %d\n%s\n%s", code, out, stderr)
	}
	ack, err := srv.JS.Publish(context.Background(), "audit.exec.real.0002-change", []byte("garbage"))
	if err != nil {
		t.Fatal(err)
	}
	seq := fmt.Sprint(ack.Sequence)
	write("3.yaml", "id: 0003-later\norder: '3'\napply: 'true'\n")

	code, out, stderr := runner("--changes", changes)
	if code != runnercmd.ExitManualIntervention {
		t.Fatalf("run over garbage: exit %d, want %d\n%s\n%s", code, runnercmd.ExitManualIntervention, out, stderr)
	}
	t.Logf("runner:\n%s\n%s", out, stderr)
	mustSay(t, "runner", stderr, "sequence "+seq, "malformed event", "nats stream get AUDIT "+seq,
		"auditflow issue fix -p real -c 0002-change", "users-db")
	mustSay(t, "runner report", out, "0002-change", "BLOCKED", "NOT_RUN")

	code, out, stderr = runner("--changes", changes, "--dry-run")
	if code != runnercmd.ExitOK {
		t.Fatalf("--dry-run: exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("runner --dry-run:\n%s", out)
	mustSay(t, "--dry-run", out, "BLOCKED", "undecodable (seq "+seq+")", "stream sequence "+seq, "issue fix -p real -c 0002-change")

	code, out, stderr = auditflow("issue", "get", "-p", "real", "-c", "0002-change", "--guidance")
	if code != cli.ExitOK {
		t.Fatalf("issue get --guidance: exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("issue get --guidance:\n%s", out)
	mustSay(t, "issue get --guidance", out, "BLOCKED", "sequence "+seq, "no row for this change", "auditflow issue fix -p real -c 0002-change")

	code, out, stderr = auditflow("issue", "fix", "-p", "real", "-c", "0002-change", "-r", "applied", "--reason", "applied in the first run; the message is garbage", "--operator", "alice")
	if code != cli.ExitOK || !strings.Contains(out, "resolved as APPLIED by alice") {
		t.Fatalf("issue fix: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runner("--changes", changes)
	if code != runnercmd.ExitOK {
		t.Fatalf("run after the fix: exit %d\n%s\n%s", code, out, stderr)
	}
	mustSay(t, "run after the fix", out, "0003-later")

	// Another change's event on 0001's subject; resolved with the runner,
	// rolled back: 0001 is applied again.
	other := events.New(events.ExecutionSucceeded, "real", "0003-later")
	other.ExecutionID = "by-hand"
	b, err := events.Encode(other)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err = srv.JS.Publish(context.Background(), "audit.exec.real.0001-change", b); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runner("--changes", changes)
	if code != runnercmd.ExitManualIntervention {
		t.Fatalf("run over another change's event: exit %d\n%s\n%s", code, out, stderr)
	}
	mustSay(t, "runner", stderr, fmt.Sprint("sequence ", ack.Sequence), `event for change "0003-later" of pipeline "real" published on change "0001-change"'s subject`)
	code, out, stderr = runner("--resolve", "0001-change", "--resolution", "rolled-back", "--reason", "undone by hand", "--operator", "bob")
	if code != runnercmd.ExitOK || !strings.Contains(out, "resolved as ROLLED_BACK by bob") {
		t.Fatalf("runner --resolve: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runner("--changes", changes)
	if code != runnercmd.ExitOK || !strings.Contains(out, "0001-change") || !strings.Contains(out, "APPLIED") {
		t.Fatalf("run after --resolve rolled-back: exit %d\n%s\n%s", code, out, stderr)
	}
}

func mustSay(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s does not say %q:\n%s", what, w, out)
		}
	}
}
