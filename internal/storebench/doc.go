// Package storebench drives the projector against an audit store: the
// per-backend benchmarks (Store.Apply and Replay against ceilings measured
// in the same run) and the parallel-replay check every backend runs. It is
// kept out of stores/storetest, the conformance suite, which needs only
// stores and events: these need a NATS server, the producer and the
// projector, which sit above the stores.
package storebench
