// Package trust signs audit events and judges their signatures against a
// trust list, so that being able to publish on the audit subjects is not
// enough to write history.
//
// The hash chain (events.Event.PrevHash) shows that an event was altered
// after the fact, but anyone allowed to publish can write a new event that
// chains correctly: the hash is unkeyed, and lock tokens and operator
// names are free text. A signature names who wrote an event, and a trust
// list says whom to believe, for what.
//
// # Signatures
//
// A [Signer] holds an ed25519 key in the NATS nkey format (a user seed,
// "SU…"; a .creds file's seed works too). It signs
//
//	"auditflow-event-signature-v1\n" + events.Hash(data)
//
// where data are the exact bytes published, prevHash included. The
// signature travels in the NATS header Auditflow-Signature as
// "<public key> <base64url signature>", not in the event: the bytes, and so
// the hash chain, are the same signed or not, and unsigned events of older
// writers still decode. Because the hash of the bytes is signed, a store
// row (which keeps that hash, the signer and the signature) can be checked
// without the stream. The prefix separates these signatures from anything
// else the key signs.
//
// # Trust lists
//
// A [List] (YAML, see [ParseList]) names the keys to believe:
//
//	keys:
//	  - key: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4
//	    name: runner-billing
//	    roles: [runner]
//	    pipelines: [billing, shipping]
//	  - key: UA6KOMQ67XOE3FHE37W4OXADVXVYISBNLTBUT2LSY5VFKAIJ7CRDR2RZ
//	    name: alice
//	    roles: [operator]
//	    pipelines: ["*"]
//	    revokedAfterSeq: 18230
//
// Runner keys may sign every event type but ManuallyResolved; operator
// keys sign ManuallyResolved only (see [RoleOf]). A key is trusted for the
// pipelines listed ("*": all). revokedAfterSeq revokes a key from a stream
// sequence on: its events stored after that sequence are untrusted, those
// before stay trusted. The stream assigns sequences, so a holder of a
// revoked key cannot backdate an event.
//
// A stream that existed before signing was turned on holds unsigned
// history. A top-level unsignedUpToSeq: N accepts unsigned events up to
// stream sequence N — set it to the sequence of the last event written
// unsigned, once every writer signs — so that history does not become a
// wall of issues; unsigned events after N are untrusted. (What was
// unsigned was never protected: verify's other checks still apply to it.)
//
// [List.Check] judges one event: it is trusted, or its [Verdict] says why
// not — unsigned, an unknown key, a bad signature (the bytes are not what
// the key signed: altered, or a signature copied from another event), a
// key used outside its roles or pipelines, or a revoked key. Projectors
// keep the verdict on the event's row and open its change's issue;
// runners stop at an untrusted newest event; verify reports every one
// until a trusted operator's resolution follows it.
//
// # Rotation and revocation
//
// To rotate a key, create the new one (auditflow keys new), add it to the
// trust list, deploy the list to every projector, runner and operator
// machine, switch the writer to the new key, then remove the old key — or
// keep it with revokedAfterSeq set to the stream's last sequence, which
// keeps its past events trusted without accepting new ones. To revoke a
// stolen key, set revokedAfterSeq to the last sequence you still trust
// (before the theft); the key's later events become issues. A key removed
// from the list makes all its events untrusted, past ones included: verify
// and replay judge history with the list they are given.
//
// # Reusing a NATS nkey
//
// A runner may sign with the nkey it connects to NATS with. But a NATS
// client proves its identity by signing a nonce the server sends, and a
// malicious or impersonated server could send, as the nonce, the message a
// forged event's signature covers, and get it signed. Prefer a dedicated
// signing key that signs nothing else.
package trust
