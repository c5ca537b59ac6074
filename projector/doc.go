// Package projector consumes the audit stream and materialises it into an
// audit store.
//
// A projector reads one durable pull consumer (explicit acks, bounded ack
// pending, unlimited redelivery); several projector processes may share
// it. In each, one fetcher takes batches, decodes them and routes every
// event by its change to one of Workers apply loops, so a change's events
// are applied in stream order by one loop. Each loop applies what has
// queued for it as one batch, and only after Apply returns (the write is
// durable) acknowledges the batch's messages. A failed write is
// retried with back-off, and its messages are kept from redelivery
// meanwhile; nothing is acknowledged that is not stored, so a crash at any
// point means redelivery, never loss. Redelivery and replay are harmless
// because every store write is idempotent and sequence-guarded (see
// stores.Store), which also keeps the effect of events on a change in stream
// order when workers apply batches concurrently.
//
// An event that cannot be decoded (malformed, unknown type, newer schema
// version) would block nothing but itself: it is copied to the dead-letter
// stream (<prefix>.<original subject>, with the reason in a header),
// terminated, counted and logged once.
//
// After every write attempt the projector publishes an [AuditWrite] on
// audit.writes.<store> for metrics and alerting ([SubscribeWrites],
// [NewWriteSubscription]): anyone on the bus can watch every projector.
//
// A projector also exports its own Prometheus metrics, on the Registerer in
// its Config (nil: none; library code never touches the global registry),
// each with the const labels store and consumer:
//
//	auditflow_projector_events_applied_total          counter: events written to the store
//	auditflow_projector_batches_total                 counter: successful store writes
//	auditflow_projector_store_write_duration_seconds  histogram: every write attempt, 1ms to 10s buckets
//	auditflow_projector_store_write_failures_total    counter: failed write attempts (all retried)
//	auditflow_projector_dead_lettered_total           counter: undecodable events dead-lettered
//	auditflow_projector_stale_token_events_total      counter: events written with a stale lock token
//	auditflow_projector_last_applied_sequence         gauge: highest stream sequence this process applied
//	auditflow_projector_lag_messages                  gauge: consumer NumPending + NumAckPending
//
// The lag is read from the server when scraped, at most once a second
// however many scrapers there are, and is absent while the server cannot
// be asked. [Projector.Handler] serves /metrics with /healthz (liveness)
// and /readyz (readiness: [Projector.Ready]).
//
// On cancellation, Run finishes the batch in flight (within
// ShutdownTimeout), acknowledges it and returns.
package projector
