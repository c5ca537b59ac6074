// Package lock provides pipeline locks in a JetStream key-value bucket, so
// that one runner of a fleet applies a pipeline's changes at a time.
//
// Acquiring is a write on the lock's key conditional on the key's last
// revision (the server grants it to exactly one caller). The bucket's TTL
// is the lease: every revision of a key expires that long after it was
// written, so a holder that dies loses the lock without anyone cleaning
// up. A live holder refreshes (a revision-checked write) every third of
// the lease; if it cannot before the lease runs out, its Lost channel
// closes and it must start no further change. A refresh that finds the
// lock removed or another holder's closes Lost at once; Lease.LostCause
// says which (a *LostError: ran out, deleted, force-released, taken).
//
// # Removing a lock does not hand it over early
//
// A holder learns that its lock was removed only at its next refresh, and
// one cut off from NATS never does: it acts until its lease runs out.
// Nothing but the holder can shorten that. So a lock taken over a removal
// — its key deleted or purged, force-released by an operator, or replaced
// by a release record that is not believed — is returned by TryAcquire
// and Acquire only once the removed holder's lease has run out: a lease
// after the removal by the server's clock (the removal's stored time
// bounds the holder's last refresh), compared with the server's time of
// the new holder's own write, never with a local clock. The new holder
// takes the lock at once, so nobody else does, and refreshes it while it
// waits.
//
// A holder that releases its lock normally has stopped: the next one must
// not wait. Release therefore writes a release record (a value saying
// released, with the holder's token, written over the holder's last
// revision) instead of deleting the key. Anyone with the rights to a key
// can write any value on it, so the next holder believes the record only
// if the server vouches for it — the server checked, and keeps on the
// message, that it replaced the revision the record names, so a copy
// written over anything else does not match, and it names this bucket's
// creation — and, when Config.Trust is set, if a key the trust list trusts
// for the pipeline (runner or operator) signed it (Config.Signer). Without
// a trust list unsigned records are believed: then anyone who may write a
// lock's key can also end it early.
//
// # The bucket
//
// New opens the bucket; only Config.CreateBucket (auditflow init, the
// embedded mode) creates a missing one. The bucket refuses rollups,
// purges and message deletes (nats.go's CreateKeyValue always allows
// rollups, so the stream is created here): a lock is removed only by a
// write on its own key, which a deployment's permissions scope per
// pipeline, never with the whole bucket by one publish. New refuses a
// bucket that allows them (ErrUnsafeBucket); CreateBucket (the embedded
// mode) and SecureBucket make it refuse them in place, where the user may
// edit the bucket (a deployment lets no role: auditflow init reports it).
//
// The lease's fencing token is the bucket's revision at acquisition.
// Runners stamp it on every event they publish. A bucket deleted and
// created again starts above the highest token recorded on the audit
// stream (Config.TokenFloor), so tokens never go backwards for a target
// that fences on them, and is created only a lease after it was found
// missing, when no holder of the deleted one can still act. A lock with a
// TTL cannot by itself rule out two holders (a paused process can wake
// after its lease expired), which is why the runner does not rely on it
// alone: every ExecutionStarted is published with the change's expected
// last sequence, so of two runners that both believe they hold the lock
// only one can start a given change.
package lock
