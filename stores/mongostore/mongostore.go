package mongostore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/auditflow/auditflow/stores"
)

// Config configures a Store. Zero fields take the defaults shown. Where the
// server is, how to authenticate, TLS, pool sizes and the replica set are
// the client's business: put them in its connection URI.
type Config struct {
	// Database holds the three collections: a dedicated audit database or
	// the target system's own. Default "auditflow".
	Database              string
	ChangeLogCollection   string // default "changeLog"
	IssuesCollection      string // default "issues"
	CheckpointsCollection string // default "auditCheckpoints"

	// WriteConcern for every write. Default majority with journal: Apply
	// returning nil means the batch survives a fail-over, so the projector
	// may acknowledge it. Unacknowledged write concerns are refused.
	WriteConcern *writeconcern.WriteConcern
	// ReadConcern for every read. Default majority: reads never show a
	// write that a fail-over could roll back.
	ReadConcern *readconcern.ReadConcern
	// ReadPreference for every read. Default primary. A secondary may lag:
	// a checkpoint read there can be behind, which only costs an idempotent
	// re-apply.
	ReadPreference *readpref.ReadPref

	// BatchSize is the most write statements sent in one command. Default
	// 500 on MongoDB, and FerretDBBatchSize on FerretDB (New asks the
	// server's buildInfo), which (v1.24) never answers a command with 50 or
	// more statements that match existing documents, and then holds the
	// connection, so that a projector's retries exhaust its pool.
	BatchSize int
	// Concurrency is how many of one Apply's commands run at once: its
	// changeLog inserts together, then its issue upserts together.
	// Default 1, at most 64. It matters only for a batch larger than
	// BatchSize, which then costs about one round trip per phase instead
	// of one per command. Keep Concurrency × BatchSize under 50 on
	// FerretDB: its PostgreSQL pool has 50 connections, and concurrent
	// commands that together need more never return.
	Concurrency int

	// SkipIndexes turns off creating the indexes (and the checkpoints
	// collection, which has none) on New, for deployments that manage
	// their schema themselves. The queries need the indexes (see the
	// package documentation); CheckSchema reports any that are missing.
	SkipIndexes bool

	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultDatabase              = "auditflow"
	DefaultChangeLogCollection   = "changeLog"
	DefaultIssuesCollection      = "issues"
	DefaultCheckpointsCollection = "auditCheckpoints"
	DefaultBatchSize             = 500
	// FerretDBBatchSize is the default BatchSize on FerretDB: below the 50
	// statements it cannot answer, measured on v1.24.2.
	FerretDBBatchSize  = 40
	DefaultConcurrency = 1

	// MaxBatchSize is MongoDB's maxWriteBatchSize.
	MaxBatchSize = 100_000
	// maxDocumentSize is MongoDB's BSON document limit (16 MiB).
	maxDocumentSize = 16 << 20
)

var (
	databaseName   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	collectionName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,119}$`)
)

// Validate fills in defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.Database == "" {
		c.Database = DefaultDatabase
	}
	if !databaseName.MatchString(c.Database) {
		return fmt.Errorf("%w: mongostore: Database %q: want 1 to 63 of [A-Za-z0-9_-]", stores.ErrInvalidConfig, c.Database)
	}
	for _, f := range []struct {
		name string
		v    *string
		def  string
	}{
		{"ChangeLogCollection", &c.ChangeLogCollection, DefaultChangeLogCollection},
		{"IssuesCollection", &c.IssuesCollection, DefaultIssuesCollection},
		{"CheckpointsCollection", &c.CheckpointsCollection, DefaultCheckpointsCollection},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
		if !collectionName.MatchString(*f.v) || strings.HasPrefix(*f.v, "system.") {
			return fmt.Errorf("%w: mongostore: %s %q: want [A-Za-z_][A-Za-z0-9_.-]*, at most 120, not system.*", stores.ErrInvalidConfig, f.name, *f.v)
		}
	}
	if strings.EqualFold(c.ChangeLogCollection, c.IssuesCollection) ||
		strings.EqualFold(c.ChangeLogCollection, c.CheckpointsCollection) ||
		strings.EqualFold(c.IssuesCollection, c.CheckpointsCollection) {
		return fmt.Errorf("%w: mongostore: collection names must differ", stores.ErrInvalidConfig)
	}
	if c.WriteConcern == nil {
		journal := true
		c.WriteConcern = &writeconcern.WriteConcern{W: writeconcern.WCMajority, Journal: &journal}
	}
	if !c.WriteConcern.IsValid() || !c.WriteConcern.Acknowledged() {
		return fmt.Errorf("%w: mongostore: write concern %+v: Apply must be acknowledged to be durable", stores.ErrInvalidConfig, *c.WriteConcern)
	}
	if c.ReadConcern == nil {
		c.ReadConcern = readconcern.Majority()
	}
	if c.ReadPreference == nil {
		c.ReadPreference = readpref.Primary()
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		return fmt.Errorf("%w: mongostore: BatchSize %d is outside 1..%d (0: the default)", stores.ErrInvalidConfig, c.BatchSize, MaxBatchSize)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Concurrency < 1 || c.Concurrency > 64 {
		return fmt.Errorf("%w: mongostore: Concurrency %d is outside 1..64", stores.ErrInvalidConfig, c.Concurrency)
	}
	return nil
}

// Store is the MongoDB audit store.
type Store struct {
	cfg         Config
	log         *slog.Logger
	changeLog   *mongo.Collection
	issues      *mongo.Collection
	checkpoints *mongo.Collection
	closed      atomic.Bool
	// keyedByEventID: New found the changeLog in an older version's
	// layout, so every call but Reset, CheckSchema and Close refuses
	// (see oldLayout); Reset, emptying the store, clears it.
	keyedByEventID atomic.Bool
}

var _ stores.Store = (*Store)(nil)

// New returns a store in cfg.Database of client's deployment and, unless
// cfg.SkipIndexes, creates the indexes it needs (an existing identical index
// is left alone) and the checkpoints collection, so that a new store's
// schema is complete before its first Apply. The caller keeps ownership of client: Close does not
// disconnect it.
//
// A changeLog an older version wrote (documents keyed by event id) is not
// an error here, so that `auditflow replay --reset` can open it to rebuild
// it: New changes nothing in it, and every call but Reset, CheckSchema and
// Close fails with stores.ErrInvalidConfig and the way to rebuild.
func New(ctx context.Context, client *mongo.Client, cfg Config) (*Store, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: mongostore: nil client", stores.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
		if ferret, version := isFerretDB(ctx, client); ferret {
			cfg.BatchSize = FerretDBBatchSize
			if cfg.Logger != nil {
				cfg.Logger.Info("mongostore: the server is FerretDB: writing at most FerretDBBatchSize statements per command",
					"ferretdb", version, "batch", cfg.BatchSize)
			}
		}
	}
	db := client.Database(cfg.Database, options.Database().
		SetWriteConcern(cfg.WriteConcern).SetReadConcern(cfg.ReadConcern).SetReadPreference(cfg.ReadPreference))
	s := &Store{
		cfg: cfg, log: cfg.Logger,
		changeLog:   db.Collection(cfg.ChangeLogCollection),
		issues:      db.Collection(cfg.IssuesCollection),
		checkpoints: db.Collection(cfg.CheckpointsCollection),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	old, err := s.oldLayout(ctx)
	if err != nil {
		return nil, fail(ctx, "check the changeLog's layout", err)
	}
	if old {
		s.keyedByEventID.Store(true)
		s.log.Warn("mongostore: "+s.oldLayoutError().Error(), "database", cfg.Database, "collection", cfg.ChangeLogCollection)
		return s, nil
	}
	if !cfg.SkipIndexes {
		if err := s.createSchema(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// BatchSize is the most statements the store sends in one command
// (Config.BatchSize, or the default New chose for the server).
func (s *Store) BatchSize() int { return s.cfg.BatchSize }

// isFerretDB reports whether the server is FerretDB (its buildInfo names
// its version), and which. A failed buildInfo says MongoDB: the defaults
// are MongoDB's.
func isFerretDB(ctx context.Context, client *mongo.Client) (bool, string) {
	var info struct {
		FerretDB string `bson:"ferretdbVersion"`
	}
	if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return false, ""
	}
	return info.FerretDB != "", info.FerretDB
}

// createSchema creates the checkpoints collection and the indexes that
// are missing, and drops the indexes of the older layout.
func (s *Store) createSchema(ctx context.Context) error {
	if err := s.createCheckpoints(ctx); err != nil {
		return err
	}
	return s.createIndexes(ctx)
}

// usable is the entry check of every call but Reset, CheckSchema and
// Close.
func (s *Store) usable(op string) error {
	if s.closed.Load() {
		return fmt.Errorf("mongostore: %s: %w", op, stores.ErrClosed)
	}
	if s.keyedByEventID.Load() {
		return fmt.Errorf("mongostore: %s: %w", op, s.oldLayoutError())
	}
	return nil
}

// keys builds an index key pattern: ascending fields, or descending with a
// leading "-".
func keys(fields ...string) bson.D {
	d := make(bson.D, len(fields))
	for i, f := range fields {
		if name, desc := strings.CutPrefix(f, "-"); desc {
			d[i] = bson.E{Key: name, Value: -1}
		} else {
			d[i] = bson.E{Key: f, Value: 1}
		}
	}
	return d
}

// The indexes the queries need. Each filter of History and Issues is served
// by an index that yields rows in descending sequence order, so a page
// reads about limit entries instead of sorting every match; a change id
// without its pipeline, and Since, walk the _id index (a changeLog
// document's _id is its sequence) and filter as they go. An issue's
// pipeline and change id make its _id.
var (
	changeLogIndexes = []bson.D{
		keys(fPipeline, fChangeID, "-"+fID), // one change's history
		keys(fPipeline, "-"+fID),            // a pipeline's history
		keys(fState, "-"+fID),               // every FAILED event, newest first
		keys(fTarget, "-"+fOccurred),        // what happened to a target system lately
		keys(fAuthor, fState, "-"+fID),      // an author's changes by outcome
	}
	// oldChangeLogIndexes are the older layout's, on a seq field the
	// documents no longer have: createIndexes drops them.
	oldChangeLogIndexes = []bson.D{
		keys(fPipeline, fChangeID, "-"+fSeq), keys(fPipeline, "-"+fSeq), keys(fState, "-"+fSeq),
		keys("-" + fSeq), keys(fAuthor, fState, "-"+fSeq),
	}
	issueIndexes = []bson.D{
		keys(fStatus, "-"+fSeq),     // open issues, most recently changed first
		keys(fPipeline, "-"+fSeq),   // a pipeline's issues
		keys("-" + fSeq),            // every issue, and the paging cursor
		keys(fStatus, "-"+fUpdated), // dashboards: open issues by time
	}
)

// createIndexes creates the indexes that are missing, one command each,
// and drops the older layout's indexes on the changeLog (which index a
// field its documents no longer have, so they only cost writes).
// Asking only for missing ones keeps the usual reopen a read; one index per
// command because FerretDB (v1.24) drops the connection when a single
// createIndexes names several indexes that already exist, which two stores
// opening at once could otherwise provoke.
func (s *Store) createIndexes(ctx context.Context) error {
	for _, c := range []struct {
		coll *mongo.Collection
		keys []bson.D
	}{{s.changeLog, changeLogIndexes}, {s.issues, issueIndexes}} {
		have, err := listIndexes(ctx, c.coll)
		if err != nil {
			return fail(ctx, "list indexes of "+c.coll.Name(), err)
		}
		for _, k := range c.keys {
			if hasIndex(have, k) {
				continue
			}
			if _, err := c.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: k}); err != nil {
				return fail(ctx, "create index on "+c.coll.Name(), err)
			}
			s.log.Info("mongostore: created index", "database", s.cfg.Database, "collection", c.coll.Name(), "keys", keyString(k))
		}
		if c.coll != s.changeLog {
			continue
		}
		for _, h := range have {
			if !slices.ContainsFunc(oldChangeLogIndexes, func(k bson.D) bool { return sameKeys(k, h.Key) }) {
				continue
			}
			if err := c.coll.Indexes().DropOne(ctx, h.Name); err != nil && !hasCode(err, codeIndexNotFound) {
				return fail(ctx, "drop index "+h.Name+" of the older layout on "+c.coll.Name(), err)
			}
			s.log.Info("mongostore: dropped an index of the older layout", "database", s.cfg.Database, "collection", c.coll.Name(), "index", h.Name)
		}
	}
	return nil
}

// codeIndexNotFound: a concurrent New dropped the index first.
const codeIndexNotFound = 27

type listedIndex struct {
	Name string   `bson:"name"`
	Key  bson.Raw `bson:"key"`
}

// sameKeys reports whether an index key pattern as listed by the server is
// want: the same fields in the same order and directions. Servers list the
// directions as int32, int64 or double.
func sameKeys(want bson.D, got bson.Raw) bool {
	elems, err := got.Elements()
	if err != nil || len(elems) != len(want) {
		return false
	}
	for i, e := range elems {
		dir, ok := e.Value().AsInt64OK()
		if !ok || e.Key() != want[i].Key || dir != int64(want[i].Value.(int)) {
			return false
		}
	}
	return true
}

// Apply writes the batch: the changeLog inserts, then the issue upserts,
// then the checkpoint, each as unordered bulk writes of at most BatchSize
// (Concurrency of them at once)
// statements. It uses no transaction (see the package documentation for why
// that is safe); on error some rows may be written and the projector's retry
// of the whole batch completes them. The order is kept even so: an issue
// never points at an event the changeLog lacks, and the checkpoint never
// covers a row that is not written.
func (s *Store) Apply(ctx context.Context, b stores.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if err := s.usable("apply"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongostore: apply: %w", err)
	}
	if len(b.Records) == 0 {
		return s.raiseCheckpoint(ctx, b.Checkpoint, b.Through)
	}
	// Encode everything before writing anything, so a record this backend
	// cannot hold is rejected with nothing written.
	inserts := make([]mongo.WriteModel, 0, len(b.Records))
	seen := make(map[uint64]bool, len(b.Records))
	for i, r := range b.Records {
		if r.Seq > math.MaxInt64 {
			return fmt.Errorf("%w: record %d (event %q): sequence %d does not fit a BSON long", stores.ErrInvalidRecord, i, r.ID, r.Seq)
		}
		if seen[r.Seq] {
			continue // a duplicate in the batch would only come back as a duplicate key
		}
		seen[r.Seq] = true
		doc, err := encode(toLogDoc(r), r.ID, r.Seq)
		if err != nil {
			return err
		}
		inserts = append(inserts, mongo.NewInsertOneModel().SetDocument(doc))
	}
	latest := b.LatestPerChange()
	upserts := make([]mongo.WriteModel, len(latest))
	for i, r := range latest {
		doc, err := encode(toIssueDoc(stores.IssueOf(r)), r.ID, r.Seq)
		if err != nil {
			return err
		}
		upserts[i] = issueUpsert(r, doc)
	}

	// Every changeLog command, concurrently; then every issue command: an
	// issue never points at an event the changeLog lacks.
	ins := slices.Collect(slices.Chunk(inserts, s.cfg.BatchSize))
	if err := stores.Parallel(ctx, s.cfg.Concurrency, len(ins), func(ctx context.Context, i int) error {
		// A duplicate key here means the sequence is already recorded:
		// the idempotent outcome.
		if _, err := bulkWrite(ctx, s.changeLog, ins[i]); err != nil {
			return fail(ctx, "insert changeLog", err)
		}
		return nil
	}); err != nil {
		return err
	}
	ups := slices.Collect(slices.Chunk(upserts, s.cfg.BatchSize))
	if err := stores.Parallel(ctx, s.cfg.Concurrency, len(ups), func(ctx context.Context, i int) error {
		return s.upsertIssues(ctx, ups[i])
	}); err != nil {
		return err
	}
	return s.raiseCheckpoint(ctx, b.Checkpoint, b.Through)
}

// encode marshals the document of event id at seq, and refuses it if it is
// larger than MongoDB can hold.
func encode(doc any, id string, seq uint64) (bson.Raw, error) {
	raw, err := bson.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("%w: event %q (seq %d): %w", stores.ErrInvalidRecord, id, seq, err)
	}
	if len(raw) > maxDocumentSize {
		return nil, fmt.Errorf("%w: event %q (seq %d) is %d bytes as BSON, over MongoDB's %d", stores.ErrInvalidRecord, id, seq, len(raw), maxDocumentSize)
	}
	return raw, nil
}

// issueUpsert replaces the change's issue if it reflects an older event,
// and inserts it if there is none. When the stored issue is as new or newer
// the filter matches nothing, the upsert tries to insert a second document
// with the same _id, and the server refuses it with a duplicate key: that
// refusal is the "already newer" outcome.
func issueUpsert(r stores.Record, doc bson.Raw) mongo.WriteModel {
	return mongo.NewReplaceOneModel().
		SetFilter(bson.D{
			{Key: fID, Value: issueID(r.Pipeline, r.ChangeID)},
			{Key: fSeq, Value: bson.D{{Key: "$lt", Value: int64(r.Seq)}}},
		}).
		SetReplacement(doc).
		SetUpsert(true)
}

var unordered = options.BulkWrite().SetOrdered(false)

// upsertIssues applies the guarded upserts, then retries once those that
// hit a duplicate key. The retry tells the two causes apart: either the
// stored issue is newer (the retry's filter again matches nothing and its
// insert again hits the key, now conclusively), or another writer inserted
// the issue between this upsert's match and its insert (the retry matches
// that document and replaces it if it is older). Issues are never deleted
// except by Reset, so the second answer is final.
func (s *Store) upsertIssues(ctx context.Context, models []mongo.WriteModel) error {
	dups, err := bulkWrite(ctx, s.issues, models)
	if err != nil {
		return fail(ctx, "upsert issues", err)
	}
	if len(dups) == 0 {
		return nil
	}
	retry := make([]mongo.WriteModel, len(dups))
	for i, d := range dups {
		retry[i] = models[d]
	}
	again, err := bulkWrite(ctx, s.issues, retry)
	if err != nil {
		return fail(ctx, "upsert issues (retry)", err)
	}
	s.log.Debug("mongostore: issue upserts found newer issues", "batch", len(models),
		"retried", len(dups), "newer", len(again))
	return nil
}

// bulkWrite sends models as one unordered bulk write and returns the
// positions of those that failed with a duplicate key on _id. Any other
// failure is an error: another write error, a write concern error (the
// writes may not be durable), or a failure of the command as a whole.
//
// MongoDB executes every statement of an unordered bulk write whatever
// fails, and its answer accounts for each: inserted, matched, upserted or
// failed. FerretDB (v1.24) does that for inserts, but stops an update batch
// at its first failure, reports that one at the wrong position and counts
// nothing, although the statements before it did run. So an answer that
// does not account for every statement is not trusted: the statements are
// sent again one per command, which is exact everywhere. Every statement
// here is idempotent (an insert by _id, a seq-guarded replacement, and
// Repair's replacements and deletes by _id), so running one twice changes
// nothing.
func bulkWrite(ctx context.Context, coll *mongo.Collection, models []mongo.WriteModel) ([]int, error) {
	res, err := coll.BulkWrite(ctx, models, unordered)
	if err == nil {
		return nil, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil || len(bwe.WriteErrors) == 0 {
		return nil, err
	}
	dups := make([]int, 0, len(bwe.WriteErrors))
	for _, we := range bwe.WriteErrors {
		if !duplicateID(we.WriteError) {
			return nil, err
		}
		dups = append(dups, we.Index)
	}
	if len(models) == 1 || (res != nil && int(res.InsertedCount+res.MatchedCount+res.UpsertedCount)+len(dups) == len(models)) {
		return dups, nil
	}
	dups = dups[:0]
	for i, m := range models {
		d, err := bulkWrite(ctx, coll, []mongo.WriteModel{m})
		if err != nil {
			return nil, err
		}
		if len(d) > 0 {
			dups = append(dups, i)
		}
	}
	return dups, nil
}

// duplicateID reports whether we is a duplicate key on the _id index.
// MongoDB names the index's key pattern in the error; FerretDB does not,
// and there _id is the only unique index this store creates. A duplicate on
// a unique index someone else added is a real error.
func duplicateID(we mongo.WriteError) bool {
	if we.Code != 11000 && we.Code != 11001 {
		return false
	}
	kp, err := we.Raw.LookupErr("keyPattern")
	if err != nil {
		return true
	}
	doc, ok := kp.DocumentOK()
	if !ok {
		return true
	}
	elems, err := doc.Elements()
	return err == nil && len(elems) == 1 && elems[0].Key() == fID
}

// raiseCheckpoint moves the checkpoint up to seq (a batch's Through; 0
// changes nothing) with $max, so it never goes back whatever order batches
// land in. Two writers creating the same
// checkpoint at once may both try to insert it; MongoDB retries that upsert
// itself, FerretDB reports the duplicate key, and the retry then matches
// the document the other writer inserted.
func (s *Store) raiseCheckpoint(ctx context.Context, name string, seq uint64) error {
	if seq == 0 {
		return nil
	}
	filter := bson.D{{Key: fID, Value: text(name)}}
	update := bson.D{{Key: "$max", Value: bson.D{{Key: fSeq, Value: int64(seq)}}}} // Validate bounds it
	var err error
	for range 3 {
		_, err = s.checkpoints.UpdateOne(ctx, filter, update, options.UpdateOne().SetUpsert(true))
		if err == nil {
			return nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			break
		}
	}
	return fail(ctx, fmt.Sprintf("checkpoint %q", name), err)
}

// Checkpoint returns the contiguous checkpoint recorded under name (see
// stores.Batch.Through), 0 if none.
func (s *Store) Checkpoint(ctx context.Context, name string) (uint64, error) {
	if err := s.usable("checkpoint"); err != nil {
		return 0, err
	}
	var d checkpointDoc
	err := s.checkpoints.FindOne(ctx, bson.D{{Key: fID, Value: text(name)}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, fail(ctx, fmt.Sprintf("checkpoint %q", name), err)
	}
	return uint64(d.Seq), nil
}

// ProbeWrite checks that the store may be written: it writes a probe
// document in the checkpoints collection, under a name no projector uses,
// and deletes it.
func (s *Store) ProbeWrite(ctx context.Context) error {
	if err := s.usable("probe"); err != nil {
		return err
	}
	filter := bson.D{{Key: fID, Value: "auditflow:" + stores.ProbeName()}}
	if _, err := s.checkpoints.InsertOne(ctx, bson.D{filter[0], {Key: fSeq, Value: int64(0)}}); err != nil {
		return fail(ctx, "probe write", err)
	}
	if _, err := s.checkpoints.DeleteOne(ctx, filter); err != nil {
		return fail(ctx, "probe delete", err)
	}
	return nil
}

// beforeSeq adds the paging cursor on field seq (_id in the changeLog) to
// f. Stored sequences fit an int64, so a cursor beyond that excludes
// nothing.
func beforeSeq(f bson.D, seq string, before uint64) bson.D {
	if before == 0 || before > math.MaxInt64 {
		return f
	}
	return append(f, bson.E{Key: seq, Value: bson.D{{Key: "$lt", Value: int64(before)}}})
}

// History returns changeLog rows matching q, newest first.
func (s *Store) History(ctx context.Context, q stores.HistoryQuery) ([]stores.Record, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	if err := s.usable("history"); err != nil {
		return nil, err
	}
	f := bson.D{}
	if q.Pipeline != "" {
		f = append(f, bson.E{Key: fPipeline, Value: text(q.Pipeline)})
	}
	if q.ChangeID != "" {
		f = append(f, bson.E{Key: fChangeID, Value: text(q.ChangeID)})
	}
	if q.State != "" {
		f = append(f, bson.E{Key: fState, Value: string(q.State)})
	}
	if !q.Since.IsZero() {
		f = append(f, sinceFilter(q.Since)...)
	}
	f = beforeSeq(f, fID, q.BeforeSeq)
	var docs []logDoc
	if err := s.find(ctx, s.changeLog, f, fID, q.Limit, &docs); err != nil {
		return nil, fail(ctx, "history", err)
	}
	out := make([]stores.Record, len(docs))
	for i, d := range docs {
		out[i] = d.record()
	}
	return out, nil
}

// Issues returns issue rows matching q, most recently changed first.
func (s *Store) Issues(ctx context.Context, q stores.IssueQuery) ([]stores.Issue, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	if err := s.usable("issues"); err != nil {
		return nil, err
	}
	f := bson.D{}
	switch {
	case q.Pipeline != "" && q.ChangeID != "":
		f = append(f, bson.E{Key: fID, Value: issueID(q.Pipeline, q.ChangeID)})
	case q.Pipeline != "":
		f = append(f, bson.E{Key: fPipeline, Value: text(q.Pipeline)})
	case q.ChangeID != "":
		f = append(f, bson.E{Key: fChangeID, Value: text(q.ChangeID)})
	}
	if q.Status != "" {
		f = append(f, bson.E{Key: fStatus, Value: string(q.Status)})
	}
	f = beforeSeq(f, fSeq, q.BeforeSeq)
	var docs []issueDoc
	if err := s.find(ctx, s.issues, f, fSeq, q.Limit, &docs); err != nil {
		return nil, fail(ctx, "issues", err)
	}
	out := make([]stores.Issue, len(docs))
	for i, d := range docs {
		out[i] = d.issue()
	}
	return out, nil
}

// find reads the documents matching f, highest seq first (seq names the
// sequence field: _id in the changeLog).
func (s *Store) find(ctx context.Context, c *mongo.Collection, f bson.D, seq string, limit int, out any) error {
	cur, err := c.Find(ctx, f, options.Find().SetSort(bson.D{{Key: seq, Value: -1}}).SetLimit(int64(limit)))
	if err != nil {
		return err
	}
	return cur.All(ctx, out) // closes the cursor
}

// Reset deletes every document of this store's three collections, and
// nothing else. Checkpoints go first: a Reset that fails part way then
// leaves rows without a checkpoint, which a replay from the start
// completes, never a checkpoint that claims rows which are gone. The
// collections are emptied rather than dropped so that their indexes and any
// options an administrator set on them (validation, sharding) survive.
//
// A store New found in the older layout is in the current one once
// emptied: Reset then creates its indexes (unless Config.SkipIndexes),
// drops the older ones, and lifts the refusal, so a replay rebuilds it.
func (s *Store) Reset(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("mongostore: reset: %w", stores.ErrClosed)
	}
	for _, c := range []*mongo.Collection{s.checkpoints, s.issues, s.changeLog} {
		if _, err := c.DeleteMany(ctx, bson.D{}); err != nil {
			return fail(ctx, "reset "+c.Name(), err)
		}
	}
	if s.keyedByEventID.Load() {
		if !s.cfg.SkipIndexes {
			if err := s.createSchema(ctx); err != nil {
				return fmt.Errorf("mongostore: reset: %w", err)
			}
		}
		s.keyedByEventID.Store(false)
		s.log.Info("mongostore: the changeLog of the older layout is emptied: rows are keyed by sequence from now on",
			"database", s.cfg.Database, "collection", s.cfg.ChangeLogCollection)
	}
	return nil
}

// Close marks the store closed; later calls fail with stores.ErrClosed. It
// does not disconnect the client, which belongs to the caller.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// fail wraps a driver error for op, translated to the stores sentinels:
// cancellation and deadlines as ctx.Err() (the driver words them its own
// way), a disconnected client as ErrClosed, an oversized document as
// ErrInvalidRecord.
func fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("mongostore: %s: %w (%v)", op, cerr, err)
	}
	switch {
	case errors.Is(err, mongo.ErrClientDisconnected):
		return fmt.Errorf("mongostore: %s: %w (%v)", op, stores.ErrClosed, err)
	case hasCode(err, 10334): // BSONObjectTooLarge: Apply checks sizes first, a server may allow less
		return fmt.Errorf("mongostore: %s: %w (%v)", op, stores.ErrInvalidRecord, err)
	}
	return fmt.Errorf("mongostore: %s: %w", op, err)
}

func hasCode(err error, code int) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(code)
}
