// Package producer publishes execution events to the audit stream and reads
// a change's current state back from it.
//
// The stream ([EnsureStream]) is created with the defaults a source of truth
// needs: file storage, no limits, every message of every subject kept,
// delete and purge denied, direct gets allowed. An existing stream is
// checked, never silently changed. Creating it is an explicit act
// (`auditflow init`, the embedded mode): [New] opens the existing stream
// ([OpenStream]) and reports a missing one as [ErrNoStream], saying to init
// or restore it, because an empty stream in place of a deleted one would
// make every runner apply every change again.
//
// Each change has its own subject, <prefix>.<pipeline>.<changeId> (see
// events.Subject), so:
//
//   - the last message on the subject is the change's state ([Producer.Last]);
//   - a publish can require that the change has not moved since the writer
//     looked ([ExpectLastSeq], Nats-Expected-Last-Subject-Sequence), so two
//     runners racing on one change cannot both record a start;
//   - every publish carries Nats-Msg-Id = event id, so retries after a lost
//     acknowledgement are deduplicated by the server;
//   - [After] chains a change's events: each carries the hash of its
//     predecessor's exact bytes ([Head]), so an altered event is detectable.
//
// Transient failures are retried with exponential back-off
// (cenkalti/backoff/v4) for up to Config.RetryFor: no responders or no
// answer while a cluster elects a leader (killing a stream's leader stalls
// it for the raft election timeout, several seconds), a client between
// servers, JetStream's "temporarily unavailable" answers. That includes
// [New]'s stream check ([OpenStream] with [WithRetry]), so a process
// started during an election waits for it. A missing NATS permission is not
// retried: the request ends as soon as the server reports the violation,
// with an error naming the denied subject. A server's refusal is returned
// at once, except a wrong-last-sequence refusal: a replicated stream
// sometimes gives one while a proposal on the subject is in flight, so the
// producer re-reads the subject first and reports [ErrConflict] only if
// another writer's event is newer than the expected one.
// [Batch] publishes asynchronously for bulk emitters.
//
// Events are kept within events' size limits at the edge: a long error
// message or trace is truncated with a "… [truncated N bytes] …" marker
// (start and end kept), so an outcome is always recorded; oversize metadata
// or a long reason is refused, naming the field and the limit.
//
// A change's newest message may not be a valid event of it: garbage
// published by hand, or another change's event on its subject. [Producer.Last]
// reports that as a [*BadEventError] carrying the message's Head, so the
// caller can stop for an operator and record the decision after it — the
// stream denies delete and purge, so nothing else moves the change on.
package producer
