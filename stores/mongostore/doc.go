// Package mongostore is the MongoDB audit store. [New] takes a connected
// *mongo.Client (everything about reaching the deployment — hosts, replica
// set, TLS, auth, pool sizes — stays in its URI) and a [Config] naming the
// database and three collections, so an audit can live in a database of its
// own or next to the target system's data.
//
// # Documents
//
// changeLog: one document per stream message, _id = its stream sequence (a
// long). The document is the log entry itself: an event published again
// (the same event id at another sequence) is a document of its own, and
// the event id is a plain field (eventId). The sequence is unique by the
// _id index itself, so recording a message is an insert, and inserting it
// again fails with a duplicate key, which Apply counts as success.
//
// Every field of the record is stored, once: state is the state the row
// stores (stores.StateOf: OUT_OF_CHAIN for an event that does not extend
// its change's chain, whose verdict is in chain), and History filters on
// the same fields it returns (state as Record.RowState), so a value
// altered in the database shows wherever the row is listed. Times are a
// BSON date (milliseconds, for queries and indexes) plus the nanoseconds
// past it (occurredAtNanos), so they round-trip exactly; durations are
// nanoseconds, the lock token is the uint64's bits in a long, prevSeq and
// position (schema version 4, at most 2^63-1) are longs. Metadata is an
// array of {k, v} pairs because its keys are arbitrary text. Text that
// contains NUL or is not UTF-8 is stored as binary (see text in
// document.go): FerretDB's PostgreSQL backend cannot hold U+0000. Fields
// an event may lack (hash and prevHash, the signature and trust verdict,
// prevSeq and position, the chain verdict) are left out when empty and
// read as "" or 0.
//
// issues: one document per change, _id = "pipeline/changeId" (a '/' or '%'
// in the pipeline escaped as in URLs, so the id is unambiguous), holding
// the projection of the newest event (highest stream sequence), its chain
// verdict, and that seq, with pipeline and changeId also as fields of their
// own.
//
// auditCheckpoints: {_id: consumer name, seq}. New creates it (with the
// indexes) so a new store's schema is complete before its first Apply.
//
// # Why no transactions are needed
//
// Every document is a function of events alone, and each write is a single
// document operation, which MongoDB applies atomically:
//
//   - changeLog: insert by sequence. Replays and redeliveries hit the
//     duplicate key and change nothing: the first write of a sequence
//     stands.
//   - issues: a replacement upsert with the filter {_id: key, seq: {$lt:
//     new}}. If the stored issue is older it is replaced whole; if there is
//     none it is inserted; if it is as new or newer the filter matches
//     nothing, the upsert's insert collides with the existing _id, and the
//     duplicate key is the "already newer" outcome. An upsert that lost a
//     race with another writer's insert also ends in a duplicate key, so
//     those are retried once: the retry either replaces the now-existing
//     older issue or collides again, which is then conclusive (issues are
//     never deleted outside Reset). Whatever order batches and workers
//     apply events in, each issue converges on its highest-seq event.
//   - checkpoints: an upsert with $max, so the checkpoint only rises.
//
// Apply writes changeLog, then issues, then the checkpoint, all with the
// configured write concern (majority + journal by default), and returns nil
// only when all three are acknowledged: a projector acknowledges the stream
// only after that. If Apply fails part way, what it wrote is correct but
// incomplete and the projector re-applies the whole batch, which the rules
// above make idempotent. So storetest.Features.AtomicBatch is false: a
// failed Apply may leave rows behind, never wrong ones.
//
// The duplicate keys Apply expects are always inserts colliding on _id.
// That matters on FerretDB, which reports a duplicate key caused by
// updating an existing document as a plain error (code 1): this design
// never updates a document into a collision, and no unique index other
// than _id is created, so the expected case reads the same (code 11000) on
// FerretDB and on MongoDB. A duplicate key on any other unique index (one
// an administrator added) is reported as an error.
//
// Writes go out as unordered bulk writes, and a bulk write's answer is only
// trusted when it accounts for every statement sent (inserted, matched,
// upserted or failed), as MongoDB's always does. FerretDB stops an update
// batch at its first failure, reports it at the wrong position and counts
// nothing; such a batch is sent again one statement per command (see
// bulkWrite). The statements are idempotent, so repeating one is harmless.
//
// The correctness of the issue guard under concurrent writers rests on
// MongoDB applying a filtered update to one document atomically (a write
// conflict re-runs the match). FerretDB v1.24 does not: it reads the
// matching document and writes it back by _id without checking the filter
// again, so two writers updating one issue (or one checkpoint's $max) at the
// same moment can leave the older value. With one projector per stream that cannot happen; with
// several on FerretDB it can. Use MongoDB for concurrent projectors.
//
// # Indexes
//
// Unless Config.SkipIndexes, New creates the missing ones of these indexes,
// under which the History and Issues filters read rows already in
// descending sequence order, so a page costs about its limit, not a sort
// of all matches (an unfiltered listing, a change id without its pipeline,
// and Since walk the changeLog's _id index backwards):
//
//	changeLog: {pipeline, changeId, _id:-1}  {pipeline, _id:-1}  {state, _id:-1}
//	           {targetSystem, occurredAt:-1}  {author, state, _id:-1}
//	issues:    {status, seq:-1}  {pipeline, seq:-1}  {seq:-1}  {status, updatedAt:-1}
//
// An issue looked up by pipeline and change id is an _id lookup. The
// targetSystem, author and updatedAt indexes serve operators' own queries
// rather than this package's. No index serves a lookup by event id (no
// query of this package makes one): an operator who needs it adds
// {eventId: 1}.
//
// # Schema check and repair
//
// The Store is a stores.SchemaChecker: CheckSchema (verify-schema) reports
// each missing collection and each of the indexes above that no index with
// the same key pattern provides; reopening with New creates them. It also
// reports a changeLog of the older layout and that layout's indexes (see
// below).
//
// It is a stores.Repairer: Repair deletes and replaces changeLog documents
// by sequence and issues by their _id, as given, without Apply's seq guard
// (replacement upserts, in the same unordered bulk writes of at most
// BatchSize statements). Like Apply it has no transaction: a failed Repair
// leaves some corrections made, and running it again completes them.
//
// # A changeLog of the older layout
//
// Older versions keyed changeLog documents by event id (a string _id, with
// the sequence in a seq field and indexes on it), which hid an event
// published again behind its first row. Rekeying in place would rewrite
// every document without a transaction; the stream holds everything, so
// the store is rebuilt instead. New reads one changeLog document: if its
// _id is text, the store opens (a replay must open it to reset it) but
// every call except Reset, CheckSchema and Close fails with
// stores.ErrInvalidConfig, naming the rebuild: `auditflow --store mongo
// replay --reset` (stop the projectors first), or a replay into new
// collections. Reset empties the collections, creates the current indexes,
// drops the older ones (on seq) and lifts the refusal for its Store; other
// processes that opened the older layout keep refusing until they open the
// store again. New also drops the older indexes whenever it finds the
// current layout.
//
// # FerretDB
//
// The tests run against FerretDB v1.24 on PostgreSQL. Besides what is said
// above: it has no transactions (not needed), it cannot hold U+0000 in a
// string (hence text as binary), it drops the connection when one
// createIndexes names several indexes that already exist (so New creates
// only missing indexes, one per command), and it never answers a write
// command carrying 50 or more statements that match existing documents:
// set Config.BatchSize below 50 there.
package mongostore
