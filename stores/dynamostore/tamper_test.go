package dynamostore

import (
	"context"
	"fmt"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// TamperRow implements storetest.Tamperer: it overwrites one attribute of
// the changeLog item at seq, as anyone who may write the table could. The
// item holds the only copy: the indexes History queries are DynamoDB's
// projections of it, moved with it.
func (s *Store) TamperRow(ctx context.Context, seq uint64, field, value string) error {
	attr, ok := map[string]string{"state": attrState, "pipeline": attrPipeline, "changeId": attrChangeID, "occurredAt": attrOccurredAt}[field]
	if !ok {
		return fmt.Errorf("no attribute for field %q", field)
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 &s.changeLog,
		Key:                       item{attrSeq: &types.AttributeValueMemberN{Value: strconv.FormatUint(seq, 10)}},
		UpdateExpression:          aws.String("SET #f = :v"),
		ConditionExpression:       aws.String("attribute_exists(#k)"),
		ExpressionAttributeNames:  map[string]string{"#f": attr, "#k": attrSeq},
		ExpressionAttributeValues: map[string]types.AttributeValue{":v": &types.AttributeValueMemberS{Value: value}},
	})
	if isConditionFailed(err) {
		return fmt.Errorf("no row at sequence %d", seq)
	}
	return err
}
