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
// operator's verdict.
package runner
