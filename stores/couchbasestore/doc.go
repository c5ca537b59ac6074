// Package couchbasestore is the Couchbase audit store. It uses the
// key-value service only — no N1QL, analytics, views or range scans — so it
// runs on any Couchbase Server (and on gocaves, the mock the tests use)
// with no index to build: every operation reads or writes a document whose
// key the store computes from ids, names and sequences.
//
// # Documents
//
// A store owns one collection (Config.Scope and Config.Collection). Every
// key but one starts with a generation number g, kept in auditflow:meta and
// raised by Reset. seg(q) = q>>8 and page(s) = s>>10, so a leaf covers 256
// stream sequences and a page lists up to 1024 leaves. h is a SHA-256 prefix.
//
//	g:e:<seq>                 changeLog row: one stream message, every field of its record
//	g:i:<h(pipeline,change)>  issue row: the change's newest event, plus the
//	                          segments holding the change's events
//	g:P                       every pipeline with events
//	g:r:<ix>                  root of index ix: its pages
//	g:d:<ix>:<page>           page: its leaves, each with the latest event time in it
//	g:l:<ix>:<seg>            leaf: one entry per event of ix in the segment, under its
//	                          sequence (issue, pipeline and change hashes, state, time,
//	                          untrusted), and "x": the sequences no longer their change's newest
//	g:m:<status>:<0-f>        members: OPEN and IN_PROGRESS issues, in 16 buckets
//	g:k:<name>, g:K           checkpoints, and the list of their names
//
// A changeLog row is keyed by its stream sequence, so it is the log entry
// itself: an event published again (the same event id at another
// sequence) is a row of its own. The row's state is the state it stores
// (stores.StateOf: OUT_OF_CHAIN for an event that does not extend its
// change's chain, whose verdict is in chain), which History returns as
// Record.RowState. Fields an event may lack (the hash chain and its place
// in it, the signature, the trust and chain verdicts) are left out and
// read as "" or 0; prevSeq and position, like the lock token, are JSON
// strings, exact beyond 2^53 for any reader. An issue keeps its event's
// trust and chain verdicts, and a leaf entry's "u" says the event is
// untrusted (its issue is OPEN whatever its state).
//
// Each event is in three indexes: ix = "a" (the whole log), "p<h(pipeline)>"
// and "s<state>". Every document is bounded, well below Couchbase's 20 MB:
// a leaf holds at most 256 entries (~40 KB, under 50 KB at the longest), a
// page 1024 leaves (~40 KB), a root one entry per 2^18
// sequences (~4 MB at 10^11 events), the pipeline list one entry per
// pipeline (~60,000 fit), an issue its change's segments, and the member
// lists only issues currently open or in progress.
//
// # Listing without N1QL
//
// A listing walks one index from its newest leaf down: the root, then a
// page, then leaves, a few at a time in parallel (one at first, doubling up
// to Config.Concurrency). It filters entries by the query — pipeline,
// change, state, status and time are all in the entry — and by the paging
// cursor BeforeSeq, which also picks the first page and leaf; Since skips
// every leaf whose latest event is older. Matches are resolved to rows with
// parallel gets, newest first, and each row is checked against the query
// again. The walk stops at Limit rows.
//
//   - History by pipeline, by state, or neither: the "p…", "s…" or "a" index.
//   - History of a change: its issue lists the segments holding its events,
//     and only those leaves of its pipeline's index are read. By change id
//     alone: the same, for each listed pipeline with an issue for it.
//   - Issues by change: direct gets. OPEN or IN_PROGRESS: the member lists,
//     read whole and sorted (they are what an operator looks at, and short).
//     CLOSED, by pipeline, or all: a walk of "a" or "p…" for entries not
//     marked superseded, each confirmed by reading its issue, whose sequence
//     must equal the entry's.
//
// So a listing returns rows as stored, and only rows whose stored values
// match the query: an entry is a copy of the row's values that narrows the
// search, never the value shown. A hash collision costs a read; an entry
// that disagrees with its row (one of the two altered in the database)
// can keep the row out of a listing, but never lists it under a value it
// does not hold, while the row's own values show in every listing that
// finds it, where verify can compare them with the stream.
//
// # Correct under redelivery and concurrent workers, without transactions
//
// Every write is idempotent, and Apply works out what to write from the
// batch and the documents as it reads them, never from "was it new?", so a
// retried, redelivered or overlapping batch converges on the same documents:
//
//   - Events are Inserted by sequence; ErrDocumentExists means already
//     there (the first write of a sequence stands).
//   - Every other document is read, changed and replaced under CAS, or
//     inserted if missing; on a CAS mismatch — or ErrDocumentExists, which
//     MutateIn with a stale CAS and a lost Insert race report — the writer
//     re-reads and decides again, with backoff. Each change is monotonic: an
//     issue is replaced only by an event with a higher stream sequence; leaf
//     entries and marks, pages' leaves, roots' pages and the lists only
//     grow; a page's latest time and a checkpoint only rise.
//   - The few lists that are never read first (a root's pages, the pipeline
//     list, the checkpoint names) are sub-document upserts of one path per
//     name: set-inserts, the same whoever writes them and however often.
//
// Apply writes in steps, each finished before the next, so that whatever
// is written is reachable from above at every moment, even after a crash:
// (1) the events, the pages (a page is listed in its root before it is
// created), the pipeline list, and reading the issues; (2) the member
// lists of the statuses issues move to; (3) the issues; (4) the leaves —
// their events exist and their pages list them — with superseded marks,
// and removal of members from lists of statuses issues left; (5) the
// checkpoint. Derived data can only be stale in the safe direction, and
// readers check it against the issue:
//
//   - A superseded mark is set only once the issue has a higher sequence,
//     so marks are never wrong; a crash can lose one, leaving an entry the
//     reader rejects because its issue has moved on.
//   - A member's sequence only rises, and a member is removed only if its
//     sequence is at most the while the issue is in another status.
//     A writer that moves the issue into that status does so at a higher
//     sequence and lists it there first, so a current member is never
//     removed; a stale one (left by a crash) is rejected by the reader.
//
// Reset raises the generation under CAS: from that write on every call
// sees an empty store, at once. It then deletes the old generation's
// documents, found through its indexes and lists from the bottom up, so an
// interrupted purge is finished by the next Reset (meta records the lowest
// generation not yet purged). It does not drop the collection: the SDK
// keeps using a dropped collection's id until the server rejects it, and
// gocaves never does, serving the old data. An event whose Apply failed
// before indexing it and was never retried is reachable from nothing: it
// is invisible, and only costs space.
//
// # A store of the older layout
//
// The meta document records the layout. Layout 1, written by older
// versions, keyed event documents by event id (g:e:<event id>, named by
// each leaf entry), which hid an event published again behind its first
// row. Rekeying in place would rewrite every event and leaf without a
// transaction; the stream holds everything, so the store is rebuilt
// instead. New opens a layout 1 store without changing it (a replay must
// open it to reset it), and every call but Reset, CheckSchema and Close —
// by any process, since each call reads the meta document — fails with
// stores.ErrInvalidConfig naming the rebuild: `auditflow --store couchbase
// replay --reset` (stop the projectors first), or a replay into another
// collection. Reset raises the generation and the layout in one write, so
// the store is empty and current at once, then purges the older
// generation, whose event keys its leaf entries name. A layout New does
// not know (a newer version's) is refused at open.
//
// # Schema check, and no targeted repair
//
// CheckSchema (stores.SchemaChecker) reports the bucket, scope or
// collection missing, and the meta document missing, unreadable or of
// another layout (the older one with the way to rebuild it). There are no
// indexes to check.
//
// The store is not a stores.Repairer: operator tools repair it by Reset
// and replay from the stream, which rebuilds every document from the
// source of truth. The listings are derived from leaf entries and from
// documents that Apply only ever grows or raises — what makes concurrent
// workers correct without transactions. Repair would have to undo each of
// them (remove entries from three leaves, clear superseded marks, lower
// members, keep a change's segments when its issue is deleted), and some
// repairs cannot be represented at all: issue listings find an issue
// through the leaf entry at its sequence, so an issue written "exactly as
// given" with a sequence that is not one of its change's rows, or a status
// not of that row's state, would be found by change id and missing from
// other listings; and a leaf holds one entry per sequence. Features
// records it (Repairer: false), and the suite checks that it does not
// claim to be one.
package couchbasestore
