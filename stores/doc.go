// Package stores defines the audit store contract: the [Store] interface a
// projector writes through, and the rows it materialises (the changeLog of
// [Record]s and the [Issue] per change).
//
// Each backend lives in its own subpackage (sqlitestore is the embedded
// default) and must pass the conformance suite in storetest, which checks the
// contract documented on Store: idempotent, order-insensitive, durable,
// cancellable, isolated by configured names.
//
// A store's checkpoint is the writer's word, not the store's inference:
// each Batch says through which sequence everything is stored once it is
// (Batch.Through), and the store only keeps the highest such promise. A
// store cannot know which events exist below the rows it holds; a writer
// that tracks what it has settled can (see package projector).
//
// The design rule that keeps backends small and replay exact: every row is a
// function of events alone. A changeLog row is one stream message — one
// event, keyed by its stream sequence, so an event published twice is two
// rows; an issue row is the newest event of its change, guarded by stream
// sequence.
// So a store needs no transactions across rows, and a rebuild from the
// stream gives the same rows as live projection.
//
// Rows also keep each event's signature (Record.Signer, Record.Signature:
// over Record.Hash, see package trust), so a store can be checked without
// the stream, and the projector's trust verdict (Record.Trust, Issue.Trust):
// an untrusted event leaves its change's issue OPEN whatever its state
// (IssueStatusOf). The verdict is a function of the event and the trust
// list, so a replay with the same list gives the same rows. So is the chain
// verdict (Record.Chain, a function of the event and the message before it
// on the stream): an event that does not extend its change's chain shows
// events.StateOutOfChain in its row and its issue.
package stores
