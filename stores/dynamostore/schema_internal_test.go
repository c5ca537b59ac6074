package dynamostore

import (
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// TestCheckTable covers what the server tests do not: key types, index keys
// and projections.
func TestCheckTable(t *testing.T) {
	def := tableDef{name: "t", hash: attrID, indexes: []index{
		{idxSeq, attrShard, []string{attrPipeline, attrState}},
		{idxState, attrState, []string{attrPipeline}},
		{idxChange, attrChangeID, nil},
	}}
	key := func(h, r string) []types.KeySchemaElement {
		return []types.KeySchemaElement{{AttributeName: aws.String(h), KeyType: types.KeyTypeHash}, {AttributeName: aws.String(r), KeyType: types.KeyTypeRange}}
	}
	attr := func(name string, typ types.ScalarAttributeType) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(name), AttributeType: typ}
	}
	desc := &types.TableDescription{
		AttributeDefinitions: []types.AttributeDefinition{
			attr(attrID, types.ScalarAttributeTypeN), attr(attrShard, types.ScalarAttributeTypeS),
			attr(attrState, types.ScalarAttributeTypeS), attr(attrSeq, types.ScalarAttributeTypeS),
		},
		KeySchema: key(attrID, "")[:1],
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndexDescription{
			{IndexName: aws.String(idxSeq), KeySchema: key(attrShard, attrSeq),
				Projection: &types.Projection{ProjectionType: types.ProjectionTypeInclude, NonKeyAttributes: []string{attrState}}},
			{IndexName: aws.String(idxState), KeySchema: key(attrState, attrOccurredAt),
				Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly}},
			{IndexName: aws.String(idxChange), KeySchema: key(attrChangeID, attrSeq),
				Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly}},
		},
	}
	got := checkTable(def, desc)
	want := []string{
		`table t: key attribute id has type "N", want "S"`,
		`table t: key attribute seq has type "S", want "N"`,
		`table t: index bySeq does not project pipeline`,
		`table t: index byState key is [state occurredAt], want [state seq]`,
		`table t: index byState projects keys only, want also [pipeline]`,
		`table t: key attribute changeId has type "", want "S"`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("checkTable:\n got %q\nwant %q", got, want)
	}
}
