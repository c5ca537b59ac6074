// Package sqlitestore is the embedded default audit store: a single SQLite
// file through a pure-Go driver (modernc.org/sqlite), so the default setup
// needs no server and no cgo.
//
// Each Apply is one transaction (the batch lands whole or not at all) and
// the database runs in WAL mode with synchronous=FULL, so a committed batch
// survives a crash or power loss before the projector acknowledges it.
// Tables and their indexes are created on open; their names are
// configurable so several stores can share one file.
//
// Apply is built to cost about what SQLite itself costs for the same rows
// (BenchmarkApplyVsRaw): its multi-row statements are prepared once per
// connection, statement journals stay in memory (temp_store=MEMORY: they
// only undo a failed statement inside its transaction and play no part in
// crash recovery), and a Store's writers queue in Go for SQLite's one write
// lock instead of sleeping in the driver's busy handler.
package sqlitestore
