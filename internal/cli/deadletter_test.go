package cli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/projector"
)

// TestDeadLetterCommands: garbage on a change's subject is dead-lettered
// by the projector; the CLI lists it, shows it, counts it in stats, and
// replay judges it again and says it still cannot be stored (exit 3).
func TestDeadLetterCommands(t *testing.T) {
	d := deploy(t, "sqlite")
	ctx := context.Background()
	if code, out, _ := d.run(t, "sqlite", "deadletter", "list", "--json"); code != cli.ExitOK || strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty deadletter list: exit %d\n%s", code, out)
	}
	if _, err := d.js.Publish(ctx, "audit.exec.billing.0001-x", []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := d.js.Stream(ctx, projector.DeadLetterStream)
		if err == nil && s.CachedInfo().State.Msgs == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no dead letter after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	code, out, stderr := d.run(t, "sqlite", "deadletter", "list", "--json")
	var list []map[string]any
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 ||
		list[0]["originalSubject"] != "audit.exec.billing.0001-x" || list[0]["originalSequence"] != float64(1) {
		t.Fatalf("deadletter list: exit %d\n%s\n%s", code, out, stderr)
	}
	seq := "1"
	if code, out, _ := d.run(t, "sqlite", "deadletter", "show", seq); code != cli.ExitOK || !strings.Contains(out, "not an event") ||
		!strings.Contains(out, "nats stream get AUDIT 1") {
		t.Fatalf("deadletter show: exit %d\n%s", code, out)
	}
	if code, out, _ := d.run(t, "sqlite", "stats", "--json"); code != cli.ExitOK || !strings.Contains(out, `"total": 1`) {
		t.Fatalf("stats: exit %d\n%s", code, out)
	}
	if code, out, _ := d.run(t, "sqlite", "deadletter", "replay", seq); code != cli.ExitProblems || !strings.Contains(out, "still cannot be stored") {
		t.Fatalf("deadletter replay: exit %d, want %d\n%s", code, cli.ExitProblems, out)
	}
	if code, _, _ := d.run(t, "sqlite", "deadletter", "show", "99"); code != cli.ExitNotFound {
		t.Fatalf("deadletter show 99: exit %d, want %d", code, cli.ExitNotFound)
	}
}
