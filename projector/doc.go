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
// audit.writes.<store> for metrics and alerting ([SubscribeWrites]).
//
// On cancellation, Run finishes the batch in flight (within
// ShutdownTimeout), acknowledges it and returns.
package projector
