// Package sqlitestore is the embedded default audit store: a single SQLite
// file through a pure-Go driver (modernc.org/sqlite), so the default setup
// needs no server and no cgo.
//
// Each Apply is one transaction (the batch lands whole or not at all) and
// the database runs in WAL mode with synchronous=FULL, so a committed batch
// survives a crash or power loss before the projector acknowledges it.
// Tables and their indexes are created on open; their names are
// configurable so several stores can share one file.
package sqlitestore
