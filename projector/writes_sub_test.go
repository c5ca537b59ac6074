package projector_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/projector"
)

// TestWriteSubscriptionRefusedIsAnError: a user without the right to
// subscribe to AuditWrites gets an error from NewWriteSubscription (the
// server's permissions violation), not a subscription that never
// receives anything while its owner reports itself live.
func TestWriteSubscriptionRefusedIsAnError(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, Users: []*server.User{
		{Username: "reader", Password: "pw", Permissions: &server.Permissions{
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}}}},
		{Username: "watcher", Password: "pw", Permissions: &server.Permissions{
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "audit.writes.>"}}}},
	}}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer s.Shutdown()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	ctx := context.Background()
	for user, allowed := range map[string]bool{"reader": false, "watcher": true} {
		nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		sub, err := projector.NewWriteSubscription(ctx, nc, "", "sqlite")
		switch {
		case allowed && err != nil:
			t.Errorf("%s: %v", user, err)
		case !allowed && (err == nil || !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "audit.writes.sqlite")):
			t.Errorf("%s: NewWriteSubscription = %v, want a permissions violation naming the subject", user, err)
		}
		if sub != nil {
			_ = sub.Close()
		}
		nc.Close()
	}
}
