package projector

import (
	"bytes"
	"encoding/json"
	"errors"
	"hash/fnv"
	"strconv"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// outcome is what becomes of one fetched message. Every message ends as
// exactly one of them.
type outcome int

const (
	// outStore: a record for the store.
	outStore outcome = iota + 1
	// outDeadLetter: copied to the dead-letter stream with a reason and
	// terminated; it can never be stored by any build.
	outDeadLetter
	// outHold: an event of a newer schema version than this build reads.
	// It is left on the stream (negatively acknowledged with a delay) for a
	// newer projector: dead-lettering it would drop it from every store.
	outHold
)

func (o outcome) String() string {
	switch o {
	case outStore:
		return "store"
	case outDeadLetter:
		return "dead letter"
	case outHold:
		return "hold"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// decision is the fetcher's verdict on one message.
type decision struct {
	outcome outcome
	rec     stores.Record // outStore; its Chain is set later, in stream order (chain.go)
	reason  error         // outDeadLetter: why it can never be stored
	version int           // outHold: the event's schema version
	// self is the message as the predecessor of the next on its subject,
	// whatever its outcome: every message is part of its subject's chain.
	self events.Prev
}

// decide judges one message: decode, validate, check the subject, judge
// the signature. It does no I/O and keeps no state, so it can be fuzzed as
// it runs in the fetcher.
//
// decode is Config.Decode; prefix is the stream's subject prefix. The
// subject must be the one the event's pipeline and change map to
// (events.CheckSubject): a producer publishes each change on its own
// subject and guards it with the subject's last sequence, so an event on
// another change's subject was not written by the producer's rules, and
// stored it would become the wrong change's history.
//
// list is Config.Trust (nil: no checks). An untrusted event is stored all
// the same, with its verdict (stores.Record.Trust), which opens its
// change's issue: the store stays a projection of the stream, and the
// forgery is on record where operators look.
func decide(decode func([]byte) (events.Event, error), prefix string, list *trust.List, m StreamMsg) decision {
	subject, seq, data := m.Subject, m.Seq, m.Data
	hash := events.Hash(data)
	e, err := decode(data)
	if err == nil {
		// The default decoder has validated already; a custom one (a newer
		// format's reader) may not have.
		err = events.Validate(e)
	}
	if err != nil {
		self := events.PrevOf(seq, hash, e, err)
		if errors.Is(err, events.ErrUnsupportedVersion) {
			v := e.SchemaVersion
			if v <= events.SchemaVersion {
				v, _ = peekVersion(data)
			}
			if v > events.SchemaVersion && v <= events.SchemaVersion+VersionsAhead {
				return decision{outcome: outHold, version: v, self: self}
			}
		}
		return decision{outcome: outDeadLetter, reason: err, self: self}
	}
	if err := events.CheckSubject(prefix, subject, e); err != nil {
		return decision{outcome: outDeadLetter, reason: err, self: events.PrevOf(seq, hash, e, err)}
	}
	signer, signature, v := list.CheckHeader(m.Header.Get(trust.Header),
		trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: seq, Hash: hash})
	return decision{outcome: outStore, self: events.PrevOf(seq, hash, e, nil), rec: stores.Record{Seq: seq, Hash: hash, Signer: signer,
		Signature: signature, Trust: events.Truncate(v.Problem, stores.MaxTrustLen), Event: e}}
}

// VersionsAhead bounds which newer schema versions are held for an
// upgrade: those up to VersionsAhead past the newest this build reads.
// A rolling upgrade skips a version or two, never dozens; a version far
// beyond (a hand-published schemaVersion 99) is junk, not the future, and
// is dead-lettered like any undecodable message — held, it would fail
// readiness for good, since no upgrade would ever read it.
const VersionsAhead = 8

// peekVersion reads data.schemaVersion from a CloudEvents document without
// judging anything else, to tell "newer than this build" (hold it for a
// newer projector) from "not a version at all" (dead-letter it).
func peekVersion(b []byte) (int, bool) {
	var doc struct {
		Data struct {
			SchemaVersion json.RawMessage `json:"schemaVersion"`
		} `json:"data"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return 0, false
	}
	raw := bytes.TrimSpace(doc.Data.SchemaVersion)
	v, err := strconv.Atoi(string(raw)) // only a plain integer: not 4.0, "4" or 4e0
	if err != nil {
		return 0, false
	}
	return v, true
}

// route picks the apply loop of e's change among n, so that one loop
// applies all of a change's events.
func route(e events.Event, n int) int {
	h := fnv.New32a()
	h.Write([]byte(e.Pipeline))
	h.Write([]byte{0})
	h.Write([]byte(e.ChangeID))
	return int(h.Sum32() % uint32(n))
}
