package natsperm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/natsperm"
)

func TestParse(t *testing.T) {
	for text, want := range map[string]natsperm.Error{
		`Permissions Violation for Publish to "$JS.API.STREAM.INFO.AUDIT"`:                {Op: "publish", Subject: "$JS.API.STREAM.INFO.AUDIT"},
		`Permissions Violation for Subscription to "_INBOX.abc.*"`:                        {Op: "subscribe", Subject: "_INBOX.abc.*"},
		`Permissions Violation for Subscription to "a.b" using queue "q"`:                 {Op: "subscribe", Subject: "a.b"},
		`Permissions Violation for Publish with Reply of "_INBOX.x"`:                      {Op: "publish", Subject: "_INBOX.x"},
		`Permissions Violation for Publish to "audit.exec.billing.c1" on connection [12]`: {Op: "publish", Subject: "audit.exec.billing.c1"},
	} {
		pe, ok := natsperm.Parse(fmt.Errorf("%w: %s", nats.ErrPermissionViolation, text))
		if !ok || pe.Op != want.Op || pe.Subject != want.Subject || !errors.Is(pe, nats.ErrPermissionViolation) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", text, pe, ok, want)
		}
	}
	if _, ok := natsperm.Parse(nats.ErrTimeout); ok {
		t.Error("a timeout parsed as a violation")
	}
}

// TestDo: a denied request ends as soon as the server reports it, with the
// subject; a violation that was already there when the request started is
// not taken for the request's.
func TestDo(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true,
		Users: []*server.User{{Username: "u", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"denied.>"}},
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
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(s.Addr().(*net.TCPAddr).Port), nats.UserInfo("u", "pw"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	request := func(subject string) func(context.Context) (*nats.Msg, error) {
		return func(ctx context.Context) (*nats.Msg, error) { return nc.RequestWithContext(ctx, subject, nil) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = natsperm.Do(ctx, nc, natsperm.Subjects("denied.a"), request("denied.a"))
	var pe *natsperm.Error
	if !errors.As(err, &pe) || pe.Subject != "denied.a" {
		t.Fatalf("denied request = %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("reported after %s", took)
	}
	// The violation stays the connection's last error; a later request
	// that fails for another reason (no responders) is not blamed on it.
	_, err = natsperm.Do(ctx, nc, nil, request("allowed.nobody"))
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request with a stale violation = %v, want no responders", err)
	}
}
