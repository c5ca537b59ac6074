package events

import (
	"errors"
	"fmt"
)

// Prev is the message right before an event on its change's subject, as
// the stream holds it: what the event must name to extend its change's
// chain. The zero Prev means none: the event is its subject's first
// message.
type Prev struct {
	Seq  uint64 // its stream sequence; 0: none
	Hash string // Hash of its exact bytes
	// ID and Version are its event id and schema version if it decodes as
	// an event ("" and 0 if it does not: junk stays part of the chain, and
	// the next event names it).
	ID      string
	Version int
	// Chained: it is an event that carries the chain (a prevHash, or
	// version 4 or newer), so the next event must too.
	Chained bool
}

// PrevOf is the Prev of a message at seq whose bytes hash to hash (Hash),
// decoded as e; decodeErr is non-nil when it is not an event of the change
// whose subject it is on (it does not decode, or names another change).
func PrevOf(seq uint64, hash string, e Event, decodeErr error) Prev {
	p := Prev{Seq: seq, Hash: hash}
	if decodeErr == nil {
		p.ID, p.Version, p.Chained = e.ID, e.SchemaVersion, e.PrevHash != "" || e.SchemaVersion >= ChainVersion
	}
	return p
}

// ErrOutOfChain is wrapped by every *ChainError.
var ErrOutOfChain = errors.New("event out of its change's chain")

// ChainError says how an event fails to extend its change's chain. Its
// text is a function of the event and its Prev only, so every reader that
// judges the same stream words it the same way (stores keep it, and
// verify compares it).
type ChainError struct {
	Problem string
}

func (e *ChainError) Error() string { return e.Problem }

func (e *ChainError) Unwrap() error { return ErrOutOfChain }

func outOfChain(format string, args ...any) *ChainError {
	return &ChainError{Problem: fmt.Sprintf(format, args...)}
}

// CheckChain reports whether e, stored on the stream right after prev on
// its change's subject, extends its change's chain: nil if it does, else a
// *ChainError (wrapping ErrOutOfChain).
//
// An event of ChainVersion or newer must name prev exactly — its sequence
// (PrevSeq) and the hash of its bytes (PrevHash) — and must not repeat its
// id. A writer publishes each event expecting its change's last sequence,
// so it always can; an exact copy of an event published again lands after
// another message than the one it names, so no replay passes, however many
// events are copied in a row.
//
// Older events are judged by what they carry: a prevHash must be prev's
// hash, and an event without the chain after a chained one (or any older
// event after a version-4 one) is a downgrade; history written before the
// chain, or by a writer that never chains, passes. Such events
// cannot name a place, so a run of copied version-2 or -3 events is caught
// only at its first (verify with a trust list catches the rest: their
// signatures repeat).
func CheckChain(e Event, prev Prev) error {
	if prev.Seq != 0 && e.ID == prev.ID {
		return outOfChain("repeats the event id of stream sequence %d, the message before it", prev.Seq)
	}
	if e.SchemaVersion >= ChainVersion {
		switch {
		case prev.Seq == 0 && e.PrevSeq != 0:
			return outOfChain("written to follow stream sequence %d, but it is its change's first message", e.PrevSeq)
		case prev.Seq == 0:
			return nil
		case e.PrevSeq == 0:
			return outOfChain("written as its change's first event, but stream sequence %d precedes it", prev.Seq)
		case e.PrevSeq != prev.Seq:
			return outOfChain("written to follow stream sequence %d, but sequence %d precedes it: a copy of an earlier event published again, or a fork", e.PrevSeq, prev.Seq)
		case e.PrevHash != prev.Hash:
			return outOfChain("its prevHash is not the hash of stream sequence %d, the message before it", prev.Seq)
		}
		return nil
	}
	switch {
	case prev.Version >= ChainVersion:
		return outOfChain("a schema version %d event after a version %d one (stream sequence %d): a downgrade, as an old writer or a copy of an old event would write it", e.SchemaVersion, prev.Version, prev.Seq)
	case e.PrevHash != "" && prev.Seq == 0:
		return outOfChain("written to follow another message, but it is its change's first")
	case e.PrevHash != "" && e.PrevHash != prev.Hash:
		return outOfChain("its prevHash is not the hash of stream sequence %d, the message before it", prev.Seq)
	case e.PrevHash == "" && prev.Chained:
		return outOfChain("a schema version %d event without the hash chain after a chained one (stream sequence %d): a downgrade", e.SchemaVersion, prev.Seq)
	}
	return nil
}
