package producer_test

import (
	"context"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// TestSignedPublish: with a Signer every event — published one by one or
// in a batch — carries a signature over its exact bytes, which Last,
// ReadLast and Publish's Head return for the reader to judge; without
// one the header is absent.
func TestSignedPublish(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	kp, _ := nkeys.CreateUser()
	signer, err := trust.NewSigner(kp)
	if err != nil {
		t.Fatal(err)
	}
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(ctx, srv.JS, producer.Config{Signer: signer, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Signer() != signer {
		t.Fatal("Signer() is not the configured signer")
	}
	check := func(what string, e events.Event, h producer.Head) {
		t.Helper()
		_, _, v := list.CheckHeader(h.Signature, trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: h.Seq, Hash: h.Hash})
		if h.Signature == "" || !v.Trusted() {
			t.Fatalf("%s: head %+v: %+v", what, h, v)
		}
	}
	e := started("c1")
	h, err := p.Publish(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	check("Publish", e, h)
	last, lh, err := p.Last(ctx, "billing", "c1")
	if err != nil || lh != h {
		t.Fatalf("Last = %+v %v, want %+v", lh, err, h)
	}
	check("Last", last, lh)
	if _, rh, err := producer.ReadLast(ctx, srv.JS, producer.StreamConfig{}, "billing", "c1"); err != nil || rh != h {
		t.Fatalf("ReadLast = %+v %v, want %+v", rh, err, h)
	}

	b := p.NewBatch()
	be := started("c2")
	if err := b.Add(context.Background(), be); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, bh, err := p.Last(ctx, "billing", "c2"); err != nil {
		t.Fatal(err)
	} else {
		check("Batch", be, bh)
	}

	unsigned, err := producer.New(ctx, srv.JS, producer.Config{Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := unsigned.Publish(ctx, started("c3")); err != nil || h.Signature != "" {
		t.Fatalf("unsigned Publish: %+v %v", h, err)
	}
}
