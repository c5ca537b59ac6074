// Package siem turns the audit stream into a feed for a SIEM (Splunk,
// Elastic, Loki, …): one CloudEvents JSON document a line (NDJSON), each
// the event's own document as it was published, with auditflow's findings
// added as CloudEvents extension attributes:
//
//	auditflowseq     the stream sequence: the event's place in the log, and
//	                 the key a SIEM deduplicates on
//	auditflowsigner  the public key that signed it ("" if unsigned)
//	auditflowtrust   "trusted", the trust list's problem with it, or
//	                 "unchecked" when no trust list was given
//	auditflowchain   "" or how it fails to extend its change's hash chain
//	                 (events.CheckChain against the message before it on its
//	                 subject, worded as the stores keep it)
//
// A message that does not decode is not dropped: its line is a CloudEvents
// document of type io.auditflow.undecodable carrying the raw bytes
// (data_base64) and the reason (auditflowerror).
//
// Run reads what the stream holds when it starts, with an ephemeral
// consumer (projector.Scan), and ends. Follow reads from a durable
// consumer and acknowledges a batch only after its lines are written and
// flushed: a restart continues after the last line written. Delivery is
// at least once — a crash between the write and the acknowledgement writes
// those lines again — so a SIEM deduplicates on auditflowseq.
//
// Judging signatures is the costly part (an Ed25519 verification per
// event): it runs in parallel over each batch; placing events in their
// chains and writing stay in stream order.
package siem
