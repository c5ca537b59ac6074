package dynamostore

import (
	"context"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

// RawApply writes what Apply writes for b — the same items into the same
// tables (the same indexes), in the same calls (BatchWriteItem of
// BatchSize items, one PutItem per change's issue, with the same
// concurrency, then the checkpoint) — without any condition: issues and
// the checkpoint are put whatever the table holds. It is the equal-work
// baseline Apply is benchmarked against.
func (s *Store) RawApply(ctx context.Context, b stores.Batch) error {
	var reqs []types.WriteRequest
	for _, r := range b.Records {
		it, err := recordItem(r)
		if err != nil {
			return err
		}
		reqs = append(reqs, types.WriteRequest{PutRequest: &types.PutRequest{Item: it}})
	}
	latest := b.LatestPerChange()
	issues := make([]item, len(latest))
	for i, r := range latest {
		it, err := issueItem(stores.IssueOf(r))
		if err != nil {
			return err
		}
		issues[i] = it
	}
	chunks := chunk(reqs, s.cfg.BatchSize)
	if err := stores.Parallel(ctx, s.cfg.Concurrency, len(chunks)+len(issues), func(ctx context.Context, i int) error {
		if i < len(chunks) {
			return s.batchWrite(ctx, s.changeLog, chunks[i])
		}
		_, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{TableName: &s.issues, Item: issues[i-len(chunks)]})
		return err
	}); err != nil {
		return err
	}
	_, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{TableName: &s.checkpoints, Item: item{
		attrName: &types.AttributeValueMemberS{Value: b.Checkpoint},
		attrSeq:  &types.AttributeValueMemberN{Value: strconv.FormatUint(b.Through, 10)},
	}})
	return err
}
