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

const crashChildEnv = "AUDITFLOW_TEST_CRASH_CHILD"

// firstWrite is the real store, noting when its first write succeeded.
type firstWrite struct {
	stores.Store
	once sync.Once
	at   chan time.Time
}

func (f *firstWrite) Apply(ctx context.Context, b stores.Batch) error {
	err := f.Store.Apply(ctx, b)
	if err == nil {
		f.once.Do(func() { f.at <- time.Now() })
	}
	return err
}

// TestRestartAfterCrashAtMaxAckPending kills (SIGKILL) a projector
// process — this test binary re-executed as one, into a store that never
// completes a write — once it holds MaxAckPending unacknowledged
// messages, which keep the server from delivering anything else until they
// come back; then it starts a new projector on the same consumer and
// measures how long after the kill its first store write lands.
func TestRestartAfterCrashAtMaxAckPending(t *testing.T) {
	for _, c := range []struct {
		name                   string
		workers, batch, maxAck int
	}{
		// 4000 pending: shares queued, in writes, and handed back.
		{"defaults", projector.DefaultWorkers, projector.DefaultBatchSize, 4 * projector.DefaultWorkers * projector.DefaultBatchSize},
		// Every pending message in the one write, heartbeated by the dead
		// process: the worst case, bounded by AckWait.
		{"all in one write", 1, 1000, 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := natstest.StartWith(t, embedded.Config{Port: -1})
			prod, err := producer.New(context.Background(), srv.JS, producer.Config{CreateStream: true})
			if err != nil {
				t.Fatal(err)
			}
			const changes = 2500 // 5000 events: more than any window
			publish(t, prod, "billing", changes)

			var out proctest.Buffer
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d %d %d", crashChildEnv,
				srv.ClientURL(), t.TempDir(), c.workers, c.batch, c.maxAck))
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var waitOnce sync.Once
			wait := func() { waitOnce.Do(func() { _ = cmd.Wait() }) }
			t.Cleanup(func() { _ = cmd.Process.Kill(); wait() })

			ctx := context.Background()
			var info *jetstream.ConsumerInfo
			waitFor(t, "the child to hold MaxAckPending messages", 30*time.Second, func() bool {
				cons, err := srv.JS.Consumer(ctx, producer.DefaultStreamName, "projector-sqlite")
				if err == nil {
					info, err = cons.Info(ctx)
				}
				if !proctest.Running(cmd.Process.Pid) {
					t.Fatalf("the child exited\n%s", out.String())
				}
				return err == nil && info.NumAckPending >= c.maxAck
			})
			time.Sleep(1500 * time.Millisecond) // let its heartbeats renew what it holds
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			wait()
			killed := time.Now()

			st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			fw := &firstWrite{Store: st, at: make(chan time.Time, 1)}
			p, _ := run(t, srv.JS, fw, projector.Config{Workers: c.workers, BatchSize: c.batch, MaxAckPending: c.maxAck})
			started := time.Now()
			var first time.Time
			select {
			case first = <-fw.at:
			case <-time.After(30 * time.Second):
				t.Fatal("no store write 30s after the restart")
			}
			t.Logf("killed with %d unacknowledged (MaxAckPending %d); the new projector's first store write came %s after the kill (%s after it started)",
				info.NumAckPending, c.maxAck, first.Sub(killed).Round(time.Millisecond), first.Sub(started).Round(time.Millisecond))
			if d := first.Sub(killed); d > 5*time.Second {
				t.Errorf("first store write %s after the kill, want within 5s", d)
			}
			waitCaughtUp(t, p)
			checkProjection(t, st, "billing", changes)
		})
	}
}

// TestCrashChild is the projector process TestRestartAfterCrashAtMaxAckPending
// runs and kills: its store never completes a write.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashChildEnv)
	if spec == "" {
		t.Skip("run by TestRestartAfterCrashAtMaxAckPending")
	}
	var url, dir string
	var workers, batch, maxAck int
	if _, err := fmt.Sscan(spec, &url, &dir, &workers, &batch, &maxAck); err != nil {
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
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "child.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	stuck := &flakyStore{Store: st, block: make(chan struct{})}
	p, err := projector.New(ctx, js, stuck, projector.Config{CreateStreams: true, StoreName: "sqlite", Workers: workers, BatchSize: batch,
		MaxAckPending: maxAck, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Run(ctx) // until killed
}
