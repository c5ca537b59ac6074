package natsconn_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/natstest"
)

// TestInboxRule: the inbox prefix is the flag's, else _INBOX.<user> of
// the URL or the context, else _INBOX.<role>, else nats.go's _INBOX; a
// user name that cannot be written in a subject is passed over, and a
// flag that is not a subject prefix is a usage error.
func TestInboxRule(t *testing.T) {
	cfgHome := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfgHome)
	dir := filepath.Join(cfgHome, "nats", "context")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"ops":      `{"url": "nats://h:4222", "user": "ops", "password": "pw"}`,
		"prefixed": `{"url": "nats://h:4222", "user": "ops", "password": "pw", "inbox_prefix": "_INBOX.team-a"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		cfg  natsconn.Config
		want string
	}{
		{"flag wins", natsconn.Config{URL: "nats://admin:pw@h:4222", InboxPrefix: "_INBOX.custom", Role: natsconn.RoleOperator}, "_INBOX.custom"},
		{"url user", natsconn.Config{URL: "nats://runner-billing:pw@h:4222", Role: natsconn.RunnerRole("billing")}, "_INBOX.runner-billing"},
		{"url user over role", natsconn.Config{URL: "nats://alice:pw@h:4222", Role: natsconn.RoleOperator}, "_INBOX.alice"},
		{"second url's user", natsconn.Config{URL: "nats://h1:4222,nats://bob:pw@h2:4222"}, "_INBOX.bob"},
		{"a token is no user", natsconn.Config{URL: "nats://s3cret-token@h:4222", Role: natsconn.RoleConsole}, "_INBOX.console"},
		{"user with a wildcard", natsconn.Config{URL: "nats://a*b:pw@h:4222", Role: natsconn.RoleAdmin}, "_INBOX.admin"},
		{"dotted user", natsconn.Config{URL: "nats://team.alice:pw@h:4222"}, "_INBOX.team.alice"},
		{"context user", natsconn.Config{URL: nats.DefaultURL, Context: "ops", Role: natsconn.RoleProjector}, "_INBOX.ops"},
		{"context prefix", natsconn.Config{URL: nats.DefaultURL, Context: "prefixed"}, "_INBOX.team-a"},
		{"role", natsconn.Config{URL: "nats://h:4222", Role: natsconn.RunnerRole("a%2Fb")}, "_INBOX.runner-a%2Fb"},
		{"nothing known", natsconn.Config{URL: "nats://h:4222"}, "_INBOX"},
	} {
		got, source, err := c.cfg.Inbox()
		if err != nil || got != c.want {
			t.Errorf("%s: %q (%s), %v; want %q", c.name, got, source, err, c.want)
		}
	}
	for _, bad := range []string{"_INBOX.>", "_INBOX.*.x", "_INBOX.", "_INBOX..x", "with space", ".x"} {
		c := natsconn.Config{URL: "nats://h:4222", InboxPrefix: bad}
		if _, _, err := c.Inbox(); !errors.Is(err, natsconn.ErrInvalidConfig) {
			t.Errorf("--nats-inbox-prefix %q: %v, want ErrInvalidConfig", bad, err)
		}
		if err := c.Validate(); !errors.Is(err, natsconn.ErrInvalidConfig) {
			t.Errorf("Validate with --nats-inbox-prefix %q: %v, want ErrInvalidConfig", bad, err)
		}
	}
}

// TestInboxCarriesEveryReply connects through Connect as a user that may
// subscribe to _INBOX.<user>.> only, and uses every kind of reply inbox
// the commands use — a plain request, JetStream API requests, publish
// acknowledgements (synchronous and asynchronous), a pull fetch, an ordered consumer, a KV get and a KV
// watcher: none is refused. The same user on nats.go's shared _INBOX
// (the flag set to it) is refused at the first request, so the check can
// fail.
func TestInboxCarriesEveryReply(t *testing.T) {
	perms := &server.Permissions{Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.alice.>"}}}
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{{Username: "alice", Password: "pw", Permissions: perms}, {Username: "setup", Password: "pw"}}}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An echo service for plain requests.
	setup, err := nats.Connect("nats://setup:pw@" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close()
	if _, err := setup.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := setup.Flush(); err != nil {
		t.Fatal(err)
	}

	use := func(t *testing.T, c natsconn.Config) error {
		nc, err := natsconn.Connect(c, natstest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			what string
			do   func(ctx context.Context) error
		}{
			{"a plain request", func(ctx context.Context) error {
				_, err := nc.RequestWithContext(ctx, "echo", []byte("x"))
				return err
			}},
			{"a stream create (JetStream API)", func(ctx context.Context) error {
				_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
				return err
			}},
			{"a publish acknowledgement", func(ctx context.Context) error {
				for i := range 3 {
					if _, err := js.Publish(ctx, "s.a", []byte{byte(i)}); err != nil {
						return err
					}
				}
				return nil
			}},
			{"an async publish acknowledgement", func(ctx context.Context) error {
				f, err := js.PublishAsync("s.b", []byte("x"))
				if err != nil {
					return err
				}
				select {
				case <-f.Ok():
					return nil
				case err := <-f.Err():
					return err
				case <-ctx.Done():
					return ctx.Err()
				}
			}},
			{"a pull fetch", func(ctx context.Context) error {
				cons, err := js.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckNonePolicy})
				if err != nil {
					return err
				}
				b, err := cons.Fetch(4, jetstream.FetchMaxWait(5*time.Second))
				if err != nil {
					return err
				}
				n := 0
				for range b.Messages() {
					n++
				}
				if n != 4 {
					return fmt.Errorf("fetched %d of 4", n)
				}
				return b.Error()
			}},
			{"an ordered consumer", func(ctx context.Context) error {
				oc, err := js.OrderedConsumer(ctx, "S", jetstream.OrderedConsumerConfig{})
				if err != nil {
					return err
				}
				_, err = oc.Next(jetstream.FetchMaxWait(5 * time.Second))
				return err
			}},
			{"a KV get", func(ctx context.Context) error {
				kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "B"})
				if err != nil {
					return err
				}
				if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
					return err
				}
				_, err = kv.Get(ctx, "k")
				return err
			}},
			{"a KV watcher", func(ctx context.Context) error {
				kv, err := js.KeyValue(ctx, "B")
				if err != nil {
					return err
				}
				w, err := kv.WatchAll(ctx)
				if err != nil {
					return err
				}
				defer func() { _ = w.Stop() }()
				select {
				case e := <-w.Updates():
					if e == nil || e.Key() != "k" {
						return errors.New("the watcher's first update is not the key")
					}
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}},
		}
		for _, s := range steps {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := natsperm.Do(sctx, nc, nil, func(ctx context.Context) (struct{}, error) { return struct{}{}, s.do(ctx) })
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", s.what, err)
			}
		}
		return nil
	}

	t.Run("own prefix", func(t *testing.T) {
		if err := use(t, natsconn.Config{URL: "nats://alice:pw@" + addr, Role: natsconn.RoleOperator}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("shared _INBOX is refused", func(t *testing.T) {
		err := use(t, natsconn.Config{URL: "nats://alice:pw@" + addr, InboxPrefix: "_INBOX"})
		var pe *natsperm.Error
		if !errors.As(err, &pe) || pe.Op != "subscribe" || !strings.HasPrefix(pe.Subject, "_INBOX.") || strings.HasPrefix(pe.Subject, "_INBOX.alice.") {
			t.Fatalf("got %v, want a refused subscription to a shared inbox", err)
		}
	})
}
