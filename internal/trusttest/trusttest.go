// Package trusttest publishes, on a test server, the forgeries that signed
// events must catch — an unsigned event, an unknown key, a valid key over
// altered bytes, a valid signature copied onto another event, a runner key
// signing an operator's decision, a revoked key — beside correctly signed
// history, and the trust list that judges them. The projector, verify and
// operator CLI tests all check the same scenario.
package trusttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// Pipeline is the scenario's pipeline.
const Pipeline = "billing"

// Keys are the scenario's signers. Runner and Operator are trusted in
// their roles on every pipeline; Revoked is a runner key revoked after its
// first event; Stranger is in no list.
type Keys struct {
	Runner, Operator, Revoked, Stranger *trust.Signer
}

// NewSigner returns a signer for a fresh user key.
func NewSigner(t testing.TB) *trust.Signer {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	s, err := trust.NewSigner(kp)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	seeds.Store(s.PublicKey(), seed)
	return s
}

// seeds keeps NewSigner's seeds by public key, for WriteKey.
var seeds sync.Map

// WriteKey writes the seed of a NewSigner key to a file in dir, as
// `auditflow keys new` would, and returns its path.
func WriteKey(t testing.TB, dir string, s *trust.Signer) string {
	t.Helper()
	seed, ok := seeds.Load(s.PublicKey())
	if !ok {
		t.Fatalf("key %s was not made by NewSigner", s.PublicKey())
	}
	path := filepath.Join(dir, s.PublicKey()[:8]+".nk")
	if err := os.WriteFile(path, append(seed.([]byte), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteList writes list as a trust-list file in dir and returns its path.
func WriteList(t testing.TB, dir string, list *trust.List) string {
	t.Helper()
	b, err := list.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "trust.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := trust.LoadList(path); err != nil {
		t.Fatalf("the written list does not load: %v", err)
	}
	return path
}

// Forgery is one untrusted event of the scenario: the newest event of its
// change.
type Forgery struct {
	ChangeID string
	Seq      uint64
	Type     events.Type
	// Kind is what Check finds (List.Check); Replayed is set for the
	// signature copied from another event, which verify names as such.
	Kind     trust.Kind
	Replayed bool
}

// Scenario is what Publish put on the stream.
type Scenario struct {
	Keys Keys
	// List trusts Runner and Operator, and Revoked up to its first event.
	List *trust.List
	// Trusted names the changes whose events are all trusted.
	Trusted   []string
	Forgeries []Forgery
}

// Publish writes the scenario to the audit stream on js (creating the
// stream if needed): on pipeline Pipeline, one change with correctly
// signed history, then one change per forgery, each a runner-signed
// ExecutionStarted (or Started and Failed) followed by the forged event,
// correctly chained — the forger can compute the unkeyed hash chain, which
// is what signatures are for.
func Publish(t testing.TB, js jetstream.JetStream) *Scenario {
	t.Helper()
	ctx := context.Background()
	if _, err := producer.EnsureStream(ctx, js, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	sc := &Scenario{Keys: Keys{Runner: NewSigner(t), Operator: NewSigner(t), Revoked: NewSigner(t), Stranger: NewSigner(t)}}
	k := sc.Keys
	prod := func(s *trust.Signer) *producer.Producer {
		p, err := producer.New(ctx, js, producer.Config{Signer: s})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	runner, revoked := prod(k.Runner), prod(k.Revoked)
	// publish records e after h with p's key (the trusted path).
	publish := func(p *producer.Producer, e events.Event, h producer.Head) producer.Head {
		t.Helper()
		out, err := p.Publish(ctx, e, producer.After(h))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// raw publishes data on e's subject with the given signature header,
	// the way a forger with publish rights on audit.exec.> would.
	raw := func(e events.Event, data []byte, header string) uint64 {
		t.Helper()
		msg := &nats.Msg{Subject: events.Subject(events.DefaultSubjectPrefix, e.Pipeline, e.ChangeID), Data: data, Header: nats.Header{}}
		if header != "" {
			msg.Header.Set(trust.Header, header)
		}
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	encode := func(e events.Event) []byte {
		t.Helper()
		b, err := events.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ev := func(typ events.Type, change string, prev producer.Head) events.Event {
		e := events.New(typ, Pipeline, change)
		e.ExecutionID, e.RunnerID, e.Host, e.LockToken = "exec-"+change, "runner-1", "deploy-1", 7
		// Placed right after prev, as the producer places it: a forgery
		// in its place, so only its signature is wrong.
		if prev.Seq != 0 {
			e.PrevSeq, e.PrevHash, e.Position = prev.Seq, prev.Hash, prev.Position+1
		}
		switch typ {
		case events.ExecutionFailed:
			e.ErrorMessage = "boom"
		case events.ManuallyResolved:
			e.ExecutionID, e.Resolution, e.Operator, e.Reason = "", events.ResolvedApplied, "forger", "trust me"
		}
		return e
	}
	// forgedSuccess is what the issue saw stored as APPLIED: lock token
	// 1, runner "forger", no expected sequence.
	forgedSuccess := func(change string, prev producer.Head) events.Event {
		e := ev(events.ExecutionSucceeded, change, prev)
		e.RunnerID, e.LockToken = "forger", 1
		return e
	}
	started := func(change string) producer.Head {
		return publish(runner, ev(events.ExecutionStarted, change, producer.Head{}), producer.Head{})
	}
	add := func(change string, seq uint64, typ events.Type, kind trust.Kind) {
		sc.Forgeries = append(sc.Forgeries, Forgery{ChangeID: change, Seq: seq, Type: typ, Kind: kind})
	}

	// Trusted history; its success's header is the one copied below.
	h := started("signed-ok")
	okSuccess := ev(events.ExecutionSucceeded, "signed-ok", h)
	publish(runner, okSuccess, h)
	okHeader := k.Runner.Sign(encode(okSuccess)) // Ed25519 is deterministic: the header it was published with
	sc.Trusted = append(sc.Trusted, "signed-ok")

	h = started("unsigned")
	e := forgedSuccess("unsigned", h)
	add("unsigned", raw(e, encode(e), ""), e.Type, trust.KindUnsigned)

	h = started("unknown-key")
	e = forgedSuccess("unknown-key", h)
	b := encode(e)
	add("unknown-key", raw(e, b, k.Stranger.Sign(b)), e.Type, trust.KindUnknownKey)

	// A valid key's signature over other bytes: the runner signed a
	// failure, and the forger published a success under its header.
	h = started("altered")
	signed := ev(events.ExecutionFailed, "altered", h)
	e = forgedSuccess("altered", h)
	add("altered", raw(e, encode(e), k.Runner.Sign(encode(signed))), e.Type, trust.KindBadSignature)

	h = started("replayed")
	e = forgedSuccess("replayed", h)
	add("replayed", raw(e, encode(e), okHeader), e.Type, trust.KindBadSignature)
	sc.Forgeries[len(sc.Forgeries)-1].Replayed = true

	// A runner key signing an operator's decision.
	h = started("runner-resolves")
	h = publish(runner, ev(events.ExecutionFailed, "runner-resolves", h), h)
	e = ev(events.ManuallyResolved, "runner-resolves", h)
	b = encode(e)
	add("runner-resolves", raw(e, b, k.Runner.Sign(b)), e.Type, trust.KindRole)

	// The second forgery: an unsigned resolution closing a failure.
	h = started("forged-resolution")
	h = publish(runner, ev(events.ExecutionFailed, "forged-resolution", h), h)
	e = ev(events.ManuallyResolved, "forged-resolution", h)
	add("forged-resolution", raw(e, encode(e), ""), e.Type, trust.KindUnsigned)

	// A key revoked after its first event: that one stays trusted.
	h = publish(revoked, ev(events.ExecutionStarted, "revoked", producer.Head{}), producer.Head{})
	revokedAfter := h.Seq
	e = ev(events.ExecutionSucceeded, "revoked", h)
	h = publish(revoked, e, h)
	add("revoked", h.Seq, e.Type, trust.KindRevoked)

	var err error
	sc.List, err = trust.NewList(
		trust.Key{Key: k.Runner.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{trust.AllPipelines}},
		trust.Key{Key: k.Operator.PublicKey(), Name: "alice", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{trust.AllPipelines}},
		trust.Key{Key: k.Revoked.PublicKey(), Name: "old-runner", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{Pipeline},
			RevokedAfterSeq: &revokedAfter},
	)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// PublishChained appends n signed, correctly chained events to the audit
// stream (Chained), as fast as the server takes them. It expects to be the
// stream's only writer: it computes each event's sequence.
func PublishChained(tb testing.TB, js jetstream.JetStream, signer *trust.Signer, pipeline string, changes, n int) {
	tb.Helper()
	ctx := context.Background()
	s, err := producer.EnsureStream(ctx, js, producer.StreamConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	var futures []jetstream.PubAckFuture
	Chained(tb, signer, pipeline, changes, n, info.State.LastSeq, func(seq uint64, m *nats.Msg) {
		f, err := js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(seq-1))
		if err != nil {
			tb.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == 2000 {
			waitAcks(tb, futures)
			futures = futures[:0]
		}
	})
	waitAcks(tb, futures)
}

// Chained hands fn n signed, correctly chained events as the messages
// that would be stored at sequences after+1, after+2, …, spread
// round-robin over changes changes of pipeline (change-000000, …): each
// change's first is its ExecutionStarted, the rest ExecutionSucceeded,
// each naming the one before it on its subject.
func Chained(tb testing.TB, signer *trust.Signer, pipeline string, changes, n int, after uint64, fn func(seq uint64, m *nats.Msg)) {
	tb.Helper()
	type head struct {
		seq      uint64
		hash     string
		position uint64
	}
	heads := make([]head, changes)
	seq := after
	for i := range n {
		c := i % changes
		h := &heads[c]
		typ := events.ExecutionStarted
		if h.seq != 0 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, pipeline, fmt.Sprintf("change-%06d", c))
		e.ExecutionID, e.RunnerID, e.Host, e.LockToken = fmt.Sprintf("exec-%d", i), "runner-1", "host-1", 3
		if h.seq != 0 {
			e.PrevSeq, e.PrevHash, e.Position = h.seq, h.hash, h.position+1
		}
		b, err := events.Encode(e)
		if err != nil {
			tb.Fatal(err)
		}
		seq++
		*h = head{seq: seq, hash: events.Hash(b), position: e.Position}
		m := &nats.Msg{Subject: events.Subject(events.DefaultSubjectPrefix, pipeline, e.ChangeID), Data: b, Header: nats.Header{}}
		m.Header.Set(trust.Header, signer.Sign(b))
		fn(seq, m)
	}
}

func waitAcks(tb testing.TB, fs []jetstream.PubAckFuture) {
	tb.Helper()
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			tb.Fatal(err)
		case <-time.After(30 * time.Second):
			tb.Fatal("no publish ack")
		}
	}
}
