//go:build unix

package faulttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/trust"
)

// TestReplayedSignedEventsAreNotBelieved: as processes, under the
// deployment's permissions, with signed events and a trust list. A user
// holding the runner role's credentials publishes an exact copy of an old
// signed event of each type (Started, Succeeded, Failed, RolledBack,
// ManuallyResolved) on its change's subject, with a new message id. Each
// time: the next run neither re-applies the change nor skips it as applied
// (exit 4, BLOCKED, naming the copy's sequence and the one it was written
// after), the projector stores the copy as its own OUT_OF_CHAIN row and
// opens the change's issue, verify exits 3, and once an operator resolves
// the change verify exits 0 and the next run goes on.
func TestReplayedSignedEventsAreNotBelieved(t *testing.T) {
	d := startDeployment(t, nil)
	ctx := context.Background()
	as := func(user, path string, args ...string) *proc { return start(t, d.url(user), path, args...) }
	must := func(p *proc, code int, what string) string {
		t.Helper()
		if got := p.wait(t, 90*time.Second); got != code {
			t.Fatalf("%s: exit %d, want %d:\n%s", what, got, code, p.out.String())
		}
		return p.out.String()
	}
	must(as(roleAdmin, bin.auditflow, "init", "--lock-lease", lease.String()), 0, "init")

	keys := t.TempDir()
	var trustYAML strings.Builder
	trustYAML.WriteString("keys:\n")
	newKey := func(name, role string) string {
		file := filepath.Join(keys, name+".nk")
		out := must(start(t, "nats://127.0.0.1:1", bin.auditflow, "keys", "new", "--out", file, "--name", name, "--role", role, "--pipeline", deployPipeline), 0, "keys new")
		trustYAML.WriteString(out[strings.Index(out, "  - key:"):])
		return file
	}
	runnerKey, operatorKey := newKey("runner-a", "runner"), newKey("alice", "operator")
	trustFile := filepath.Join(keys, "trust.yaml")
	if err := os.WriteFile(trustFile, []byte(trustYAML.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	marks := t.TempDir()
	change := func(id, order string, fail, rollback bool) {
		body := fmt.Sprintf("id: %s\norder: '%s'\napply: 'echo run >> %s/%s", id, order, marks, id)
		if fail {
			body += "; exit 3"
		}
		body += "'\n"
		if rollback {
			body += "rollback: 'true'\n"
		}
		changeFile(t, dir, id+".yaml", body)
	}
	runs := func(id string) int {
		b, _ := os.ReadFile(filepath.Join(marks, id))
		return strings.Count(string(b), "run")
	}
	run := func(code int, what string) string {
		t.Helper()
		return must(runner(t, d.url(roleRunner), dir, deployPipeline, "runner-a", "--signing-key", runnerKey, "--trust", trustFile), code, what)
	}
	cli := func(args ...string) *proc {
		return as(roleOperator, bin.auditflow, append([]string{"--trust", trustFile}, args...)...)
	}
	fix := func(id, resolution string) {
		t.Helper()
		must(cli("issue", "fix", "-p", deployPipeline, "-c", id, "-r", resolution, "--reason", "checked by hand", "--signing-key", operatorKey), 0, "issue fix "+id)
	}

	// A history holding every type: c1 applied; c2 failed, rolled back,
	// then applied; c3 failed, resolved rolled-back by hand, then applied;
	// c4 failed, resolved applied by hand.
	change("c1", "1", false, false)
	change("c2", "2", true, true)
	run(3, "first run: c2 fails and is rolled back")
	change("c2", "2", false, true)
	change("c3", "3", true, false)
	run(3, "second run: c2 applies, c3 fails")
	fix("c3", "rolled-back")
	change("c3", "3", false, false)
	change("c4", "4", true, false)
	run(3, "third run: c3 applies, c4 fails")
	fix("c4", "applied")
	run(0, "a run with everything applied")

	db := filepath.Join(t.TempDir(), "audit.db")
	addr := freeAddr(t)
	proj := as(roleProjector, bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", addr, "--trust", trustFile)
	waitReady(t, addr)
	t.Cleanup(func() { _ = proj.cmd.Process.Kill() })
	st, err := sqlitestore.Open(ctx, db, sqlitestore.Config{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	verifyCode := func() int {
		return cli("--store", "sqlite", "--sqlite-path", db, "verify").wait(t, 60*time.Second)
	}

	_, adminJS := d.connect(t, roleAdmin)
	audit, err := adminJS.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	nc, js := d.connect(t, roleRunner) // the insider: the runner role's credentials
	_ = nc
	for _, c := range []struct {
		change string
		typ    events.Type
		nth    int // which event of that type on the change
	}{
		{"c1", events.ExecutionStarted, 1},
		{"c1", events.ExecutionSucceeded, 1},
		{"c2", events.ExecutionFailed, 1},
		{"c2", events.ExecutionRolledBack, 1},
		{"c3", events.ManuallyResolved, 1},
		{"c4", events.ExecutionFailed, 1},
	} {
		t.Run(c.change+"-"+string(c.typ), func(t *testing.T) {
			subject := events.Subject(events.DefaultSubjectPrefix, deployPipeline, c.change)
			var orig *jetstreamMsg
			seen := 0
			info, _ := audit.Info(ctx)
			for seq := uint64(1); seq <= info.State.LastSeq && orig == nil; seq++ {
				m, err := audit.GetMsg(ctx, seq)
				if err != nil || m.Subject != subject {
					continue
				}
				if e, err := events.Decode(m.Data); err == nil && e.Type == c.typ {
					if seen++; seen == c.nth {
						orig = &jetstreamMsg{seq: seq, data: m.Data, sig: m.Header.Get(trust.Header)}
					}
				}
			}
			if orig == nil || orig.sig == "" {
				t.Fatalf("no signed %s on %s", c.typ, c.change)
			}
			before := runs(c.change)
			msg := &nats.Msg{Subject: subject, Data: orig.data, Header: nats.Header{}}
			msg.Header.Set(trust.Header, orig.sig)
			msg.Header.Set("Nats-Msg-Id", events.NewID())
			ack, err := js.PublishMsg(ctx, msg)
			if err != nil {
				t.Fatalf("the runner role publishing a copy: %v", err)
			}
			out := run(4, "a run after the copy")
			if runs(c.change) != before || !strings.Contains(out, fmt.Sprintf("stream sequence %d", ack.Sequence)) || !strings.Contains(out, "BLOCKED") {
				t.Fatalf("after a copy of %s (seq %d) at seq %d: %s ran %d times (was %d); want it blocked, naming the copy:\n%s",
					c.typ, orig.seq, ack.Sequence, c.change, runs(c.change), before, out)
			}
			eventually(t, 20*time.Second, "the projector stores the copy as its own OUT_OF_CHAIN row, its issue open", func() bool {
				rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: deployPipeline, ChangeID: c.change, Limit: 1})
				is, ierr := st.Issues(ctx, stores.IssueQuery{Pipeline: deployPipeline, ChangeID: c.change})
				return err == nil && ierr == nil && len(rows) == 1 && rows[0].Seq == ack.Sequence && rows[0].RowState == events.StateOutOfChain &&
					len(is) == 1 && is[0].Status == stores.IssueOpen && is[0].State == events.StateOutOfChain
			})
			if applied, err := st.History(ctx, stores.HistoryQuery{Pipeline: deployPipeline, ChangeID: c.change, State: events.StateApplied}); err != nil ||
				len(applied) > 0 && applied[0].Seq == ack.Sequence {
				t.Fatalf("the copy listed as APPLIED: %+v %v", applied, err)
			}
			if code := verifyCode(); code != 3 {
				t.Fatalf("verify with the copy unresolved: exit %d, want 3", code)
			}
			fix(c.change, "applied")
			eventually(t, 20*time.Second, "the projector stores the resolution", func() bool {
				is, err := st.Issues(ctx, stores.IssueQuery{Pipeline: deployPipeline, ChangeID: c.change})
				return err == nil && len(is) == 1 && is[0].Status == stores.IssueClosed
			})
			if code := verifyCode(); code != 0 {
				t.Fatalf("verify once resolved: exit %d, want 0", code)
			}
			run(0, "a run after the resolution")
			if runs(c.change) != before {
				t.Fatalf("%s ran again after it was resolved applied", c.change)
			}
		})
	}
}

type jetstreamMsg struct {
	seq  uint64
	data []byte
	sig  string
}
