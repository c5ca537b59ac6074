//go:build unix

package projector_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

const killedChildEnv = "AUDITFLOW_TEST_KILLED_CHILD"

// TestCheckpointAfterKill9 is the failure the contiguous checkpoint fixes,
// with a real process: a projector with four workers writes into a SQLite
// file while one change's writes fail (its worker stalls and its share is
// handed back, again and again), and is killed with SIGKILL mid-stream.
// In the file it leaves, every event at or below the checkpoint must be
// stored, and the checkpoint must be below every event that is not. (The
// old checkpoint, the highest sequence any batch held, read far above
// unstored events.) Then a new projector on the file finishes the job.
func TestCheckpointAfterKill9(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	const changes = 3000
	publish(t, prod, "billing", changes)
	const total = 2 * changes
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.db")

	var out proctest.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledChild$", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s", killedChildEnv, srv.ClientURL(), path))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitOnce sync.Once
	wait := func() { waitOnce.Do(func() { _ = cmd.Wait() }) }
	t.Cleanup(func() { _ = cmd.Process.Kill(); wait() })
	waitFor(t, "the child to store half the stream", 60*time.Second, func() bool {
		if !proctest.Running(cmd.Process.Pid) {
			t.Fatalf("the child exited\n%s", out.String())
		}
		return rowsIn(t, path) >= total/2
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait()

	st := openFile(t, path)
	stored := storedSeqs(t, st)
	cp := checkpoint(t, st, "projector-sqlite")
	firstMissing := checkContiguous(t, cp, total, stored)
	cons, err := srv.JS.Consumer(ctx, producer.DefaultStreamName, "projector-sqlite")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after kill -9: %d of %d events stored, highest %d (the old checkpoint); first unstored %d; checkpoint %d; consumer ack floor %d",
		len(stored), total, stored[len(stored)-1], firstMissing, cp, info.AckFloor.Stream)
	if firstMissing == 0 || stored[len(stored)-1] <= firstMissing {
		t.Fatalf("no unstored event below a stored one: the test shows nothing")
	}

	start := time.Now()
	p, _ := run(t, srv.JS, st, projector.Config{Workers: 4, BatchSize: 100})
	waitCaughtUp(t, p)
	checkProjection(t, st, "billing", changes)
	waitFor(t, "the checkpoint to reach the end of the stream", 5*time.Second, func() bool {
		return checkpoint(t, st, "projector-sqlite") == total
	})
	t.Logf("a new projector stored the rest in %s", time.Since(start).Round(time.Millisecond))
}

// TestKilledChild is the projector process TestCheckpointAfterKill9 runs
// and kills: four workers into a real SQLite file, with the writes of one
// change failing.
func TestKilledChild(t *testing.T) {
	spec := os.Getenv(killedChildEnv)
	if spec == "" {
		t.Skip("run by TestCheckpointAfterKill9")
	}
	var url, path string
	if _, err := fmt.Sscan(spec, &url, &path); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	failing := &outageStore{Store: st, pipeline: "billing", change: "0003-change"}
	failing.failing.Store(true)
	p, err := projector.New(ctx, js, failing, projector.Config{CreateStreams: true, StoreName: "sqlite", Workers: 4, BatchSize: 100,
		RetryMax: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Run(ctx) // until killed
}

// rowsIn counts the rows of the SQLite file at path, read alongside its
// writer (0 before it exists).
func rowsIn(t testing.TB, path string) int {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		return 0
	}
	st, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{ReadOnly: true})
	if err != nil {
		return 0
	}
	defer st.Close()
	n, q := 0, stores.HistoryQuery{Limit: stores.MaxLimit}
	for {
		page, err := st.History(context.Background(), q)
		if err != nil || len(page) == 0 {
			return n // no tables yet, or done
		}
		n += len(page)
		q.BeforeSeq = page[len(page)-1].Seq
	}
}
