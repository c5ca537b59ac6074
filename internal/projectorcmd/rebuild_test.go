package projectorcmd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestLostStoreRefusedThenRebuilt: the projector's SQLite file is deleted
// between two runs. The next run refuses the empty store (exit 5, saying
// to use --rebuild) instead of consuming into it without the events its
// consumer has acknowledged; a run with --rebuild replays them and goes on.
func TestLostStoreRefusedThenRebuilt(t *testing.T) {
	srv, err := embedded.Start(embedded.Config{DataDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := srv.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if err := projector.EnsureStreams(ctx, js, projector.Config{}); err != nil {
		t.Fatal(err)
	}
	prod, err := producer.New(ctx, js, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	publishN := func(pipeline string, n int) {
		for i := range n {
			e := events.New(events.ExecutionStarted, pipeline, fmt.Sprintf("change-%d", i))
			e.ExecutionID = "x"
			if _, err := prod.Publish(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "audit.db")
	args := []string{"--nats-url", srv.ClientURL(), "--metrics-addr", "", "--sqlite-path", path}
	// runUntil runs the command until it consumes and the store holds
	// want rows, then stops it.
	runUntil := func(want int, extra ...string) string {
		t.Helper()
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var stderr syncBuffer
		done := make(chan int, 1)
		go func() { done <- projectorcmd.Main(rctx, append(args, extra...), io.Discard, &stderr) }()
		for deadline := time.Now().Add(30 * time.Second); rows(t, path) < want || !strings.Contains(stderr.String(), "projector running"); time.Sleep(20 * time.Millisecond) {
			select {
			case code := <-done:
				t.Fatalf("exit %d before storing %d events\n%s", code, want, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d rows, want %d\n%s", rows(t, path), want, stderr.String())
			}
		}
		cancel()
		if code := <-done; code != projectorcmd.ExitOK {
			t.Fatalf("exit %d after cancellation\n%s", code, stderr.String())
		}
		return stderr.String()
	}

	publishN("billing", 20)
	runUntil(20)
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}

	var stderr syncBuffer
	start := time.Now()
	code := projectorcmd.Main(ctx, args, io.Discard, &stderr)
	if code != projectorcmd.ExitStoreBehind {
		t.Fatalf("exit %d into a lost store, want %d\n%s", code, projectorcmd.ExitStoreBehind, stderr.String())
	}
	t.Logf("refused in %s:\n%s", time.Since(start).Round(time.Millisecond), stderr.String())
	for _, want := range []string{"up to sequence 20", "--rebuild"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the refusal does not say %q", want)
		}
	}
	if n := rows(t, path); n != 0 {
		t.Fatalf("a refused run stored %d rows", n)
	}

	publishN("shipping", 5)
	out := runUntil(25, "--rebuild")
	if !strings.Contains(out, "rebuild: replaying the stream into the store") {
		t.Errorf("the rebuild is not logged:\n%s", out)
	}
	runUntil(25) // the rebuilt store is the consumer's: no flag needed
}

// rows counts the changeLog rows of the SQLite store at path (0 if there
// is no file yet), reading alongside the projector.
func rows(t *testing.T, path string) int {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		return 0
	}
	st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{ReadOnly: true})
	if err != nil {
		return 0 // not created yet
	}
	defer st.Close()
	got, err := st.History(context.Background(), stores.HistoryQuery{Limit: stores.MaxLimit})
	if err != nil {
		return 0
	}
	return len(got)
}
