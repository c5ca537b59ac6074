package storebench

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/storetest"
)

// RawWriter is the baseline Store.Apply is measured against: it writes
// records into a place of its own (namespace is fresh per iteration) as
// fast as the database's client allows. The remote backends give an
// equal-work writer: what Apply writes for Batch{Checkpoint: "bench",
// Through: recs[0].Seq, Records: recs} — the same rows or documents, into
// tables or collections with the same indexes, in the same number of round
// trips — without the guards that make Apply idempotent and
// order-insensitive; apply/raw is then what those guards cost. It is
// called once per namespace with no records before the clock starts:
// create the place then.
type RawWriter func(ctx context.Context, namespace string, recs []stores.Record) error

// BenchConfig shapes Bench. Zero fields take the defaults shown.
type BenchConfig struct {
	Events    int // events per iteration, default 4000
	BatchSize int // projector batch and raw chunk, default 500
	Workers   int // projector workers and raw writers, default 4
}

// Bench measures, in one run and on the same events, three rates:
//
//   - raw-events/s: raw writing the events in chunks of BatchSize from
//     Workers goroutines;
//
//   - apply-events/s: Store.Apply of the same chunks from Workers
//     goroutines;
//
//   - events/s: the whole projector — the events already on an in-process
//     JetStream stream, Workers workers fetching batches of BatchSize,
//     decoding, applying and acknowledging — until the last is stored;
//
//   - replay-events/s: projector.Replay of the same stream into a fresh
//     store (one reader, batches of at least 1000);
//
// and reports projector/raw, the figure the store is judged by, and
// apply/raw, what the store's own write path costs over the raw writer.
func Bench(b *testing.B, newStore storetest.NewStore, raw RawWriter, cfg BenchConfig) {
	if cfg.Events == 0 {
		cfg.Events = 4000
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 500
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	ctx := context.Background()
	run := storetest.RandomID()
	recs := BenchEvents(cfg.Events)
	var chunks [][]stores.Record
	for lo := 0; lo < len(recs); lo += cfg.BatchSize {
		chunks = append(chunks, recs[lo:min(lo+cfg.BatchSize, len(recs))])
	}
	var rawT, applyT, projT, replayT time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ns := func(kind string) string { return fmt.Sprintf("bn%s%d%s", run, i, kind) }

		rawNS := ns("r")
		// Untimed: the raw writer creates its place, as newStore does for
		// the store before its clock starts.
		if err := raw(ctx, rawNS, nil); err != nil {
			b.Fatalf("raw: prepare: %v", err)
		}
		start := time.Now()
		if err := parallel(cfg.Workers, chunks, func(c []stores.Record) error { return raw(ctx, rawNS, c) }); err != nil {
			b.Fatalf("raw: %v", err)
		}
		rawT += time.Since(start)

		st := newStore(b, ns("a"))
		start = time.Now()
		if err := parallel(cfg.Workers, chunks, func(c []stores.Record) error {
			// Through as a projector sets it, so that the checkpoint write
			// is part of what is measured.
			return st.Apply(ctx, stores.Batch{Checkpoint: "bench", Through: c[0].Seq, Records: c})
		}); err != nil {
			b.Fatalf("apply: %v", err)
		}
		applyT += time.Since(start)

		p, r := benchProjector(b, newStore(b, ns("p")), newStore(b, ns("x")), recs, cfg)
		projT += p
		replayT += r
	}
	n := float64(b.N * len(recs))
	rawRate, applyRate, projRate := n/rawT.Seconds(), n/applyT.Seconds(), n/projT.Seconds()
	b.ReportMetric(projRate, "events/s")
	b.ReportMetric(applyRate, "apply-events/s")
	b.ReportMetric(rawRate, "raw-events/s")
	b.ReportMetric(projRate/rawRate, "projector/raw")
	b.ReportMetric(applyRate/rawRate, "apply/raw")
	b.ReportMetric(n/replayT.Seconds(), "replay-events/s")
}

// benchProjector publishes recs (untimed), then times a projector storing
// them all into st, and a replay of them all into fresh.
func benchProjector(b *testing.B, st, fresh stores.Store, recs []stores.Record, cfg BenchConfig) (time.Duration, time.Duration) {
	srv := natstest.StartWith(b, embedded.Config{Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true})
	if err != nil {
		b.Fatal(err)
	}
	batch := prod.NewBatch()
	for _, r := range recs {
		if err := batch.Add(context.Background(), r.Event); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := batch.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	p, err := projector.New(ctx, srv.JS, st, projector.Config{CreateStreams: true, StoreName: "bench", Workers: cfg.Workers, BatchSize: cfg.BatchSize,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	start := time.Now()
	go func() { done <- p.Run(rctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Minute)
	defer wcancel()
	if err := p.WaitCaughtUp(wctx); err != nil {
		b.Fatalf("projector: %v (stats %+v)", err, p.Stats())
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	if got := p.Stats().Applied; got != uint64(len(recs)) {
		b.Fatalf("projector applied %d of %d", got, len(recs))
	}
	start = time.Now()
	prog, err := projector.Replay(ctx, srv.JS, fresh, projector.ReplayConfig{BatchSize: max(cfg.BatchSize, 1000)})
	if err != nil || prog.Applied != uint64(len(recs)) {
		b.Fatalf("replay: %+v, %v", prog, err)
	}
	return elapsed, time.Since(start)
}

func parallel(workers int, chunks [][]stores.Record, fn func([]stores.Record) error) error {
	return stores.Parallel(context.Background(), workers, len(chunks), func(_ context.Context, i int) error { return fn(chunks[i]) })
}

// BenchEvents is a stream as runners produce it: changes of seven services
// started and then finished, one in five failing first and retried.
// Sequences are 1..n.
func BenchEvents(n int) []stores.Record {
	out := make([]stores.Record, 0, n)
	base := time.Now().UTC()
	for c := 0; len(out) < n; c++ {
		change := fmt.Sprintf("%05d-change", c)
		steps := []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}
		if c%5 == 0 {
			steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded}
		}
		for _, typ := range steps {
			if len(out) == n {
				break
			}
			e := events.New(typ, fmt.Sprintf("service-%d", c%7), change)
			e.OccurredAt = base.Add(time.Duration(len(out)) * time.Millisecond)
			e.ExecutionID = fmt.Sprintf("exec-%d", c)
			e.Author, e.Order, e.TargetSystem = "alice@example.com", fmt.Sprintf("%05d", c), "orders-db"
			e.Host, e.RunnerID, e.LockToken = "deploy-7f9c", "runner-1", 118
			e.Duration = 1500 * time.Millisecond
			e.Metadata = map[string]string{"ticket": "OPS-1234"}
			if typ == events.ExecutionFailed {
				e.ErrorMessage = "duplicate key value violates unique constraint"
				e.ErrorTrace = "at migrate()\nat run()\n"
			}
			out = append(out, stores.Record{Seq: uint64(len(out) + 1), Event: e})
		}
	}
	return out
}

// ReplayBenchConfig shapes BenchReplay. Zero fields take the defaults shown.
type ReplayBenchConfig struct {
	Events    int // events on the stream, default 4000
	BatchSize int // replay batch and bulk-insert chunk, default 1000
	Writers   int // writers of the parallel replay, default 4
}

// BenchReplay measures projector.Replay against ceilings measured in the
// same run on the same events (published once, untimed), each iteration
// into fresh stores:
//
//   - read-events/s: the stream read alone (projector.Scan: an ephemeral
//     consumer, as replay reads), nothing decoded or stored;
//   - insert-events/s: the same events, already decoded (with their
//     hashes, as replay stores them), stored in bulk
//     with Store.Apply in chunks of BatchSize from one writer (BeginBulk
//     first where the store has it, as replay does into an empty store);
//   - replay-events/s: Replay with one writer;
//   - replayN-events/s: Replay with Writers writers;
//   - insertN/insert1: the bulk insert from Writers goroutines, each with
//     its share of the changes, over one — what the store (and its server)
//     gives concurrent writers at all, the ceiling of replayN/replay1;
//
// and reports replay/ceiling — replay with one writer over the slower of
// read and insert, the most a replay that reads while it writes could do
// (goal ≥ 0.8) — replayN/replay1, what the writers buy, and
// replayN-events/write, how full the parallel replay's store writes were.
func BenchReplay(b *testing.B, newStore storetest.NewStore, cfg ReplayBenchConfig) {
	if cfg.Events == 0 {
		cfg.Events = 4000
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 1000
	}
	if cfg.Writers == 0 {
		cfg.Writers = 4
	}
	ctx := context.Background()
	run := storetest.RandomID()
	srv, sc, recs := published(b, cfg.Events)
	// What the insert writes is what replay stores: the events as read
	// back and decoded, with their hashes.
	stored := make([]stores.Record, 0, len(recs))
	if err := projector.Scan(ctx, srv.JS, projector.ScanConfig{Stream: sc.Name, Subjects: []string{sc.SubjectPrefix + ".>"},
		ToSeq: uint64(len(recs))}, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			e, err := events.Decode(m.Data)
			if err != nil {
				return err
			}
			stored = append(stored, stores.Record{Seq: m.Seq, Hash: events.Hash(m.Data), Event: e})
		}
		return nil
	}); err != nil || len(stored) != len(recs) {
		b.Fatalf("read back %d of %d: %v", len(stored), len(recs), err)
	}
	recs = stored
	var readT, insertT, insertNT, replayT, replayNT time.Duration
	writesN := 0 // store writes of the parallel replays
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ns := func(kind string) string { return fmt.Sprintf("br%s%d%s", run, i, kind) }

		start := time.Now()
		read := 0
		if err := projector.Scan(ctx, srv.JS, projector.ScanConfig{Stream: sc.Name, Subjects: []string{sc.SubjectPrefix + ".>"},
			ToSeq: uint64(len(recs)), BatchSize: cfg.BatchSize}, func(msgs []projector.StreamMsg) error {
			read += len(msgs)
			return nil
		}); err != nil || read != len(recs) {
			b.Fatalf("read %d of %d: %v", read, len(recs), err)
		}
		readT += time.Since(start)

		st := newStore(b, ns("i"))
		start = time.Now()
		if err := bulkInsert(ctx, st, recs, cfg.BatchSize); err != nil {
			b.Fatalf("insert: %v", err)
		}
		insertT += time.Since(start)

		st = newStore(b, ns("n"))
		start = time.Now()
		if err := parallelInsert(ctx, st, recs, cfg.BatchSize, cfg.Writers); err != nil {
			b.Fatalf("insert with %d writers: %v", cfg.Writers, err)
		}
		insertNT += time.Since(start)

		for _, w := range []int{1, cfg.Writers} {
			st := newStore(b, ns(fmt.Sprintf("w%d", w)))
			start = time.Now()
			writes := 0
			prog, err := projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{Stream: sc, BatchSize: cfg.BatchSize, Writers: w,
				Progress: func(projector.ReplayProgress) { writes++ }})
			if err != nil || prog.Applied != uint64(len(recs)) {
				b.Fatalf("replay with %d writers: %+v, %v", w, prog, err)
			}
			if w == 1 {
				replayT += time.Since(start)
			} else {
				replayNT += time.Since(start)
				writesN += writes
			}
		}
	}
	n := float64(b.N * len(recs))
	readRate, insertRate := n/readT.Seconds(), n/insertT.Seconds()
	replayRate, replayNRate := n/replayT.Seconds(), n/replayNT.Seconds()
	b.ReportMetric(readRate, "read-events/s")
	b.ReportMetric(insertRate, "insert-events/s")
	b.ReportMetric(replayRate, "replay-events/s")
	b.ReportMetric(replayNRate, "replayN-events/s")
	b.ReportMetric(replayRate/min(readRate, insertRate), "replay/ceiling")
	b.ReportMetric(replayNRate/replayRate, "replayN/replay1")
	b.ReportMetric(n/float64(writesN), "replayN-events/write")
	b.ReportMetric(insertT.Seconds()/insertNT.Seconds(), "insertN/insert1")
}

// parallelInsert stores recs from writers goroutines, each with the
// events of its share of the changes, in chunks, no checkpoint.
func parallelInsert(ctx context.Context, st stores.Store, recs []stores.Record, chunk, writers int) error {
	shares := make([][]stores.Record, writers)
	owner := map[string]int{}
	for _, r := range recs {
		k := r.Pipeline + "\x00" + r.ChangeID
		w, ok := owner[k]
		if !ok {
			w = len(owner) % writers
			owner[k] = w
		}
		shares[w] = append(shares[w], r)
	}
	return stores.Parallel(ctx, writers, writers, func(ctx context.Context, w int) error {
		for c := range slices.Chunk(shares[w], chunk) {
			if err := st.Apply(ctx, stores.Batch{Checkpoint: "replay", Records: c}); err != nil {
				return err
			}
		}
		return nil
	})
}

// bulkInsert stores recs in chunks from one writer, as a replay into an
// empty store does, with the store's bulk path if it has one.
func bulkInsert(ctx context.Context, st stores.Store, recs []stores.Record, chunk int) (err error) {
	if bl, ok := st.(stores.BulkLoader); ok {
		if err := bl.BeginBulk(ctx); err != nil {
			return err
		}
		defer func() {
			if e := bl.EndBulk(ctx); err == nil {
				err = e
			}
		}()
	}
	for lo := 0; lo < len(recs); lo += chunk {
		c := recs[lo:min(lo+chunk, len(recs))]
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "replay", Through: c[len(c)-1].Seq, Records: c}); err != nil {
			return err
		}
	}
	return nil
}

// published starts a quiet in-process server and publishes n BenchEvents
// on a new audit stream (the default configuration, returned), each
// acknowledged.
func published(tb testing.TB, n int) (*natstest.Server, producer.StreamConfig, []stores.Record) {
	tb.Helper()
	ctx := context.Background()
	srv := natstest.StartWith(tb, embedded.Config{Logger: slog.New(slog.DiscardHandler)})
	sc := producer.StreamConfig{}
	if err := sc.Validate(); err != nil {
		tb.Fatal(err)
	}
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true, Stream: sc})
	if err != nil {
		tb.Fatal(err)
	}
	recs := BenchEvents(n)
	pub := prod.NewBatch()
	for i, r := range recs {
		if err := pub.Add(context.Background(), r.Event); err != nil {
			tb.Fatal(err)
		}
		if i%2000 == 1999 || i == len(recs)-1 {
			if _, err := pub.Wait(ctx); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return srv, sc, recs
}
