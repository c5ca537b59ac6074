package natstest_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
)

// TestPartitionHoldsBytesUntilHealed checks what the partition tests rely
// on: while cut, a request goes unanswered but the connection stays up,
// and a message published during the cut arrives after the heal.
func TestPartitionHoldsBytesUntilHealed(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	p := natstest.NewPartition(t, srv.ClientURL())
	nc, err := nats.Connect(p.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := srv.Conn.SubscribeSync("echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("echo", []byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(time.Second); err != nil {
		t.Fatalf("healed link: %v", err)
	}

	p.Cut()
	if err := nc.Publish("echo", []byte("during")); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("flush across a cut = %v, want a timeout", err)
	}
	if _, err := sub.NextMsg(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("a message crossed the cut: %v", err)
	}
	if !nc.IsConnected() {
		t.Fatal("the client noticed the cut as a disconnect")
	}

	p.Heal()
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil || string(m.Data) != "during" {
		t.Fatalf("after the heal: %v %v, want the held message", m, err)
	}
}
