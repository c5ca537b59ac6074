package projector_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/trust"
)

// TestReadyzNamesWhatStopsProgress: whatever stops the projector from
// making progress — its durable consumer deleted or changed, the audit
// stream deleted, its SQLite file deleted — /readyz answers 503 within 5s
// naming the cause. A deleted consumer is recreated from the store's
// checkpoint, a changed one restored, and the events after are stored.
func TestReadyzNamesWhatStopsProgress(t *testing.T) {
	cases := []struct {
		name  string
		do    func(t *testing.T, e *env, path string)
		want  string
		after func(t *testing.T, e *env, p *projector.Projector)
	}{
		{name: "consumer deleted", want: "durable consumer projector-sqlite was deleted",
			do: func(t *testing.T, e *env, _ string) {
				if err := e.srv.JS.DeleteConsumer(context.Background(), "AUDIT", "projector-sqlite"); err != nil {
					t.Fatal(err)
				}
			},
			after: func(t *testing.T, e *env, p *projector.Projector) {
				publish(t, e.prod, "after-recreate", 3)
				waitStored(t, e.store, "after-recreate", "0002-change", 10*time.Second)
				if p.Stats().ConsumerRecreated == 0 {
					t.Fatal("the consumer was not counted as recreated")
				}
			}},
		{name: "consumer filter changed", want: "filter_subject is audit.exec.other.>, want audit.exec.>",
			after: func(t *testing.T, e *env, p *projector.Projector) {
				waitFor(t, "the consumer restored", 5*time.Second, func() bool { return p.Stats().ConsumerRestored > 0 })
				publish(t, e.prod, "after-restore", 3)
				waitStored(t, e.store, "after-restore", "0002-change", 10*time.Second)
			},
			do: func(t *testing.T, e *env, _ string) {
				c, err := e.srv.JS.Consumer(context.Background(), "AUDIT", "projector-sqlite")
				if err != nil {
					t.Fatal(err)
				}
				cfg := c.CachedInfo().Config
				cfg.FilterSubject = "audit.exec.other.>"
				if _, err := e.srv.JS.UpdateConsumer(context.Background(), "AUDIT", cfg); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "stream deleted", want: "stream AUDIT does not exist",
			do: func(t *testing.T, e *env, _ string) {
				if err := e.srv.JS.DeleteStream(context.Background(), "AUDIT"); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "SQLite file deleted", want: "no longer exists",
			do: func(t *testing.T, _ *env, path string) {
				for _, f := range []string{path, path + "-wal", path + "-shm"} {
					_ = os.Remove(f)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := setup(t)
			path := filepath.Join(t.TempDir(), "audit.db")
			st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			e.store = st
			publish(t, e.prod, "before", 3)
			p, _ := run(t, e.srv.JS, st, projector.Config{})
			web := httptest.NewServer(p.Handler(nil))
			t.Cleanup(web.Close)
			waitCaughtUp(t, p)
			if code, body := get(t, web.URL+"/readyz"); code != http.StatusOK {
				t.Fatalf("readyz before: %d %s", code, body)
			}
			c.do(t, e, path)
			start := time.Now()
			var code int
			var body string
			for time.Since(start) < 5*time.Second {
				if code, body = get(t, web.URL+"/readyz"); code == http.StatusServiceUnavailable && strings.Contains(body, c.want) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if code != http.StatusServiceUnavailable || !strings.Contains(body, c.want) {
				t.Fatalf("readyz 5s after: %d %q, want 503 naming %q", code, body, c.want)
			}
			t.Logf("readyz 503 after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(body))
			if c.after != nil {
				c.after(t, e, p)
			}
		})
	}
}

// TestChangedConsumerLosesNothing: events a changed filter skipped are
// stored: the running projector restores its consumer and stores them
// from its checkpoint, which did not move past them meanwhile; a
// projector restarted while the consumer is changed does the same at
// start.
func TestChangedConsumerLosesNothing(t *testing.T) {
	change := func(t *testing.T, e *env) {
		ctx := context.Background()
		c, err := e.srv.JS.Consumer(ctx, "AUDIT", "projector-sqlite")
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.CachedInfo().Config
		cfg.FilterSubject = "audit.exec.other.>"
		if _, err := e.srv.JS.UpdateConsumer(ctx, "AUDIT", cfg); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("while running", func(t *testing.T) {
		e := setup(t)
		publish(t, e.prod, "before", 2)
		p, _ := run(t, e.srv.JS, e.store, projector.Config{})
		waitCaughtUp(t, p)
		change(t, e)
		publish(t, e.prod, "skipped", 5) // perhaps not delivered under the changed filter
		waitFor(t, "the consumer restored", 5*time.Second, func() bool { return p.Stats().ConsumerRestored > 0 })
		// Not WaitCaughtUp: the consumer's ack floor stays below what it
		// skipped until it acknowledges something past them.
		waitStored(t, e.store, "skipped", "0004-change", 10*time.Second)
		checkProjection(t, e.store, "skipped", 5)
		publish(t, e.prod, "after", 2)
		waitCaughtUp(t, p)
		checkProjection(t, e.store, "after", 2)
	})
	t.Run("across a restart", func(t *testing.T) {
		e := setup(t)
		publish(t, e.prod, "before", 2)
		p, stop := run(t, e.srv.JS, e.store, projector.Config{})
		waitCaughtUp(t, p)
		stop()
		change(t, e)
		publish(t, e.prod, "skipped", 5)
		p2, _ := run(t, e.srv.JS, e.store, projector.Config{})
		waitCaughtUp(t, p2)
		checkProjection(t, e.store, "skipped", 5)
		publish(t, e.prod, "after", 2) // delivered by the restored consumer
		waitCaughtUp(t, p2)
		checkProjection(t, e.store, "after", 2)
	})
}

// TestFloodOfNewerEventsDoesNotStallOthers: 10,000 events claiming the
// next schema version, from one pipeline's publisher, are parked (not left
// in the consumer's ack-pending window, which they would fill): a signed
// run of another pipeline published after them is stored within 5s. A
// projector that reads the newer version stores every parked event once
// when it starts.
func TestFloodOfNewerEventsDoesNotStallOthers(t *testing.T) {
	projector.SetHeldTimings(t, 200*time.Millisecond, time.Second)
	e := setup(t)
	ctx := context.Background()
	signer := trusttest.NewSigner(t)
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "shipping-runner", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"shipping"}})
	if err != nil {
		t.Fatal(err)
	}
	const flood = 10_000
	start := time.Now()
	var acks []jetstream.PubAckFuture
	for i := range flood {
		c := fmt.Sprintf("flood-%d", i%50) // 50 changes, 200 events each
		m := edited(t, events.ExecutionStarted, c, newerVersion)
		f, err := e.srv.JS.PublishAsync(subjectOf(c), m)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	t.Logf("published %d newer-version events in %s", flood, time.Since(start).Round(time.Millisecond))
	old, stopOld := run(t, e.srv.JS, e.store, projector.Config{Trust: list})
	signed, err := producer.New(ctx, e.srv.JS, producer.Config{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	started := events.New(events.ExecutionStarted, "shipping", "valid")
	started.ExecutionID = "exec-valid"
	h, err := signed.Publish(ctx, started)
	if err != nil {
		t.Fatal(err)
	}
	succeeded := events.New(events.ExecutionSucceeded, "shipping", "valid")
	succeeded.ExecutionID = started.ExecutionID
	if _, err := signed.Publish(ctx, succeeded, producer.After(h)); err != nil {
		t.Fatal(err)
	}
	for {
		rows, err := e.store.History(ctx, stores.HistoryQuery{Pipeline: "shipping", ChangeID: "valid"})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 2 {
			for _, r := range rows {
				if r.Trust != "" {
					t.Fatalf("the signed run was not believed: %+v", r)
				}
			}
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("the other pipeline's signed run was not stored within 5s of its publish, behind %d newer-version events (parked so far %d)",
				flood, old.Stats().Held)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the signed run of another pipeline was stored %s after its publish, behind %d newer-version events",
		time.Since(start).Round(time.Millisecond), flood)
	waitFor(t, "every newer-version event parked", 30*time.Second, func() bool { return old.Stats().Held == flood })
	waitFor(t, "Ready to count the parked events", 5*time.Second, func() bool {
		err := old.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), fmt.Sprintf("upgrade needed: %d events", flood))
	})
	if n := len(deadLetters(t, e.srv.JS)); n != 0 {
		t.Fatalf("%d dead letters; the flood is within the cap", n)
	}
	stopOld()

	start = time.Now()
	upgraded, _ := run(t, e.srv.JS, e.store, projector.Config{Trust: list, Decode: readNewer})
	if got := upgraded.Stats().Redriven; got != flood {
		t.Fatalf("the upgraded projector re-drove %d parked events at start, want %d", got, flood)
	}
	t.Logf("the upgraded projector stored the %d parked events in %s", flood, time.Since(start).Round(time.Millisecond))
	n := 0
	for i := range 50 {
		rows, err := e.store.History(ctx, stores.HistoryQuery{Pipeline: "billing", ChangeID: fmt.Sprintf("flood-%d", i), Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		n += len(rows)
	}
	if n != flood {
		t.Fatalf("%d rows for the flood, want %d: each parked event stored once", n, flood)
	}
	waitFor(t, "Ready once nothing is parked", 5*time.Second, func() bool { return upgraded.Ready(ctx) == nil })
}

// TestHeldCapDeadLetters: past HeldCap, newer-version events are
// dead-lettered with ErrHeldCapReached's reason, not parked.
func TestHeldCapDeadLetters(t *testing.T) {
	e := setup(t)
	for i := range 5 {
		c := fmt.Sprintf("newer-%d", i)
		rawPublish(t, e.srv.JS, subjectOf(c), edited(t, events.ExecutionStarted, c, newerVersion))
	}
	p, _ := run(t, e.srv.JS, e.store, projector.Config{HeldCap: 3})
	waitFor(t, "3 parked and 2 dead-lettered", 10*time.Second, func() bool {
		return p.Stats().Held == 3 && len(deadLetters(t, e.srv.JS)) == 2
	})
	for _, dl := range deadLetters(t, e.srv.JS) {
		if r := dl.Header.Get(projector.HeaderReason); !strings.Contains(r, "held stream is full") {
			t.Fatalf("dead letter reason %q", r)
		}
	}
}
