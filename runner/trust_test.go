package runner_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/trust"
)

// signedRunner is a runner whose producer signs with key and which judges
// changes with list. The stream and the lock bucket must exist.
func signedRunner(t *testing.T, js jetstream.JetStream, key *trust.Signer, list *trust.List) (*runner.Runner, *producer.Producer) {
	t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{Signer: key, RetryFor: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{Lease: lease, RetryInterval: 20 * time.Millisecond, GiveUpAfter: time.Minute, Owner: "signed"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: "billing", RunnerID: "signed", Trust: list, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return r, prod
}

// TestForgedSuccessBlocks is issue 9's forgery seen from a runner: an
// unsigned ExecutionSucceeded (lock token 1, no expected sequence)
// published by hand on a change that never ran. A runner without a trust
// list believes it and skips the change; one with a list stops at it for
// an operator (exit 4), naming the sequence, the problem and issue fix,
// and runs nothing. Only a resolution signed by a trusted operator key
// moves the change on: unsigned, a runner's key, or a free-text operator
// that is not the key's name are refused, and the recorded operator is
// the key's identity.
func TestForgedSuccessBlocks(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	newRunner(t, srv.JS, "billing", "setup") // creates the stream and the lock bucket
	runnerKey, operatorKey := trusttest.NewSigner(t), trusttest.NewSigner(t)
	list, err := trust.NewList(
		trust.Key{Key: runnerKey.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"billing"}},
		trust.Key{Key: operatorKey.PublicKey(), Name: "alice", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{"*"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]atomic.Int32, 3)
	changes := counted(3, counts)

	forged := events.New(events.ExecutionSucceeded, "billing", "001-change")
	forged.ExecutionID, forged.RunnerID, forged.LockToken = "forged", "forger", 1
	b, err := events.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := srv.JS.Publish(ctx, events.Subject(events.DefaultSubjectPrefix, "billing", "001-change"), b)
	if err != nil {
		t.Fatal(err)
	}

	// Without a trust list the forgery is believed: the vulnerability.
	naive, _ := signedRunner(t, srv.JS, runnerKey, nil)
	plan, err := naive.Plan(ctx, changes)
	if err != nil || plan[1].Action != runner.ActionSkip {
		t.Fatalf("a runner without a trust list: %+v %v, want it to skip the forged change", plan[1], err)
	}

	r, _ := signedRunner(t, srv.JS, runnerKey, list)
	plan, err = r.Plan(ctx, changes)
	if err != nil {
		t.Fatal(err)
	}
	if s := plan[1]; s.Action != runner.ActionBlocked || s.Untrusted == nil || s.Untrusted.Seq != ack.Sequence ||
		s.Untrusted.Verdict.Kind != trust.KindUnsigned || !strings.Contains(s.Reason, "not trusted") {
		t.Fatalf("plan step = %+v, want BLOCKED as untrusted at seq %d", s, ack.Sequence)
	}
	rep, err := r.Run(ctx, changes)
	var ce *runner.ChangeError
	if !errors.Is(err, runner.ErrManualIntervention) || !errors.As(err, &ce) || ce.Untrusted == nil || ce.ChangeID != "001-change" {
		t.Fatalf("Run = %v, want manual intervention on 001-change", err)
	}
	if got := outcomes(rep); !slices.Equal(got, []runner.Outcome{runner.OutcomeApplied, runner.OutcomeBlocked, runner.OutcomeNotRun}) || counts[1].Load() != 0 {
		t.Fatalf("outcomes %v, applies of 001: %d; want it blocked, not run", got, counts[1].Load())
	}
	g := ce.Guidance("auditflow issue fix -p %s -c %s -r applied|rolled-back")
	for _, want := range []string{"stream sequence " + itoa(ack.Sequence), "unsigned", "nats stream get AUDIT " + itoa(ack.Sequence),
		"auditflow issue fix -p billing -c 001-change", "operator key"} {
		if !strings.Contains(g, want) {
			t.Fatalf("guidance does not say %q:\n%s", want, g)
		}
	}
	t.Logf("error: %v\nguidance:\n%s", err, g)

	// Resolutions the trust list would not accept are refused up front.
	res := runner.Resolution{ChangeID: "001-change", Resolution: events.ResolvedRolledBack, Reason: "forged: never applied"}
	unsigned, _ := signedRunner(t, srv.JS, nil, list)
	runnerSigned, _ := signedRunner(t, srv.JS, runnerKey, list)
	operator, op := signedRunner(t, srv.JS, operatorKey, list)
	for name, try := range map[string]func() error{
		"unsigned":              func() error { _, err := unsigned.Resolve(ctx, res); return err },
		"a runner's key":        func() error { _, err := runnerSigned.Resolve(ctx, res); return err },
		"another name":          func() error { r := res; r.Operator = "mallory"; _, err := operator.Resolve(ctx, r); return err },
		"an operator that runs": func() error { _, err := operator.Run(ctx, changes); return err },
	} {
		if err := try(); !errors.Is(err, runner.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	res.Operator = "alice"
	seq, err := operator.Resolve(ctx, res)
	if err != nil {
		t.Fatalf("Resolve with the operator's key = %v", err)
	}
	last, head, err := op.Last(ctx, "billing", "001-change")
	if err != nil || head.Seq != seq || last.Operator != "alice ("+operatorKey.PublicKey()+")" || last.PrevHash != events.Hash(b) {
		t.Fatalf("resolution: %+v %+v %v; want the key's identity, chained after the forgery", last, head, err)
	}
	rep, err = r.Run(ctx, changes)
	if err != nil || !slices.Equal(outcomes(rep), []runner.Outcome{runner.OutcomeSkipped, runner.OutcomeApplied, runner.OutcomeApplied}) || counts[1].Load() != 1 {
		t.Fatalf("after the resolution: %v %v", outcomes(rep), err)
	}

	// A runner whose key the list does not trust for its pipeline, or
	// that signs nothing, refuses to run rather than write untrusted events.
	other, _ := signedRunner(t, srv.JS, trusttest.NewSigner(t), list)
	for name, r := range map[string]*runner.Runner{"unknown key": other, "unsigned": unsigned} {
		if _, err := r.Run(ctx, changes); !errors.Is(err, runner.ErrInvalidConfig) {
			t.Errorf("%s: Run = %v, want ErrInvalidConfig", name, err)
		}
	}
}
