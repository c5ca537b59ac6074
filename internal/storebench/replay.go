package storebench

import (
	"context"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/storetest"
)

// ReplayConfig shapes ParallelReplay. Zero fields take the defaults shown.
type ReplayConfig struct {
	Events    int // events on the stream, default 1200
	BatchSize int // replay batch size, default 100
	Writers   int // writers of the parallel replays, default 4
}

// ParallelReplay checks projector.Replay with several writers against a
// store: the store it rebuilds holds exactly the rows and issues a
// single-writer replay's does; a parallel replay cancelled midway never
// leaves its checkpoint above an event it has not stored, and, resumed,
// ends identical too.
func ParallelReplay(t *testing.T, newStore storetest.NewStore, cfg ReplayConfig) {
	if cfg.Events == 0 {
		cfg.Events = 1200
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.Writers == 0 {
		cfg.Writers = 4
	}
	ctx := context.Background()
	srv, _, _ := published(t, cfg.Events)
	run := "pr" + storetest.RandomID()
	replay := func(ctx context.Context, st stores.Store, writers int, progress func(projector.ReplayProgress)) (projector.ReplayProgress, error) {
		return projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{BatchSize: cfg.BatchSize, Writers: writers,
			Claim: []string{"projector-x"}, Progress: progress, Logger: natstest.Logger(t)})
	}

	single := newStore(t, run+"s")
	if prog, err := replay(ctx, single, 1, nil); err != nil || prog.Applied != uint64(cfg.Events) {
		t.Fatalf("single-writer replay: %+v, %v", prog, err)
	}
	parallel := newStore(t, run+"p")
	if prog, err := replay(ctx, parallel, cfg.Writers, nil); err != nil || prog.Applied != uint64(cfg.Events) {
		t.Fatalf("replay with %d writers: %+v, %v", cfg.Writers, prog, err)
	}
	storetest.SameContent(t, single, parallel)
	for _, name := range []string{"replay", "projector-x"} {
		if cp, err := parallel.Checkpoint(ctx, name); err != nil || cp != uint64(cfg.Events) {
			t.Fatalf("checkpoint %q after the parallel replay: %d, %v; want %d", name, cp, err, cfg.Events)
		}
	}

	// Cancelled midway, with the other writers' batches in flight.
	interrupted := newStore(t, run+"i")
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	prog, err := replay(ictx, interrupted, cfg.Writers, func(p projector.ReplayProgress) {
		if p.Applied >= uint64(cfg.Events/2) {
			cancel()
		}
	})
	if err == nil {
		t.Fatalf("cancelled replay returned no error: %+v", prog)
	}
	// A write cancelled on the client may still land on a remote server
	// after Replay returned: wait until the checkpoint stops moving.
	var cp uint64
	for last := uint64(1<<63 - 1); ; time.Sleep(300 * time.Millisecond) {
		if cp, err = interrupted.Checkpoint(ctx, "replay"); err != nil {
			t.Fatal(err)
		}
		if cp == last {
			break
		}
		last = cp
	}
	if cp >= uint64(cfg.Events) {
		t.Fatalf("cancelled replay claimed the whole stream (checkpoint %d): cancel it earlier", cp)
	}
	rows, _ := storetest.AllContent(t, interrupted)
	stored := make(map[uint64]bool, len(rows))
	for _, r := range rows {
		stored[r.Seq] = true
	}
	for seq := uint64(1); seq <= cp; seq++ {
		if !stored[seq] {
			t.Fatalf("checkpoint %d covers seq %d, which is not stored (%d rows stored)", cp, seq, len(rows))
		}
	}
	if c, _ := interrupted.Checkpoint(ctx, "projector-x"); c != 0 {
		t.Fatalf("a claim was raised to %d before the replay ended", c)
	}
	prog, err = replay(ctx, interrupted, cfg.Writers, nil)
	if err != nil {
		t.Fatalf("resumed replay: %v", err)
	}
	if prog.First != cp+1 || prog.Seq != uint64(cfg.Events) {
		t.Fatalf("resumed replay did not continue after the checkpoint %d: %+v", cp, prog)
	}
	storetest.SameContent(t, single, interrupted)
	t.Logf("cancelled at checkpoint %d with %d rows stored; resumed with %d events", cp, len(rows), prog.Applied)
}
