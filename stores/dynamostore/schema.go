package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

// Attribute names that keys, indexes and expressions use. The other
// attributes are named in item.go.
const (
	attrID         = "id" // changeLog key: the event id
	attrSeq        = "seq"
	attrShard      = "shard"
	attrPipeline   = "pipeline"
	attrChangeID   = "changeId"
	attrState      = "state"
	attrStatus     = "status"
	attrOccurredAt = "occurredAt"
	attrName       = "name" // checkpoints key
)

// Index names. Every index sorts by seq, so a Query with
// ScanIndexForward=false reads newest first and "seq < cursor" is a key
// condition, not a filter.
const (
	idxSeq      = "bySeq"
	idxPipeline = "byPipeline"
	idxChange   = "byChange"
	idxState    = "byState"
	idxStatus   = "byStatus"
)

// shardAll is the one value of the shard attribute: the bySeq indexes keep
// every row under one partition key so that one Query lists them in
// sequence order (see the package doc for the trade-off).
const shardAll = "0"

// index is a global secondary index keyed by (hash, seq).
type index struct {
	name string
	hash string
	// include lists the non-key attributes the index projects: those its
	// queries filter on. Rows are read from the table (see list).
	include []string
}

type tableDef struct {
	name      string
	hash, rng string // string key attributes; rng is "" for a hash-only key
	indexes   []index
}

func (s *Store) tableDefs() []tableDef {
	return []tableDef{
		{
			name: s.changeLog, hash: attrID,
			indexes: []index{
				{idxSeq, attrShard, []string{attrPipeline, attrChangeID, attrState, attrOccurredAt}},
				{idxPipeline, attrPipeline, []string{attrChangeID, attrState, attrOccurredAt}},
				{idxChange, attrChangeID, []string{attrPipeline, attrState, attrOccurredAt}},
				{idxState, attrState, []string{attrPipeline, attrChangeID, attrOccurredAt}},
			},
		},
		{
			// pipeline and changeId are the table's keys, so every index
			// projects them anyway.
			name: s.issues, hash: attrPipeline, rng: attrChangeID,
			indexes: []index{
				{idxSeq, attrShard, []string{attrStatus}},
				{idxPipeline, attrPipeline, []string{attrStatus}},
				{idxChange, attrChangeID, []string{attrStatus}},
				{idxStatus, attrStatus, nil},
			},
		},
		{name: s.checkpoints, hash: attrName},
	}
}

// tableWait bounds how long New waits for a table to become ACTIVE; ctx may
// cut it shorter. Real DynamoDB takes seconds to a few minutes for a table
// with indexes, dynalite with --createTableMs 0 no time at all.
const tableWait = 10 * time.Minute

// ensureTable creates the table if it is missing (unless SkipCreateTables),
// waits for it to be ACTIVE and checks its keys and indexes.
func (s *Store) ensureTable(ctx context.Context, def tableDef) error {
	desc, err := s.client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: &def.name})
	var notFound *types.ResourceNotFoundException
	switch {
	case errors.As(err, &notFound) && s.cfg.SkipCreateTables:
		return fmt.Errorf("dynamostore: table %s does not exist and SkipCreateTables is set: %w: %w", def.name, stores.ErrNotFound, err)
	case errors.As(err, &notFound):
		if err := s.createTable(ctx, def); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("dynamostore: describe table %s: %w", def.name, stores.ContextError(ctx, err))
	}
	if desc == nil || desc.Table.TableStatus != types.TableStatusActive {
		w := dynamodb.NewTableExistsWaiter(s.client, func(o *dynamodb.TableExistsWaiterOptions) {
			// The default first delay is 20 s; dynalite is ready at once
			// and DynamoDB within seconds for a small table.
			o.MinDelay, o.MaxDelay = 100*time.Millisecond, 10*time.Second
		})
		if desc, err = w.WaitForOutput(ctx, &dynamodb.DescribeTableInput{TableName: &def.name}, tableWait); err != nil {
			return fmt.Errorf("dynamostore: wait for table %s: %w", def.name, stores.ContextError(ctx, err))
		}
	}
	return checkTable(def, desc.Table)
}

func (s *Store) createTable(ctx context.Context, def tableDef) error {
	attrs := []types.AttributeDefinition{{AttributeName: &def.hash, AttributeType: types.ScalarAttributeTypeS}}
	keys := []types.KeySchemaElement{{AttributeName: &def.hash, KeyType: types.KeyTypeHash}}
	if def.rng != "" {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: &def.rng, AttributeType: types.ScalarAttributeTypeS})
		keys = append(keys, types.KeySchemaElement{AttributeName: &def.rng, KeyType: types.KeyTypeRange})
	}
	defined := func(name string) bool {
		return slices.ContainsFunc(attrs, func(a types.AttributeDefinition) bool { return *a.AttributeName == name })
	}
	var throughput *types.ProvisionedThroughput
	if s.cfg.BillingMode == types.BillingModeProvisioned {
		throughput = &types.ProvisionedThroughput{ReadCapacityUnits: &s.cfg.ReadCapacity, WriteCapacityUnits: &s.cfg.WriteCapacity}
	}
	var gsis []types.GlobalSecondaryIndex
	for _, ix := range def.indexes {
		for _, a := range []struct {
			name string
			typ  types.ScalarAttributeType
		}{{ix.hash, types.ScalarAttributeTypeS}, {attrSeq, types.ScalarAttributeTypeN}} {
			if !defined(a.name) {
				attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(a.name), AttributeType: a.typ})
			}
		}
		proj := &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly}
		if len(ix.include) > 0 {
			proj = &types.Projection{ProjectionType: types.ProjectionTypeInclude, NonKeyAttributes: ix.include}
		}
		gsis = append(gsis, types.GlobalSecondaryIndex{
			IndexName: aws.String(ix.name),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String(ix.hash), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String(attrSeq), KeyType: types.KeyTypeRange},
			},
			Projection:            proj,
			ProvisionedThroughput: throughput,
		})
	}
	_, err := s.client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:              &def.name,
		AttributeDefinitions:   attrs,
		KeySchema:              keys,
		BillingMode:            s.cfg.BillingMode,
		ProvisionedThroughput:  throughput,
		GlobalSecondaryIndexes: gsis,
	})
	var inUse *types.ResourceInUseException
	if errors.As(err, &inUse) {
		return nil // another process created it first; the waiter takes over
	}
	if err != nil {
		return fmt.Errorf("dynamostore: create table %s: %w", def.name, stores.ContextError(ctx, err))
	}
	s.log.Info("dynamostore: created table", "table", def.name, "indexes", len(gsis), "billing", s.cfg.BillingMode)
	return nil
}

// checkTable reports a table whose keys or indexes differ from what this
// package queries, so a mismatch fails at start rather than on the first
// query. Extra indexes are fine.
func checkTable(def tableDef, t *types.TableDescription) error {
	mismatch := func(what string) error {
		return fmt.Errorf("%w: dynamostore: table %s exists but %s; it was not created by this package (or by another version of it)",
			stores.ErrInvalidConfig, def.name, what)
	}
	want := []string{def.hash}
	if def.rng != "" {
		want = append(want, def.rng)
	}
	if got := keyNames(t.KeySchema); !slices.Equal(got, want) {
		return mismatch(fmt.Sprintf("its key is %v, not %v", got, want))
	}
	for _, ix := range def.indexes {
		i := slices.IndexFunc(t.GlobalSecondaryIndexes, func(g types.GlobalSecondaryIndexDescription) bool {
			return aws.ToString(g.IndexName) == ix.name
		})
		if i < 0 {
			return mismatch("it has no index " + ix.name)
		}
		g := t.GlobalSecondaryIndexes[i]
		if got := keyNames(g.KeySchema); !slices.Equal(got, []string{ix.hash, attrSeq}) {
			return mismatch(fmt.Sprintf("index %s is keyed by %v, not [%s %s]", ix.name, got, ix.hash, attrSeq))
		}
		if p := g.Projection; p != nil && p.ProjectionType == types.ProjectionTypeInclude {
			for _, a := range ix.include {
				if !slices.Contains(p.NonKeyAttributes, a) {
					return mismatch(fmt.Sprintf("index %s does not project %s", ix.name, a))
				}
			}
		} else if p != nil && p.ProjectionType == types.ProjectionTypeKeysOnly && len(ix.include) > 0 {
			return mismatch(fmt.Sprintf("index %s projects keys only", ix.name))
		}
	}
	return nil
}

// keyNames lists key attributes, hash key first.
func keyNames(ks []types.KeySchemaElement) []string {
	out := make([]string, 2)
	for _, k := range ks {
		if k.KeyType == types.KeyTypeHash {
			out[0] = aws.ToString(k.AttributeName)
		} else {
			out[1] = aws.ToString(k.AttributeName)
		}
	}
	if out[1] == "" {
		out = out[:1]
	}
	return out
}
