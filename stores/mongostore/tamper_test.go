package mongostore

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/auditflow/auditflow/stores"
)

// TamperRow implements storetest.Tamperer: it overwrites one field of the
// changeLog document at seq, as anyone who may write the collection could.
// The document is the only copy: History filters on these fields and
// returns them.
func (s *Store) TamperRow(ctx context.Context, seq uint64, field, value string) error {
	var set bson.D
	switch field {
	case "state":
		set = bson.D{{Key: fState, Value: value}}
	case "pipeline":
		set = bson.D{{Key: fPipeline, Value: text(value)}}
	case "changeId":
		set = bson.D{{Key: fChangeID, Value: text(value)}}
	case "occurredAt":
		t, err := stores.ParseTime(value)
		if err != nil {
			return err
		}
		at, nanos := splitTime(t)
		set = bson.D{{Key: fOccurred, Value: at}, {Key: fOccurNano, Value: nanos}}
	default:
		return fmt.Errorf("no field for %q", field)
	}
	res, err := s.changeLog.UpdateOne(ctx, bson.D{{Key: fID, Value: int64(seq)}}, bson.D{{Key: "$set", Value: set}})
	if err != nil {
		return err
	}
	if res.MatchedCount != 1 {
		return fmt.Errorf("%d documents at sequence %d", res.MatchedCount, seq)
	}
	return nil
}
