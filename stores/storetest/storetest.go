// Package storetest is the conformance suite every audit store must pass
// before it is considered done: call Run from the backend's test with a
// function that opens a fresh store in a given namespace.
//
// Each case runs in parallel with the others in its own namespace (a table,
// collection or key prefix derived from the name the suite passes), so the
// whole suite runs against one server. Features records the honest
// differences between backends; everything else is the same contract.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Features describes what a backend does beyond the common contract.
type Features struct {
	// AtomicBatch: a failed Apply leaves none of its rows behind (the
	// backend writes a batch in one transaction). Without it a failed Apply
	// may leave some rows, which the projector's retry makes whole.
	AtomicBatch bool
	// Repairer: the store implements stores.Repairer (targeted repair);
	// without it, repair rebuilds the store by replay. The suite checks the
	// flag both ways, so it cannot be claimed or forgotten.
	Repairer bool
	// SchemaChecker: the store implements stores.SchemaChecker.
	SchemaChecker bool
	// IssueCounter: the store implements stores.IssueCounter.
	IssueCounter bool
	// NonAtomicUpdates: the server applies a filtered update as a read and
	// then a write (FerretDB v1.24, not MongoDB), so of two writers raising
	// one checkpoint at the same moment the lower may win. Every value
	// written is a valid checkpoint, so that is safe, but it is not
	// monotonic: the suite then checks concurrent raises only for ending
	// at one of the values written.
	NonAtomicUpdates bool
}

// Tamperer is implemented by a store the suite can alter behind its back,
// as someone with write access to the database could: backends implement
// it in a _test.go file of their own package (so it is never part of
// production code), and the suite requires it, since a store whose
// listings can be falsified unseen fails the contract that what a query
// filters on is what it returns.
type Tamperer interface {
	// TamperRow overwrites one stored value of the changeLog row at seq:
	// field is one of TamperFields, value its new text (a state, a
	// pipeline or change id, or a time in stores.TimeLayout). Where a
	// backend keeps the value twice, it alters the copy History's filter
	// on that field reads.
	TamperRow(ctx context.Context, seq uint64, field, value string) error
}

// TamperFields are the stored values of a changeLog row that History
// filters on, besides its key (Seq).
var TamperFields = []string{"state", "pipeline", "changeId", "occurredAt"}

// NewStore opens a store whose names (tables, collections, key prefixes) are
// derived from namespace, and registers its Close with t.Cleanup. Two calls
// with the same namespace must open the same data; different namespaces must
// never share data. A namespace is 1 to 24 characters from [a-z0-9_],
// starting with a letter.
type NewStore func(t testing.TB, namespace string) stores.Store

// Run runs the whole conformance suite.
func Run(t *testing.T, newStore NewStore, f Features) {
	s := &suite{newStore: newStore, features: f, run: RandomID()}
	cases := []struct {
		name string
		fn   func(*testing.T, *suite)
	}{
		{"RoundTrip", testRoundTrip},
		{"UnicodeAndLargeTraces", testUnicodeAndLargeTraces},
		{"MaxSizeEvent", testMaxSizeEvent},
		{"IdempotentReapply", testIdempotentReapply},
		{"OutOfOrder", testOutOfOrder},
		{"IssueLifecycle", testIssueLifecycle},
		{"HistoryQueries", testHistoryQueries},
		{"Pagination", testPagination},
		{"IssueQueries", testIssueQueries},
		{"Checkpoint", testCheckpoint},
		{"Reset", testReset},
		{"ConcurrentWorkers", testConcurrentWorkers},
		{"CancelledContext", testCancelledContext},
		{"NamesDoNotCollide", testNamesDoNotCollide},
		{"InvalidInput", testInvalidInput},
		{"LargeBatch", testLargeBatch},
		{"NewerIssueDoesNotHideOthers", testNewerIssueDoesNotHideOthers},
		{"SparseSequences", testSparseSequences},
		{"Repair", testRepair},
		{"SchemaCheck", testSchemaCheck},
		{"WriteProbe", testWriteProbe},
		{"SignedEvents", testSignedEvents},
		{"IssueCount", testIssueCount},
		{"RepeatedEventIsARow", testRepeatedEventIsARow},
		{"StoredValuesShowWhereListed", testStoredValuesShowWhereListed},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, s.withCase(i))
		})
	}
}

type suite struct {
	newStore NewStore
	features Features
	run      string
	caseNo   int
}

func (s *suite) withCase(i int) *suite { c := *s; c.caseNo = i; return &c }

// open returns the store for namespace variant v ("a", "b", …) of this case.
func (s *suite) open(t *testing.T, v string) stores.Store {
	t.Helper()
	return s.newStore(t, fmt.Sprintf("af%s%02d%s", s.run, s.caseNo, v))
}

// RandomID is a short random name part, so that runs on one server never
// share namespaces.
func RandomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var base = time.Date(2026, 11, 26, 9, 0, 0, 123456789, time.UTC)

// rec builds a valid record: event type typ for change of pipeline at
// sequence seq, occurring seq seconds after base.
func rec(seq uint64, typ events.Type, pipeline, change string) stores.Record {
	e := events.New(typ, pipeline, change)
	e.ID = fmt.Sprintf("evt-%s-%s-%d", pipeline, change, seq)
	if e.Position = seq; seq > 1 {
		e.PrevHash, e.PrevSeq = events.Hash([]byte(fmt.Sprint("event before ", seq))), seq-1
	}
	e.OccurredAt = base.Add(time.Duration(seq) * time.Second)
	e.ExecutionID = "exec-" + change
	e.Author, e.Order, e.TargetSystem = "alice", "0001", "orders-db"
	e.Host, e.RunnerID, e.LockToken = "host-1", "runner-1", 7
	switch typ {
	case events.ExecutionFailed, events.RollbackFailed:
		e.ErrorMessage = "boom at " + change
	case events.ExecutionOverlapped:
		e.ErrorMessage = "execution exec-" + change + " (lock token 7) ended APPLIED after the lock passed to token 9"
	case events.ManuallyResolved:
		e.ExecutionID = ""
		e.Resolution, e.Operator, e.Reason = events.ResolvedApplied, "bob", "checked by hand"
	}
	return stores.Record{Seq: seq, Hash: events.Hash([]byte(e.ID)), Signer: testSigner, Signature: testSignature(seq), Event: e}
}

// testSigner and testSignature have the form of a signature's parts (an
// nkey, 86 characters of base64url); stores keep them, never check them.
const testSigner = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

func testSignature(seq uint64) string {
	s := fmt.Sprintf("sig-%d-", seq)
	return s + strings.Repeat("A_-z", 22)[:86-len(s)]
}

// apply applies recs as a writer that hands events over in stream order
// would: the checkpoint "projector" goes to the highest sequence of recs.
func apply(t *testing.T, s stores.Store, recs ...stores.Record) {
	t.Helper()
	b := stores.Batch{Checkpoint: "projector", Records: recs}
	b.Through = b.MaxSeq()
	if err := s.Apply(context.Background(), b); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func history(t *testing.T, s stores.Store, q stores.HistoryQuery) []stores.Record {
	t.Helper()
	out, err := s.History(context.Background(), q)
	if err != nil {
		t.Fatalf("History(%+v): %v", q, err)
	}
	return out
}

func issues(t *testing.T, s stores.Store, q stores.IssueQuery) []stores.Issue {
	t.Helper()
	out, err := s.Issues(context.Background(), q)
	if err != nil {
		t.Fatalf("Issues(%+v): %v", q, err)
	}
	return out
}

func issueOf(t *testing.T, s stores.Store, pipeline, change string) stores.Issue {
	t.Helper()
	is := issues(t, s, stores.IssueQuery{Pipeline: pipeline, ChangeID: change})
	if len(is) != 1 {
		t.Fatalf("issues for %s/%s: got %d rows, want 1: %+v", pipeline, change, len(is), is)
	}
	return is[0]
}

// normRecord makes records comparable: one form for time and empty maps.
func normRecord(r stores.Record) stores.Record {
	r.OccurredAt = r.OccurredAt.UTC()
	if len(r.Metadata) == 0 {
		r.Metadata = nil
	}
	return r
}

func normIssue(i stores.Issue) stores.Issue { i.UpdatedAt = i.UpdatedAt.UTC(); return i }

// wantRecords compares rows read with the records applied: a row read
// carries the state it stores (RowState), which for a record applied is
// StateOf.
func wantRecords(t *testing.T, what string, got, want []stores.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d rows %v, want %d %v", what, len(got), seqs(got), len(want), seqs(want))
	}
	for i := range got {
		g, w := normRecord(got[i]), normRecord(want[i])
		if w.RowState == "" {
			w.RowState = stores.StateOf(w)
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("%s: row %d:\n got %+v\nwant %+v", what, i, g, w)
		}
	}
}

func seqs(rs []stores.Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Seq
	}
	return out
}

// newestFirst returns recs sorted by descending sequence, as stores return them.
func newestFirst(recs []stores.Record) []stores.Record {
	out := slices.Clone(recs)
	slices.SortFunc(out, func(a, b stores.Record) int { return int(b.Seq) - int(a.Seq) })
	return out
}

func testRoundTrip(t *testing.T, s *suite) {
	st := s.open(t, "")
	var recs []stores.Record
	for i, typ := range events.Types {
		r := rec(uint64(i+1), typ, "payments", "0007-add-ledger")
		r.Metadata = map[string]string{"ticket": "OPS-1", "index": fmt.Sprint(i)}
		r.Duration = time.Duration(i) * 1500 * time.Millisecond
		r.Transactional = i%2 == 0
		if i%2 == 1 {
			r.Recovery = events.AlwaysRetry
		}
		r.LockToken = uint64(1) << (i * 9) // up to 2^54: beyond float64's exact integers
		r.ErrorTrace = strings.Repeat("at frame\n", i)
		recs = append(recs, r)
	}
	apply(t, st, recs...)
	wantRecords(t, "history", history(t, st, stores.HistoryQuery{}), newestFirst(recs))
	last := recs[len(recs)-1]
	got := normIssue(issueOf(t, st, "payments", "0007-add-ledger"))
	if want := normIssue(stores.IssueOf(last)); !reflect.DeepEqual(got, want) {
		t.Fatalf("issue:\n got %+v\nwant %+v", got, want)
	}
}

func testUnicodeAndLargeTraces(t *testing.T, s *suite) {
	st := s.open(t, "")
	trace := strings.Repeat("Ошибка → 失敗 ✗ \"quoted\" \\ 'single' \x00-free\n", 64*1024/60)
	if len(trace) < 64*1024 {
		trace += strings.Repeat("x", 64*1024-len(trace))
	}
	r := rec(1, events.ExecutionFailed, "zahlungsdienst-ü", "变更 001 / ✓.sql")
	r.ErrorMessage, r.ErrorTrace = "índice duplicado: «clé» 🔥", trace
	r.Author, r.TargetSystem = "Zoë Ångström", "数据库"
	r.Metadata = map[string]string{"ключ": "значение", "emoji": "🚀", "empty": ""}
	apply(t, st, r)
	got := history(t, st, stores.HistoryQuery{Pipeline: r.Pipeline, ChangeID: r.ChangeID})
	wantRecords(t, "unicode history", got, []stores.Record{r})
	i := issueOf(t, st, r.Pipeline, r.ChangeID)
	if i.ErrorTrace != trace || i.ErrorMessage != r.ErrorMessage {
		t.Fatalf("issue lost the error: message %q, trace %d bytes (want %d)", i.ErrorMessage, len(i.ErrorTrace), len(trace))
	}
}

// testMaxSizeEvent: the event limits (events.MaxTraceLen and the others)
// promise that any event the stream accepts fits every store. An event
// with every field at its limit — multi-byte text, a trace that does not
// compress (a backend may compress traces, so only random data tests the
// bound), 64 metadata keys of the longest length totalling the metadata
// limit — must be stored and read back whole, as a changeLog row and as
// its change's issue, both as a failure and as a resolution that carries
// every field.
func testMaxSizeEvent(t *testing.T, s *suite) {
	st := s.open(t, "")
	failed := maxRecord(t, 1, events.ExecutionFailed)
	apply(t, st, failed)
	if got := normIssue(issueOf(t, st, failed.Pipeline, failed.ChangeID)); !reflect.DeepEqual(got, normIssue(stores.IssueOf(failed))) {
		t.Fatalf("issue of the max-size failure: trace %d bytes (want %d), message %d bytes (want %d)",
			len(got.ErrorTrace), len(failed.ErrorTrace), len(got.ErrorMessage), len(failed.ErrorMessage))
	}
	resolved := maxRecord(t, 2, events.ManuallyResolved)
	apply(t, st, resolved)
	wantRecords(t, "max-size history", history(t, st, stores.HistoryQuery{Pipeline: failed.Pipeline, ChangeID: failed.ChangeID}),
		[]stores.Record{resolved, failed})
	if got := normIssue(issueOf(t, st, failed.Pipeline, failed.ChangeID)); !reflect.DeepEqual(got, normIssue(stores.IssueOf(resolved))) {
		t.Fatalf("issue of the max-size resolution:\n got %+v\nwant %+v", got, stores.IssueOf(resolved))
	}
}

// maxRecord is an event of type typ with every field at its size limit.
func maxRecord(t *testing.T, seq uint64, typ events.Type) stores.Record {
	t.Helper()
	// fill is n bytes of text starting with seed, multi-byte runes included.
	fill := func(seed string, n int) string {
		s := seed + strings.Repeat("-ü✓漢", n/8+1)
		for len(s) > n {
			_, size := utf8.DecodeLastRuneInString(s)
			s = s[:len(s)-size]
		}
		return s + strings.Repeat("x", n-len(s))
	}
	noise := make([]byte, events.MaxTraceLen)
	_, _ = rand.Read(noise)
	e := events.New(typ, fill("pipeline-", events.MaxKeyLen), fill("change-", events.MaxKeyLen))
	e.ID = fmt.Sprintf("evt-max-%d-", seq) + strings.Repeat("i", events.MaxIDLen-len(fmt.Sprintf("evt-max-%d-", seq)))
	e.OccurredAt = base.Add(time.Duration(seq) * time.Second)
	e.ExecutionID = strings.Repeat("x", events.MaxIDLen)
	e.Order = fill("0001", events.MaxKeyLen)
	e.Author, e.TargetSystem = fill("author ", events.MaxTextLen), fill("target ", events.MaxTextLen)
	e.Host, e.RunnerID = fill("host ", events.MaxTextLen), fill("runner ", events.MaxTextLen)
	e.LockToken, e.Duration = 1<<53+1, 90*time.Minute
	e.ErrorMessage = fill("error ", events.MaxMessageLen)
	e.ErrorTrace = base64.StdEncoding.EncodeToString(noise)[:events.MaxTraceLen]
	e.Metadata = map[string]string{}
	left := events.MaxMetadataBytes - events.MaxMetadataKeys*events.MaxMetadataKeyLen - events.MaxMetadataValueLen
	for i := range events.MaxMetadataKeys {
		k := fmt.Sprintf("key%02d", i)
		k += strings.Repeat("k", events.MaxMetadataKeyLen-len(k))
		n := events.MaxMetadataValueLen
		if i > 0 {
			n = left / (events.MaxMetadataKeys - i)
			left -= n
		}
		e.Metadata[k] = fill(fmt.Sprint("value ", i, " "), n)
	}
	e.Recovery, e.Transactional = events.AlwaysRetry, true
	if e.Position = seq; seq > 1 {
		e.PrevHash, e.PrevSeq = events.Hash([]byte(fmt.Sprint("event before ", seq))), seq-1
	}
	if typ == events.ManuallyResolved {
		e.Resolution = events.ResolvedRolledBack
		e.Operator, e.Reason = fill("operator ", events.MaxTextLen), fill("reason ", events.MaxMessageLen)
	}
	e.PrevSeq, e.Position, e.PrevHash = 1<<63-1, 1<<62, events.Hash([]byte("the largest place"))
	b, err := events.Encode(e)
	if err != nil {
		t.Fatalf("the max-size event does not encode: %v", err)
	}
	t.Logf("max-size %s: %d bytes encoded", typ, len(b))
	return stores.Record{Seq: seq, Hash: events.Hash(b), Signer: fill("U", stores.MaxSignerLen), Signature: fill("s", stores.MaxSignatureLen),
		Trust: fill("bad signature: ", stores.MaxTrustLen), Chain: fill("out of chain: ", stores.MaxChainLen), Event: e}
}

func testIdempotentReapply(t *testing.T, s *suite) {
	st := s.open(t, "")
	b1 := []stores.Record{
		rec(1, events.ExecutionStarted, "p", "c1"), rec(2, events.ExecutionFailed, "p", "c1"),
		rec(3, events.ExecutionStarted, "p", "c2"),
	}
	apply(t, st, b1...)
	before := history(t, st, stores.HistoryQuery{})
	issuesBefore := issues(t, st, stores.IssueQuery{})
	apply(t, st, b1...)               // redelivery of the whole batch
	apply(t, st, b1[1], b1[0])        // redelivery, reordered
	apply(t, st, b1[2], b1[2], b1[2]) // one event three times in a batch
	wantRecords(t, "history after re-apply", history(t, st, stores.HistoryQuery{}), before)
	if got := issues(t, st, stores.IssueQuery{}); !reflect.DeepEqual(normIssues(got), normIssues(issuesBefore)) {
		t.Fatalf("issues changed on re-apply:\n got %+v\nwant %+v", got, issuesBefore)
	}
	// A replay that overlaps and extends: only the new event is added.
	n := rec(4, events.ExecutionSucceeded, "p", "c2")
	apply(t, st, append(slices.Clone(b1), n)...)
	wantRecords(t, "history after overlapping replay", history(t, st, stores.HistoryQuery{}), newestFirst(append(slices.Clone(b1), n)))
}

func normIssues(is []stores.Issue) []stores.Issue {
	out := make([]stores.Issue, len(is))
	for i := range is {
		out[i] = normIssue(is[i])
	}
	return out
}

func testOutOfOrder(t *testing.T, s *suite) {
	st := s.open(t, "")
	started := rec(10, events.ExecutionStarted, "p", "c")
	failed := rec(11, events.ExecutionFailed, "p", "c")
	resolved := rec(12, events.ManuallyResolved, "p", "c")
	apply(t, st, resolved)
	apply(t, st, started, failed) // older events arrive late: they must not reopen the issue
	i := issueOf(t, st, "p", "c")
	if i.Seq != 12 || i.Status != stores.IssueClosed || i.State != events.StateManuallyApplied {
		t.Fatalf("older events overwrote newer state: %+v", i)
	}
	// Within one batch, newest first.
	apply(t, st, rec(22, events.ExecutionSucceeded, "p", "d"), rec(21, events.ExecutionFailed, "p", "d"), rec(20, events.ExecutionStarted, "p", "d"))
	if i := issueOf(t, st, "p", "d"); i.Seq != 22 || i.State != events.StateApplied {
		t.Fatalf("reverse-ordered batch: %+v", i)
	}
	if got := len(history(t, st, stores.HistoryQuery{})); got != 6 {
		t.Fatalf("history rows = %d, want 6", got)
	}
}

func testIssueLifecycle(t *testing.T, s *suite) {
	st := s.open(t, "")
	rolledBack := func(seq uint64, c string) stores.Record {
		r := rec(seq, events.ManuallyResolved, "p", c)
		r.Resolution, r.Operator, r.Reason = events.ResolvedRolledBack, "carol", "reverted the column by hand"
		return r
	}
	cases := []struct {
		change string
		steps  []events.Type
		last   func(seq uint64, c string) stores.Record // overrides the last step
		status stores.IssueStatus
		state  events.State
	}{
		{"started", []events.Type{events.ExecutionStarted}, nil, stores.IssueInProgress, events.StateStarted},
		{"applied", []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}, nil, stores.IssueClosed, events.StateApplied},
		{"failed", []events.Type{events.ExecutionStarted, events.ExecutionFailed}, nil, stores.IssueOpen, events.StateFailed},
		{"rolled-back", []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionRolledBack}, nil, stores.IssueClosed, events.StateRolledBack},
		{"rollback-failed", []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.RollbackFailed}, nil, stores.IssueOpen, events.StateRollbackFailed},
		{"uncertain", []events.Type{events.ExecutionStarted, events.ExecutionMarkedUncertain}, nil, stores.IssueOpen, events.StateUncertain},
		{"manual-applied", []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ManuallyResolved}, nil, stores.IssueClosed, events.StateManuallyApplied},
		{"manual-rolled-back", []events.Type{events.ExecutionStarted, events.ExecutionMarkedUncertain, events.ManuallyResolved}, rolledBack, stores.IssueClosed, events.StateManuallyRolledBack},
		{"retried", []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded}, nil, stores.IssueClosed, events.StateApplied},
		// A stale holder's outcome after a new holder's: schema version 3.
		{"overlapped", []events.Type{events.ExecutionStarted, events.ExecutionStarted, events.ExecutionSucceeded, events.ExecutionOverlapped}, nil, stores.IssueOpen, events.StateOverlapped},
	}
	seq := uint64(0)
	for _, c := range cases {
		for j, typ := range c.steps {
			seq++
			r := rec(seq, typ, "p", c.change)
			if j == len(c.steps)-1 && c.last != nil {
				r = c.last(seq, c.change)
			}
			apply(t, st, r)
			i := issueOf(t, st, "p", c.change)
			if want := normIssue(stores.IssueOf(r)); !reflect.DeepEqual(normIssue(i), want) {
				t.Fatalf("%s after %s:\n got %+v\nwant %+v", c.change, typ, i, want)
			}
		}
		if i := issueOf(t, st, "p", c.change); i.Status != c.status || i.State != c.state {
			t.Errorf("%s: status %s state %s, want %s %s", c.change, i.Status, i.State, c.status, c.state)
		}
	}
	if i := issueOf(t, st, "p", "manual-rolled-back"); i.Operator != "carol" || i.Reason == "" {
		t.Errorf("manual resolution lost who and why: %+v", i)
	}
	open := issues(t, st, stores.IssueQuery{Status: stores.IssueOpen})
	var names []string
	for _, i := range open {
		names = append(names, i.ChangeID)
	}
	slices.Sort(names)
	if want := []string{"failed", "overlapped", "rollback-failed", "uncertain"}; !slices.Equal(names, want) {
		t.Fatalf("open issues = %v, want %v", names, want)
	}
}

// dataset: two pipelines, several changes, varied states and times.
func dataset() []stores.Record {
	var out []stores.Record
	seq := uint64(0)
	for _, p := range []string{"billing", "shipping"} {
		for c := 1; c <= 4; c++ {
			change := fmt.Sprintf("%04d-change", c)
			steps := []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}
			switch c {
			case 2:
				steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded}
			case 3:
				steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed}
			}
			for _, typ := range steps {
				seq++
				out = append(out, rec(seq, typ, p, change))
			}
		}
	}
	return out
}

func filter(recs []stores.Record, q stores.HistoryQuery) []stores.Record {
	var out []stores.Record
	for _, r := range newestFirst(recs) {
		if q.Match(r) {
			out = append(out, r)
		}
	}
	return out
}

func testHistoryQueries(t *testing.T, s *suite) {
	st := s.open(t, "")
	data := dataset()
	apply(t, st, data...)
	since := data[len(data)/2].OccurredAt
	queries := []stores.HistoryQuery{
		{},
		{Pipeline: "billing"},
		{Pipeline: "shipping", ChangeID: "0002-change"},
		{ChangeID: "0003-change"},
		{State: events.StateFailed},
		{Pipeline: "billing", State: events.StateApplied},
		{Since: since},
		{Pipeline: "shipping", Since: since, State: events.StateStarted},
		{Pipeline: "nope"},
		{BeforeSeq: 5},
		{Limit: 3},
		{Pipeline: "billing", Limit: 2, BeforeSeq: 8},
	}
	for _, q := range queries {
		want := filter(data, q)
		if q.Limit > 0 && len(want) > q.Limit {
			want = want[:q.Limit]
		}
		wantRecords(t, fmt.Sprintf("History(%+v)", q), history(t, st, q), want)
	}
}

func testPagination(t *testing.T, s *suite) {
	st := s.open(t, "")
	data := dataset()
	apply(t, st, data...)
	for _, q := range []stores.HistoryQuery{{Limit: 3}, {Pipeline: "billing", Limit: 4}, {State: events.StateStarted, Limit: 1}} {
		var all []stores.Record
		for page := 0; ; page++ {
			if page > len(data) {
				t.Fatalf("pagination does not end for %+v", q)
			}
			got := history(t, st, q)
			if len(got) > q.Limit {
				t.Fatalf("page of %d rows exceeds limit %d", len(got), q.Limit)
			}
			if len(got) == 0 {
				break
			}
			all = append(all, got...)
			q.BeforeSeq = got[len(got)-1].Seq
		}
		q.BeforeSeq, q.Limit = 0, 0
		wantRecords(t, fmt.Sprintf("all pages of %+v", q), all, filter(data, q))
	}
}

func testIssueQueries(t *testing.T, s *suite) {
	st := s.open(t, "")
	data := dataset()
	apply(t, st, data...)
	latest := stores.Batch{Records: data}.LatestPerChange()
	var all []stores.Issue
	for _, r := range newestFirst(latest) {
		all = append(all, stores.IssueOf(r))
	}
	for _, q := range []stores.IssueQuery{
		{}, {Pipeline: "billing"}, {Status: stores.IssueOpen}, {Status: stores.IssueClosed, Pipeline: "shipping"},
		{ChangeID: "0003-change"}, {Limit: 2}, {BeforeSeq: all[2].Seq},
	} {
		var want []stores.Issue
		for _, i := range all {
			if q.Match(i) {
				want = append(want, i)
			}
		}
		if q.Limit > 0 && len(want) > q.Limit {
			want = want[:q.Limit]
		}
		if got := issues(t, st, q); !reflect.DeepEqual(normIssues(got), normIssues(want)) {
			t.Fatalf("Issues(%+v):\n got %+v\nwant %+v", q, got, want)
		}
	}
	// Paging through issues visits each once.
	var paged []stores.Issue
	q := stores.IssueQuery{Limit: 3}
	for {
		got := issues(t, st, q)
		if len(got) == 0 {
			break
		}
		paged = append(paged, got...)
		q.BeforeSeq = got[len(got)-1].Seq
	}
	if !reflect.DeepEqual(normIssues(paged), normIssues(all)) {
		t.Fatalf("paged issues:\n got %+v\nwant %+v", paged, all)
	}
}

// testIssueCount: a store that counts issues counts what Issues returns.
func testIssueCount(t *testing.T, s *suite) {
	st := s.open(t, "")
	c, ok := st.(stores.IssueCounter)
	if ok != s.features.IssueCounter {
		t.Fatalf("store implements IssueCounter: %v; Features.IssueCounter says %v", ok, s.features.IssueCounter)
	}
	if !ok {
		t.Skip("no issue count")
	}
	data := dataset()
	apply(t, st, data...)
	for _, q := range []stores.IssueQuery{
		{}, {Pipeline: "billing"}, {Status: stores.IssueOpen}, {Status: stores.IssueClosed, Pipeline: "shipping"},
		{ChangeID: "0003-change"}, {Status: stores.IssueInProgress}, {BeforeSeq: 5}, {Pipeline: "nope"},
	} {
		q.Limit = stores.MaxLimit
		want := len(issues(t, st, q))
		got, err := c.CountIssues(context.Background(), q)
		if err != nil || got != want {
			t.Errorf("CountIssues(%+v) = %d, %v; Issues returns %d", q, got, err, want)
		}
	}
	if _, err := c.CountIssues(context.Background(), stores.IssueQuery{Status: "BOGUS"}); !errors.Is(err, stores.ErrInvalidQuery) {
		t.Errorf("CountIssues with a bad status: %v, want ErrInvalidQuery", err)
	}
}

// testCheckpoint: the checkpoint is what the writer promised (Through),
// not the highest sequence written, and it only moves forward.
func testCheckpoint(t *testing.T, s *suite) {
	st := s.open(t, "")
	ctx := context.Background()
	cp := func(name string) uint64 {
		t.Helper()
		n, err := st.Checkpoint(ctx, name)
		if err != nil {
			t.Fatalf("Checkpoint(%q): %v", name, err)
		}
		return n
	}
	write := func(name string, through uint64, recs ...stores.Record) {
		t.Helper()
		if err := st.Apply(ctx, stores.Batch{Checkpoint: name, Through: through, Records: recs}); err != nil {
			t.Fatalf("Apply(%s, through %d): %v", name, through, err)
		}
	}
	want := func(name string, n uint64, what string) {
		t.Helper()
		if got := cp(name); got != n {
			t.Fatalf("%s: checkpoint %s = %d, want %d", what, name, got, n)
		}
	}
	want("projector", 0, "fresh store")
	// Two workers' batches: the one holding 10 and 7 lands first, while 1–6
	// are not stored yet. Its rows are stored; the checkpoint does not move.
	write("projector", 0, rec(10, events.ExecutionStarted, "p", "a"), rec(7, events.ExecutionStarted, "p", "b"))
	want("projector", 0, "a batch above an unstored event")
	if got := history(t, st, stores.HistoryQuery{}); len(got) != 2 {
		t.Fatalf("rows of a batch that moved no checkpoint: %d, want 2", len(got))
	}
	write("projector", 8, rec(5, events.ExecutionStarted, "p", "c"))
	want("projector", 8, "Through above the batch's own sequences")
	write("projector", 6, rec(6, events.ExecutionStarted, "p", "e"))
	want("projector", 8, "a lower Through")
	// Progress only: the events up to 12 were dead-lettered.
	write("projector", 12)
	want("projector", 12, "an empty batch with Through")
	write("projector", 0)
	want("projector", 12, "an empty batch without Through")
	write("replay", 3, rec(3, events.ExecutionStarted, "p", "d"))
	want("replay", 3, "another name")
	want("projector", 12, "another name's batch")
	if got := history(t, st, stores.HistoryQuery{}); len(got) != 5 {
		t.Fatalf("rows: %d, want 5", len(got))
	}
	err := st.Apply(ctx, stores.Batch{Checkpoint: "projector", Through: 1 << 63, Records: []stores.Record{rec(20, events.ExecutionStarted, "p", "f")}})
	if !errors.Is(err, stores.ErrInvalidRecord) {
		t.Fatalf("Through beyond 2^63-1: %v, want ErrInvalidRecord", err)
	}
	want("projector", 12, "a refused batch")

	// Concurrent writers raising one checkpoint in any order end at the
	// highest Through.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	through := func(w, i int) uint64 { return uint64(100 + (w*7+i*5)%24) }
	var top uint64
	for w := range 4 {
		for i := range 6 {
			top = max(top, through(w, i))
		}
		wg.Go(func() {
			for i := range 6 {
				through := through(w, i)
				if err := st.Apply(ctx, stores.Batch{Checkpoint: "workers", Through: through}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s.features.NonAtomicUpdates {
		if got := cp("workers"); got < 100 || got > top {
			t.Fatalf("concurrent writers: checkpoint %d, want one of the values written (100..%d)", got, top)
		}
		return
	}
	want("workers", top, "concurrent writers")
}

func testReset(t *testing.T, s *suite) {
	st, other := s.open(t, "a"), s.open(t, "b")
	data := dataset()
	apply(t, st, data...)
	apply(t, other, data[:3]...)
	if err := st.Reset(context.Background()); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if got := history(t, st, stores.HistoryQuery{}); len(got) != 0 {
		t.Fatalf("history after reset has %d rows", len(got))
	}
	if got := issues(t, st, stores.IssueQuery{}); len(got) != 0 {
		t.Fatalf("issues after reset has %d rows", len(got))
	}
	if n, err := st.Checkpoint(context.Background(), "projector"); err != nil || n != 0 {
		t.Fatalf("checkpoint after reset = %d, %v", n, err)
	}
	if got := history(t, other, stores.HistoryQuery{}); len(got) != 3 {
		t.Fatalf("reset of one store removed rows of another: %d left, want 3", len(got))
	}
	// The store is usable after a reset, and a replay rebuilds it exactly.
	apply(t, st, data...)
	wantRecords(t, "history after rebuild", history(t, st, stores.HistoryQuery{}), newestFirst(data))
	// Resetting twice, or an empty store, is fine.
	for range 2 {
		if err := st.Reset(context.Background()); err != nil {
			t.Fatalf("second Reset: %v", err)
		}
	}
}

func testConcurrentWorkers(t *testing.T, s *suite) {
	st := s.open(t, "")
	// 24 changes × 5 events, split in batches that two workers apply in
	// opposite orders, with an overlap that both apply.
	var data []stores.Record
	seq := uint64(0)
	for c := range 24 {
		for _, typ := range []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionFailed, events.ManuallyResolved} {
			seq++
			data = append(data, rec(seq, typ, "p", fmt.Sprintf("c%02d", c)))
		}
	}
	var batches [][]stores.Record
	for i := 0; i < len(data); i += 7 {
		batches = append(batches, data[i:min(i+7, len(data))])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			for i := range batches {
				b := batches[i]
				if w%2 == 1 {
					b = batches[len(batches)-1-i]
				}
				if w >= 2 && i%3 != 0 { // the other two apply an overlapping third
					continue
				}
				// Each claims what it stored last: one of them ends at seq.
				through := (stores.Batch{Records: b}).MaxSeq()
				if err := st.Apply(context.Background(), stores.Batch{Checkpoint: "projector", Through: through, Records: b}); err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantRecords(t, "history", history(t, st, stores.HistoryQuery{Limit: stores.MaxLimit}), newestFirst(data))
	for _, r := range (stores.Batch{Records: data}).LatestPerChange() {
		if i := issueOf(t, st, "p", r.ChangeID); i.Seq != r.Seq || i.Status != stores.IssueClosed {
			t.Fatalf("issue %s: seq %d status %s, want seq %d CLOSED", r.ChangeID, i.Seq, i.Status, r.Seq)
		}
	}
	if n, err := st.Checkpoint(context.Background(), "projector"); err != nil || n != seq {
		t.Fatalf("checkpoint = %d, %v; want %d", n, err, seq)
	}
}

func testCancelledContext(t *testing.T, s *suite) {
	st := s.open(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := stores.Batch{Checkpoint: "projector", Records: dataset()}
	if err := st.Apply(ctx, b); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with a cancelled context = %v, want context.Canceled", err)
	}
	if s.features.AtomicBatch {
		if got := history(t, st, stores.HistoryQuery{}); len(got) != 0 {
			t.Fatalf("a cancelled atomic Apply left %d rows", len(got))
		}
	}
	if _, err := st.History(ctx, stores.HistoryQuery{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("History with a cancelled context = %v", err)
	}
	if _, err := st.Issues(ctx, stores.IssueQuery{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Issues with a cancelled context = %v", err)
	}
	if _, err := st.Checkpoint(ctx, "projector"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Checkpoint with a cancelled context = %v", err)
	}
	// A deadline in the past counts too.
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if err := st.Apply(dctx, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Apply past its deadline = %v, want context.DeadlineExceeded", err)
	}
	// The store is still whole and usable: a retry lands everything.
	apply(t, st, b.Records...)
	wantRecords(t, "history after retry", history(t, st, stores.HistoryQuery{}), newestFirst(b.Records))
}

func testNamesDoNotCollide(t *testing.T, s *suite) {
	a, b := s.open(t, "a"), s.open(t, "b")
	apply(t, a, rec(1, events.ExecutionStarted, "p", "c"), rec(2, events.ExecutionFailed, "p", "c"))
	if got := history(t, b, stores.HistoryQuery{}); len(got) != 0 {
		t.Fatalf("store b sees %d rows of store a", len(got))
	}
	if got := issues(t, b, stores.IssueQuery{}); len(got) != 0 {
		t.Fatalf("store b sees %d issues of store a", len(got))
	}
	if n, _ := b.Checkpoint(context.Background(), "projector"); n != 0 {
		t.Fatalf("store b sees store a's checkpoint %d", n)
	}
	// Same event ids in both: each keeps its own copy.
	apply(t, b, rec(1, events.ExecutionStarted, "p", "c"))
	if got := history(t, a, stores.HistoryQuery{}); len(got) != 2 {
		t.Fatalf("store a has %d rows, want 2", len(got))
	}
	if i := issueOf(t, b, "p", "c"); i.Status != stores.IssueInProgress {
		t.Fatalf("store b issue = %+v", i)
	}
	// Reopening a namespace sees its data.
	if got := history(t, s.open(t, "a"), stores.HistoryQuery{}); len(got) != 2 {
		t.Fatalf("reopened store a has %d rows, want 2", len(got))
	}
}

func testInvalidInput(t *testing.T, s *suite) {
	st := s.open(t, "")
	ctx := context.Background()
	bad := rec(1, events.ExecutionStarted, "p", "c")
	bad.Seq = 0
	noExec := rec(2, events.ExecutionStarted, "p", "c")
	noExec.ExecutionID = ""
	for name, b := range map[string]stores.Batch{
		"sequence 0":    {Checkpoint: "projector", Records: []stores.Record{bad}},
		"invalid event": {Checkpoint: "projector", Records: []stores.Record{rec(3, events.ExecutionStarted, "p", "c"), noExec}},
		"no checkpoint": {Records: []stores.Record{rec(1, events.ExecutionStarted, "p", "c")}},
	} {
		if err := st.Apply(ctx, b); !errors.Is(err, stores.ErrInvalidRecord) {
			t.Errorf("Apply(%s) = %v, want ErrInvalidRecord", name, err)
		}
	}
	if got := history(t, st, stores.HistoryQuery{}); len(got) != 0 {
		t.Fatalf("a rejected batch wrote %d rows", len(got))
	}
	for _, q := range []stores.HistoryQuery{{Limit: -1}, {Limit: stores.MaxLimit + 1}, {State: "EXPLODED"}} {
		if _, err := st.History(ctx, q); !errors.Is(err, stores.ErrInvalidQuery) {
			t.Errorf("History(%+v) = %v, want ErrInvalidQuery", q, err)
		}
	}
	for _, q := range []stores.IssueQuery{{Limit: -5}, {Status: "MAYBE"}} {
		if _, err := st.Issues(ctx, q); !errors.Is(err, stores.ErrInvalidQuery) {
			t.Errorf("Issues(%+v) = %v, want ErrInvalidQuery", q, err)
		}
	}
}

func testLargeBatch(t *testing.T, s *suite) {
	st := s.open(t, "")
	var data []stores.Record
	for i := range 300 {
		data = append(data, rec(uint64(i+1), events.ExecutionStarted, "p", fmt.Sprintf("c%03d", i%120)))
	}
	apply(t, st, data...)
	apply(t, st, data...) // and again: 300 idempotent writes hitting existing rows
	if got := history(t, st, stores.HistoryQuery{Limit: 1000}); len(got) != 300 {
		t.Fatalf("history rows = %d, want 300", len(got))
	}
	if got := issues(t, st, stores.IssueQuery{Limit: 1000}); len(got) != 120 {
		t.Fatalf("issues = %d, want 120", len(got))
	}
	if i := issueOf(t, st, "p", "c005"); i.Seq != 246 {
		t.Fatalf("issue c005 seq = %d, want 246 (the last of its 3 events)", i.Seq)
	}
}

// testNewerIssueDoesNotHideOthers: in a batch where one change's stored
// issue is already newer (its write is refused by the sequence guard), the
// other changes' issues must still be written. Backends that send issue
// writes in bulk must not stop at the first refusal.
func testNewerIssueDoesNotHideOthers(t *testing.T, s *suite) {
	st := s.open(t, "")
	apply(t, st, rec(100, events.ExecutionSucceeded, "p", "a"))
	apply(t, st, rec(1, events.ExecutionStarted, "p", "a"), rec(2, events.ExecutionStarted, "p", "b"),
		rec(3, events.ExecutionFailed, "p", "c"), rec(4, events.ExecutionStarted, "p", "d"))
	if i := issueOf(t, st, "p", "a"); i.Seq != 100 {
		t.Fatalf("issue a went back to seq %d", i.Seq)
	}
	for change, seq := range map[string]uint64{"b": 2, "c": 3, "d": 4} {
		if i := issueOf(t, st, "p", change); i.Seq != seq {
			t.Fatalf("issue %s has seq %d, want %d", change, i.Seq, seq)
		}
	}
}

// testSparseSequences uses stream sequences far apart (a long-lived stream
// shared with other pipelines), so that backends which bucket or page by
// sequence cross their boundaries in every query.
func testSparseSequences(t *testing.T, s *suite) {
	st := s.open(t, "")
	seqs := []uint64{1, 255, 256, 257, 4095, 4096, 65_537, 1 << 20, 1<<32 + 7, 1 << 40}
	var data []stores.Record
	for i, seq := range seqs {
		typ := events.ExecutionStarted
		if i%3 == 2 {
			typ = events.ExecutionFailed
		}
		data = append(data, rec(seq, typ, []string{"p", "q"}[i%2], fmt.Sprintf("c%d", i%4)))
	}
	// Apply out of order, in two batches.
	apply(t, st, data[5:]...)
	apply(t, st, data[:5]...)
	wantRecords(t, "all", history(t, st, stores.HistoryQuery{}), newestFirst(data))
	for _, q := range []stores.HistoryQuery{
		{Pipeline: "p"}, {ChangeID: "c1"}, {State: events.StateFailed}, {BeforeSeq: 1 << 32}, {BeforeSeq: 4096, Limit: 2},
		{Pipeline: "q", BeforeSeq: 1 << 20}, {Since: data[6].OccurredAt},
	} {
		want := filter(data, q)
		if q.Limit > 0 && len(want) > q.Limit {
			want = want[:q.Limit]
		}
		wantRecords(t, fmt.Sprintf("History(%+v)", q), history(t, st, q), want)
	}
	var paged []stores.Record
	q := stores.HistoryQuery{Limit: 3}
	for {
		page := history(t, st, q)
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		q.BeforeSeq = page[len(page)-1].Seq
	}
	wantRecords(t, "paged", paged, newestFirst(data))
	for _, r := range (stores.Batch{Records: data}).LatestPerChange() {
		if i := issueOf(t, st, r.Pipeline, r.ChangeID); i.Seq != r.Seq {
			t.Fatalf("issue %s/%s seq %d, want %d", r.Pipeline, r.ChangeID, i.Seq, r.Seq)
		}
	}
	if n, err := st.Checkpoint(context.Background(), "projector"); err != nil || n != 1<<40 {
		t.Fatalf("checkpoint = %d, %v", n, err)
	}
}

func testRepair(t *testing.T, s *suite) {
	st := s.open(t, "")
	r, ok := st.(stores.Repairer)
	if ok != s.features.Repairer {
		t.Fatalf("store implements Repairer: %v; Features.Repairer says %v", ok, s.features.Repairer)
	}
	if !ok {
		t.Skip("no targeted repair: repair rebuilds by replay")
	}
	ctx := context.Background()
	data := dataset()
	apply(t, st, data...)
	want := history(t, st, stores.HistoryQuery{})
	wantIssues := issues(t, st, stores.IssueQuery{})

	// Corrupt: alter a row, lose a row, add a stray row, falsify an issue,
	// add an issue for a change the stream never saw.
	altered := data[2]
	altered.ErrorMessage, altered.Author = "tampered", "mallory"
	stray := rec(999, events.ExecutionSucceeded, "billing", "ghost")
	badIssue := stores.IssueOf(data[1])
	badIssue.Status, badIssue.Seq = stores.IssueClosed, 12345
	ghostIssue := stores.IssueOf(stray)
	if err := r.Repair(ctx, stores.Repair{Put: []stores.Record{altered, stray}, Delete: []stores.Record{data[5]},
		Issues: []stores.Issue{badIssue, ghostIssue}}); err != nil {
		t.Fatalf("Repair (corrupting): %v", err)
	}
	got := history(t, st, stores.HistoryQuery{})
	if len(got) != len(want) { // one lost, one stray
		t.Fatalf("after corruption: %d rows, want %d", len(got), len(want))
	}
	if row := history(t, st, stores.HistoryQuery{Pipeline: altered.Pipeline, ChangeID: altered.ChangeID}); !slices.ContainsFunc(row, func(r stores.Record) bool { return r.Author == "mallory" }) {
		t.Fatal("Put did not replace the existing row")
	}
	if i := issueOf(t, st, badIssue.Pipeline, badIssue.ChangeID); i.Seq != 12345 {
		t.Fatalf("Issues did not replace the row regardless of sequence: %+v", i)
	}
	// Repair back.
	if err := r.Repair(ctx, stores.Repair{Put: []stores.Record{data[2], data[5]}, Delete: []stores.Record{stray},
		Issues:       []stores.Issue{stores.IssueOf(latestOf(data, badIssue.Pipeline, badIssue.ChangeID))},
		DeleteIssues: []stores.Issue{ghostIssue}}); err != nil {
		t.Fatalf("Repair (fixing): %v", err)
	}
	wantRecords(t, "history after repair", history(t, st, stores.HistoryQuery{}), want)
	if got := issues(t, st, stores.IssueQuery{}); !reflect.DeepEqual(normIssues(got), normIssues(wantIssues)) {
		t.Fatalf("issues after repair:\n got %+v\nwant %+v", got, wantIssues)
	}
	if err := r.Repair(ctx, stores.Repair{}); err != nil {
		t.Fatalf("empty Repair: %v", err)
	}
}

func latestOf(data []stores.Record, pipeline, change string) stores.Record {
	var out stores.Record
	for _, r := range data {
		if r.Pipeline == pipeline && r.ChangeID == change && r.Seq > out.Seq {
			out = r
		}
	}
	return out
}

func testSchemaCheck(t *testing.T, s *suite) {
	st := s.open(t, "")
	c, ok := st.(stores.SchemaChecker)
	if ok != s.features.SchemaChecker {
		t.Fatalf("store implements SchemaChecker: %v; Features.SchemaChecker says %v", ok, s.features.SchemaChecker)
	}
	if !ok {
		t.Skip("no schema check")
	}
	problems, err := c.CheckSchema(context.Background())
	if err != nil || len(problems) != 0 {
		t.Fatalf("fresh store: CheckSchema = %v, %v", problems, err)
	}
}

// testWriteProbe: a store's write probe succeeds on a writable store and
// leaves nothing a reader sees: no row, no issue, no checkpoint moved.
func testWriteProbe(t *testing.T, s *suite) {
	st := s.open(t, "")
	p, ok := st.(stores.WriteProber)
	if !ok {
		t.Skip("no write probe")
	}
	ctx := context.Background()
	apply(t, st, rec(1, events.ExecutionStarted, "p", "c1"))
	for range 2 {
		if err := p.ProbeWrite(ctx); err != nil {
			t.Fatalf("ProbeWrite: %v", err)
		}
	}
	hist, err := st.History(ctx, stores.HistoryQuery{Limit: stores.MaxLimit})
	if err != nil || len(hist) != 1 {
		t.Fatalf("history after probes: %d rows, %v; want the 1 applied", len(hist), err)
	}
	is, err := st.Issues(ctx, stores.IssueQuery{Limit: stores.MaxLimit})
	if err != nil || len(is) != 1 {
		t.Fatalf("issues after probes: %d, %v; want 1", len(is), err)
	}
	if cp, err := st.Checkpoint(ctx, "projector"); err != nil || cp != 1 {
		t.Fatalf("checkpoint after probes: %d, %v; want 1", cp, err)
	}
}

// testSignedEvents: a row keeps its event's signature and the projector's
// trust verdict, and an untrusted event keeps its change's issue OPEN
// whatever it claims — a forged success or resolution closes nothing —
// until a trusted event follows it.
func testSignedEvents(t *testing.T, s *suite) {
	st := s.open(t, "")
	untrusted := func(r stores.Record, why string) stores.Record { r.Trust = why; return r }
	unsigned := func(r stores.Record) stores.Record { r.Signer, r.Signature = "", ""; return r }
	forged := untrusted(unsigned(rec(2, events.ExecutionSucceeded, "p", "forged-success")), "unsigned: no Auditflow-Signature header")
	steps := []stores.Record{
		rec(1, events.ExecutionStarted, "p", "forged-success"), forged,
		rec(3, events.ExecutionStarted, "p", "forged-resolution"), rec(4, events.ExecutionFailed, "p", "forged-resolution"),
		untrusted(rec(5, events.ManuallyResolved, "p", "forged-resolution"), "key runner-1 ("+testSigner+") may not sign ManuallyResolved"),
		rec(6, events.ExecutionStarted, "p", "settled"),
		untrusted(rec(7, events.ExecutionSucceeded, "p", "settled"), "bad signature: runner-1 did not sign these bytes"),
		rec(8, events.ManuallyResolved, "p", "settled"),
	}
	apply(t, st, steps[:5]...)
	apply(t, st, steps[5:]...)
	wantRecords(t, "history", history(t, st, stores.HistoryQuery{}), newestFirst(steps))
	for _, c := range []struct {
		change string
		last   stores.Record
		status stores.IssueStatus
	}{
		{"forged-success", forged, stores.IssueOpen},
		{"forged-resolution", steps[4], stores.IssueOpen},
		{"settled", steps[7], stores.IssueClosed},
	} {
		i := issueOf(t, st, "p", c.change)
		if want := normIssue(stores.IssueOf(c.last)); !reflect.DeepEqual(normIssue(i), want) || i.Status != c.status || i.Trust != c.last.Trust {
			t.Fatalf("issue %s:\n got %+v\nwant %+v (%s)", c.change, i, want, c.status)
		}
	}
	var open []string
	for _, i := range issues(t, st, stores.IssueQuery{Status: stores.IssueOpen}) {
		open = append(open, i.ChangeID)
	}
	slices.Sort(open)
	if want := []string{"forged-resolution", "forged-success"}; !slices.Equal(open, want) {
		t.Fatalf("open issues = %v, want %v: an untrusted APPLIED or MANUALLY_APPLIED is open", open, want)
	}
	if closed := issues(t, st, stores.IssueQuery{Status: stores.IssueClosed}); len(closed) != 1 || closed[0].ChangeID != "settled" {
		t.Fatalf("closed issues = %+v, want settled only", closed)
	}
}

// testRepeatedEventIsARow: an event published again (the same event id at
// a later sequence, as a replay writes it) is a row of its own, shown with
// its chain verdict as StateOutOfChain, and its change's issue is OPEN in
// that state; the original row is untouched, and listing by state finds
// each row under the state it stores.
func testRepeatedEventIsARow(t *testing.T, s *suite) {
	st := s.open(t, "")
	started := rec(1, events.ExecutionStarted, "p", "c")
	applied := rec(2, events.ExecutionSucceeded, "p", "c")
	copied := applied
	copied.Seq, copied.Chain = 7, "written to follow stream sequence 1, but sequence 2 precedes it: a copy of an earlier event published again, or a fork"
	other := rec(5, events.ExecutionFailed, "p", "d")
	apply(t, st, started, applied, other, copied)
	apply(t, st, copied, applied) // redelivered: still one row per sequence
	want := []stores.Record{copied, other, applied, started}
	wantRecords(t, "history", history(t, st, stores.HistoryQuery{}), want)
	wantRecords(t, "history of the change", history(t, st, stores.HistoryQuery{Pipeline: "p", ChangeID: "c"}), []stores.Record{copied, applied, started})
	wantRecords(t, "APPLIED rows", history(t, st, stores.HistoryQuery{State: events.StateApplied}), []stores.Record{applied})
	wantRecords(t, "OUT_OF_CHAIN rows", history(t, st, stores.HistoryQuery{State: events.StateOutOfChain}), []stores.Record{copied})
	i := issueOf(t, st, "p", "c")
	if want := normIssue(stores.IssueOf(copied)); !reflect.DeepEqual(normIssue(i), want) ||
		i.Status != stores.IssueOpen || i.State != events.StateOutOfChain || i.Chain != copied.Chain {
		t.Fatalf("issue:\n got %+v\nwant %+v (OPEN, OUT_OF_CHAIN)", i, want)
	}
	if open := issues(t, st, stores.IssueQuery{Status: stores.IssueOpen}); len(open) != 2 {
		t.Fatalf("open issues = %+v, want c (out of chain) and d (failed)", open)
	}
	r, ok := st.(stores.Repairer)
	if !ok {
		return
	}
	// Repair addresses rows by sequence: deleting the copy leaves the
	// original of the same id.
	if err := r.Repair(context.Background(), stores.Repair{Delete: []stores.Record{copied}}); err != nil {
		t.Fatalf("Repair: %v", err)
	}
	wantRecords(t, "history after deleting the copy", history(t, st, stores.HistoryQuery{Pipeline: "p", ChangeID: "c"}), []stores.Record{applied, started})
}

// testStoredValuesShowWhereListed alters each value History filters on in
// one stored row, as someone with write access to the database could, and
// checks the contract that what a query filters on is what it returns: the
// row read back carries the altered value (so verify, comparing it with
// the stream, sees it), and a listing filtered on the old or the new value
// never returns a row that does not carry that value — so no row is shown
// as APPLIED under FAILED, say.
func testStoredValuesShowWhereListed(t *testing.T, s *suite) {
	ctx := context.Background()
	st := s.open(t, "")
	tam, ok := st.(Tamperer)
	if !ok {
		t.Fatalf("%T does not implement storetest.Tamperer: implement it in a _test.go file of the backend's package", st)
	}
	recs := []stores.Record{
		rec(1, events.ExecutionStarted, "p", "c"), rec(2, events.ExecutionSucceeded, "p", "c"),
		rec(3, events.ExecutionStarted, "q", "d"), rec(4, events.ExecutionFailed, "q", "d"),
	}
	apply(t, st, recs...)
	target := recs[1] // APPLIED, p/c, at base+2s
	newAt := base.Add(time.Hour)
	for _, c := range []struct {
		field, value string
		read         func(stores.Record) string
		queries      []stores.HistoryQuery // the old value and the new
	}{
		{"state", string(events.StateFailed), func(r stores.Record) string { return string(r.RowState) },
			[]stores.HistoryQuery{{State: events.StateApplied}, {State: events.StateFailed}}},
		{"pipeline", "q", func(r stores.Record) string { return r.Pipeline },
			[]stores.HistoryQuery{{Pipeline: "p"}, {Pipeline: "q"}, {Pipeline: "q", ChangeID: "c"}}},
		{"changeId", "d", func(r stores.Record) string { return r.ChangeID },
			[]stores.HistoryQuery{{Pipeline: "p", ChangeID: "c"}, {Pipeline: "p", ChangeID: "d"}, {ChangeID: "d"}}},
		{"occurredAt", stores.FormatTime(newAt), func(r stores.Record) string { return stores.FormatTime(r.OccurredAt) },
			[]stores.HistoryQuery{{Since: newAt.Add(-time.Minute)}, {Since: base.Add(90 * time.Second)}}},
	} {
		t.Run(c.field, func(t *testing.T) {
			if err := st.(stores.Store).Reset(ctx); err != nil {
				t.Fatal(err)
			}
			apply(t, st, recs...)
			if err := tam.TamperRow(ctx, target.Seq, c.field, c.value); err != nil {
				t.Fatalf("TamperRow(%d, %s, %q): %v", target.Seq, c.field, c.value, err)
			}
			var got *stores.Record
			for _, r := range history(t, st, stores.HistoryQuery{}) {
				if r.Seq == target.Seq {
					got = &r
				}
			}
			if got == nil || c.read(*got) != c.value {
				t.Fatalf("row %d read back after %s was set to %q: %+v; a reader must see the stored value", target.Seq, c.field, c.value, got)
			}
			for _, q := range c.queries {
				for _, r := range history(t, st, q) {
					if !q.Match(r) {
						t.Errorf("History(%+v) returned row %d with pipeline %q, change %q, state %q, time %s: not what it filtered on",
							q, r.Seq, r.Pipeline, r.ChangeID, r.RowState, stores.FormatTime(r.OccurredAt))
					}
				}
			}
		})
	}
}
