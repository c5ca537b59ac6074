// Package stores defines the audit store contract: the [Store] interface a
// projector writes through, and the rows it materialises (the changeLog of
// [Record]s and the [Issue] per change).
//
// Each backend lives in its own subpackage (sqlitestore is the embedded
// default) and must pass the conformance suite in storetest, which checks the
// contract documented on Store: idempotent, order-insensitive, durable,
// cancellable, isolated by configured names.
//
// The design rule that keeps backends small and replay exact: every row is a
// function of events alone. A changeLog row is one event keyed by its id; an
// issue row is the newest event of its change, guarded by stream sequence.
// So a store needs no transactions across rows, and a rebuild from the
// stream gives the same rows as live projection.
package stores
