package mongostore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/auditflow/auditflow/stores"
)

var (
	_ stores.Repairer      = (*Store)(nil)
	_ stores.SchemaChecker = (*Store)(nil)
)

// oldLayout reports whether the changeLog holds documents of the older
// layout, keyed by event id: their _id is text (a string, or binary for
// ids that are not UTF-8), where the current layout's is the sequence, a
// long. One document tells, since a collection holds one layout: reading
// any one is cheap on MongoDB and on FerretDB.
func (s *Store) oldLayout(ctx context.Context) (bool, error) {
	var d bson.Raw
	err := s.changeLog.FindOne(ctx, bson.D{}, options.FindOne().SetProjection(bson.D{{Key: fID, Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	switch d.Lookup(fID).Type {
	case bson.TypeString, bson.TypeBinary:
		return true, nil
	}
	return false, nil
}

// oldLayoutError says what is wrong with a changeLog of the older layout
// and how to rebuild it.
func (s *Store) oldLayoutError() error {
	return fmt.Errorf("%w: collection %s.%s holds changeLog documents keyed by event id, the layout of an older version, "+
		"in which an event published again hides its first row: rebuild the store from the stream with "+
		"`auditflow --store mongo replay --reset` (stop its projectors first), or replay into new collections",
		stores.ErrInvalidConfig, s.cfg.Database, s.cfg.ChangeLogCollection)
}

// codeNamespaceExists is the server's answer to creating a collection that
// exists (MongoDB and FerretDB alike).
const codeNamespaceExists = 48

// collectionNames returns the names of the collections in the store's
// database.
func (s *Store) collectionNames(ctx context.Context) (map[string]bool, error) {
	names, err := s.changeLog.Database().ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(names))
	for _, n := range names {
		have[n] = true
	}
	return have, nil
}

// createCheckpoints creates the checkpoints collection if it is missing.
// MongoDB would create it with the first checkpoint; creating it here makes
// a new store's schema complete, which CheckSchema then confirms. A store
// opening at the same moment may create it first: NamespaceExists is
// success.
func (s *Store) createCheckpoints(ctx context.Context) error {
	have, err := s.collectionNames(ctx)
	if err != nil {
		return fail(ctx, "list collections", err)
	}
	name := s.checkpoints.Name()
	if have[name] {
		return nil
	}
	if err := s.checkpoints.Database().CreateCollection(ctx, name); err != nil && !hasCode(err, codeNamespaceExists) {
		return fail(ctx, "create collection "+name, err)
	}
	s.log.Info("mongostore: created collection", "database", s.cfg.Database, "collection", name)
	return nil
}

// listIndexes returns the key patterns of coll's indexes.
func listIndexes(ctx context.Context, coll *mongo.Collection) ([]listedIndex, error) {
	cur, err := coll.Indexes().List(ctx)
	if err != nil {
		return nil, err
	}
	var have []listedIndex
	if err := cur.All(ctx, &have); err != nil { // closes the cursor
		return nil, err
	}
	return have, nil
}

func hasIndex(have []listedIndex, k bson.D) bool {
	return slices.ContainsFunc(have, func(h listedIndex) bool { return sameKeys(k, h.Key) })
}

// keyString writes an index key pattern as the package documentation does:
// {pipeline: 1, seq: -1}.
func keyString(k bson.D) string {
	parts := make([]string, len(k))
	for i, e := range k {
		parts[i] = fmt.Sprintf("%s: %v", e.Key, e.Value)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// CheckSchema reports, one line each, a collection of this store that does
// not exist, an index the queries need (see the package documentation)
// that is missing, a changeLog in the older layout (keyed by event id) and
// an index of that layout left behind. An index counts as present when one
// with the same key pattern exists, whatever its name; its options are not
// compared. New (without Config.SkipIndexes) creates whatever this reports
// missing and drops the older layout's indexes; a changeLog of the older
// layout needs a rebuild (see New).
func (s *Store) CheckSchema(ctx context.Context) ([]string, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("mongostore: check schema: %w", stores.ErrClosed)
	}
	have, err := s.collectionNames(ctx)
	if err != nil {
		return nil, fail(ctx, "check schema: list collections", err)
	}
	var problems []string
	for _, c := range []struct {
		coll *mongo.Collection
		keys []bson.D
	}{{s.changeLog, changeLogIndexes}, {s.issues, issueIndexes}, {s.checkpoints, nil}} {
		name := s.cfg.Database + "." + c.coll.Name()
		if !have[c.coll.Name()] {
			if len(c.keys) > 0 {
				problems = append(problems, fmt.Sprintf("collection %s is missing (and with it its %d indexes)", name, len(c.keys)))
			} else {
				problems = append(problems, fmt.Sprintf("collection %s is missing", name))
			}
			continue
		}
		if len(c.keys) == 0 {
			continue
		}
		listed, err := listIndexes(ctx, c.coll)
		if err != nil {
			return nil, fail(ctx, "check schema: list indexes of "+c.coll.Name(), err)
		}
		for _, k := range c.keys {
			if !hasIndex(listed, k) {
				problems = append(problems, fmt.Sprintf("collection %s has no index %s", name, keyString(k)))
			}
		}
		if c.coll != s.changeLog {
			continue
		}
		old, err := s.oldLayout(ctx)
		if err != nil {
			return nil, fail(ctx, "check schema: read "+c.coll.Name(), err)
		}
		if old {
			problems = append(problems, strings.TrimPrefix(s.oldLayoutError().Error(), stores.ErrInvalidConfig.Error()+": "))
		}
		for _, k := range oldChangeLogIndexes {
			if hasIndex(listed, k) {
				problems = append(problems, fmt.Sprintf("collection %s has index %s of the older layout (the documents have no seq field): opening the store for writing drops it", name, keyString(k)))
			}
		}
	}
	return problems, nil
}

// Repair makes documents exactly as given, overriding Apply's guards:
// changeLog documents of r.Delete are deleted and those of r.Put replaced
// whole (or inserted), by sequence; issues of r.DeleteIssues are deleted and
// those of r.Issues replaced whole (or inserted) whatever the stored one's
// sequence, by pipeline and change id. Steps run in that order, so a row
// both deleted and put ends up put; within r.Put and r.Issues the last of
// two rows with the same key wins.
//
// Everything is encoded before anything is written. There is no
// transaction: the steps are unordered bulk writes of at most
// Config.BatchSize statements (FerretDB needs less than 50), and if Repair
// fails part way some corrections are made and others not. Every statement
// is idempotent, so running the same Repair again completes it.
func (s *Store) Repair(ctx context.Context, r stores.Repair) error {
	if err := s.usable("repair"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongostore: repair: %w", err)
	}
	var logDeletes, logPuts, issueDeletes, issuePuts []mongo.WriteModel
	for _, rec := range r.Delete {
		if rec.Seq == 0 || rec.Seq > math.MaxInt64 {
			return fmt.Errorf("%w: mongostore: repair: delete of event %q: sequence %d is not one a row has", stores.ErrInvalidRecord, rec.ID, rec.Seq)
		}
		logDeletes = append(logDeletes, deleteByID(int64(rec.Seq)))
	}
	for _, rec := range lastByKey(r.Put, func(rec stores.Record) uint64 { return rec.Seq }) {
		if rec.Seq == 0 || rec.Seq > math.MaxInt64 {
			return fmt.Errorf("%w: mongostore: repair: event %q: sequence %d does not fit a BSON long", stores.ErrInvalidRecord, rec.ID, rec.Seq)
		}
		doc, err := encode(toLogDoc(rec), rec.ID, rec.Seq)
		if err != nil {
			return err
		}
		logPuts = append(logPuts, replaceByID(int64(rec.Seq), doc))
	}
	for _, i := range r.DeleteIssues {
		issueDeletes = append(issueDeletes, deleteByID(issueID(i.Pipeline, i.ChangeID)))
	}
	for _, i := range lastByKey(r.Issues, func(i stores.Issue) text { return issueID(i.Pipeline, i.ChangeID) }) {
		if i.Seq > math.MaxInt64 {
			return fmt.Errorf("%w: mongostore: repair: issue %s/%s: sequence %d does not fit a BSON long", stores.ErrInvalidRecord, i.Pipeline, i.ChangeID, i.Seq)
		}
		doc, err := encode(toIssueDoc(i), i.EventID, i.Seq)
		if err != nil {
			return err
		}
		issuePuts = append(issuePuts, replaceByID(issueID(i.Pipeline, i.ChangeID), doc))
	}
	for _, step := range []struct {
		what   string
		coll   *mongo.Collection
		models []mongo.WriteModel
	}{
		{"delete changeLog documents", s.changeLog, logDeletes},
		{"replace changeLog documents", s.changeLog, logPuts},
		{"delete issues", s.issues, issueDeletes},
		{"replace issues", s.issues, issuePuts},
	} {
		for lo := 0; lo < len(step.models); lo += s.cfg.BatchSize {
			if err := repairWrite(ctx, step.coll, step.models[lo:min(lo+s.cfg.BatchSize, len(step.models))]); err != nil {
				return fail(ctx, "repair: "+step.what, err)
			}
		}
	}
	return nil
}

// deleteByID and replaceByID address a document by _id: a changeLog
// document's sequence (a long), an issue's text key.
func deleteByID(id any) mongo.WriteModel {
	return mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: fID, Value: id}})
}

// replaceByID replaces the document with this _id, or inserts it: no seq
// guard, unlike issueUpsert.
func replaceByID(id any, doc bson.Raw) mongo.WriteModel {
	return mongo.NewReplaceOneModel().SetFilter(bson.D{{Key: fID, Value: id}}).SetReplacement(doc).SetUpsert(true)
}

// repairWrite sends one batch of Repair's statements. A replacement by _id
// hits a duplicate key only when another writer inserted that document
// between the upsert's match and its insert (FerretDB reports that race;
// MongoDB retries such an upsert itself): sent again, it matches that
// document and replaces it, so a second collision is an error.
func repairWrite(ctx context.Context, coll *mongo.Collection, models []mongo.WriteModel) error {
	dups, err := bulkWrite(ctx, coll, models)
	if err != nil || len(dups) == 0 {
		return err
	}
	retry := make([]mongo.WriteModel, len(dups))
	for i, d := range dups {
		retry[i] = models[d]
	}
	again, err := bulkWrite(ctx, coll, retry)
	if err != nil {
		return err
	}
	if len(again) > 0 {
		return fmt.Errorf("%d of %d replacements by _id collided with a duplicate key twice", len(again), len(models))
	}
	return nil
}

// lastByKey returns rows without the earlier of any two with the same key,
// in order. Unordered writes of two rows with one _id could land either way.
func lastByKey[T any, K comparable](rows []T, key func(T) K) []T {
	last := make(map[K]int, len(rows))
	for i, r := range rows {
		last[key(r)] = i
	}
	if len(last) == len(rows) {
		return rows
	}
	out := make([]T, 0, len(last))
	for i, r := range rows {
		if last[key(r)] == i {
			out = append(out, r)
		}
	}
	return out
}
