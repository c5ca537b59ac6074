package mongostore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/mongostore"
	"github.com/auditflow/auditflow/stores/storetest"
)

const uriEnv = "AUDITFLOW_TEST_MONGO_URI"

// testBatchSize stays under FerretDB's 50-statement limit.
const testBatchSize = 40

// connect returns a client for the test server and a database name of its
// own, dropped (with everything every namespace wrote) when tb ends.
func connect(tb testing.TB) (*mongo.Client, string) {
	tb.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(storetest.ServerAddr(tb, uriEnv)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	db := "aftest_" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := client.Database(db).Drop(ctx); err != nil {
			tb.Logf("drop %s: %v", db, err)
		}
	})
	return client, db
}

// newStore opens stores in db, one collection set per namespace.
func newStore(client *mongo.Client, db string) storetest.NewStore {
	return func(t testing.TB, ns string) stores.Store {
		s, err := mongostore.New(context.Background(), client, mongostore.Config{
			Database: db, ChangeLogCollection: ns + "_changeLog", IssuesCollection: ns + "_issues",
			CheckpointsCollection: ns + "_checkpoints", BatchSize: testBatchSize, Logger: natstest.Logger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	client, db := connect(t)
	storetest.Run(t, newStore(client, db), storetest.Features{
		AtomicBatch:   false, // no transactions: see the package doc
		Repairer:      true,
		SchemaChecker: true,
		// See the package doc: FerretDB's filtered updates are not atomic.
		NonAtomicUpdates: ferretDB(t, client),
	})
}

// TestVerifySeesAlteredColumns: every value listings filter on, altered in
// the database, is reported by verify and put back by repair.
func TestVerifySeesAlteredColumns(t *testing.T) {
	client, db := connect(t)
	storebench.TamperVerifyRepair(t, newStore(client, db))
}

// BenchmarkProjector: on FerretDB the absolute numbers are FerretDB's
// (on PostgreSQL, with full-scan _id lookups); only the ratios to the raw
// rate measured in the same run mean anything. The raw writer does
// Apply's work without its guards (RawApply: the same documents, indexes
// and commands), so apply/raw is what idempotence and ordering cost:
//
//	go test ./stores/mongostore -run '^$' -bench Projector -benchtime 1x
func BenchmarkProjector(b *testing.B) {
	client, db := connect(b)
	open := newStore(client, db)
	var raws sync.Map // namespace → *rawStore
	storebench.Bench(b, open, func(ctx context.Context, ns string, recs []stores.Record) error {
		v, _ := raws.LoadOrStore(ns, &rawStore{})
		r := v.(*rawStore)
		r.once.Do(func() { r.st = open(b, ns).(*mongostore.Store) })
		if len(recs) == 0 {
			return nil // opened: tables and indexes created, untimed
		}
		return r.st.RawApply(ctx, stores.Batch{Checkpoint: "bench", Through: recs[0].Seq, Records: recs})
	}, storebench.BenchConfig{Events: 2000, BatchSize: testBatchSize})
}

// rawStore is a store the raw writer opens once per namespace, for its
// collections and indexes.
type rawStore struct {
	once sync.Once
	st   *mongostore.Store
}

// TestParallelReplay: a rebuild with 4 writers equals a single-writer one,
// and a cancelled one resumes from a checkpoint it has fully stored.
// Batches stay under FerretDB's 50-statement limit; a few thousand
// documents at most (its _id lookups are full scans).
func TestParallelReplay(t *testing.T) {
	client, db := connect(t)
	storebench.ParallelReplay(t, newStore(client, db), storebench.ReplayConfig{Events: 600, BatchSize: testBatchSize})
}

// BenchmarkReplay: replay into FerretDB over the same run's stream read
// and bulk insert, and 8 writers over one. FerretDB's figures, not
// MongoDB's; batches under its 50-statement limit, a few thousand
// documents (its _id lookups are full scans):
//
//	go test ./stores/mongostore -run '^$' -bench Replay -benchtime 1x
func BenchmarkReplay(b *testing.B) {
	client, db := connect(b)
	storebench.BenchReplay(b, newStore(client, db), storebench.ReplayBenchConfig{Events: 2000, BatchSize: testBatchSize, Writers: 8})
}

func TestConfigErrors(t *testing.T) {
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1/")) // never dialled
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	for _, cfg := range []mongostore.Config{
		{Database: "a.b"},
		{Database: "has space"},
		{ChangeLogCollection: "system.profile"},
		{IssuesCollection: "$cmd"},
		{ChangeLogCollection: "same", IssuesCollection: "SAME"},
		{BatchSize: -1},
		{BatchSize: mongostore.MaxBatchSize + 1},
		{WriteConcern: writeconcern.Unacknowledged()},
	} {
		if _, err := mongostore.New(context.Background(), client, cfg); !errors.Is(err, stores.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := mongostore.New(context.Background(), nil, mongostore.Config{}); !errors.Is(err, stores.ErrInvalidConfig) {
		t.Errorf("New with no client = %v", err)
	}
	var cfg mongostore.Config
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Database != "auditflow" || cfg.ChangeLogCollection != "changeLog" || cfg.IssuesCollection != "issues" ||
		cfg.CheckpointsCollection != "auditCheckpoints" || cfg.BatchSize != 0 /* chosen by New */ ||
		cfg.WriteConcern.W != "majority" || cfg.WriteConcern.Journal == nil || !*cfg.WriteConcern.Journal ||
		cfg.ReadConcern.Level != "majority" || cfg.ReadPreference.Mode().String() != "primary" {
		t.Errorf("defaults: %+v", cfg)
	}
}

// open returns a store in namespace ns of database db.
func open(t *testing.T, client *mongo.Client, db, ns string) *mongostore.Store {
	t.Helper()
	s, err := mongostore.New(context.Background(), client, mongostore.Config{
		Database: db, ChangeLogCollection: ns + "_changeLog", IssuesCollection: ns + "_issues",
		CheckpointsCollection: ns + "_checkpoints", BatchSize: testBatchSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func event(seq uint64, typ events.Type, pipeline, change string) stores.Record {
	e := events.New(typ, pipeline, change)
	e.ExecutionID = "exec-" + change
	if typ == events.ExecutionFailed {
		e.ErrorMessage = "boom"
	}
	return stores.Record{Seq: seq, Event: e}
}

// An issue that is already newer must not stop the rest of its batch.
// FerretDB stops an unordered update batch at its first failure and says
// so only by its counts; a store trusting the reported failures alone
// would drop the other issues.
func TestNewerIssueDoesNotHideOthers(t *testing.T) {
	client, db := connect(t)
	s := open(t, client, db, "newer")
	ctx := context.Background()
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "p", Records: []stores.Record{
		event(10, events.ExecutionSucceeded, "p", "a"), event(11, events.ExecutionSucceeded, "p", "c"),
	}}); err != nil {
		t.Fatal(err)
	}
	batch := []stores.Record{event(5, events.ExecutionStarted, "p", "a")}
	for i := range 20 {
		batch = append(batch, event(uint64(20+i), events.ExecutionStarted, "p", fmt.Sprintf("n%02d", i)))
		if i == 10 {
			batch = append(batch, event(6, events.ExecutionStarted, "p", "c"))
		}
	}
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "p", Records: batch}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Issues(ctx, stores.IssueQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	seqs := map[string]uint64{}
	for _, i := range got {
		seqs[i.ChangeID] = i.Seq
	}
	if len(got) != 22 || seqs["a"] != 10 || seqs["c"] != 11 || seqs["n00"] != 20 || seqs["n19"] != 39 {
		t.Fatalf("issues after a batch with older events: %v", seqs)
	}
}

// Writers racing to create one issue converge on the newest event: an
// upsert that loses the insert race is retried against the winner's
// document rather than taken for "already newer".
//
// It cannot pass on FerretDB v1.24: its update reads the matching document,
// then writes it back by _id without checking the filter again, so two
// concurrent conditional updates of one document can lose the newer one.
// MongoDB applies a filtered update to a document atomically.
func TestIssueCreationRace(t *testing.T) {
	client, db := connect(t)
	if ferretDB(t, client) {
		t.Skip("FerretDB's updates are not atomic read-modify-writes (see the comment)")
	}
	s := open(t, client, db, "race")
	const writers, rounds = 6, 8
	for round := range rounds {
		change := fmt.Sprintf("c%d", round)
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Go(func() {
				r := event(uint64(round*100+w+1), events.ExecutionStarted, "p", change)
				if err := s.Apply(context.Background(), stores.Batch{Checkpoint: "p", Records: []stores.Record{r}}); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		is, err := s.Issues(context.Background(), stores.IssueQuery{Pipeline: "p", ChangeID: change})
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(round*100 + writers); len(is) != 1 || is[0].Seq != want {
			t.Fatalf("round %d: issues %+v, want one at seq %d", round, is, want)
		}
	}
}

// ferretDB reports whether the server is FerretDB, which says so in buildInfo.
func ferretDB(t *testing.T, client *mongo.Client) bool {
	var info bson.Raw
	if err := client.Database("admin").RunCommand(context.Background(), bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		t.Fatal(err)
	}
	_, err := info.LookupErr("ferretdbVersion")
	return err == nil
}

// Text the audit must keep byte for byte although FerretDB cannot hold it
// as a string, metadata keys MongoDB restricts, times finer than BSON's
// milliseconds, in filters too, and numbers beyond 2^53 (float64's exact
// integers) up to a uint64's last bit.
func TestExoticValues(t *testing.T) {
	client, db := connect(t)
	s := open(t, client, db, "exotic")
	ctx := context.Background()
	r := event(1, events.ExecutionFailed, "pipe\x00line", "change\x00id")
	r.ErrorMessage, r.Author = "nul\x00inside", "ünï\x00code"
	r.Metadata = map[string]string{"a.b": "dotted", "$x": "dollar", "k\x00": "v\x00"}
	r.OccurredAt = time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	r.LockToken = 1<<64 - 1
	r.Hash, r.PrevHash = events.Hash([]byte("this one")), events.Hash([]byte("the one before"))
	r.PrevSeq, r.Position = 1<<63-1, 1<<53+1
	r.Chain = "out of chain:\x00 a copy"
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "nul\x00name", Through: r.Seq, Records: []stores.Record{r}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		since time.Time
		want  int
	}{{r.OccurredAt, 1}, {r.OccurredAt.Add(-1), 1}, {r.OccurredAt.Add(1), 0}, {r.OccurredAt.Truncate(time.Millisecond), 1}} {
		got, err := s.History(ctx, stores.HistoryQuery{Pipeline: r.Pipeline, ChangeID: r.ChangeID, Since: c.since})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != c.want {
			t.Fatalf("History since %s: %d rows, want %d", c.since.Format(time.RFC3339Nano), len(got), c.want)
		}
		want := r
		want.RowState = events.StateOutOfChain
		if c.want == 1 && !reflect.DeepEqual(got[0], want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got[0], want)
		}
	}
	is, err := s.Issues(ctx, stores.IssueQuery{Pipeline: r.Pipeline, ChangeID: r.ChangeID})
	if err != nil || len(is) != 1 || !reflect.DeepEqual(is[0], stores.IssueOf(r)) {
		t.Fatalf("issue: %+v, %v; want %+v", is, err, stores.IssueOf(r))
	}
	if n, err := s.Checkpoint(ctx, "nul\x00name"); err != nil || n != 1 {
		t.Fatalf("checkpoint = %d, %v", n, err)
	}
}

// Fields left out when empty (an unsigned event, one without a hash chain
// or place in it) read as "" and 0.
func TestDocumentsWithoutOptionalFields(t *testing.T) {
	client, db := connect(t)
	s := open(t, client, db, "bare")
	ctx := context.Background()
	r := event(1, events.ExecutionStarted, "p", "c")
	if _, err := client.Database(db).Collection("bare_changeLog").InsertOne(ctx, rawDoc(r)); err != nil {
		t.Fatal(err)
	}
	got, err := s.History(ctx, stores.HistoryQuery{})
	if err != nil || len(got) != 1 {
		t.Fatalf("History = %+v, %v", got, err)
	}
	if g := got[0]; g.ID != r.ID || g.Seq != 1 || g.Hash != "" || g.PrevHash != "" || g.PrevSeq != 0 || g.Position != 0 ||
		g.Chain != "" || g.Trust != "" || g.RowState != events.StateStarted {
		t.Fatalf("bare document read as %+v", g)
	}
}

// TestOldLayout: a changeLog an older version wrote, keyed by event id,
// opens (so that a replay can rebuild it), but every read and write says
// how to rebuild it and CheckSchema reports it; Reset empties it into the
// current layout, drops the older indexes and creates the current ones,
// and the store then holds an event published twice as two rows.
func TestOldLayout(t *testing.T) {
	client, db := connect(t)
	ctx := context.Background()
	coll := client.Database(db).Collection("old_changeLog")
	old := event(3, events.ExecutionSucceeded, "p", "c")
	doc := rawDoc(old)
	doc[0] = bson.E{Key: "_id", Value: old.ID}
	doc = append(doc, bson.E{Key: "seq", Value: int64(old.Seq)})
	if _, err := coll.InsertOne(ctx, doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []bson.D{{{Key: "seq", Value: -1}}, {{Key: "state", Value: 1}, {Key: "seq", Value: -1}}} {
		if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: k}); err != nil {
			t.Fatal(err)
		}
	}
	s := open(t, client, db, "old")
	for name, err := range map[string]error{
		"Apply":      s.Apply(ctx, stores.Batch{Checkpoint: "p", Records: []stores.Record{event(4, events.ExecutionStarted, "p", "d")}}),
		"History":    second(s.History(ctx, stores.HistoryQuery{})),
		"Issues":     second(s.Issues(ctx, stores.IssueQuery{})),
		"Checkpoint": second(s.Checkpoint(ctx, "p")),
		"Repair":     s.Repair(ctx, stores.Repair{Delete: []stores.Record{old}}),
		"ProbeWrite": s.ProbeWrite(ctx),
	} {
		if !errors.Is(err, stores.ErrInvalidConfig) || !strings.Contains(err.Error(), "keyed by event id") ||
			!strings.Contains(err.Error(), "auditflow --store mongo replay --reset") {
			t.Errorf("%s on the older layout = %v, want ErrInvalidConfig saying how to rebuild", name, err)
		}
	}
	if n, err := coll.CountDocuments(ctx, bson.D{}); err != nil || n != 1 {
		t.Fatalf("the refused store holds %d documents (%v), want the 1 it was given", n, err)
	}
	problems, err := s.CheckSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"collection " + db + ".old_changeLog has no index {pipeline: 1, changeId: 1, _id: -1}",
		"collection " + db + ".old_changeLog has no index {pipeline: 1, _id: -1}",
		"collection " + db + ".old_changeLog has no index {state: 1, _id: -1}",
		"collection " + db + ".old_changeLog has no index {targetSystem: 1, occurredAt: -1}",
		"collection " + db + ".old_changeLog has no index {author: 1, state: 1, _id: -1}",
		"collection " + db + ".old_changeLog holds changeLog documents keyed by event id, the layout of an older version, " +
			"in which an event published again hides its first row: rebuild the store from the stream with " +
			"`auditflow --store mongo replay --reset` (stop its projectors first), or replay into new collections",
		"collection " + db + ".old_changeLog has index {state: 1, seq: -1} of the older layout (the documents have no seq field): opening the store for writing drops it",
		"collection " + db + ".old_changeLog has index {seq: -1} of the older layout (the documents have no seq field): opening the store for writing drops it",
		"collection " + db + ".old_issues is missing (and with it its 4 indexes)",
		"collection " + db + ".old_checkpoints is missing",
	}
	if !reflect.DeepEqual(problems, want) {
		t.Fatalf("CheckSchema of the older layout:\n got %q\nwant %q", problems, want)
	}

	if err := s.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := s.CheckSchema(ctx); err != nil || len(p) != 0 {
		t.Fatalf("CheckSchema after Reset = %q, %v", p, err)
	}
	again := old
	again.Seq, again.Chain = 9, "repeats the event id of stream sequence 3"
	if err := s.Apply(ctx, stores.Batch{Checkpoint: "p", Through: 9, Records: []stores.Record{old, again}}); err != nil {
		t.Fatal(err)
	}
	rows, err := s.History(ctx, stores.HistoryQuery{})
	if err != nil || len(rows) != 2 || rows[0].Seq != 9 || rows[0].RowState != events.StateOutOfChain || rows[1].ID != old.ID {
		t.Fatalf("after Reset, the event published twice: %+v, %v", rows, err)
	}
}

func second[T any](_ T, err error) error { return err }

// CheckSchema names a dropped index and a dropped collection, and New puts
// them back.
func TestCheckSchemaFindsMissing(t *testing.T) {
	client, db := connect(t)
	s := open(t, client, db, "schema")
	ctx := context.Background()
	if problems, err := s.CheckSchema(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("fresh store: CheckSchema = %q, %v", problems, err)
	}
	if err := client.Database(db).Collection("schema_changeLog").Indexes().DropOne(ctx, "state_1__id_-1"); err != nil {
		t.Fatal(err)
	}
	if err := client.Database(db).Collection("schema_checkpoints").Drop(ctx); err != nil {
		t.Fatal(err)
	}
	problems, err := s.CheckSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"collection " + db + ".schema_changeLog has no index {state: 1, _id: -1}",
		"collection " + db + ".schema_checkpoints is missing",
	}
	if !reflect.DeepEqual(problems, want) {
		t.Fatalf("CheckSchema = %q, want %q", problems, want)
	}
	if problems, err := open(t, client, db, "schema").CheckSchema(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("after reopening: CheckSchema = %q, %v", problems, err)
	}
	_ = s.Close()
	if _, err := s.CheckSchema(ctx); !errors.Is(err, stores.ErrClosed) {
		t.Fatalf("CheckSchema after Close = %v", err)
	}
	if err := s.Repair(ctx, stores.Repair{}); !errors.Is(err, stores.ErrClosed) {
		t.Fatalf("Repair after Close = %v", err)
	}
}

// rawDoc is the same event as a plain document of the same fields.
func rawDoc(r stores.Record) bson.D {
	return bson.D{
		{Key: "_id", Value: int64(r.Seq)}, {Key: "eventId", Value: r.ID}, {Key: "type", Value: string(r.Type)},
		{Key: "state", Value: string(r.State())}, {Key: "schemaVersion", Value: int32(r.SchemaVersion)},
		{Key: "pipeline", Value: r.Pipeline}, {Key: "changeId", Value: r.ChangeID}, {Key: "author", Value: r.Author},
		{Key: "executionId", Value: r.ExecutionID}, {Key: "order", Value: r.Order},
		{Key: "targetSystem", Value: r.TargetSystem}, {Key: "host", Value: r.Host}, {Key: "runnerId", Value: r.RunnerID},
		{Key: "lockToken", Value: int64(r.LockToken)}, {Key: "occurredAt", Value: r.OccurredAt},
		{Key: "occurredAtNanos", Value: int32(r.OccurredAt.Nanosecond() % 1e6)},
		{Key: "durationNanos", Value: int64(r.Duration)}, {Key: "errorMessage", Value: r.ErrorMessage},
		{Key: "errorTrace", Value: r.ErrorTrace},
		{Key: "metadata", Value: bson.A{bson.D{{Key: "k", Value: "ticket"}, {Key: "v", Value: r.Metadata["ticket"]}}}},
		{Key: "recovery", Value: string(r.Recovery)}, {Key: "transactional", Value: r.Transactional},
	}
}

// TestBatchSizeFitsTheServer: with no BatchSize, New asks the server: the
// test server is FerretDB, which cannot answer 50 statements or more, and
// gets FerretDBBatchSize; an explicit size is kept.
func TestBatchSizeFitsTheServer(t *testing.T) {
	client, _ := connect(t)
	s, err := mongostore.New(context.Background(), client, mongostore.Config{Database: "batchsize_" + storetest.RandomID()})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.BatchSize(); got != mongostore.FerretDBBatchSize {
		t.Fatalf("default batch size on FerretDB: %d, want %d", got, mongostore.FerretDBBatchSize)
	}
	s, err = mongostore.New(context.Background(), client, mongostore.Config{Database: "batchsize_" + storetest.RandomID(), BatchSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.BatchSize(); got != 7 {
		t.Fatalf("explicit batch size: %d, want 7", got)
	}
}
