// Package dynamostore is the DynamoDB audit store. It uses no transactions
// (dynalite, the test server, has none, and they would halve throughput
// anyway): every write is idempotent or a conditional "only if newer", so
// any prefix of an Apply, retried, converges on the same rows.
//
// # Tables
//
// Three tables per store, named TablePrefix + ChangeLogTable, IssuesTable
// and CheckpointsTable, created by New with all their indexes (DynamoDB
// can add an index later, but it backfills for a long time and dynalite
// cannot do it at all).
//
//	changeLog    key seq (stream sequence, N)   one item per stream message
//	issues       key pipeline, changeId         one item per change
//	checkpoints  key name                       {name, seq}
//
// A changeLog item is the log entry itself: an event published again (the
// same event id, in attribute id, at another sequence) is an item of its
// own.
//
// Every global secondary index is keyed (partition, seq) with seq a
// number, so a Query with ScanIndexForward=false is newest first and the
// paging cursor "seq < BeforeSeq" is a key condition:
//
//	changeLog.bySeq       shard      (one value, "0": every row)
//	changeLog.byPipeline  pipeline
//	changeLog.byChange    changeId   (a change id may recur across pipelines)
//	changeLog.byState     state
//	issues.bySeq          shard
//	issues.byPipeline     pipeline
//	issues.byChange       changeId
//	issues.byStatus       status
//
// A query uses the index of its most selective filter (change, then
// pipeline, then state or status, else bySeq); the other filters, and
// Since ("occurredAt >= since" on a fixed-width UTC timestamp, so string
// order is time order), are a FilterExpression on the same Query. No query
// scans a table; only Reset does: it deletes the items (a Scan of keys and
// BatchWriteItem deletes) and keeps the tables, with their settings, which
// also works where tables come from infrastructure code.
//
// The indexes project only keys and the attributes those filters use, and
// the rows are then read from the table with BatchGetItem. An event with a
// 64 KB trace thus costs about one write unit per index instead of 64, and
// storage holds one copy of it, not five. The price is a second round trip
// per page. It also means the row itself is read with the configured
// consistency (strong by default), and is checked against the query again:
// an index lags its table, so an issue found under an old sequence or status
// that has moved on since is dropped or re-sorted rather than shown stale.
// So what a listing returns is what it filtered on: every value comes from
// the item as stored (its state as Record.RowState), and the item is the
// only copy anyone can write, the indexes being DynamoDB's projections of
// it.
//
// # Consistency of reads
//
// DynamoDB offers no strongly consistent reads on global secondary
// indexes: which rows History and Issues list is eventually consistent
// (usually well under a second behind). Checkpoint and an Issues query
// naming both pipeline and change are single GetItems on the table and are
// strongly consistent unless EventuallyConsistentReads is set. A projector
// only needs Checkpoint to be consistent; listings are for people and
// tools. dynalite updates indexes synchronously, so the suite cannot see
// the lag.
//
// # The unfiltered listing
//
// Listing every row newest first needs one sort order over the whole
// table. A Scan has none (it would read everything and sort in memory on
// every page), so bySeq puts every row under one partition key value and
// sorts by seq. The cost is a hot index partition: DynamoDB writes about
// 1000 write units per second to one partition key, and a sort key that
// only grows gives adaptive capacity nothing to split. With this package's
// small index entries that is about 1000 events per second sustained,
// orders of magnitude above the rate at which changes execute, but it does
// bound a rebuild from the stream (10 million events take about three
// hours). Index throttling backs up into the table writes, which the SDK
// retries. If that ceiling ever binds, write-shard the key (shard = seq mod
// K) and merge K Queries per page; the shard attribute exists so that
// needs no new index. Filtered listings use their own partitions and do
// not share the ceiling. A Since filter alone reads bySeq from the newest
// row back until it has a page of matches, so a window holding fewer rows
// than the page reads to the oldest row: event times are set by runners'
// clocks and are not ordered by sequence, so no key bounds that read.
//
// # Why this is correct without transactions
//
// Apply writes, in this order, the changeLog rows (BatchWriteItem, 25 per
// call, unprocessed items retried with exponential back-off), the issue
// rows (one conditional PutItem per change), then the checkpoint. Each of
// these writes is a function of events alone:
//
//   - A changeLog put is keyed by stream sequence and carries only that
//     message, so writing it again changes nothing. (BatchWriteItem cannot
//     be conditional: were two different records ever applied at one
//     sequence, which a stream never holds, the last applied would win.)
//   - An issue put has the condition
//     "attribute_not_exists(pipeline) OR seq < :seq": the row keeps the
//     event with the highest sequence, whatever order puts arrive in and
//     however often. ConditionalCheckFailedException is that guard saying
//     "already newer" and is not an error.
//   - The checkpoint update has the condition "seq < :seq", so it only
//     rises, and it is written last: it never covers a row that is not
//     written.
//
// So if Apply fails, or the process dies, part way, some rows are written
// and the checkpoint has not moved; the projector retries the batch (it
// has not acknowledged it), and the retry rewrites the same rows and the
// guards discard anything older. Concurrent workers converge for the same
// reason. What the lack of transactions does allow is a reader seeing part
// of a batch while it is being applied, hence Features.AtomicBatch false.
//
// # Repair and schema checks
//
// Store implements stores.Repairer and stores.SchemaChecker. Repair
// overrides the guards above: its rows are BatchWriteItem puts and deletes
// by key (a changeLog row by sequence; an issue put replaces the change's
// row whatever its sequence).
// It is no more atomic than Apply, and as idempotent: a failed Repair,
// repeated, completes. CheckSchema describes the three tables and reports,
// one line each, a missing table, a key with other attributes or types,
// and a missing, differently keyed, under-projected or not yet ACTIVE
// index: the checks New makes on an existing table, which it refuses with
// any of these problems but index status.
//
// Items follow the event's JSON field names. Sequences (seq, prevSeq),
// positions, lock tokens and durations (in nanoseconds) are DynamoDB
// numbers, exact to 38 digits, so a uint64 survives; times are UTC strings
// with nine fractional digits. A trace over 8 KB is stored gzip-compressed
// (errorTraceGz) so that events the stream accepted fit DynamoDB's 400 KB
// item limit; an event too large even then fails its batch with
// stores.ErrInvalidRecord before anything is written. A row's state is the
// state it stores (stores.StateOf: OUT_OF_CHAIN when the event does not
// extend its change's chain, the verdict being in chain). Attributes an
// event may lack — the record's stream hash (hash), the event's link to
// its predecessor (prevHash, prevSeq) and position, the signature, the
// trust and chain verdicts — are left out when empty and read back as ""
// or 0.
//
// # A changeLog of the older layout
//
// Older versions keyed the changeLog table by event id (id), which hid an
// event published again behind its first row. DynamoDB cannot change a
// table's key, and deleting a table (with its backups, streams and alarms)
// is for its operator to decide, so New refuses such a table with
// stores.ErrInvalidConfig and both ways to rebuild: replay into tables of
// a new prefix, or delete the table and run `auditflow --store dynamodb
// replay --reset`, for which New creates it keyed by sequence. CheckSchema
// reports such a table too.
package dynamostore
