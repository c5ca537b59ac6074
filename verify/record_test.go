package verify_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/verify"
)

// TestRecordAndLastResult: a result is recorded durably per store and the
// newest one read back; other stores' results are not mixed in; with no
// results stream, recording says how to get one and reading finds none.
func TestRecordAndLastResult(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	res := verify.Result{Store: "sqlite", At: at, OK: true, LastSeq: 7, Counts: map[string]int{"missing": 0}}
	if err := verify.Record(ctx, srv.JS, res); !errors.Is(err, verify.ErrNoResultsStream) {
		t.Fatalf("Record without the stream = %v, want ErrNoResultsStream", err)
	}
	if _, ok, err := verify.LastResult(ctx, srv.JS, "sqlite"); ok || err != nil {
		t.Fatalf("LastResult without the stream = %v, %v", ok, err)
	}
	if _, err := srv.JS.CreateStream(ctx, verify.ResultsStreamConfig(1)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := verify.LastResult(ctx, srv.JS, "sqlite"); ok || err != nil {
		t.Fatalf("LastResult before any run = %v, %v", ok, err)
	}
	for i := range 3 {
		res.LastSeq, res.At = uint64(7+i), at.Add(time.Duration(i)*time.Minute)
		if err := verify.Record(ctx, srv.JS, res); err != nil {
			t.Fatal(err)
		}
	}
	other := verify.Result{Store: "mongo", At: at, OK: false, Counts: map[string]int{"missing": 3}}
	if err := verify.Record(ctx, srv.JS, other); err != nil {
		t.Fatal(err)
	}
	got, ok, err := verify.LastResult(ctx, srv.JS, "sqlite")
	if err != nil || !ok || got.LastSeq != 9 || !got.OK || !got.At.Equal(at.Add(2*time.Minute)) {
		t.Fatalf("LastResult(sqlite) = %+v, %v, %v", got, ok, err)
	}
	if got, _, _ := verify.LastResult(ctx, srv.JS, "mongo"); got.OK || got.Counts["missing"] != 3 {
		t.Fatalf("LastResult(mongo) = %+v", got)
	}
	if err := verify.Record(ctx, srv.JS, verify.Result{}); err == nil {
		t.Fatal("Record of a result without a store succeeded")
	}
}
