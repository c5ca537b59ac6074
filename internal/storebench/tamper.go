package storebench

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/storetest"
	"github.com/auditflow/auditflow/verify"
)

// TamperVerifyRepair alters, one at a time, each stored value that
// listings filter on (storetest.TamperFields) in one row of a store built
// from a stream, as someone with write access to the database could, and
// checks that verify reports the row as altered, naming the field, that
// repair puts it back, and that verify then passes. Call it from the
// backend's own tests, where its storetest.Tamperer is compiled in.
func TamperVerifyRepair(t *testing.T, newStore storetest.NewStore) {
	ctx := context.Background()
	srv, sc, _ := published(t, 60)
	for _, c := range []struct {
		field, value, reported string
	}{
		{"state", string(events.StateFailed), "RowState"},
		{"pipeline", "someone-else", "Pipeline"},
		{"changeId", "another-change", "ChangeID"},
		{"occurredAt", stores.FormatTime(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)), "OccurredAt"},
	} {
		t.Run(c.field, func(t *testing.T) {
			st := newStore(t, "tv"+storetest.RandomID())
			tam, ok := st.(storetest.Tamperer)
			if !ok {
				t.Fatalf("%T does not implement storetest.Tamperer", st)
			}
			if _, err := projector.Replay(ctx, srv.JS, st, projector.ReplayConfig{Stream: sc, BatchSize: 25, Logger: natstest.Logger(t)}); err != nil {
				t.Fatal(err)
			}
			cfg := verify.Config{Stream: sc, Logger: natstest.Logger(t), Settle: -1}
			if rep, err := verify.Verify(ctx, srv.JS, st, cfg); err != nil || rep.Problems() {
				t.Fatalf("before: %+v, %v", rep, err)
			}
			const seq = 6 // a success: APPLIED
			if err := tam.TamperRow(ctx, seq, c.field, c.value); err != nil {
				t.Fatal(err)
			}
			rep, err := verify.Verify(ctx, srv.JS, st, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Problems() || !slices.ContainsFunc(rep.Mismatched, func(m verify.Mismatch) bool {
				return m.Seq == seq && slices.Contains(m.Fields, c.reported)
			}) {
				t.Fatalf("verify after %s was set to %q: mismatched %+v; want row %d naming %s", c.field, c.value, rep.Mismatched, seq, c.reported)
			}
			plan, err := verify.PlanRepair(ctx, srv.JS, st, rep, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := verify.Repair(ctx, srv.JS, st, plan, projector.ReplayConfig{Stream: sc, BatchSize: 25, Logger: natstest.Logger(t)}); err != nil {
				t.Fatal(err)
			}
			if rep, err := verify.Verify(ctx, srv.JS, st, cfg); err != nil || rep.Problems() {
				t.Fatalf("after repair: %+v, %v", rep, err)
			}
		})
	}
}
