package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

// Store is the DynamoDB audit store.
type Store struct {
	client                         *dynamodb.Client
	cfg                            Config
	log                            *slog.Logger
	changeLog, issues, checkpoints string // full table names
	closed                         atomic.Bool
}

var _ stores.Store = (*Store)(nil)

// New returns a store on client's account and region, creating missing
// tables with their indexes (unless cfg.SkipCreateTables) and waiting until
// they are ACTIVE. The caller keeps ownership of client.
func New(ctx context.Context, client *dynamodb.Client, cfg Config) (*Store, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: dynamostore: nil client", stores.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{
		client: client, cfg: cfg, log: cfg.Logger,
		changeLog:   cfg.TablePrefix + cfg.ChangeLogTable,
		issues:      cfg.TablePrefix + cfg.IssuesTable,
		checkpoints: cfg.TablePrefix + cfg.CheckpointsTable,
	}
	for _, def := range s.tableDefs() {
		if err := s.ensureTable(ctx, def); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// check is the common entry test of every call.
func (s *Store) check(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("dynamostore: %s: %w", op, stores.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dynamostore: %s: %w", op, err)
	}
	return nil
}

// Apply writes the batch: changeLog rows with BatchWriteItem, one
// conditional put per changed issue, then the checkpoint. Nothing is
// transactional; the package doc explains why any prefix of these writes,
// retried, converges on the same rows.
func (s *Store) Apply(ctx context.Context, b stores.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if err := s.check(ctx, "apply"); err != nil {
		return err
	}
	if len(b.Records) == 0 {
		if err := s.raiseCheckpoint(ctx, b.Checkpoint, b.Through); err != nil {
			return fmt.Errorf("dynamostore: apply: %w", stores.ContextError(ctx, err))
		}
		return nil
	}
	// Encode everything first: an event DynamoDB would refuse fails the
	// batch before any of it is written.
	seen := make(map[uint64]bool, len(b.Records))
	var logReqs []types.WriteRequest
	for _, r := range b.Records {
		// BatchWriteItem refuses a request holding one key twice; the
		// first copy of a sequence wins, as a primary key would have it.
		if seen[r.Seq] {
			continue
		}
		seen[r.Seq] = true
		it, err := recordItem(r)
		if err != nil {
			return err
		}
		logReqs = append(logReqs, types.WriteRequest{PutRequest: &types.PutRequest{Item: it}})
	}
	latest := b.LatestPerChange()
	issueItems := make([]item, len(latest))
	for i, r := range latest {
		it, err := issueItem(stores.IssueOf(r))
		if err != nil {
			return err
		}
		issueItems[i] = it
	}
	chunks := chunk(logReqs, s.cfg.BatchSize)
	err := stores.Parallel(ctx, s.cfg.Concurrency, len(chunks)+len(issueItems), func(ctx context.Context, i int) error {
		if i < len(chunks) {
			return s.batchWrite(ctx, s.changeLog, chunks[i])
		}
		return s.putIssue(ctx, issueItems[i-len(chunks)])
	})
	if err != nil {
		return fmt.Errorf("dynamostore: apply: %w", stores.ContextError(ctx, err))
	}
	// Last: the checkpoint never covers a row that is not written.
	if err := s.raiseCheckpoint(ctx, b.Checkpoint, b.Through); err != nil {
		return fmt.Errorf("dynamostore: apply: %w", stores.ContextError(ctx, err))
	}
	return nil
}

// putIssue writes an issue row unless the stored one reflects a newer
// event.
func (s *Store) putIssue(ctx context.Context, it item) error {
	_, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName:                &s.issues,
		Item:                     it,
		ConditionExpression:      aws.String("attribute_not_exists(#pk) OR #seq < :seq"),
		ExpressionAttributeNames: map[string]string{"#pk": attrPipeline, "#seq": attrSeq},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":seq": it[attrSeq],
		},
	})
	if isConditionFailed(err) {
		return nil // the stored issue is as new or newer: the expected outcome of a replay
	}
	if err != nil {
		return fmt.Errorf("put issue: %w", err)
	}
	return nil
}

// raiseCheckpoint raises the checkpoint to seq (a batch's Through; 0
// changes nothing), never lowering it.
func (s *Store) raiseCheckpoint(ctx context.Context, name string, seq uint64) error {
	if seq == 0 {
		return nil
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                &s.checkpoints,
		Key:                      item{attrName: &types.AttributeValueMemberS{Value: name}},
		UpdateExpression:         aws.String("SET #seq = :seq"),
		ConditionExpression:      aws.String("attribute_not_exists(#seq) OR #seq < :seq"),
		ExpressionAttributeNames: map[string]string{"#seq": attrSeq},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":seq": &types.AttributeValueMemberN{Value: strconv.FormatUint(seq, 10)},
		},
	})
	if isConditionFailed(err) {
		return nil // already at or past seq: checkpoints only move forward
	}
	if err != nil {
		return fmt.Errorf("raise checkpoint %q: %w", name, err)
	}
	return nil
}

// ProbeWrite checks that the store may be written: it puts a probe item
// in the checkpoints table, under a name no projector uses, and deletes it.
func (s *Store) ProbeWrite(ctx context.Context) error {
	if err := s.check(ctx, "probe"); err != nil {
		return err
	}
	key := item{attrName: &types.AttributeValueMemberS{Value: "auditflow:" + stores.ProbeName()}}
	if _, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{TableName: &s.checkpoints, Item: key}); err != nil {
		return fmt.Errorf("dynamostore: probe write: %w", translate(ctx, err))
	}
	if _, err := s.client.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: &s.checkpoints, Key: key}); err != nil {
		return fmt.Errorf("dynamostore: probe delete: %w", translate(ctx, err))
	}
	return nil
}

func isConditionFailed(err error) bool {
	var cf *types.ConditionalCheckFailedException
	return errors.As(err, &cf)
}

// Checkpoint returns the contiguous checkpoint recorded under name (see
// stores.Batch.Through), 0 if none.
func (s *Store) Checkpoint(ctx context.Context, name string) (uint64, error) {
	if err := s.check(ctx, "checkpoint"); err != nil {
		return 0, err
	}
	if name == "" {
		return 0, nil // Apply refuses an empty name, so nothing is stored under it
	}
	out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      &s.checkpoints,
		Key:            item{attrName: &types.AttributeValueMemberS{Value: name}},
		ConsistentRead: s.consistent(),
	})
	if err != nil {
		return 0, fmt.Errorf("dynamostore: checkpoint %q: %w", name, translate(ctx, err))
	}
	d := decoder{it: out.Item}
	seq := d.u(attrSeq)
	if d.err != nil {
		return 0, fmt.Errorf("dynamostore: checkpoint %q: %w", name, d.err)
	}
	return seq, nil
}

func (s *Store) consistent() *bool { return aws.Bool(!s.cfg.EventuallyConsistentReads) }

// History returns changeLog rows, newest first, through the index that
// serves the most selective filter: change, then pipeline, then state, else
// the all-rows index. Remaining filters run on the server as a
// FilterExpression over projected attributes. Each row is read from the
// table and checked against q again (see list), so the values returned are
// the values the query matched.
func (s *Store) History(ctx context.Context, q stores.HistoryQuery) ([]stores.Record, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	if err := s.check(ctx, "history"); err != nil {
		return nil, err
	}
	p := plan{table: s.changeLog, keyAttrs: []string{attrSeq}, before: q.BeforeSeq, limit: q.Limit}
	switch {
	case q.ChangeID != "":
		p.on(idxChange, attrChangeID, q.ChangeID)
		p.filter(attrPipeline, "=", q.Pipeline)
		p.filter(attrState, "=", string(q.State))
	case q.Pipeline != "":
		p.on(idxPipeline, attrPipeline, q.Pipeline)
		p.filter(attrState, "=", string(q.State))
	case q.State != "":
		p.on(idxState, attrState, string(q.State))
	default:
		p.on(idxSeq, attrShard, shardAll)
	}
	if !q.Since.IsZero() {
		p.filter(attrOccurredAt, ">=", stores.FormatTime(q.Since))
	}
	out, err := list(ctx, s, p, decodeRecord, q.Match, func(r stores.Record) uint64 { return r.Seq })
	if err != nil {
		return nil, fmt.Errorf("dynamostore: history: %w", translate(ctx, err))
	}
	return out, nil
}

// Issues returns issue rows, most recently changed first. A query naming
// both pipeline and change is one consistent GetItem; the others go
// through an index like History.
func (s *Store) Issues(ctx context.Context, q stores.IssueQuery) ([]stores.Issue, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	if err := s.check(ctx, "issues"); err != nil {
		return nil, err
	}
	if q.Pipeline != "" && q.ChangeID != "" {
		out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
			TableName:      &s.issues,
			Key:            issueKey(q.Pipeline, q.ChangeID),
			ConsistentRead: s.consistent(),
		})
		if err != nil {
			return nil, fmt.Errorf("dynamostore: issues: %w", translate(ctx, err))
		}
		if out.Item == nil {
			return nil, nil
		}
		i, err := decodeIssue(out.Item)
		if err != nil || !q.Match(i) {
			return nil, err
		}
		return []stores.Issue{i}, nil
	}
	p := plan{table: s.issues, keyAttrs: []string{attrPipeline, attrChangeID}, before: q.BeforeSeq, limit: q.Limit}
	switch {
	case q.ChangeID != "":
		p.on(idxChange, attrChangeID, q.ChangeID)
		p.filter(attrStatus, "=", string(q.Status))
	case q.Pipeline != "":
		p.on(idxPipeline, attrPipeline, q.Pipeline)
		p.filter(attrStatus, "=", string(q.Status))
	case q.Status != "":
		p.on(idxStatus, attrStatus, string(q.Status))
	default:
		p.on(idxSeq, attrShard, shardAll)
	}
	out, err := list(ctx, s, p, decodeIssue, q.Match, func(i stores.Issue) uint64 { return i.Seq })
	if err != nil {
		return nil, fmt.Errorf("dynamostore: issues: %w", translate(ctx, err))
	}
	return out, nil
}

func issueKey(pipeline, change string) item {
	return item{
		attrPipeline: &types.AttributeValueMemberS{Value: pipeline},
		attrChangeID: &types.AttributeValueMemberS{Value: change},
	}
}

// Reset deletes every item of this store's three tables (the tables stay,
// with their indexes and settings, so it works where tables come from
// infrastructure code). Rows written by a concurrent Apply may survive it;
// stop projectors before a rebuild.
func (s *Store) Reset(ctx context.Context) error {
	if err := s.check(ctx, "reset"); err != nil {
		return err
	}
	for _, def := range s.tableDefs() {
		if err := s.deleteAll(ctx, def); err != nil {
			return fmt.Errorf("dynamostore: reset %s: %w", def.name, translate(ctx, err))
		}
	}
	return nil
}

// deleteAll scans the table's keys and deletes them in batches, one page
// at a time.
func (s *Store) deleteAll(ctx context.Context, def tableDef) error {
	proj, names := "#h", map[string]string{"#h": def.hash}
	if def.rng != "" {
		proj, names["#r"] = "#h, #r", def.rng
	}
	pages := dynamodb.NewScanPaginator(s.client, &dynamodb.ScanInput{
		TableName:                &def.name,
		ProjectionExpression:     &proj,
		ExpressionAttributeNames: names,
		ConsistentRead:           aws.Bool(true),
	})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return err
		}
		reqs := make([]types.WriteRequest, len(page.Items))
		for i, key := range page.Items {
			reqs[i] = types.WriteRequest{DeleteRequest: &types.DeleteRequest{Key: key}}
		}
		chunks := chunk(reqs, s.cfg.BatchSize)
		if err := stores.Parallel(ctx, s.cfg.Concurrency, len(chunks), func(ctx context.Context, i int) error {
			return s.batchWrite(ctx, def.name, chunks[i])
		}); err != nil {
			return err
		}
	}
	return nil
}

// Close marks the store closed; later calls fail with stores.ErrClosed.
// The client belongs to the caller and stays open.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// translate turns an SDK error into one callers can test: the context's
// error if it ended, stores.ErrNotFound for a missing table.
func translate(ctx context.Context, err error) error {
	var notFound *types.ResourceNotFoundException
	if errors.As(err, &notFound) && ctx.Err() == nil {
		return fmt.Errorf("%w: table or index missing (deleted after New?): %w", stores.ErrNotFound, err)
	}
	return stores.ContextError(ctx, err)
}
