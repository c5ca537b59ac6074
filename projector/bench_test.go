package projector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// benchEvents returns n realistic events over 1000 changes.
func benchEvents(n int) []events.Event {
	out := make([]events.Event, n)
	for i := range out {
		typ := events.ExecutionStarted
		if i%2 == 1 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, "billing-service", fmt.Sprintf("%05d-migration", (i/2)%1000))
		e.ExecutionID, e.Author, e.Order = fmt.Sprint("exec-", i/2), "alice@example.com", fmt.Sprintf("%05d", (i/2)%1000)
		e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "billing-db", "deploy-7f9c", "runner-3", 118
		e.Duration = 1780 * time.Millisecond
		e.Metadata = map[string]string{"ticket": "OPS-1234"}
		out[i] = e
	}
	return out
}

// benchServer starts a quiet in-process server and a producer on it.
func benchServer(b *testing.B, cfg embedded.Config) (jetstream.JetStream, *producer.Producer) {
	cfg.Logger = slog.New(slog.DiscardHandler)
	return benchServerOf(b, natstest.StartWith(b, cfg))
}

func benchServerOf(b *testing.B, srv *natstest.Server) (jetstream.JetStream, *producer.Producer) {
	prod, err := producer.New(context.Background(), srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		b.Fatal(err)
	}
	return srv.JS, prod
}

func publishAll(b *testing.B, prod *producer.Producer, evs []events.Event) {
	b.Helper()
	batch := prod.NewBatch()
	for i, e := range evs {
		if err := batch.Add(e); err != nil {
			b.Fatal(err)
		}
		if i%2000 == 1999 || i == len(evs)-1 {
			if _, err := batch.Wait(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkEndToEnd measures the whole pipeline on the embedded default:
// async publish → JetStream (R1, file storage) → projector (2 workers,
// batches of 500) → SQLite (WAL, synchronous=FULL) → ack. Publishing and
// projecting run at the same time; the clock stops when the projector has
// acknowledged the last event. Run with -benchtime=100000x. sync=always
// fsyncs every stream write (the embedded runner's default).
func BenchmarkEndToEnd(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			js, prod := benchServer(b, embedded.Config{SyncAlways: sync})
			ctx := context.Background()
			st := openSQLite(b)
			evs := benchEvents(b.N)
			b.ResetTimer()
			p, err := projector.New(ctx, js, st, projector.Config{CreateStreams: true, StoreName: "sqlite"})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error)
			go func() { done <- p.Run(rctx) }()
			publishAll(b, prod, evs)
			if err := p.WaitCaughtUp(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			cancel()
			<-done
			if got := p.Stats().Applied; got != uint64(b.N) {
				b.Fatalf("applied %d, want %d", got, b.N)
			}
		})
	}
}

const childEnv = "AUDITFLOW_BENCH_PROJECTOR_CHILD"

// BenchmarkProjectorMemory measures a projector process alone: the parent
// fills a stream with a 100k-event backlog (server in the parent), then
// starts a child process — this test binary — that projects the backlog
// into SQLite and reports its own peak RSS (VmHWM) and peak Go heap. Run
// with -benchtime=1x.
func BenchmarkProjectorMemory(b *testing.B) {
	const backlog = 100_000
	srv := natstest.StartWith(b, embedded.Config{Port: -1, Logger: slog.New(slog.DiscardHandler)})
	_, prod := benchServerOf(b, srv)
	publishAll(b, prod, benchEvents(backlog))
	var rss, heap, rate float64
	for b.Loop() {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProjectorChild$", "-test.v")
		cmd.Env = append(os.Environ(), childEnv+"=1", "AUDITFLOW_BENCH_NATS="+srv.ClientURL(),
			"AUDITFLOW_BENCH_DB="+filepath.Join(b.TempDir(), "audit.db"), fmt.Sprint("AUDITFLOW_BENCH_N=", backlog))
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("child: %v\n%s", err, out)
		}
		var r childResult
		for line := range strings.Lines(string(out)) {
			if s, ok := strings.CutPrefix(strings.TrimSpace(line), "RESULT "); ok {
				if err := json.Unmarshal([]byte(s), &r); err != nil {
					b.Fatal(err)
				}
			}
		}
		if r.Applied != backlog {
			b.Fatalf("child applied %d of %d\n%s", r.Applied, backlog, out)
		}
		rss, heap, rate = float64(r.PeakRSSKB)/1024, float64(r.PeakHeapBytes)/(1<<20), float64(backlog)/r.Seconds
	}
	b.ReportMetric(rss, "MB-peak-RSS")
	b.ReportMetric(heap, "MB-peak-heap")
	b.ReportMetric(rate, "events/s")
}

type childResult struct {
	Applied       uint64
	PeakRSSKB     int64
	PeakHeapBytes uint64
	Seconds       float64
}

// TestProjectorChild is the child process of BenchmarkProjectorMemory; it
// does nothing in a normal test run.
func TestProjectorChild(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		t.Skip("child process of BenchmarkProjectorMemory")
	}
	n, _ := strconv.Atoi(os.Getenv("AUDITFLOW_BENCH_N"))
	nc, err := nats.Connect(os.Getenv("AUDITFLOW_BENCH_NATS"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, os.Getenv("AUDITFLOW_BENCH_DB"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var peakHeap atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	p, err := projector.New(ctx, js, st, projector.Config{CreateStreams: true, StoreName: "sqlite"})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- p.Run(rctx) }()
	for p.Stats().Applied < uint64(n) {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	close(stopSampling)
	<-sampled
	r := childResult{Applied: p.Stats().Applied, PeakRSSKB: proctest.PeakRSSKB(), PeakHeapBytes: peakHeap.Load(), Seconds: elapsed.Seconds()}
	b, _ := json.Marshal(r)
	fmt.Println("RESULT " + string(b))
}

// BenchmarkReplay measures a rebuild of a SQLite store from a stream of
// b.N events (published before the clock starts). Run with
// -benchtime=100000x.
func BenchmarkReplay(b *testing.B) {
	js, prod := benchServer(b, embedded.Config{})
	ctx := context.Background()
	publishAll(b, prod, benchEvents(b.N))
	st := openSQLite(b)
	b.ResetTimer()
	prog, err := projector.Replay(ctx, js, st, projector.ReplayConfig{})
	if err != nil || prog.Applied != uint64(b.N) {
		b.Fatalf("replay: %+v, %v", prog, err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
