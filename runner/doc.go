// Package runner applies a pipeline's change units under the pipeline lock
// and records every execution on the audit stream.
//
// A run:
//
//  1. plans: reads each change's newest event from the stream (one direct
//     get per change) and decides skip, run, retry or blocked, by
//     Flamingock's rules (see decide);
//  2. if anything is to run, takes the pipeline lock and plans again (other
//     runners may have applied changes meanwhile);
//  3. for each change in order: publishes ExecutionStarted — with the
//     change's expected last sequence, so no second runner can start the
//     same change even if two ever believed they held the lock — and waits
//     for the stream's ack before touching the target; runs Apply; records
//     ExecutionSucceeded, or ExecutionFailed and the rollback's outcome;
//  4. stops at the first failure or blocked change, and starts nothing more
//     once the lease is lost.
//
// Because the start is acknowledged before the change runs, a runner that
// dies mid-change leaves STARTED without an end on the stream; the next run
// marks it UNCERTAIN (opening an issue) and stops for an operator unless
// the change's recovery is ALWAYS_RETRY. [Runner.Resolve] records the
// operator's verdict, under the pipeline lock.
//
// A change whose newest message is not a valid event of it (garbage, or
// another change's event published on its subject: producer.BadEventError)
// is BLOCKED the same way, with guidance naming the message's sequence:
// its state is unknown, the stream cannot drop the message, and a
// resolution recorded after it is the way forward.
//
// With a trust list (Config.Trust, package trust), a change whose newest
// event the list does not accept — unsigned, or signed by a key it does
// not trust for that — is BLOCKED too, whatever the event claims: a forged
// ExecutionSucceeded must not make runners skip a change. The runner signs
// what it writes with its producer's key (producer.Config.Signer), and
// refuses to run with a key the list would not trust as a runner; Resolve
// signs with the operator's key and records the key's identity as the
// operator (see Resolution.Operator).
//
// # Fencing: a change never outlives its lease unnoticed
//
// A lock with a lease cannot by itself rule out two holders: a runner
// paused (SIGSTOP, a frozen VM) or partitioned past its lease wakes up
// believing it still holds the lock. So every execution is bounded by the
// lease, end to end:
//
//   - Apply's context carries the [Execution] (its fencing token, the lock
//     revision, and the lease's deadlines) and is cancelled when the lease
//     is about to run out, Margin before the server could give the lock to
//     another runner. Change files pass the token to their commands as
//     AUDITFLOW_LOCK_TOKEN, and a supervisor process (runner/supervisor)
//     kills a command whose runner died or stopped renewing its deadlines.
//   - The lease is checked right before each change starts.
//   - A target system can refuse a stale holder's writes by remembering the
//     highest token it has seen (examples/fencing): the one guarantee that
//     holds even for a process paused between its check and its write.
//   - An outcome is never lost to the sequence guard: a holder whose lease
//     passed on, or that finds another execution's event on its change,
//     records its outcome as ExecutionOverlapped, after the newest event.
//     That opens an OVERLAPPED issue; even ALWAYS_RETRY changes then wait
//     for an operator. Projectors and verify also flag any event whose lock
//     token is lower than one recorded for its pipeline before it.
//
// An interrupt (the caller cancelling Run's context) stops the running
// change the same way; its rollback then runs on a detached context,
// bounded by RollbackTimeout, and the record says "interrupted" with the
// cause. A rollback never runs once the lease is gone: another holder may
// be applying the change.
package runner
