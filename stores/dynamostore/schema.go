package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

// Attribute names that keys, indexes and expressions use. The other
// attributes are named in item.go.
const (
	attrID         = "id"  // the event id
	attrSeq        = "seq" // changeLog key: the stream sequence
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
	hash, rng string // key attributes (seq a number, others strings); rng is "" for a hash-only key
	indexes   []index
	// olderHash is the hash key an older version gave the table, which New
	// refuses with the way to rebuild (see olderLayout); "" if none.
	olderHash string
}

// keyType is the type of key attribute a: the sequence is a number, every
// other key a string.
func keyType(a string) types.ScalarAttributeType {
	if a == attrSeq {
		return types.ScalarAttributeTypeN
	}
	return types.ScalarAttributeTypeS
}

func (s *Store) tableDefs() []tableDef {
	return []tableDef{
		{
			// One item per stream message: an event published again is an
			// item of its own. Older versions keyed it by event id.
			name: s.changeLog, hash: attrSeq, olderHash: attrID,
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
	if olderLayout(def, desc.Table) {
		return fmt.Errorf("%w: dynamostore: %s", stores.ErrInvalidConfig, olderLayoutProblem(def.name))
	}
	if problems := checkTable(def, desc.Table); len(problems) > 0 {
		for i, p := range problems {
			problems[i] = strings.TrimPrefix(p, "table "+def.name+": ")
		}
		return fmt.Errorf("%w: dynamostore: table %s exists but was not created by this package (or by another version of it): %s",
			stores.ErrInvalidConfig, def.name, strings.Join(problems, "; "))
	}
	return nil
}

// olderLayout reports whether t has the key an older version gave def's
// table.
func olderLayout(def tableDef, t *types.TableDescription) bool {
	return def.olderHash != "" && slices.Equal(keyNames(t.KeySchema), []string{def.olderHash})
}

// olderLayoutProblem says what is wrong with a changeLog table keyed by
// event id and how to rebuild it. DynamoDB cannot change a table's key,
// and deleting a table (with its backups, streams and alarms) is the
// operator's decision, so the store never does it.
func olderLayoutProblem(table string) string {
	return fmt.Sprintf("table %s is keyed by event id, the layout of an older version, in which an event published again "+
		"hides its first row, and DynamoDB cannot change a table's key: replay into new tables "+
		"(auditflow --store dynamodb --dynamo-table-prefix NEW_ replay), or delete this one "+
		"(aws dynamodb delete-table --table-name %s) and rebuild the store in place with "+
		"`auditflow --store dynamodb replay --reset` (stop its projectors first)", table, table)
}

func (s *Store) createTable(ctx context.Context, def tableDef) error {
	attrs := []types.AttributeDefinition{{AttributeName: &def.hash, AttributeType: keyType(def.hash)}}
	keys := []types.KeySchemaElement{{AttributeName: &def.hash, KeyType: types.KeyTypeHash}}
	if def.rng != "" {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: &def.rng, AttributeType: keyType(def.rng)})
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
		for _, a := range []string{ix.hash, attrSeq} {
			if !defined(a) {
				attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(a), AttributeType: keyType(a)})
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

// checkTable lists how a table's keys and indexes differ from what this
// package writes and queries: the key attributes and their types, and each
// index's keys and projected attributes. Extra indexes and attributes are
// fine. New refuses a table with problems, so a mismatch fails at start
// rather than on the first query; CheckSchema reports them.
func checkTable(def tableDef, t *types.TableDescription) []string {
	var problems []string
	report := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("table %s: "+format, append([]any{def.name}, args...)...))
	}
	attrTypes := map[string]types.ScalarAttributeType{}
	for _, a := range t.AttributeDefinitions {
		attrTypes[aws.ToString(a.AttributeName)] = a.AttributeType
	}
	// keyed checks the key attributes of the table or of an index (what,
	// as "key" or "index NAME key"), and their types. A type belongs to
	// the table, so a wrong one is reported once.
	typeChecked := map[string]bool{}
	keyed := func(what string, ks []types.KeySchemaElement, want []string) {
		got := keyNames(ks)
		if !slices.Equal(got, want) {
			report("%s is %v, want %v", what, got, want)
			return
		}
		for _, a := range want {
			if typ, wantType := attrTypes[a], keyType(a); typ != wantType && !typeChecked[a] {
				report("key attribute %s has type %q, want %q", a, typ, wantType)
			}
			typeChecked[a] = true
		}
	}
	want := []string{def.hash}
	if def.rng != "" {
		want = append(want, def.rng)
	}
	if olderLayout(def, t) {
		problems = append(problems, olderLayoutProblem(def.name))
	} else {
		keyed("key", t.KeySchema, want)
	}
	for _, ix := range def.indexes {
		i := slices.IndexFunc(t.GlobalSecondaryIndexes, func(g types.GlobalSecondaryIndexDescription) bool {
			return aws.ToString(g.IndexName) == ix.name
		})
		if i < 0 {
			report("index %s is missing", ix.name)
			continue
		}
		g := t.GlobalSecondaryIndexes[i]
		keyed("index "+ix.name+" key", g.KeySchema, []string{ix.hash, attrSeq})
		switch p := g.Projection; {
		case p == nil || p.ProjectionType == types.ProjectionTypeAll:
		case p.ProjectionType == types.ProjectionTypeKeysOnly && len(ix.include) > 0:
			report("index %s projects keys only, want also %v", ix.name, ix.include)
		case p.ProjectionType == types.ProjectionTypeInclude:
			for _, a := range ix.include {
				if !slices.Contains(p.NonKeyAttributes, a) {
					report("index %s does not project %s", ix.name, a)
				}
			}
		}
	}
	return problems
}

// CheckSchema describes the store's tables and returns one line per
// problem: a missing table, a key that differs (attributes or types; a
// changeLog keyed by event id, an older version's layout, with the way to
// rebuild it), a missing index or one keyed or projected otherwise than
// this package queries it. A table New would refuse has at least one. It also reports an
// index that is not ACTIVE (a backfilling index answers no Query). The error
// is for failing to describe a table.
func (s *Store) CheckSchema(ctx context.Context) ([]string, error) {
	if err := s.check(ctx, "check schema"); err != nil {
		return nil, err
	}
	var problems []string
	for _, def := range s.tableDefs() {
		desc, err := s.client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: &def.name})
		var notFound *types.ResourceNotFoundException
		if errors.As(err, &notFound) && ctx.Err() == nil {
			problems = append(problems, fmt.Sprintf("table %s is missing", def.name))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dynamostore: check schema: describe table %s: %w", def.name, stores.ContextError(ctx, err))
		}
		problems = append(problems, checkTable(def, desc.Table)...)
		for _, g := range desc.Table.GlobalSecondaryIndexes {
			if st := g.IndexStatus; st != "" && st != types.IndexStatusActive && slices.ContainsFunc(def.indexes, func(ix index) bool {
				return ix.name == aws.ToString(g.IndexName)
			}) {
				problems = append(problems, fmt.Sprintf("table %s: index %s is %s, not ACTIVE", def.name, aws.ToString(g.IndexName), st))
			}
		}
	}
	return problems, nil
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
