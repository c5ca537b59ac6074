package stores

import (
	"context"
	"crypto/rand"
	"encoding/hex"
)

// Optional capabilities. The Store contract is what a projector needs;
// operator tools discover these by type assertion and fall back when a
// backend lacks one (a repair becomes a rebuild by replay).

// SchemaChecker is implemented by stores that can check their tables or
// collections and indexes against what they expect (verify-schema).
type SchemaChecker interface {
	// CheckSchema returns one line per problem found (a missing table or
	// index, a wrong key), none when the schema is as expected. The error
	// is for failing to check at all.
	CheckSchema(ctx context.Context) ([]string, error)
}

// Repairer is implemented by stores that can correct individual rows, which
// verify/repair uses to fix drift without a full rebuild.
type Repairer interface {
	// Repair writes Put rows exactly as given (replacing the row at the
	// same sequence, every stored column included: RowState is written as
	// StateOf(r)), deletes the Delete rows (by sequence), writes Issues
	// exactly as given (replacing the change's row whatever its sequence)
	// and deletes the DeleteIssues rows. Unlike Apply it overrides the guards: it is for making a
	// store equal to the stream, which the caller has read.
	Repair(ctx context.Context, r Repair) error
}

// Repair is a set of corrections.
type Repair struct {
	Put          []Record
	Delete       []Record
	Issues       []Issue
	DeleteIssues []Issue // by pipeline and change id
}

// Empty reports whether there is nothing to correct.
func (r Repair) Empty() bool {
	return len(r.Put)+len(r.Delete)+len(r.Issues)+len(r.DeleteIssues) == 0
}

// BulkLoader is implemented by stores that load much faster when told a
// large load into an empty store is coming (a rebuild by replay), e.g. by
// building indexes once at the end. Between BeginBulk and EndBulk only the
// loader writes; after EndBulk the store must be exactly as if every batch
// had been applied normally, and durable.
type BulkLoader interface {
	BeginBulk(ctx context.Context) error
	EndBulk(ctx context.Context) error
}

// IssueCounter is implemented by stores that can count issue rows without
// reading them, e.g. with an index (the console's open-issue count, which
// otherwise reads every open row: thousands in a large store).
type IssueCounter interface {
	// CountIssues returns how many issue rows match q (Limit is ignored;
	// BeforeSeq counts only rows below it).
	CountIssues(ctx context.Context, q IssueQuery) (int, error)
}

// WriteProber is implemented by stores that can check they may be written
// without leaving anything behind (auditflow test-connection): a probe
// row outside the audit data, written and removed, or a write lock taken
// and released. No reader ever sees a probe as audit data.
type WriteProber interface {
	ProbeWrite(ctx context.Context) error
}

// ProbeName is a fresh name for a probe row, so that concurrent probes
// never meet.
func ProbeName() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "probe-" + hex.EncodeToString(b)
}
