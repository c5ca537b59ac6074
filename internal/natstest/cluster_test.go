package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natstest"
)

// TestClusterKillRestartShutdown checks what the cluster tests rely on: a
// killed leader is replaced only after an election timeout (a crash, not a
// hand-over), a restarted node rejoins with its data, and a graceful
// shutdown hands leadership over at once.
func TestClusterKillRestartShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a cluster node; takes 5-12 s")
	}
	t0 := time.Now()
	c := natstest.StartCluster(t, 3)
	started := time.Since(t0)
	_, js := c.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	leader := c.WaitStreamLeader("S", 10*time.Second)
	if _, err := js.Publish(ctx, "s.a", []byte("before")); err != nil {
		t.Fatal(err)
	}

	killed := time.Now()
	c.Kill(leader)
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(actx, "s.a", []byte("during"))
		cancel()
		if err == nil {
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("no publish succeeded within 30s of the kill: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stall := time.Since(killed)
	if stall < time.Second {
		t.Errorf("publishing resumed %s after the kill: the killed leader handed over instead of crashing", stall)
	}
	if l := c.StreamLeader("S"); l < 0 || l == leader {
		t.Fatalf("stream leader after the kill: %d (killed %d)", l, leader)
	}

	c.Restart(leader)
	deadline := time.Now().Add(20 * time.Second)
	for !c.Server(leader).JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, "S") {
		if time.Now().After(deadline) {
			t.Fatalf("restarted node %d did not catch up", leader)
		}
		time.Sleep(20 * time.Millisecond)
	}

	next := c.WaitStreamLeader("S", 30*time.Second)
	down := time.Now()
	c.Shutdown(next)
	handover := c.WaitStreamLeader("S", 30*time.Second) // an election on a loaded 2-core machine took over 10 s once
	took := time.Since(down)
	s, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}
	t.Logf("started in %s; killed leader node %d: publishing resumed after %s; restarted; graceful shutdown of node %d returned after %s with node %d leading",
		started.Round(time.Millisecond), leader, stall.Round(10*time.Millisecond), next, took.Round(time.Millisecond), handover)
}
