// Package lock provides pipeline locks in a JetStream key-value bucket, so
// that one runner of a fleet applies a pipeline's changes at a time.
//
// Acquiring is a KV Create, which the server grants to exactly one caller.
// The bucket's TTL is the lease: every revision of a key expires that long
// after it was written, so a holder that dies loses the lock without anyone
// cleaning up. A live holder refreshes (a revision-checked Update) every
// third of the lease; if it cannot before the lease runs out, its Lost
// channel closes and it must start no further change. A refresh that finds
// the lock gone (expired, force-released, its key deleted or the bucket
// purged) or another holder's closes Lost at once: a removed lock is noticed
// within a third of the lease, which is how long another runner may hold it
// beside the old holder — why deployments deny the rights to purge the
// bucket and to other pipelines' keys.
//
// New opens the bucket; only Config.CreateBucket (auditflow init, the
// embedded mode) creates a missing one.
//
// The lease's fencing token is the KV revision at which it was acquired.
// Runners stamp it on every event they publish. A lock with a TTL cannot by
// itself rule out two holders (a paused process can wake after its lease
// expired), which is why the runner does not rely on it alone: every
// ExecutionStarted is published with the change's expected last sequence,
// so of two runners that both believe they hold the lock only one can start
// a given change.
package lock
