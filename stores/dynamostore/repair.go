package dynamostore

import (
	"context"
	"fmt"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

var (
	_ stores.Repairer      = (*Store)(nil)
	_ stores.SchemaChecker = (*Store)(nil)
)

// Repair makes rows exactly as given: Put and Issues items replace the
// items with the same keys (a row's sequence, an issue's pipeline and
// change id) whatever they hold (no sequence guard), Delete and
// DeleteIssues remove items by key. Everything is encoded and checked
// before anything is written, then written with BatchWriteItem.
//
// It is not atomic: if it fails part way, some corrections are made and
// others not, and calling it again with the same corrections finishes the
// job. A key both deleted and put is put (deletes apply first); a key put
// twice gets the last copy.
func (s *Store) Repair(ctx context.Context, r stores.Repair) error {
	if err := s.check(ctx, "repair"); err != nil || r.Empty() {
		return err
	}
	// The records to put must be as valid as Apply requires (the checkpoint
	// name is only there to satisfy Validate).
	if err := (stores.Batch{Checkpoint: "repair", Records: r.Put}).Validate(); err != nil {
		return fmt.Errorf("dynamostore: repair: %w", err)
	}
	logReqs := newRequests(len(r.Put) + len(r.Delete))
	for i, rec := range r.Delete {
		if rec.Seq == 0 {
			return fmt.Errorf("%w: dynamostore: repair: delete %d has no sequence", stores.ErrInvalidRecord, i)
		}
		seq := strconv.FormatUint(rec.Seq, 10)
		logReqs.del(seq, item{attrSeq: &types.AttributeValueMemberN{Value: seq}})
	}
	for _, rec := range r.Put {
		it, err := recordItem(rec)
		if err != nil {
			return fmt.Errorf("dynamostore: repair: %w", err)
		}
		logReqs.put(strconv.FormatUint(rec.Seq, 10), it)
	}
	issueReqs := newRequests(len(r.Issues) + len(r.DeleteIssues))
	for i, is := range r.DeleteIssues {
		if is.Pipeline == "" || is.ChangeID == "" {
			return fmt.Errorf("%w: dynamostore: repair: issue delete %d lacks pipeline or change id", stores.ErrInvalidRecord, i)
		}
		issueReqs.del(issueKeyString(is), issueKey(is.Pipeline, is.ChangeID))
	}
	for i, is := range r.Issues {
		if is.Pipeline == "" || is.ChangeID == "" {
			return fmt.Errorf("%w: dynamostore: repair: issue %d lacks pipeline or change id", stores.ErrInvalidRecord, i)
		}
		it, err := issueItem(is)
		if err != nil {
			return fmt.Errorf("dynamostore: repair: %w", err)
		}
		issueReqs.put(issueKeyString(is), it)
	}
	type job struct {
		table string
		reqs  []types.WriteRequest
	}
	var jobs []job
	for _, t := range []struct {
		table string
		reqs  *requests
	}{{s.changeLog, logReqs}, {s.issues, issueReqs}} {
		for _, c := range chunk(t.reqs.list(), s.cfg.BatchSize) {
			jobs = append(jobs, job{t.table, c})
		}
	}
	if err := stores.Parallel(ctx, s.cfg.Concurrency, len(jobs), func(ctx context.Context, i int) error {
		return s.batchWrite(ctx, jobs[i].table, jobs[i].reqs)
	}); err != nil {
		return fmt.Errorf("dynamostore: repair: %w", translate(ctx, err))
	}
	return nil
}

func issueKeyString(i stores.Issue) string { return i.Pipeline + "\x00" + i.ChangeID }

// requests collects write requests for one table with one request per key
// (BatchWriteItem refuses a call naming a key twice): a later request for a
// key replaces the earlier one, in the earlier one's place.
type requests struct {
	at   map[string]int
	reqs []types.WriteRequest
}

func newRequests(n int) *requests {
	return &requests{at: make(map[string]int, n), reqs: make([]types.WriteRequest, 0, n)}
}

func (r *requests) add(key string, w types.WriteRequest) {
	if i, ok := r.at[key]; ok {
		r.reqs[i] = w
		return
	}
	r.at[key] = len(r.reqs)
	r.reqs = append(r.reqs, w)
}

func (r *requests) put(key string, it item) {
	r.add(key, types.WriteRequest{PutRequest: &types.PutRequest{Item: it}})
}

func (r *requests) del(key string, k item) {
	r.add(key, types.WriteRequest{DeleteRequest: &types.DeleteRequest{Key: k}})
}

func (r *requests) list() []types.WriteRequest { return r.reqs }
