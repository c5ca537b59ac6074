package couchbasestore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

// The conformance suite's sequences all fall in one leaf. These tests use
// sequences spread over many leaves and pages, and compare every query
// with the reference store (SQLite) fed the same events.

func TestMatchesReferenceAcrossLeavesAndPages(t *testing.T) {
	ctx := context.Background()
	cb := openTestStore(t)
	ref, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "ref.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ref.Close() })

	rng := rand.New(rand.NewPCG(1, 2))
	data := modelData(rng)
	if last := data[len(data)-1].Seq; pageOf(segOf(last)) < 2 {
		t.Fatalf("data ends at seq %d: too few pages to test", last)
	}
	// Batches of random sizes, in random order, some twice, applied by
	// three concurrent workers here and one by one to the reference.
	var batches [][]stores.Record
	shuffled := append([]stores.Record(nil), data...)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for i := 0; i < len(shuffled); {
		n := 1 + rng.IntN(60)
		batches = append(batches, shuffled[i:min(i+n, len(shuffled))])
		i += n
	}
	for i := range len(batches) / 4 {
		batches = append(batches, batches[i*3])
	}
	for _, b := range batches {
		if err := ref.Apply(ctx, stores.Batch{Checkpoint: "projector", Through: stores.Batch{Records: b}.MaxSeq(), Records: b}); err != nil {
			t.Fatal(err)
		}
	}
	work := make(chan []stores.Record)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Go(func() {
			for b := range work {
				if err := cb.Apply(ctx, stores.Batch{Checkpoint: "projector", Through: stores.Batch{Records: b}.MaxSeq(), Records: b}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	compareStores(t, cb, ref, data)

	// Without crashes, concurrent workers leave no stale members: each
	// member list holds exactly the issues in its status.
	ks := keyspaceOf(0)
	for _, st := range []stores.IssueStatus{stores.IssueOpen, stores.IssueInProgress} {
		ihs, err := cb.membersOf(ctx, ks, st, "")
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.Issues(ctx, stores.IssueQuery{Status: st, Limit: stores.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		if len(ihs) != len(want) {
			t.Errorf("%s members: %d, want %d issues", st, len(ihs), len(want))
		}
	}

	// Readers check derived data against the issues: lose every superseded
	// mark and add stale members, and the answers stay the same.
	for ix := range map[string]bool{ixAll: true, ixPipeline(pipelineHash("billing")): true} {
		for _, r := range data {
			err := update(ctx, cb, ks.leaf(ix, segOf(r.Seq)), nil, func(d *leafDoc, exists bool) bool {
				changed := len(d.X) > 0
				d.X = nil
				return exists && changed
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range data[:40] {
		for _, st := range []stores.IssueStatus{stores.IssueOpen, stores.IssueInProgress} {
			ih := issueHash(r.Pipeline, r.ChangeID)
			err := update(ctx, cb, ks.members(st, ih), nil, func(d *membersDoc, _ bool) bool {
				if d.M == nil {
					d.M = map[string]member{}
				}
				if _, ok := d.M[ih]; ok {
					return false
				}
				d.M[ih] = member{Seq: r.Seq, Pipeline: pipelineHash(r.Pipeline)}
				return true
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	compareStores(t, cb, ref, data)

	// Reset empties the store at once and deletes the old documents.
	if err := cb.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := cb.History(ctx, stores.HistoryQuery{}); err != nil || len(got) != 0 {
		t.Fatalf("history after reset: %d rows, %v", len(got), err)
	}
	var left []string
	keys := []string{ks.root(ixAll), ks.pipelines(), ks.checkpointDir(), ks.checkpoint("projector"),
		ks.root(ixPipeline(pipelineHash("billing"))), ks.root(ixState(events.StateFailed))}
	for _, r := range data {
		keys = append(keys, ks.event(eventRef(r.ID)), ks.issue(issueHash(r.Pipeline, r.ChangeID)),
			ks.leaf(ixAll, segOf(r.Seq)), ks.leaf(ixPipeline(pipelineHash(r.Pipeline)), segOf(r.Seq)),
			ks.leaf(ixState(r.State()), segOf(r.Seq)), ks.page(ixAll, pageOf(segOf(r.Seq))),
			ks.members(stores.IssueOpen, issueHash(r.Pipeline, r.ChangeID)))
	}
	for _, k := range keys {
		var v any
		if _, exists, err := cb.get(ctx, k, &v); err != nil {
			t.Fatal(err)
		} else if exists {
			left = append(left, k)
		}
	}
	if len(left) > 0 {
		t.Fatalf("Reset left %d documents of the old generation, e.g. %q", len(left), left[0])
	}
	// And a rebuild by replay gives the same answers again.
	for _, b := range batches {
		if err := cb.Apply(ctx, stores.Batch{Checkpoint: "projector", Through: stores.Batch{Records: b}.MaxSeq(), Records: b}); err != nil {
			t.Fatal(err)
		}
	}
	compareStores(t, cb, ref, data)
}

// modelData: 5 pipelines (one with a non-ASCII name and long ids) whose
// changes share ids, sequences with gaps that cross leaves and pages,
// times that do not follow sequence order, and hash chains.
func modelData(rng *rand.Rand) []stores.Record {
	pipelines := []string{"billing", "shipping", "zahlungsdienst-ü", "search", "auth"}
	types := [][]events.Type{
		{events.ExecutionStarted, events.ExecutionSucceeded},
		{events.ExecutionStarted, events.ExecutionFailed},
		{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionRolledBack},
		{events.ExecutionStarted, events.ExecutionFailed, events.RollbackFailed},
		{events.ExecutionStarted, events.ExecutionMarkedUncertain, events.ManuallyResolved},
		{events.ExecutionStarted},
	}
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var out []stores.Record
	seq := uint64(0)
	for c := range 70 {
		p := pipelines[rng.IntN(len(pipelines))]
		change := fmt.Sprintf("%04d-change", c%25) // ids repeat across pipelines
		prev := ""                                 // the hash chain of the change
		for _, typ := range types[rng.IntN(len(types))] {
			if rng.IntN(4) == 0 {
				seq += 1 + uint64(rng.IntN(40_000)) // sparse: skip leaves and pages
			} else {
				seq++
			}
			e := events.New(typ, p, change)
			if p == "zahlungsdienst-ü" {
				e.ID = fmt.Sprintf("évènement %d / %s", seq, change)
			}
			e.OccurredAt = base.Add(time.Duration(seq)*time.Millisecond + time.Duration(rng.IntN(5_000_000))*time.Microsecond)
			e.ExecutionID, e.Author, e.TargetSystem = "exec-"+change, "alice", "db"
			e.Duration = time.Duration(rng.IntN(5000)) * time.Millisecond
			switch typ {
			case events.ExecutionFailed, events.RollbackFailed:
				e.ErrorMessage = "boom"
			case events.ManuallyResolved:
				e.ExecutionID, e.Resolution, e.Operator, e.Reason = "", events.ResolvedRolledBack, "bob", "undone"
			}
			e.PrevHash = prev
			h := events.Hash([]byte(e.ID))
			prev = h
			out = append(out, stores.Record{Seq: seq, Hash: h, Event: e})
		}
	}
	return out
}

func compareStores(t *testing.T, got, want stores.Store, data []stores.Record) {
	t.Helper()
	ctx := context.Background()
	var hq []stores.HistoryQuery
	var iq []stores.IssueQuery
	mid := data[len(data)/2]
	for _, p := range []string{"", "billing", "zahlungsdienst-ü", "nope"} {
		for _, c := range []string{"", "0003-change", mid.ChangeID} {
			for _, st := range []events.State{"", events.StateFailed, events.StateStarted} {
				hq = append(hq,
					stores.HistoryQuery{Pipeline: p, ChangeID: c, State: st},
					stores.HistoryQuery{Pipeline: p, ChangeID: c, State: st, Since: mid.OccurredAt, Limit: 7},
					stores.HistoryQuery{Pipeline: p, ChangeID: c, State: st, BeforeSeq: mid.Seq, Limit: 5})
			}
			for _, st := range []stores.IssueStatus{"", stores.IssueOpen, stores.IssueClosed, stores.IssueInProgress} {
				iq = append(iq,
					stores.IssueQuery{Pipeline: p, ChangeID: c, Status: st},
					stores.IssueQuery{Pipeline: p, ChangeID: c, Status: st, BeforeSeq: mid.Seq, Limit: 3})
			}
		}
	}
	hq = append(hq, stores.HistoryQuery{Limit: stores.MaxLimit}, stores.HistoryQuery{BeforeSeq: 1})
	for _, q := range hq {
		g, err := got.History(ctx, q)
		if err != nil {
			t.Fatalf("History(%+v): %v", q, err)
		}
		w, err := want.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normRecords(g), normRecords(w)) {
			t.Fatalf("History(%+v): got %d rows %v, want %d %v", q, len(g), recSeqs(g), len(w), recSeqs(w))
		}
	}
	for _, q := range iq {
		g, err := got.Issues(ctx, q)
		if err != nil {
			t.Fatalf("Issues(%+v): %v", q, err)
		}
		w, err := want.Issues(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normIssues(g), normIssues(w)) {
			t.Fatalf("Issues(%+v):\n got %+v\nwant %+v", q, g, w)
		}
	}
	// Paging through everything visits each row once, in order.
	var all []stores.Record
	for q := (stores.HistoryQuery{Limit: 17}); ; {
		page, err := got.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		q.BeforeSeq = page[len(page)-1].Seq
	}
	if len(all) != len(data) {
		t.Fatalf("paging History: %d rows, want %d", len(all), len(data))
	}
	g, _ := got.Checkpoint(ctx, "projector")
	w, _ := want.Checkpoint(ctx, "projector")
	if g != w {
		t.Fatalf("checkpoint %d, want %d", g, w)
	}
}

// normRecords puts records in one form: SQLite keeps durations in ms.
func normRecords(rs []stores.Record) []stores.Record {
	out := make([]stores.Record, len(rs))
	for i, r := range rs {
		r.OccurredAt = r.OccurredAt.UTC()
		r.Duration = r.Duration.Truncate(time.Millisecond)
		if len(r.Metadata) == 0 {
			r.Metadata = nil
		}
		out[i] = r
	}
	return out
}

func normIssues(is []stores.Issue) []stores.Issue {
	out := make([]stores.Issue, len(is))
	for i, x := range is {
		x.UpdatedAt = x.UpdatedAt.UTC()
		out[i] = x
	}
	return out
}

func recSeqs(rs []stores.Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Seq
	}
	return out
}

func openTestStore(t *testing.T) *Store {
	t.Helper()
	connstr := storetest.ServerAddr(t, "AUDITFLOW_TEST_COUCHBASE_CONNSTR")
	user, password, bucket := os.Getenv("AUDITFLOW_TEST_COUCHBASE_USER"), os.Getenv("AUDITFLOW_TEST_COUCHBASE_PASSWORD"), os.Getenv("AUDITFLOW_TEST_COUCHBASE_BUCKET")
	cluster, err := gocb.Connect(connstr, gocb.ClusterOptions{Authenticator: gocb.PasswordAuthenticator{Username: user, Password: password}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Close(nil) })
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	cfg := Config{Bucket: bucket, Scope: "auditflow_test", Collection: "layout" + hex.EncodeToString(b)}
	s, err := New(context.Background(), cluster, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		_ = cluster.Bucket(bucket).CollectionsV2().DropCollection(cfg.Scope, cfg.Collection, nil)
	})
	return s
}
