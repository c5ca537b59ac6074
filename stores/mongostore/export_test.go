package mongostore

import (
	"context"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/auditflow/auditflow/stores"
)

// RawApply writes what Apply writes for b — the same changeLog and issue
// documents into the same collections (the same indexes), in the same
// number of commands (BatchSize statements each, then the checkpoint) —
// without any guard: plain unordered inserts, issues replaced by _id
// whatever they hold, the checkpoint set. It is the equal-work baseline
// Apply is benchmarked against: what the driver and server do with the
// same documents when correctness costs nothing.
func (s *Store) RawApply(ctx context.Context, b stores.Batch) error {
	docs := make([]any, 0, len(b.Records))
	for _, r := range b.Records {
		doc, err := encode(toLogDoc(r), r.ID, r.Seq)
		if err != nil {
			return err
		}
		docs = append(docs, doc)
	}
	latest := b.LatestPerChange()
	replaces := make([]mongo.WriteModel, len(latest))
	for i, r := range latest {
		doc, err := encode(toIssueDoc(stores.IssueOf(r)), r.ID, r.Seq)
		if err != nil {
			return err
		}
		replaces[i] = mongo.NewReplaceOneModel().SetFilter(bson.D{{Key: fID, Value: issueID(r.Pipeline, r.ChangeID)}}).
			SetReplacement(doc).SetUpsert(true)
	}
	for lo := 0; lo < len(docs); lo += s.cfg.BatchSize {
		if _, err := s.changeLog.InsertMany(ctx, docs[lo:min(lo+s.cfg.BatchSize, len(docs))], options.InsertMany().SetOrdered(false)); err != nil {
			return err
		}
	}
	for lo := 0; lo < len(replaces); lo += s.cfg.BatchSize {
		// Two raw writers upserting one new issue at once: one insert
		// loses on _id. Last writer wins is all the raw writer promises.
		if _, err := s.issues.BulkWrite(ctx, replaces[lo:min(lo+s.cfg.BatchSize, len(replaces))], unordered); err != nil && !mongo.IsDuplicateKeyError(err) {
			return err
		}
	}
	// Raw writers creating one checkpoint at once: FerretDB reports the
	// upsert that loses the insert as a duplicate key (MongoDB retries it
	// itself), and sent again it updates the winner's document.
	var err error
	for range 3 {
		_, err = s.checkpoints.UpdateOne(ctx, bson.D{{Key: fID, Value: text(b.Checkpoint)}},
			bson.D{{Key: "$set", Value: bson.D{{Key: fSeq, Value: int64(b.Through)}}}}, options.UpdateOne().SetUpsert(true))
		if !mongo.IsDuplicateKeyError(err) {
			break
		}
	}
	return err
}
