package runner_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

// TestBadNewestMessageBlocksTheChangeUntilResolved: a change's newest
// message is garbage, or another change's event, published by hand with
// the plain NATS client. The run does not fail with "malformed event": it
// stops at that change for an operator, naming the sequence, and a
// resolution recorded after the message (under the pipeline lock) lets the
// next run go on — skipping the change (applied) or applying it again
// (rolled back).
func TestBadNewestMessageBlocksTheChangeUntilResolved(t *testing.T) {
	other := events.New(events.ExecutionFailed, "billing", "002-change")
	other.ExecutionID, other.ErrorMessage = "forged", "boom"
	otherBytes, err := events.Encode(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name         string
		data         []byte
		resolution   events.Resolution
		wantAfter    []runner.Outcome
		wrongSubject bool
	}{
		{"garbage, applied", []byte("garbage"), events.ResolvedApplied,
			[]runner.Outcome{runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeApplied}, false},
		{"garbage, rolled back", []byte(`{"specversion":"1.0"`), events.ResolvedRolledBack,
			[]runner.Outcome{runner.OutcomeSkipped, runner.OutcomeApplied, runner.OutcomeSkipped, runner.OutcomeApplied}, false},
		{"another change's event", otherBytes, events.ResolvedApplied,
			[]runner.Outcome{runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeSkipped, runner.OutcomeApplied}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := natstest.Start(t)
			ctx := context.Background()
			counts := make([]atomic.Int32, 4)
			changes := counted(4, counts)
			r := newRunner(t, srv.JS, "billing", "r1")
			if _, err := r.Run(ctx, changes[:3]); err != nil {
				t.Fatal(err)
			}
			ack, err := srv.JS.Publish(ctx, events.Subject(events.DefaultSubjectPrefix, "billing", "001-change"), c.data)
			if err != nil {
				t.Fatal(err)
			}

			plan, err := r.Plan(ctx, changes)
			if err != nil {
				t.Fatalf("Plan = %v, want a plan with the change blocked", err)
			}
			s := plan[1]
			if s.Action != runner.ActionBlocked || s.Bad == nil || s.Bad.Head.Seq != ack.Sequence || s.Bad.WrongSubject() != c.wrongSubject ||
				!strings.Contains(s.Reason, "stream sequence") {
				t.Fatalf("plan step = %+v, want BLOCKED on seq %d", s, ack.Sequence)
			}
			if plan[2].Action != runner.ActionSkip || plan[3].Action != runner.ActionRun {
				t.Fatalf("the other changes: %s %s (002 must read its own subject: applied)", plan[2].Action, plan[3].Action)
			}

			rep, err := r.Run(ctx, changes)
			var ce *runner.ChangeError
			if !errors.Is(err, runner.ErrManualIntervention) || !errors.As(err, &ce) || ce.Bad == nil || ce.ChangeID != "001-change" {
				t.Fatalf("Run = %v, want manual intervention on 001-change", err)
			}
			if !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeSkipped, runner.OutcomeBlocked, runner.OutcomeNotRun, runner.OutcomeNotRun}) {
				t.Fatalf("outcomes %v", outcomes(rep))
			}
			g := ce.Guidance("auditflow issue fix -p %s -c %s -r applied|rolled-back")
			for _, want := range []string{"sequence " + itoa(ack.Sequence), "subject audit.exec.billing.001-change",
				"nats stream get AUDIT " + itoa(ack.Sequence), "auditflow issue fix -p billing -c 001-change"} {
				if !strings.Contains(g, want) {
					t.Fatalf("guidance does not say %q:\n%s", want, g)
				}
			}
			if c.wrongSubject && !strings.Contains(g, `another change's event: event for change "002-change" of pipeline "billing" published on change "001-change"'s subject`) {
				t.Fatalf("guidance does not say whose event it is:\n%s", g)
			}
			t.Logf("error: %v\nguidance:\n%s", err, g)

			// While a runner holds the lock, the resolution is refused.
			locker, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Lease: lease})
			if err != nil {
				t.Fatal(err)
			}
			held, err := locker.TryAcquire(ctx, "billing")
			if err != nil {
				t.Fatal(err)
			}
			res := runner.Resolution{ChangeID: "001-change", Resolution: c.resolution, Operator: "bob", Reason: "the target holds it"}
			if _, err := r.Resolve(ctx, res); !errors.Is(err, runner.ErrUnsafeResolution) {
				t.Fatalf("Resolve while the lock is held = %v, want ErrUnsafeResolution", err)
			}
			if err := held.Release(ctx); err != nil {
				t.Fatal(err)
			}
			seq, err := r.Resolve(ctx, res)
			if err != nil {
				t.Fatalf("Resolve = %v", err)
			}
			prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
			if err != nil {
				t.Fatal(err)
			}
			last, head, err := prod.Last(ctx, "billing", "001-change")
			if err != nil || seq != ack.Sequence+1 || head.Seq != seq || last.Type != events.ManuallyResolved ||
				last.PrevHash != events.Hash(c.data) || last.LockToken == 0 {
				t.Fatalf("resolution at seq %d (want %d): %+v %v; want it chained after the bad message, under the lock", seq, ack.Sequence+1, last, err)
			}
			rep, err = r.Run(ctx, changes)
			if err != nil || !slices.Equal(outcomes(rep), c.wantAfter) {
				t.Fatalf("after the resolution: %v %v, want %v", err, outcomes(rep), c.wantAfter)
			}
		})
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestResolveADowngrade: a hand-written schema-version-1 ManuallyResolved
// without prevHash, after the change's chain had started, closes its issue
// for the runner; verify reports it, and an operator must be able to
// record the real state after it. A change whose events were all version 1
// from the start has nothing to resolve.
func TestResolveADowngrade(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	r := newRunner(t, srv.JS, "billing", "r1")
	fail := []runner.Change{{ID: "001-change", Apply: func(context.Context) error { return errors.New("boom") },
		Rollback: func(context.Context) error { return errors.New("rollback boom") }}}
	if _, err := r.Run(ctx, fail); !errors.Is(err, runner.ErrChangeFailed) {
		t.Fatal(err)
	}
	forged := events.New(events.ManuallyResolved, "billing", "001-change")
	forged.SchemaVersion, forged.Position, forged.Resolution, forged.Operator, forged.Reason = 1, 0, events.ResolvedApplied, "mallory", "trust me"
	b, err := events.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.JS.Publish(ctx, events.Subject(events.DefaultSubjectPrefix, "billing", "001-change"), b); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(ctx, runner.Resolution{ChangeID: "001-change", Resolution: events.ResolvedRolledBack, Operator: "bob", Reason: "undone by hand"}); err != nil {
		t.Fatalf("Resolve after a downgrade = %v", err)
	}

	old := events.New(events.ExecutionSucceeded, "billing", "002-old")
	old.SchemaVersion, old.Position, old.ExecutionID = 1, 0, "x"
	if b, err = events.Encode(old); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.JS.Publish(ctx, events.Subject(events.DefaultSubjectPrefix, "billing", "002-old"), b); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(ctx, runner.Resolution{ChangeID: "002-old", Resolution: events.ResolvedApplied, Operator: "bob", Reason: "x"}); !errors.Is(err, runner.ErrNothingToResolve) {
		t.Fatalf("Resolve of an old writer's applied change = %v, want ErrNothingToResolve", err)
	}
}

// TestLimits: MaxTrace cannot exceed what an event may carry; a change
// whose metadata would not fit on its events is refused before anything
// runs; a change that fails with a huge error is still recorded, its trace
// cut to MaxTrace with a marker.
func TestLimits(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []runner.Config{
		{Pipeline: "p", MaxTrace: events.MaxTraceLen + 1},
		{Pipeline: "p", MaxTrace: -1},
		{Pipeline: strings.Repeat("p", events.MaxKeyLen+1)},
		{Pipeline: "p", RunnerID: strings.Repeat("r", events.MaxTextLen+1)},
	} {
		if _, err := runner.New(prod, nil, cfg); !errors.Is(err, runner.ErrInvalidConfig) {
			t.Errorf("New(MaxTrace %d, pipeline %d bytes, runner id %d bytes) = %v, want ErrInvalidConfig", cfg.MaxTrace, len(cfg.Pipeline), len(cfg.RunnerID), err)
		}
	}
	r := newRunner(t, srv.JS, "billing", "r1")
	noop := func(context.Context) error { return nil }
	big := []runner.Change{{ID: "001-meta", Apply: noop, Metadata: map[string]string{"diff": strings.Repeat("+", events.MaxMetadataValueLen+1)}}}
	if _, err := r.Run(ctx, big); !errors.Is(err, runner.ErrInvalidChange) || !strings.Contains(err.Error(), `data.metadata["diff"]`) {
		t.Fatalf("Run with oversize metadata = %v, want ErrInvalidChange naming the key", err)
	}
	huge := strings.Repeat("output line\n", (2<<20)/12) + "the real error"
	loud := []runner.Change{{ID: "002-loud", Apply: func(context.Context) error { return errors.New(huge) }}}
	if _, err := r.Run(ctx, loud); !errors.Is(err, runner.ErrChangeFailed) {
		t.Fatalf("Run = %v, want the failure recorded", err)
	}
	last, _, err := prod.Last(ctx, "billing", "002-loud")
	if err != nil || last.Type != events.ExecutionFailed || len(last.ErrorTrace) > runner.DefaultMaxTrace ||
		!strings.Contains(last.ErrorTrace, "… [truncated ") || !strings.HasSuffix(last.ErrorTrace, "the real error") {
		t.Fatalf("recorded %s with a %d-byte trace (%v)", last.Type, len(last.ErrorTrace), err)
	}
}
