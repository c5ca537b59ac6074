package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/cenkalti/backoff/v4"

	"github.com/auditflow/auditflow/stores"
)

// plan is one listing: a Query on index for hash = value and seq < before,
// newest first, with optional filters on projected attributes.
type plan struct {
	table    string
	keyAttrs []string // the table's key attributes, to fetch rows by
	index    string
	before   uint64
	limit    int
	cond     string
	filters  []string
	names    map[string]string
	values   map[string]types.AttributeValue
}

func (p *plan) on(index, hash, value string) {
	p.index = index
	p.names = map[string]string{"#h": hash}
	p.values = map[string]types.AttributeValue{":h": &types.AttributeValueMemberS{Value: value}}
	p.cond = "#h = :h"
	if p.before != 0 {
		// DynamoDB refuses names and values an expression does not use.
		p.cond += " AND #seq < :before"
		p.names["#seq"] = attrSeq
		p.values[":before"] = &types.AttributeValueMemberN{Value: strconv.FormatUint(p.before, 10)}
	}
}

// filter adds "attr op value" unless value is empty (no filter).
func (p *plan) filter(attr, op, value string) {
	if value == "" {
		return
	}
	n := strconv.Itoa(len(p.filters))
	p.names["#f"+n] = attr
	p.values[":f"+n] = &types.AttributeValueMemberS{Value: value}
	p.filters = append(p.filters, "#f"+n+" "+op+" :f"+n)
}

// firstPage and maxPage bound how many index entries a filtered Query
// evaluates per call: a filter may reject most of them, so pages grow
// geometrically from a small first one (cheap when matches are dense) up
// to DynamoDB's 1 MB page (few round trips when they are sparse).
const firstPage = 100

// list runs p and returns up to p.limit rows, newest first.
//
// The indexes project keys and filter attributes only, so the rows are
// fetched from the table with BatchGetItem. That keeps each index entry a
// few dozen bytes however large the row (an event with a 64 KB trace costs
// one index write unit per index, not 64), and it reads the row itself
// with the configured consistency. Because an index lags its table, a
// fetched row is checked again with keep: an issue may have moved on (a
// newer event, another status) since the index saw it. Rows that no longer
// match are dropped and the listing reads on.
func list[T any](ctx context.Context, s *Store, p plan, decode func(item) (T, error), keep func(T) bool, seq func(T) uint64) ([]T, error) {
	in := &dynamodb.QueryInput{
		TableName:                 &p.table,
		IndexName:                 &p.index,
		KeyConditionExpression:    &p.cond,
		ExpressionAttributeNames:  p.names,
		ExpressionAttributeValues: p.values,
		ScanIndexForward:          aws.Bool(false),
	}
	if len(p.filters) > 0 {
		in.FilterExpression = aws.String(strings.Join(p.filters, " AND "))
	}
	var (
		out     []T
		seen    = map[string]bool{}
		evalMax = max(firstPage, 2*p.limit)
	)
	for len(out) < p.limit {
		need := p.limit - len(out)
		switch {
		case len(p.filters) == 0:
			in.Limit = aws.Int32(int32(need))
		case evalMax > 0:
			in.Limit = aws.Int32(int32(evalMax))
			if evalMax *= 4; evalMax > 20_000 {
				evalMax = 0 // from now on DynamoDB's 1 MB page is the limit
			}
		default:
			in.Limit = nil
		}
		page, err := s.client.Query(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("query %s.%s: %w", p.table, p.index, err)
		}
		var keys []item
		for _, entry := range page.Items {
			key := make(item, len(p.keyAttrs))
			for _, a := range p.keyAttrs {
				key[a] = entry[a]
			}
			if k := keyString(key, p.keyAttrs); !seen[k] {
				seen[k] = true
				keys = append(keys, key)
			}
		}
		for len(keys) > 0 && len(out) < p.limit {
			n := min(len(keys), p.limit-len(out))
			rows, err := s.batchGet(ctx, p.table, p.keyAttrs, keys[:n])
			if err != nil {
				return nil, err
			}
			for _, key := range keys[:n] {
				it, ok := rows[keyString(key, p.keyAttrs)]
				if !ok {
					continue // deleted since the index saw it
				}
				v, err := decode(it)
				if err != nil {
					return nil, err
				}
				if keep(v) {
					out = append(out, v)
				}
			}
			keys = keys[n:]
		}
		if len(page.LastEvaluatedKey) == 0 {
			break
		}
		in.ExclusiveStartKey = page.LastEvaluatedKey
	}
	// Index order is sequence order, except for an issue fetched newer than
	// its index entry.
	slices.SortStableFunc(out, func(a, b T) int {
		sa, sb := seq(a), seq(b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	return out[:min(len(out), p.limit)], nil
}

// keyString identifies a row by its key attributes (strings, or the
// sequence: a number).
func keyString(key item, attrs []string) string {
	var b strings.Builder
	for _, a := range attrs {
		switch v := key[a].(type) {
		case *types.AttributeValueMemberS:
			b.WriteString(v.Value)
		case *types.AttributeValueMemberN:
			b.WriteString(v.Value)
		}
		b.WriteByte(0)
	}
	return b.String()
}

// batchGetMax is BatchGetItem's limit of keys per call.
const batchGetMax = 100

// batchGet reads the rows with these keys, in parallel calls of up to 100
// keys, and returns them by keyString. Missing rows are absent.
func (s *Store) batchGet(ctx context.Context, table string, keyAttrs []string, keys []item) (map[string]item, error) {
	chunks := chunk(keys, batchGetMax)
	var mu sync.Mutex
	rows := make(map[string]item, len(keys))
	err := stores.Parallel(ctx, s.cfg.Concurrency, len(chunks), func(ctx context.Context, i int) error {
		pending := map[string]types.KeysAndAttributes{table: {Keys: chunks[i], ConsistentRead: s.consistent()}}
		return s.retryUnprocessed(ctx, "BatchGetItem", func() (int, error) {
			out, err := s.client.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: pending})
			if err != nil {
				return 0, err
			}
			mu.Lock()
			for _, it := range out.Responses[table] {
				rows[keyString(it, keyAttrs)] = it
			}
			mu.Unlock()
			pending = out.UnprocessedKeys
			return len(pending[table].Keys), nil
		})
	})
	return rows, err
}

// batchWrite writes reqs (at most 25) to table with BatchWriteItem.
func (s *Store) batchWrite(ctx context.Context, table string, reqs []types.WriteRequest) error {
	pending := map[string][]types.WriteRequest{table: reqs}
	return s.retryUnprocessed(ctx, "BatchWriteItem", func() (int, error) {
		out, err := s.client.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: pending})
		if err != nil {
			return 0, err
		}
		pending = out.UnprocessedItems
		return len(pending[table]), nil
	})
}

var errUnprocessed = errors.New("items left unprocessed")

// retryUnprocessed calls op until it reports nothing left unprocessed,
// backing off exponentially, for at most cfg.RetryTimeout and never past
// ctx. An error from op itself is final: the SDK's retryer has already
// retried whatever was worth retrying.
func (s *Store) retryUnprocessed(ctx context.Context, what string, op func() (left int, err error)) error {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(s.cfg.RetryTimeout),
	)
	left := 0
	err := backoff.RetryNotify(func() error {
		var err error
		if left, err = op(); err != nil {
			return backoff.Permanent(err)
		}
		if left > 0 {
			return errUnprocessed
		}
		return nil
	}, backoff.WithContext(bo, ctx), func(_ error, wait time.Duration) {
		s.log.Debug("dynamostore: retrying unprocessed items", "call", what, "items", left, "after", wait)
	})
	if errors.Is(err, errUnprocessed) {
		return fmt.Errorf("%s: %d %w after retrying for %s", what, left, errUnprocessed, s.cfg.RetryTimeout)
	}
	return err
}

func chunk[T any](s []T, size int) [][]T {
	var out [][]T
	for len(s) > 0 {
		n := min(len(s), size)
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}
