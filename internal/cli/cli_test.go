package cli_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/verify"
)

// deployment is a NATS server reachable over TCP (the command connects
// like any client) with a projector per store.
type deployment struct {
	url    string
	js     jetstream.JetStream
	projs  map[string]*projector.Projector
	stores map[string]stores.Store
	args   map[string][]string // each store's flags
}

func deploy(t *testing.T, kinds ...string) *deployment {
	t.Helper()
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	d := &deployment{url: srv.ClientURL(), js: srv.JS, projs: map[string]*projector.Projector{},
		stores: map[string]stores.Store{}, args: map[string][]string{}}
	ns := fmt.Sprintf("cli%d", time.Now().UnixNano()%1e6)
	for _, kind := range kinds {
		c := storetestenv.Config(t, kind, ns)
		d.args[kind] = storetestenv.Args(c)
		st := storetestenv.OpenConfig(t, c)
		p, err := projector.New(context.Background(), srv.JS, st, projector.Config{CreateStreams: true, StoreName: kind, Logger: natstest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = p.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		d.projs[kind], d.stores[kind] = p, st
	}
	return d
}

func (d *deployment) caughtUp(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for kind, p := range d.projs {
		if err := p.WaitCaughtUp(ctx); err != nil {
			t.Fatalf("%s projector: %v", kind, err)
		}
	}
}

// run runs the command against the deployment with a store's flags.
func (d *deployment) run(t *testing.T, kind string, args ...string) (int, string, string) {
	t.Helper()
	full := append([]string{"--nats-url", d.url}, d.args[kind]...)
	full = append(full, args...)
	var out, errOut bytes.Buffer
	code := cli.Main(context.Background(), full, &out, &errOut)
	return code, out.String(), errOut.String()
}

func newRunner(t *testing.T, js jetstream.JetStream, pipeline string) *runner.Runner {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: pipeline, RunnerID: "test-runner"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestIssueFixClosesTheIssueEverywhere: a change fails; the operator sees it
// in issue list, reads the guidance, records a fix with the command; every
// store (each with its own projector) closes the issue, and the next run
// proceeds past the change.
func TestIssueFixClosesTheIssueEverywhere(t *testing.T) {
	d := deploy(t, storeflags.Kinds...)
	r := newRunner(t, d.js, "billing")
	var later atomic.Int32
	changes := []runner.Change{
		{ID: "0001-create", Order: "1", Apply: func(context.Context) error { return nil }},
		{ID: "0002-backfill", Order: "2", TargetSystem: "orders-db", Apply: func(context.Context) error {
			return errors.New("deadlock detected")
		}},
		{ID: "0003-index", Order: "3", Apply: func(context.Context) error { later.Add(1); return nil }},
	}
	if _, err := r.Run(context.Background(), changes); !errors.Is(err, runner.ErrChangeFailed) {
		t.Fatalf("first run = %v", err)
	}
	d.caughtUp(t)
	for _, kind := range storeflags.Kinds {
		code, out, errOut := d.run(t, kind, "issue", "list")
		if code != cli.ExitOK || !strings.Contains(out, "0002-backfill") || !strings.Contains(out, "deadlock detected") {
			t.Fatalf("%s: issue list: exit %d\n%s\n%s", kind, code, out, errOut)
		}
	}
	code, out, errOut := d.run(t, "sqlite", "issue", "get", "-p", "billing", "-c", "0002-backfill", "--guidance")
	if code != cli.ExitOK || !strings.Contains(out, "auditflow issue fix -p billing -c 0002-backfill -r applied") ||
		!strings.Contains(out, "orders-db") || !strings.Contains(out, "ExecutionFailed") && !strings.Contains(out, "FAILED") {
		t.Fatalf("issue get --guidance: exit %d\n%s\n%s", code, out, errOut)
	}

	code, out, errOut = d.run(t, "sqlite", "issue", "fix", "-p", "billing", "-c", "0002-backfill", "-r", "applied",
		"--reason", "backfill finished by hand", "--operator", "alice")
	if code != cli.ExitOK || !strings.Contains(out, "resolved as APPLIED by alice") {
		t.Fatalf("issue fix: exit %d\n%s\n%s", code, out, errOut)
	}
	d.caughtUp(t)
	for kind, st := range d.stores {
		is, err := st.Issues(context.Background(), stores.IssueQuery{Pipeline: "billing", ChangeID: "0002-backfill"})
		if err != nil || len(is) != 1 || is[0].Status != stores.IssueClosed || is[0].Operator != "alice" || is[0].State != events.StateManuallyApplied {
			t.Fatalf("%s: issue after fix = %+v, %v", kind, is, err)
		}
		if code, out, _ := d.run(t, kind, "issue", "list"); code != cli.ExitOK || !strings.Contains(out, "no open issues") {
			t.Fatalf("%s: issue list after fix: %s", kind, out)
		}
	}
	rep, err := r.Run(context.Background(), changes)
	if err != nil || later.Load() != 1 {
		t.Fatalf("the run after the fix: %v (later change ran %d times), %+v", err, later.Load(), rep)
	}
	// Fixing it again has nothing to fix.
	if code, _, errOut := d.run(t, "sqlite", "issue", "fix", "-p", "billing", "-c", "0002-backfill", "-r", "applied",
		"--reason", "again", "--operator", "alice"); code != cli.ExitNotFound {
		t.Fatalf("second fix: exit %d, want %d\n%s", code, cli.ExitNotFound, errOut)
	}
}

func TestVerifyRepairReplayCommands(t *testing.T) {
	d := deploy(t, "sqlite")
	r := newRunner(t, d.js, "shipping")
	_, _ = r.Run(context.Background(), []runner.Change{
		{ID: "a", Order: "1", Apply: func(context.Context) error { return nil }},
		{ID: "b", Order: "2", Apply: func(context.Context) error { return errors.New("boom") }},
	})
	d.caughtUp(t)
	// Without the results stream verify still judges, and says why its
	// result is not recorded; init creates the stream, and then each run
	// is recorded for the console.
	if code, out, errOut := d.run(t, "sqlite", "verify"); code != cli.ExitOK || !strings.Contains(out, "the store matches the stream") ||
		!strings.Contains(errOut, "not recorded") || !strings.Contains(errOut, "auditflow init") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := d.run(t, "sqlite", "init"); code != cli.ExitOK || !strings.Contains(out, verify.ResultsStream) {
		t.Fatalf("init: exit %d\n%s\n%s", code, out, errOut)
	}
	lastResult := func() verify.Result {
		t.Helper()
		res, ok, err := verify.LastResult(context.Background(), d.js, "sqlite")
		if err != nil || !ok {
			t.Fatalf("last verify result: %v, %v", ok, err)
		}
		return res
	}
	// Nothing on stderr but the warning that it runs without a trust list
	// (TestMain's --insecure-no-trust).
	if code, out, errOut := d.run(t, "sqlite", "verify"); code != cli.ExitOK || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "running without a trust list") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errOut)
	}
	if res := lastResult(); !res.OK || res.StreamEvents != 4 || res.Counts["mismatched"] != 0 {
		t.Fatalf("recorded result %+v", res)
	}
	path := d.args["sqlite"][3]
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE "changeLog" SET error_message = 'fine' WHERE seq = 4`); err != nil {
		t.Fatal(err)
	}
	code, out, _ := d.run(t, "sqlite", "verify")
	if code != cli.ExitProblems || !strings.Contains(out, "altered\tshipping/b seq 4") && !strings.Contains(out, "shipping/b seq 4: [ErrorMessage]") {
		t.Fatalf("verify after corruption: exit %d\n%s", code, out)
	}
	if res := lastResult(); res.OK || res.Counts["mismatched"] != 1 {
		t.Fatalf("recorded result after corruption %+v", res)
	}
	code, out, _ = d.run(t, "sqlite", "repair", "--dry-run")
	if code != cli.ExitOK || !strings.Contains(out, "write   changeLog shipping/b seq 4") {
		t.Fatalf("repair --dry-run: exit %d\n%s", code, out)
	}
	if code, out, errOut := d.run(t, "sqlite", "repair"); code != cli.ExitOK || !strings.Contains(out, "the store matches the stream") {
		t.Fatalf("repair: exit %d\n%s\n%s", code, out, errOut)
	}
	// Disaster recovery in place: delete everything, rebuild.
	code, out, errOut := d.run(t, "sqlite", "replay", "--reset")
	if code != cli.ExitOK || !strings.Contains(out, "replayed 4 events") {
		t.Fatalf("replay --reset: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, _ := d.run(t, "sqlite", "verify", "--json"); code != cli.ExitOK {
		t.Fatalf("verify after rebuild: exit %d\n%s", code, out)
	} else {
		var rep struct{ StreamEvents, StoreRows int }
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.StreamEvents != 4 || rep.StoreRows != 4 {
			t.Fatalf("verify --json: %v %s", err, out)
		}
	}
	if code, out, _ := d.run(t, "sqlite", "replay"); code != cli.ExitOK || !strings.Contains(out, "nothing to replay") {
		t.Fatalf("second replay: exit %d\n%s", code, out)
	}
}

func TestListingsStatsLocksAndChecks(t *testing.T) {
	d := deploy(t, "sqlite")
	r := newRunner(t, d.js, "identity")
	_, _ = r.Run(context.Background(), []runner.Change{
		{ID: "x1", Order: "1", Author: "carol", Apply: func(context.Context) error { return nil }},
		{ID: "x2", Order: "2", Apply: func(context.Context) error { return errors.New("nope") }},
	})
	d.caughtUp(t)

	code, out, _ := d.run(t, "sqlite", "audit", "list")
	if code != cli.ExitOK || !strings.Contains(out, "x1") || !strings.Contains(out, "APPLIED") || !strings.Contains(out, "carol") {
		t.Fatalf("audit list: %d\n%s", code, out)
	}
	code, out, _ = d.run(t, "sqlite", "audit", "list", "--history", "--state", "failed", "--json")
	var rows []map[string]any
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0]["changeId"] != "x2" {
		t.Fatalf("audit list --history --state failed --json: %d\n%s", code, out)
	}
	code, out, _ = d.run(t, "sqlite", "stats", "--since", "1h")
	if code != cli.ExitOK || !regexp.MustCompile(`failures\s+1\n`).MatchString(out) ||
		!strings.Contains(out, "projection lag") || !strings.Contains(out, "store writes") {
		t.Fatalf("stats: %d\n%s", code, out)
	}
	if code, out, _ := d.run(t, "sqlite", "stats", "--json"); code != cli.ExitOK || !strings.Contains(out, `"openIssues": 1`) {
		t.Fatalf("stats --json: %d\n%s", code, out)
	}

	// Locks: one held by a live runner, listed, force-released.
	locker, err := lock.New(context.Background(), d.js, lock.Config{Owner: "deploy-host:42"})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := locker.TryAcquire(context.Background(), "identity")
	if err != nil {
		t.Fatal(err)
	}
	if code, out, _ := d.run(t, "sqlite", "lock", "list"); code != cli.ExitOK || !strings.Contains(out, "deploy-host:42") {
		t.Fatalf("lock list: %d\n%s", code, out)
	}
	if code, _, _ := d.run(t, "sqlite", "lock", "release", "-p", "identity"); code != cli.ExitUsage {
		t.Fatalf("release without --force: exit %d", code)
	}
	// A live holder is removed only at the revision the operator names
	// (without it, release watches for a refresh and refuses: see
	// internal/faulttest/locks_test.go).
	held, err := locker.Holder(context.Background(), "identity")
	if err != nil {
		t.Fatal(err)
	}
	if code, out, _ := d.run(t, "sqlite", "lock", "release", "-p", "identity", "--force", "--revision", fmt.Sprint(held.Revision)); code != cli.ExitOK {
		t.Fatalf("lock release: %d\n%s", code, out)
	}
	if code, out, _ := d.run(t, "sqlite", "lock", "list"); code != cli.ExitOK || !strings.Contains(out, "no locks held") {
		t.Fatalf("lock list after release: %d\n%s", code, out)
	}
	_ = lease // it learns at its next refresh (tested in package lock)
	if code, _, _ := d.run(t, "sqlite", "lock", "release", "-p", "identity", "--force"); code != cli.ExitNotFound {
		t.Fatalf("releasing a free lock: exit %d", code)
	}

	// Checks.
	if code, out, _ := d.run(t, "sqlite", "test-connection"); code != cli.ExitOK || !regexp.MustCompile(`ok\s+nats`).MatchString(out) {
		t.Fatalf("test-connection: %d\n%s", code, out)
	}
	if code, out, _ := d.run(t, "sqlite", "verify-schema"); code != cli.ExitOK {
		t.Fatalf("verify-schema: %d\n%s", code, out)
	}
	db, _ := sql.Open("sqlite", "file:"+d.args["sqlite"][3])
	defer db.Close()
	if _, err := db.Exec(`DROP INDEX "issues_status"`); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := d.run(t, "sqlite", "verify-schema"); code != cli.ExitProblems || !strings.Contains(out, "issues_status") {
		t.Fatalf("verify-schema with a dropped index: %d\n%s", code, out)
	}
	var out2, errOut bytes.Buffer
	code = cli.Main(context.Background(), append([]string{"--nats-url", "nats://127.0.0.1:1"}, append(d.args["sqlite"], "test-connection")...), &out2, &errOut)
	if code != cli.ExitProblems || !strings.Contains(out2.String(), "FAIL") || !strings.Contains(out2.String(), "check the URL") {
		t.Fatalf("test-connection to nowhere: %d\n%s\n%s", code, out2.String(), errOut.String())
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"issue", "fix", "-p", "x"},
		{"issue", "fix", "-p", "x", "-c", "y", "-r", "maybe", "--reason", "r", "--operator", "o"},
		{"issue", "get"},
		{"--bogus"},
		{"audit", "list", "--store", "oracle"},
		{"replay", "--since", "yesterday-ish", "--store", "sqlite", "--sqlite-path", t.TempDir() + "/x.db", "--nats-url", "nats://127.0.0.1:1"},
	} {
		var out, errOut bytes.Buffer
		if code := cli.Main(context.Background(), args, &out, &errOut); code != cli.ExitUsage {
			t.Errorf("%v: exit %d, want %d\n%s", args, code, cli.ExitUsage, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := cli.Main(context.Background(), []string{"--help"}, &out, &errOut); code != cli.ExitOK || !slices.ContainsFunc(
		[]string{"issue", "replay", "verify", "repair", "lock", "stats", "test-connection", "verify-schema", "audit"},
		func(c string) bool { return strings.Contains(out.String(), c) }) {
		t.Fatalf("--help: %d\n%s", code, out.String())
	}
}
