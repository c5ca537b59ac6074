// Package projector consumes the audit stream and materialises it into an
// audit store.
//
// A projector reads one durable pull consumer (explicit acks, bounded ack
// pending, unlimited redelivery); several projector processes may share
// it. In each, one fetcher takes batches, judges every message and routes
// each event by its change to one of Workers apply loops, so a change's
// events are applied in stream order by one loop. Each loop applies what has
// queued for it as one batch, and only after Apply returns (the write is
// durable) acknowledges the batch's messages. Nothing is acknowledged that
// is not stored, so a crash at any point means redelivery, never loss.
// Redelivery and replay are harmless because every store write is
// idempotent and sequence-guarded (see stores.Store), which also keeps the
// effect of events on a change in stream order when workers apply batches
// concurrently, or when a change's events come back in another order.
//
// Each write also records the store's contiguous checkpoint for the
// consumer: a sequence at or below which every event is stored or
// dead-lettered, proven from the consumer's ack floor and what the process
// has settled since (see checkpoint.go), never the highest sequence
// written. Before consuming, New compares it with the consumer's ack floor
// — the consumer never redelivers what it acknowledged — and refuses an
// empty store behind it (ErrStoreBehind) unless Config.Rebuild replays the
// stream into it; a store behind with progress (a kill -9, a restored
// backup) is caught up by replaying from its checkpoint.
//
// Nothing holds the projector up for long:
//
//   - Every message a process holds (queued for a loop, being written,
//     being dead-lettered) gets an InProgress every AckWait/4, so a slow
//     write or a long queue is never redelivered behind itself. That
//     lets AckWait be short (4s): a process that dies leaves up to
//     MaxAckPending messages unacknowledged, and the server delivers
//     nothing new until they come back, within AckWait.
//   - Each store write attempt is bounded by WriteTimeout (below AckWait).
//     A failed write is retried with back-off; a timed-out one is retried
//     in halves.
//   - The fetcher waits at most a second for a busy loop, then hands that
//     loop's share back to the stream (a negative acknowledgement with a
//     short delay) and goes on feeding the others. A loop stuck for good
//     still keeps its messages in the ack-pending window; once they fill
//     it, everything waits, and readiness says why.
//
// A message that can never be stored is copied to the dead-letter stream
// (<prefix>.<original subject>, with the reason, the original's stream,
// subject, sequence, hash and size in headers), terminated, counted and
// logged: one that does not decode or validate, one published on a
// subject other than its change's (events.CheckSubject), and one the
// store refuses for good (stores.ErrInvalidRecord, e.g. a DynamoDB item
// over 400 KB — its batch is split until the record is alone, and the rest
// is stored). The copy carries the original bytes when they fit in a
// message with its headers, otherwise a reference (the headers, and the
// first ReferencePreview bytes). Dead-lettering is bounded: a few attempts,
// then the message is left on the stream for a later delivery (1s doubling
// to 1m), and the failure logged, counted and reported by readiness.
//
// An event of a newer schema version than this build reads is not
// dead-lettered — that would drop it from every store during a rolling
// upgrade — but held: handed back to the stream with a delay (5s doubling
// to 1m) for a newer projector on the same consumer, counted, logged once
// per version, and reported by readiness ("upgrade needed"). Config.Decode
// is how a newer build reads it. Only versions up to VersionsAhead past this
// build's are held: a schemaVersion of 99 is junk, and is dead-lettered.
//
// With a trust list (Config.Trust, package trust) the fetcher also judges
// each event's signature, from its Auditflow-Signature header and the hash
// of its bytes. An untrusted event — unsigned, an unknown or revoked key, a
// key outside its roles or pipelines, a signature not over these bytes — is
// stored with its verdict (stores.Record.Trust), which keeps its change's
// issue OPEN whatever the event claims, and is logged and counted. It is an
// issue for an operator, not an outage: readiness does not depend on it.
// Every row keeps its event's signature, so a store can be checked without
// the stream.
//
// Every event is also judged against the message right before it on its
// change's subject (events.CheckChain): one that does not extend its
// change's chain — a copy of an earlier event published again, however
// exactly copied and signed, a fork, a downgrade — is stored with that
// verdict (stores.Record.Chain) and shows as OUT_OF_CHAIN, its change's
// issue OPEN, whatever it claims. The fetcher knows each subject's previous
// message while it reads the consumer's deliveries in order without a hole,
// and asks the stream otherwise (after a restart, a redelivery, another
// process on the consumer): see chain.go.
//
// After every write attempt the projector publishes an [AuditWrite] on
// audit.writes.<store> for metrics and alerting ([SubscribeWrites],
// [NewWriteSubscription]): anyone on the bus can watch every projector.
//
// A projector also exports its own Prometheus metrics, on the Registerer in
// its Config (nil: none; library code never touches the global registry),
// each with the const labels store and consumer:
//
//	auditflow_projector_events_applied_total            counter: events written to the store
//	auditflow_projector_batches_total                   counter: successful store writes
//	auditflow_projector_store_write_duration_seconds    histogram: every write attempt, 1ms to 10s buckets
//	auditflow_projector_store_write_failures_total      counter: failed write attempts (retried or split)
//	auditflow_projector_dead_lettered_total             counter: events moved to the dead-letter stream
//	auditflow_projector_dead_letter_failures_total      counter: dead-letter publishes that failed (message left for later)
//	auditflow_projector_store_refusals_total            counter: records the store refused for good (dead-lettered)
//	auditflow_projector_held_newer_version_total        counter: deliveries of newer-version events held
//	auditflow_projector_held_newer_version_events       gauge: distinct newer-version events held in the last 2m
//	auditflow_projector_busy_worker_naks_total          counter: messages handed back because their loop was busy
//	auditflow_projector_stale_token_events_total        counter: events written with a stale lock token
//	auditflow_projector_untrusted_events_total          counter: events the trust list does not accept (each opens an issue)
//	auditflow_projector_out_of_chain_events_total       counter: events that do not extend their change's chain (each opens an issue)
//	auditflow_projector_chain_lookup_failures_total     counter: deliveries handed back because their predecessor could not be read
//	auditflow_projector_stalled                         gauge: 1 while a write fails for StallAfter, or nothing progresses for StallAfter with a lag
//	auditflow_projector_last_applied_sequence           gauge: highest stream sequence this process applied (a high-water mark)
//	auditflow_projector_checkpoint_sequence             gauge: the contiguous checkpoint this process last recorded
//	auditflow_projector_lag_messages                    gauge: consumer NumPending + NumAckPending
//
// The lag is read from the server when scraped, at most once a second
// however many scrapers there are, and is absent while the server cannot
// be asked. [Projector.Handler] serves /metrics with /healthz (liveness)
// and /readyz (readiness: [Projector.Ready], which also fails while events
// are held for an upgrade, dead letters fail, a write has failed for
// StallAfter, or nothing has progressed for StallAfter with a lag).
//
// On cancellation, Run finishes the batches in flight (within
// ShutdownTimeout), acknowledges them and returns; what it cannot finish
// goes back to the stream at once, for another projector.
package projector
