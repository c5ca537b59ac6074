package stores

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/auditflow/auditflow/events"
)

// Record is an event as it sits in the stream: the event, the stream
// sequence it was stored at, and the hash of its exact bytes there. The
// sequence orders events totally, so it decides which of two events about
// one change is newer. Hash (events.Hash of the message data) is what the
// change's next event carries as PrevHash: with it a store can check its
// own rows' hash chain without the stream.
//
// Signer and Signature are the event's signature (package trust), kept so
// that a row can be checked without the stream: the signature covers Hash.
// Both are "" for an unsigned event. Trust is the projector's verdict on
// it: "" when trusted or when no trust list is configured, else why it is
// not trusted (unsigned, unknown key, bad signature, …). An untrusted
// event opens its change's issue whatever its type (see IssueOf).
//
// Chain is the writer's verdict on the event's place in its change's chain
// (events.CheckChain against the message before it on the stream): "" when
// it extends the chain, else how it does not (a copy of an earlier event
// published again, a fork, a repeated id, a downgrade). Such an event is
// believed nowhere: its row and its change's issue show
// events.StateOutOfChain, and the issue is OPEN, whatever it claims.
//
// RowState is the state the row stores, which HistoryQuery.State filters
// on: History returns it as stored, so a reader shows what it filtered
// on, and verify, comparing it with StateOf, sees any change to it.
// Writers leave it empty: Apply stores StateOf(r).
type Record struct {
	Seq       uint64
	Hash      string
	Signer    string
	Signature string
	Trust     string
	Chain     string
	RowState  events.State
	events.Event
}

// StateOf is the state a record's row stores and its change's issue shows:
// the event's own (Event.State), or events.StateOutOfChain when the event
// does not extend its change's chain.
func StateOf(r Record) events.State {
	if r.Chain != "" {
		return events.StateOutOfChain
	}
	return r.Event.State()
}

// Shown is the state a reader shows for r: what the row stores (RowState,
// set by History), or StateOf(r) for a record not read from a store.
func (r Record) Shown() events.State {
	if r.RowState != "" {
		return r.RowState
	}
	return StateOf(r)
}

// Marks a reader shows beside a row's state (Record.Mark).
const (
	// MarkUntrusted: the projector's trust list refused the event's
	// signature (Record.Trust says why).
	MarkUntrusted = "UNTRUSTED"
	// MarkUnsigned: the event carries no signature: whoever could publish
	// on its subject could have written it, and no trust list vouched for
	// it (a projector run with --insecure-no-trust stores such rows).
	MarkUnsigned = "UNSIGNED"
)

// Mark is what a reader must show beside r's state: MarkUntrusted,
// MarkUnsigned, or "" for a signed event no trust list refused.
func (r Record) Mark() string {
	switch {
	case r.Trust != "":
		return MarkUntrusted
	case r.Signer == "":
		return MarkUnsigned
	}
	return ""
}

// MaxTrustLen bounds Record.Trust and Issue.Trust, MaxChainLen
// Record.Chain and Issue.Chain; MaxSignerLen and
// MaxSignatureLen bound a signature's parts (an nkey is 56 characters, an
// ed25519 signature 86 in base64url), with room to spare.
const (
	MaxTrustLen     = 1024
	MaxChainLen     = 1024
	MaxSignerLen    = 128
	MaxSignatureLen = 256
)

// Batch is what a projector hands to a store in one Apply.
type Batch struct {
	// Checkpoint names the consumer whose progress this batch records.
	Checkpoint string
	// Through is the writer's promise that once this batch is stored,
	// every stream event at or below Through is stored — or was
	// deliberately not (dead-lettered, or skipped as no store should hold
	// it). The store raises the checkpoint named Checkpoint to Through
	// after the batch's rows are written, never lowering it; 0 leaves it
	// as it is. Through is not the batch's highest sequence: with several
	// batches in flight, a batch may hold events above an earlier one that
	// is not stored yet, and the checkpoint must stay below that one. A
	// batch with no records and Through > 0 records progress only (events
	// that were dead-lettered, or stored by batches that could not claim
	// them when they were written).
	Through uint64
	Records []Record
}

// Store is an audit store: a projection of the stream into a changeLog (one
// row per event) and issues (one row per change: its current state).
//
// The contract every implementation keeps, checked by storetest.Run:
//
//   - Apply is idempotent. A changeLog row is keyed by stream sequence: it
//     is the log entry itself, so applying a record twice leaves one row,
//     and two records with the same event id at different sequences (an
//     event published again) are two rows, each shown.
//   - Apply is order-insensitive. An issue row carries the sequence of the
//     event it reflects and is only replaced by an event with a higher
//     sequence, so redelivery, replay and concurrent workers converge on the
//     same state whatever order batches arrive in.
//   - Apply is durable on return: a projector acknowledges the batch's
//     messages only after Apply returns nil. On error nothing may be assumed
//     written; the projector retries the whole batch (see the first rule).
//   - The checkpoint is contiguous and only moves forward: Apply raises it
//     to Batch.Through if that is higher, and only once the batch's rows
//     are written, so it never covers a row that is not. Whatever order
//     batches land in, every event at or below a checkpoint is stored (as
//     far as the writers' Through promises hold). It is not the highest
//     sequence stored: rows above it may be there too.
//   - Apply, History and Issues honour ctx cancellation and return an error
//     wrapping ctx.Err().
//   - Stores with different configured names (tables, collections, prefixes)
//     on one server never see each other's data.
//   - What a query filters on is what it returns: History fills each
//     Record from the row as stored — Pipeline, ChangeID, OccurredAt, Seq
//     and RowState are the values the filter matched — and a store that
//     keeps a filtered value apart from the row (an index document, a
//     composite key) checks each row against the query after reading it.
//     So a stored value altered after the fact shows where it is listed,
//     and verify, comparing every returned field with the stream, finds it.
type Store interface {
	Apply(ctx context.Context, b Batch) error
	// Checkpoint returns the contiguous checkpoint recorded under name
	// (see Batch.Through): every event at or below it is stored. 0 if none.
	Checkpoint(ctx context.Context, name string) (uint64, error)
	// History returns changeLog rows matching q, newest (highest sequence)
	// first. Page with q.BeforeSeq = the last row's Seq.
	History(ctx context.Context, q HistoryQuery) ([]Record, error)
	// Issues returns issue rows matching q, most recently changed first.
	// Page with q.BeforeSeq = the last row's Seq.
	Issues(ctx context.Context, q IssueQuery) ([]Issue, error)
	// Reset deletes every row and checkpoint of this store (not of other
	// stores on the same server), for a rebuild by replay.
	Reset(ctx context.Context) error
	Close() error
}

// Query limits.
const (
	DefaultLimit = 100
	MaxLimit     = 10_000
)

// HistoryQuery selects changeLog rows. Zero fields do not filter.
type HistoryQuery struct {
	Pipeline  string
	ChangeID  string
	State     events.State
	Since     time.Time // OccurredAt >= Since
	BeforeSeq uint64    // only rows with Seq < BeforeSeq: the paging cursor
	Limit     int       // 0 means DefaultLimit
}

// Normalize validates q and fills in the default limit.
func (q HistoryQuery) Normalize() (HistoryQuery, error) {
	if q.State != "" && !validState(q.State) {
		return q, fmt.Errorf("%w: unknown state %q", ErrInvalidQuery, q.State)
	}
	var err error
	q.Limit, err = limit(q.Limit)
	return q, err
}

// Match reports whether r satisfies q; stores that cannot filter on the
// server use it to filter what they read (r.Shown(): the row's stored
// state when r was read from a store).
func (q HistoryQuery) Match(r Record) bool {
	return (q.Pipeline == "" || r.Pipeline == q.Pipeline) &&
		(q.ChangeID == "" || r.ChangeID == q.ChangeID) &&
		(q.State == "" || r.Shown() == q.State) &&
		(q.Since.IsZero() || !r.OccurredAt.Before(q.Since)) &&
		(q.BeforeSeq == 0 || r.Seq < q.BeforeSeq)
}

// IssueQuery selects issue rows. Zero fields do not filter.
type IssueQuery struct {
	Pipeline  string
	ChangeID  string
	Status    IssueStatus
	BeforeSeq uint64
	Limit     int
}

// Normalize validates q and fills in the default limit.
func (q IssueQuery) Normalize() (IssueQuery, error) {
	switch q.Status {
	case "", IssueInProgress, IssueOpen, IssueClosed:
	default:
		return q, fmt.Errorf("%w: unknown issue status %q", ErrInvalidQuery, q.Status)
	}
	var err error
	q.Limit, err = limit(q.Limit)
	return q, err
}

// Match reports whether i satisfies q.
func (q IssueQuery) Match(i Issue) bool {
	return (q.Pipeline == "" || i.Pipeline == q.Pipeline) &&
		(q.ChangeID == "" || i.ChangeID == q.ChangeID) &&
		(q.Status == "" || i.Status == q.Status) &&
		(q.BeforeSeq == 0 || i.Seq < q.BeforeSeq)
}

func limit(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultLimit, nil
	case n < 0 || n > MaxLimit:
		return 0, fmt.Errorf("%w: limit %d is outside 1..%d", ErrInvalidQuery, n, MaxLimit)
	}
	return n, nil
}

func validHash(h string) bool {
	hex, ok := strings.CutPrefix(h, "sha256:")
	return ok && len(hex) == 64 && strings.Trim(hex, "0123456789abcdef") == ""
}

func validState(s events.State) bool {
	for _, k := range events.States {
		if s == k {
			return true
		}
	}
	return false
}

// Validate checks a batch before a store writes any of it.
func (b Batch) Validate() error {
	if b.Checkpoint == "" {
		return fmt.Errorf("%w: empty checkpoint name", ErrInvalidRecord)
	}
	if b.Through > math.MaxInt64 {
		return fmt.Errorf("%w: checkpoint %q: sequence %d is beyond what stores hold (2^63-1)", ErrInvalidRecord, b.Checkpoint, b.Through)
	}
	for i, r := range b.Records {
		if r.Seq == 0 {
			return fmt.Errorf("%w: record %d (event %q) has sequence 0", ErrInvalidRecord, i, r.ID)
		}
		if r.Hash != "" && !validHash(r.Hash) {
			return fmt.Errorf("%w: record %d (event %q): hash %q is not sha256:<64 hex digits>", ErrInvalidRecord, i, r.ID, r.Hash)
		}
		if len(r.Signer) > MaxSignerLen || len(r.Signature) > MaxSignatureLen || len(r.Trust) > MaxTrustLen ||
			len(r.Chain) > MaxChainLen || !utf8.ValidString(r.Signer+r.Signature+r.Trust+r.Chain) {
			return fmt.Errorf("%w: record %d (event %q): signer, signature, trust or chain verdict over its limit or not UTF-8", ErrInvalidRecord, i, r.ID)
		}
		if err := events.Validate(r.Event); err != nil {
			return fmt.Errorf("%w: record %d (seq %d): %w", ErrInvalidRecord, i, r.Seq, err)
		}
	}
	return nil
}

// MaxSeq is the highest sequence in the batch: its high-water mark, which
// is the checkpoint only for a writer that hands events over in stream
// order, one batch at a time (Through = MaxSeq, as a replay does).
func (b Batch) MaxSeq() uint64 {
	var m uint64
	for _, r := range b.Records {
		m = max(m, r.Seq)
	}
	return m
}

// LatestPerChange returns, for each change in the batch, the record with the
// highest sequence, in batch order. Issue rows only ever need that one, so
// stores write one issue per change per batch.
func (b Batch) LatestPerChange() []Record {
	type key struct{ pipeline, change string }
	idx := make(map[key]int, len(b.Records))
	out := make([]Record, 0, len(b.Records))
	for _, r := range b.Records {
		k := key{r.Pipeline, r.ChangeID}
		if i, ok := idx[k]; ok {
			if r.Seq > out[i].Seq {
				out[i] = r
			}
			continue
		}
		idx[k] = len(out)
		out = append(out, r)
	}
	return out
}

// ChainOf is the Record.Chain of event e stored right after prev on its
// change's subject: "" if it extends its change's chain
// (events.CheckChain), else why not, within MaxChainLen. Every reader
// computes it alike, so a store's rows are a function of the stream.
func ChainOf(e events.Event, prev events.Prev) string {
	if err := events.CheckChain(e, prev); err != nil {
		return events.Truncate(err.Error(), MaxChainLen)
	}
	return ""
}
