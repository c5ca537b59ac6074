package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
)

// strictStore is a SQLite store fed the way the store contract asks of a
// projector — valid events on their own change's subject, the rest
// dead-lettered — independently of the projector's code.
type strictStore struct {
	url  string
	js   jetstream.JetStream
	st   stores.Store
	args []string
}

func newStrictStore(t *testing.T) *strictStore {
	t.Helper()
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	c := storetestenv.Config(t, "sqlite", fmt.Sprintf("cli%d", time.Now().UnixNano()%1e6))
	return &strictStore{url: srv.ClientURL(), js: srv.JS, st: storetestenv.OpenConfig(t, c), args: storetestenv.Args(c)}
}

func (s *strictStore) feed(t *testing.T) {
	t.Helper()
	storetestenv.Feed(t, s.js, s.st)
}

func (s *strictStore) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	full := append(append([]string{"--nats-url", s.url}, s.args...), args...)
	var out, errOut bytes.Buffer
	code := cli.Main(context.Background(), full, &out, &errOut)
	return code, out.String(), errOut.String()
}

func (s *strictStore) publish(t *testing.T, pipeline, change string, data []byte) uint64 {
	t.Helper()
	ack, err := s.js.Publish(context.Background(), events.Subject(events.DefaultSubjectPrefix, pipeline, change), data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s does not say %q:\n%s", what, w, out)
		}
	}
}

// TestVerifyNamesWrongSubjectAndDowngrade: an ExecutionFailed for change
// 0002 published on change 0001's subject, and a hand-written v1
// ManuallyResolved closing a ROLLBACK_FAILED change, are each reported in
// their own category with exit 3 and the remedy (issue fix), never as
// "restore the stream"; repair says what it cannot fix; once the changes
// are resolved, verify exits 0.
func TestVerifyNamesWrongSubjectAndDowngrade(t *testing.T) {
	s := newStrictStore(t)
	ctx := context.Background()
	r := newRunner(t, s.js, "real")
	noop := func(context.Context) error { return nil }
	if _, err := r.Run(ctx, []runner.Change{{ID: "0001-change", Order: "1", Apply: noop}, {ID: "0002-change", Order: "2", Apply: noop}}); err != nil {
		t.Fatal(err)
	}
	stray := events.New(events.ExecutionFailed, "real", "0002-change")
	stray.ExecutionID, stray.ErrorMessage = "by-hand", "disk full"
	b, err := events.Encode(stray)
	if err != nil {
		t.Fatal(err)
	}
	seq := s.publish(t, "real", "0001-change", b)
	s.feed(t)

	code, out, errOut := s.run(t, "verify")
	if code != cli.ExitProblems {
		t.Fatalf("verify: exit %d, want %d\n%s\n%s", code, cli.ExitProblems, out, errOut)
	}
	t.Logf("verify:\n%s", out)
	mustContain(t, "verify", out, "wrong subject", fmt.Sprintf("seq %d on change real/0001-change's subject", seq),
		`event for change "0002-change" of pipeline "real" published on change "0001-change"'s subject`,
		"BAD MESSAGE", "not tampering", "auditflow issue fix -p real -c 0001-change", "the store matches the stream")
	if strings.Contains(out, "restore the stream") || strings.Contains(out, "TAMPERED") {
		t.Fatalf("verify blames the stream's integrity:\n%s", out)
	}
	code, out, _ = s.run(t, "repair", "--dry-run")
	if code != cli.ExitProblems {
		t.Fatalf("repair --dry-run: exit %d\n%s", code, out)
	}
	t.Logf("repair --dry-run:\n%s", out)
	mustContain(t, "repair --dry-run", out, "nothing to repair in the store", "the stream has problems a store repair cannot fix", "issue fix -p real -c 0001-change")

	if code, out, errOut := s.run(t, "issue", "fix", "-p", "real", "-c", "0001-change", "-r", "applied",
		"--reason", "0001 was applied; the event is 0002's", "--operator", "alice"); code != cli.ExitOK {
		t.Fatalf("issue fix: exit %d\n%s\n%s", code, out, errOut)
	}
	s.feed(t)
	code, out, _ = s.run(t, "verify")
	if code != cli.ExitOK || strings.Contains(out, "restore the stream") {
		t.Fatalf("verify after the fix: exit %d\n%s", code, out)
	}
	mustContain(t, "verify after the fix", out, "resolved by an operator after it", "0 broken links in the stream, 0 in the store")

	// A downgrade: a change fails and its rollback fails (ROLLBACK_FAILED);
	// someone closes it with a hand-written version-1 resolution.
	_, err = r.Run(ctx, []runner.Change{{ID: "0003-drop", Order: "3", Apply: func(context.Context) error { return errors.New("boom") },
		Rollback: func(context.Context) error { return errors.New("rollback boom") }}})
	if !errors.Is(err, runner.ErrChangeFailed) {
		t.Fatal(err)
	}
	forged := events.New(events.ManuallyResolved, "real", "0003-drop")
	forged.SchemaVersion, forged.Position, forged.Resolution, forged.Operator, forged.Reason = 1, 0, events.ResolvedApplied, "mallory", "trust me"
	if b, err = events.Encode(forged); err != nil {
		t.Fatal(err)
	}
	seq = s.publish(t, "real", "0003-drop", b)
	s.feed(t)
	code, out, _ = s.run(t, "verify")
	if code != cli.ExitProblems {
		t.Fatalf("verify with a downgrade: exit %d\n%s", code, out)
	}
	t.Logf("verify:\n%s", out)
	mustContain(t, "verify", out, "downgrade", fmt.Sprintf("real/0003-drop seq %d ManuallyResolved at schemaVersion 1, without the hash chain", seq),
		"DOWNGRADE", "auditflow issue fix -p real -c 0003-drop", "0 unchained events")
	code, out, _ = s.run(t, "verify", "--json")
	var rep struct {
		Downgrades []struct {
			Seq          uint64
			Acknowledged bool
		}
	}
	if code != cli.ExitProblems || json.Unmarshal([]byte(out), &rep) != nil || len(rep.Downgrades) != 1 || rep.Downgrades[0].Seq != seq {
		t.Fatalf("verify --json: exit %d\n%s", code, out)
	}
	if code, out, errOut := s.run(t, "issue", "fix", "-p", "real", "-c", "0003-drop", "-r", "rolled-back",
		"--reason", "the table is still there; the v1 resolution was not ours", "--operator", "alice"); code != cli.ExitOK {
		t.Fatalf("issue fix of the downgraded change: exit %d\n%s\n%s", code, out, errOut)
	}
	s.feed(t)
	if code, out, _ := s.run(t, "verify"); code != cli.ExitOK {
		t.Fatalf("verify after acknowledging the downgrade: exit %d\n%s", code, out)
	}
}

// TestIssueUsageLimits: a reason or operator over the event limits is a
// usage error, not a failed publish.
func TestIssueUsageLimits(t *testing.T) {
	for _, args := range [][]string{
		{"issue", "fix", "-p", "x", "-c", "y", "-r", "applied", "--operator", "o", "--reason", strings.Repeat("r", events.MaxMessageLen+1)},
		{"issue", "fix", "-p", "x", "-c", "y", "-r", "applied", "--operator", strings.Repeat("o", events.MaxTextLen+1), "--reason", "r"},
	} {
		var out, errOut bytes.Buffer
		if code := cli.Main(context.Background(), args, &out, &errOut); code != cli.ExitUsage || !strings.Contains(errOut.String(), "the limit is") {
			t.Errorf("exit %d, want %d naming the limit\n%s", code, cli.ExitUsage, errOut.String())
		}
	}
}
