package producer_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// TestNewWaitsForTheServer starts a producer while its server is down (a
// restart, or a cluster without a leader): New retries until the server is
// back, within Config.RetryFor, instead of failing at the first timeout.
func TestNewWaitsForTheServer(t *testing.T) {
	dir := t.TempDir()
	srv, err := embedded.Start(embedded.Config{DataDir: dir, Port: -1, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Addr().(*net.TCPAddr).Port
	_, js := natstest.ConnectURL(t, srv.ClientURL())
	srv.Close()

	restarted := make(chan *embedded.Server, 1)
	go func() {
		time.Sleep(time.Second)
		s, err := embedded.Start(embedded.Config{DataDir: dir, Port: port, Logger: natstest.Logger(t)})
		if err != nil {
			t.Error(err)
		}
		restarted <- s
	}()
	start := time.Now()
	_, err = producer.New(context.Background(), js, producer.Config{CreateStream: true, RetryFor: 20 * time.Second, AttemptTimeout: time.Second, Logger: natstest.Logger(t)})
	if s := <-restarted; s != nil {
		t.Cleanup(s.Close)
	}
	if err != nil {
		t.Fatalf("New across a server restart: %v (after %s)", err, time.Since(start))
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("New returned after %s, before the server was back", took)
	}

	// A cancelled caller stops the retries at once.
	srv2 := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := producer.New(ctx, srv2.JS, producer.Config{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("New with a cancelled context = %v, want context.Canceled", err)
	}
}

// TestNewDoesNotRetryPermissionViolations: the server reports a missing
// permission asynchronously while the request times out; New must say so
// after the first timeout, not retry for its whole budget.
func TestNewDoesNotRetryPermissionViolations(t *testing.T) {
	s, err := server.NewServer(&server.Options{
		JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoSigs: true,
		Users: []*server.User{{Username: "reader", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"$JS.API.>"}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	_, js := natstest.ConnectURL(t, "nats://127.0.0.1:"+strconv.Itoa(s.Addr().(*net.TCPAddr).Port), nats.UserInfo("reader", "pw"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // the default handler prints to stderr
	start := time.Now()
	_, err = producer.New(context.Background(), js, producer.Config{RetryFor: 30 * time.Second, AttemptTimeout: time.Second})
	if !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("New without permission for the JetStream API = %v, want a permissions violation", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("New took %s to report a permissions violation", took)
	}
	t.Logf("New: %v", err)
}
