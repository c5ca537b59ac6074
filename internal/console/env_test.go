package console_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/console"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
)

// env is a real deployment in one process: an in-process NATS JetStream
// server, a projector into a SQLite store, runners, and the console
// serving that store on a loopback port.
type env struct {
	t        *testing.T
	nats     *natstest.Server
	store    stores.Store
	proj     *projector.Projector
	locker   *lock.Locker
	url      string
	readKey  string
	statsKey string
}

func start(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, nats: natstest.Start(t), store: storetestenv.Open(t, "sqlite", "console")}
	p, err := projector.New(ctx, e.nats.JS, e.store, projector.Config{CreateStreams: true, StoreName: "sqlite", Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e.proj = p
	pctx, pcancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { defer close(pdone); _ = p.Run(pctx) }()
	t.Cleanup(func() { pcancel(); <-pdone })
	if e.locker, err = lock.New(ctx, e.nats.JS, lock.Config{CreateBucket: true}); err != nil {
		t.Fatal(err)
	}

	var keys []console.Key
	for _, role := range []console.Role{console.RoleRead, console.RoleStats} {
		k, line, err := console.NewKey("test-"+string(role), role)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := console.ParseKeys(strings.NewReader(line))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, parsed...)
		if role == console.RoleRead {
			e.readKey = k
		} else {
			e.statsKey = k
		}
	}
	srv, err := console.New(console.Config{Store: e.store, StoreKind: "sqlite", NC: e.nats.Conn, JS: e.nats.JS, Locks: e.locker,
		Keys: keys, LagEvery: 200 * time.Millisecond, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	sctx, scancel := context.WithCancel(ctx)
	sdone := make(chan error, 1)
	go func() { sdone <- srv.Run(sctx, ln, nil) }()
	t.Cleanup(func() {
		scancel()
		if err := <-sdone; err != nil {
			t.Errorf("console Run: %v", err)
		}
	})
	return e
}

// run runs changes on pipeline with a real runner and waits until the
// projector has stored every event. It returns the run's error.
func (e *env) run(pipeline string, changes ...runner.Change) error {
	e.t.Helper()
	ctx := context.Background()
	prod, err := producer.New(ctx, e.nats.JS, producer.Config{CreateStream: true})
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := runner.New(prod, e.locker, runner.Config{Pipeline: pipeline, RunnerID: "runner-" + pipeline})
	if err != nil {
		e.t.Fatal(err)
	}
	_, runErr := r.Run(ctx, changes)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.proj.WaitCaughtUp(wctx); err != nil {
		e.t.Fatal(err)
	}
	return runErr
}

func ok(context.Context) error { return nil }

func failing(msg string) func(context.Context) error {
	return func(context.Context) error { return errors.New(msg) }
}

// get fetches path with key as bearer token ("" for none).
func (e *env) get(path, key string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.url+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return res.StatusCode, res.Header, bytes.TrimSpace(b)
}

// seed records a small audit: billing with two applied changes and a
// failed one (an open issue), and a second pipeline by another author.
func (e *env) seed() {
	e.t.Helper()
	if err := e.run("billing",
		runner.Change{ID: "0001-create-customers", Order: "1", Author: "alice", TargetSystem: "orders-db", Apply: ok},
		runner.Change{ID: "0002-add-index", Order: "2", Author: "bob", TargetSystem: "orders-db", Apply: ok},
		runner.Change{ID: "0003-backfill", Order: "3", Author: "alice", TargetSystem: "warehouse", Apply: failing("deadlock detected")},
	); !errors.Is(err, runner.ErrChangeFailed) {
		e.t.Fatalf("billing run: %v", err)
	}
	if err := e.run("shipping",
		runner.Change{ID: "0001-carriers", Order: "1", Author: "carol", TargetSystem: "shipping-db", Apply: ok},
	); err != nil {
		e.t.Fatalf("shipping run: %v", err)
	}
}
