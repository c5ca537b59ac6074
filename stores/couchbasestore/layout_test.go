package couchbasestore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
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
	cb, _ := openTestStore(t)
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
		keys = append(keys, ks.event(r.Seq), ks.issue(issueHash(r.Pipeline, r.ChangeID)),
			ks.leaf(ixAll, segOf(r.Seq)), ks.leaf(ixPipeline(pipelineHash(r.Pipeline)), segOf(r.Seq)),
			ks.leaf(ixState(stores.StateOf(r)), segOf(r.Seq)), ks.page(ixAll, pageOf(segOf(r.Seq))),
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
// times that do not follow sequence order, hash chains, and events
// published again (the same id at a later sequence, out of their chain).
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
		prev, prevSeq := "", uint64(0)             // the hash chain of the change
		for pos, typ := range types[rng.IntN(len(types))] {
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
			e.PrevHash, e.PrevSeq, e.Position = prev, prevSeq, uint64(pos+1)
			h := events.Hash([]byte(e.ID))
			prev, prevSeq = h, seq
			out = append(out, stores.Record{Seq: seq, Hash: h, Event: e})
		}
		if c%9 == 4 { // the change's last event, published again further on
			again := out[len(out)-1]
			seq += 1 + uint64(rng.IntN(3000))
			again.Seq, again.Chain = seq, fmt.Sprintf("written to follow stream sequence %d, but sequence %d precedes it", again.PrevSeq, again.Seq)
			out = append(out, again)
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

// openTestStore opens a store in a collection of its own, and returns it
// with its cluster (to open it again).
func openTestStore(t *testing.T) (*Store, *gocb.Cluster) {
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
	return s, cluster
}

// TestForgedEntriesListNothing: leaf entries only narrow a listing, so an
// entry that disagrees with its row — forged into another state's index,
// or given another time — lists the row under no value it does not hold,
// and History shows the row as stored.
func TestForgedEntriesListNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t)
	rec := func(seq uint64, typ events.Type, change string) stores.Record {
		e := events.New(typ, "p", change)
		e.ID, e.ExecutionID = fmt.Sprintf("evt-%d", seq), "exec-"+change
		e.OccurredAt = time.Date(2026, 3, 1, 0, 0, int(seq), 0, time.UTC)
		if typ == events.ExecutionFailed {
			e.ErrorMessage = "boom"
		}
		return stores.Record{Seq: seq, Event: e}
	}
	applied, failed := rec(1, events.ExecutionSucceeded, "a"), rec(2, events.ExecutionFailed, "b")
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "p", Through: 2, Records: []stores.Record{applied, failed}}); err != nil {
		t.Fatal(err)
	}
	ks := keyspaceOf(0)
	forged := entryOf(applied)
	forged.State, forged.At = events.StateFailed, stores.FormatTime(applied.OccurredAt.Add(time.Hour))
	for _, ix := range []string{ixAll, ixPipeline(pipelineHash("p")), ixState(events.StateFailed)} {
		seg := segOf(applied.Seq)
		if err := update(ctx, s, ks.leaf(ix, seg), nil, func(d *leafDoc, _ bool) bool {
			d.E["1"] = forged
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if err := update(ctx, s, ks.page(ix, pageOf(seg)), nil, func(d *pageDoc, _ bool) bool {
			d.S[strconv.FormatUint(seg, 10)] = forged.At // so that Since reads the leaf
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []stores.HistoryQuery{
		{State: events.StateFailed}, {Pipeline: "p", State: events.StateFailed}, {Since: applied.OccurredAt.Add(time.Minute)},
	} {
		got, err := s.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got {
			if !q.Match(r) || r.Seq == applied.Seq {
				t.Errorf("History(%+v) lists row %d (%s at %s) on a forged entry", q, r.Seq, r.RowState, stores.FormatTime(r.OccurredAt))
			}
		}
	}
	got, err := s.History(ctx, stores.HistoryQuery{})
	if err != nil || len(got) != 2 || got[1].RowState != events.StateApplied || !got[1].OccurredAt.Equal(applied.OccurredAt) {
		t.Fatalf("History = %+v, %v; want the row as stored", got, err)
	}
}

// TestOlderLayout: a store of layout 1, which keyed event documents by
// event id (and leaf entries named those keys), opens, refuses every call
// with the way to rebuild and is reported by CheckSchema; Reset rebuilds
// it in this layout and purges the older documents; the store then holds
// an event published twice as two rows.
func TestOlderLayout(t *testing.T) {
	ctx := context.Background()
	s, cluster := openTestStore(t)
	rng := rand.New(rand.NewPCG(3, 4))
	data := modelData(rng)[:40]
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "p", Through: data[len(data)-1].Seq, Records: data}); err != nil {
		t.Fatal(err)
	}
	// Rewrite it as layout 1 wrote it: events under "e:<id>" (as long as
	// the id is a plain key part, which modelData's ids are outside one
	// pipeline), named by their entries in the whole log's leaves.
	ks := keyspaceOf(0)
	var olderKeys []string
	for _, r := range data {
		if !safeKeyPart(r.ID) || r.Chain != "" {
			continue
		}
		var d json.RawMessage
		if _, _, err := s.get(ctx, ks.event(r.Seq), &d); err != nil {
			t.Fatal(err)
		}
		key := ks.prefix + "e:" + r.ID
		if err := s.insert(ctx, key, d); err != nil {
			t.Fatal(err)
		}
		if err := s.remove(ctx, ks.event(r.Seq)); err != nil {
			t.Fatal(err)
		}
		if err := update(ctx, s, ks.leaf(ixAll, segOf(r.Seq)), nil, func(l *leafDoc, _ bool) bool {
			e := l.E[strconv.FormatUint(r.Seq, 10)]
			e.Ref = "e:" + r.ID
			l.E[strconv.FormatUint(r.Seq, 10)] = e
			return true
		}); err != nil {
			t.Fatal(err)
		}
		olderKeys = append(olderKeys, key)
	}
	if len(olderKeys) < 10 {
		t.Fatalf("only %d events rewritten as layout 1", len(olderKeys))
	}
	if err := update(ctx, s, metaKey, nil, func(m *metaDoc, _ bool) bool { m.Layout = olderLayout; return true }); err != nil {
		t.Fatal(err)
	}

	// New opens it (a replay must, to reset it), and every call refuses.
	st, err := New(ctx, cluster, s.cfg)
	if err != nil {
		t.Fatalf("New over layout 1: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	for name, err := range map[string]error{
		"Apply":      st.Apply(ctx, stores.Batch{Checkpoint: "p", Records: data[:1]}),
		"History":    second(st.History(ctx, stores.HistoryQuery{})),
		"Issues":     second(st.Issues(ctx, stores.IssueQuery{})),
		"Checkpoint": second(st.Checkpoint(ctx, "p")),
		"ProbeWrite": st.ProbeWrite(ctx),
	} {
		if !errors.Is(err, stores.ErrInvalidConfig) || !strings.Contains(err.Error(), "keyed by event id") ||
			!strings.Contains(err.Error(), "auditflow --store couchbase replay --reset") {
			t.Errorf("%s on layout 1 = %v, want ErrInvalidConfig saying how to rebuild", name, err)
		}
	}
	if p, err := st.CheckSchema(ctx); err != nil || len(p) != 1 || !strings.Contains(p[0], "holds layout 1, in which changeLog rows are keyed by event id") {
		t.Fatalf("CheckSchema of layout 1 = %q, %v", p, err)
	}

	if err := st.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := st.CheckSchema(ctx); err != nil || len(p) != 0 {
		t.Fatalf("CheckSchema after Reset = %q, %v", p, err)
	}
	for _, k := range append(olderKeys, ks.event(data[len(data)-1].Seq), ks.leaf(ixAll, segOf(data[0].Seq)), ks.root(ixAll)) {
		var v any
		if _, exists, err := st.get(ctx, k, &v); err != nil || exists {
			t.Fatalf("after Reset, %s of the older layout is still there (%v)", k, err)
		}
	}
	again := data[0]
	again.Seq, again.Chain = data[len(data)-1].Seq+1, "published again"
	if err := st.Apply(ctx, stores.Batch{Checkpoint: "p", Through: again.Seq, Records: []stores.Record{data[0], again}}); err != nil {
		t.Fatal(err)
	}
	rows, err := st.History(ctx, stores.HistoryQuery{})
	if err != nil || len(rows) != 2 || rows[0].ID != rows[1].ID || rows[0].RowState != events.StateOutOfChain {
		t.Fatalf("after Reset, the event published twice: %+v, %v", rows, err)
	}
}

func second[T any](_ T, err error) error { return err }
