package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/trust"
)

// Headers on a lock key's messages.
const (
	// kvOperation marks a delete or purge marker, as nats.go's KeyValue
	// writes and reads it.
	kvOperation = "KV-Operation"
	// ReleasedByHeader names who force-released a lock, on the delete
	// marker ForceRelease writes: the next holder and the removed one
	// report it. Informative only: anyone who may write the key may write
	// it.
	ReleasedByHeader = "Auditflow-Released-By"
)

// releaseDomain starts what a release record's signature covers, so that
// it can never pass for an event's signature (trust signs events' bytes,
// which are JSON) or anything else the key signs.
const releaseDomain = "auditflow-lock-release-v1\n"

// record is a lock key's value: the holder's Info, and once the holder
// has released the lock, its release.
type record struct {
	Name        string    `json:"name"`
	Owner       string    `json:"owner"`
	Token       uint64    `json:"token"`
	AcquiredAt  time.Time `json:"acquiredAt,omitzero"`
	RefreshedAt time.Time `json:"refreshedAt,omitzero"`
	ExpiresAt   time.Time `json:"expiresAt,omitzero"`
	// ID names one acquisition (random), so that a holder knows its own
	// write when the reply to it was lost or refused spuriously.
	ID string `json:"id,omitempty"`
	// Released is set on the value a holder writes when it releases the
	// lock: the lock is free, and its holder has stopped.
	Released *release `json:"released,omitempty"`
	// Over is set by a holder that took the lock over from a removal: what
	// the removal was, so that the removed holder, which finds this value
	// at its next refresh, can say why it lost the lock. Informative only.
	Over *takeover `json:"over,omitempty"`
}

// takeover is what a holder found when it took a lock over.
type takeover struct {
	Rev    uint64    `json:"rev"` // the removal's revision
	At     time.Time `json:"at"`  // its server time
	What   string    `json:"what"`
	By     string    `json:"by,omitempty"`
	Forced bool      `json:"forced,omitempty"`
}

// release is what a release record says of itself. The next holder
// believes it (and takes the lock without waiting) only if the server
// checked that it was written over Prev, it names this bucket, and —
// with a trust list — a trusted key signed it.
type release struct {
	At time.Time `json:"at"`
	// Prev is the revision the release replaced: the holder's last. The
	// release is written with Nats-Expected-Last-Subject-Sequence: Prev,
	// which the server checks and keeps on the message, so a copy of the
	// record written over anything else does not match.
	Prev uint64 `json:"prev"`
	// Bucket is the bucket's creation time: a record from before the
	// bucket was created again is not believed.
	Bucket time.Time `json:"bucket"`
}

// state is what a lock key's last message says.
type state int

const (
	stateFree     state = iota // no message: never taken, expired, or the bucket is new
	stateHeld                  // a holder's value (or anything that is not a marker or a release)
	stateReleased              // a release record its holder wrote
	stateRemoved               // a delete or purge marker, or a release record not believed
)

// entry is a lock key's last message, judged.
type entry struct {
	state state
	rev   uint64
	at    time.Time // when the server stored it, by the server's clock
	rec   record    // held, released, or a release record not believed
	// removed: whoever the marker or the record names, whether it was a
	// force release, and what it was, for people.
	by     string
	forced bool
	what   string
}

func (e entry) info(key string) Info {
	name := e.rec.Name
	if name == "" {
		name = key
	}
	return Info{Name: name, Owner: e.rec.Owner, Token: e.rec.Token, AcquiredAt: e.rec.AcquiredAt, RefreshedAt: e.rec.RefreshedAt,
		ExpiresAt: e.rec.ExpiresAt, Revision: e.rev}
}

// newID names an acquisition: unique, not secret (anyone may read it).
func newID() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
}

// subject is a lock key's subject.
func (l *Locker) subject(key string) string { return "$KV." + l.cfg.Bucket + "." + key }

// match reports a refused right on the key's subject or on the JetStream
// API (its direct get, the bucket's info) as soon as the server refuses
// it — a runner user scoped to another pipeline's lock, say. Without it
// the refused request waits for its context: Acquire would take it for a
// busy lock and wait out GiveUpAfter, and a refresh would be retried
// until the lease is lost.
func (l *Locker) match(key string) natsperm.Match { return natsperm.Subjects(l.subject(key)) }

// guard runs op, which asks the server about key, so that a refused right
// ends it at once with an error naming the subject (see match). One
// guard covers all of an operation's requests.
func (l *Locker) guard(ctx context.Context, key string, op func(context.Context) error) error {
	_, err := natsperm.Do(ctx, l.nc, l.match(key), func(ctx context.Context) (struct{}, error) { return struct{}{}, op(ctx) })
	return err
}

// put writes data (with hdr) on key if the key's last revision is expect
// (0: the key has no message), and returns the new revision.
func (l *Locker) put(ctx context.Context, key string, data []byte, hdr nats.Header, expect uint64) (uint64, error) {
	m := &nats.Msg{Subject: l.subject(key), Data: data, Header: hdr}
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	ack, err := l.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(expect))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// remove writes a delete marker on key if its last revision is rev,
// naming by (if not "") as who removed it. Callers guard it, like put.
func (l *Locker) remove(ctx context.Context, key string, rev uint64, by string) error {
	hdr := nats.Header{}
	hdr.Set(kvOperation, "DEL")
	if by != "" {
		hdr.Set(ReleasedByHeader, by)
	}
	_, err := l.put(ctx, key, nil, hdr, rev)
	return err
}

// read reads and judges a lock key's last message. Callers guard it.
func (l *Locker) read(ctx context.Context, key string) (entry, error) {
	m, err := l.stream.GetLastMsgForSubject(ctx, l.subject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return entry{state: stateFree}, nil
	}
	if err != nil {
		return entry{}, err
	}
	e := entry{rev: m.Sequence, at: m.Time}
	op, reason := m.Header.Get(kvOperation), m.Header.Get(jetstream.MarkerReasonHeader)
	if op == "DEL" || op == "PURGE" || reason != "" {
		e.state, e.by = stateRemoved, m.Header.Get(ReleasedByHeader)
		switch {
		case e.by != "":
			e.forced, e.what = true, "force-released by "+e.by
		case op == "PURGE":
			e.what = "purged"
		case op == "DEL":
			e.what = "deleted"
		default:
			e.what = "removed by the server (" + reason + ")"
		}
		return e, nil
	}
	if err := json.Unmarshal(m.Data, &e.rec); err != nil {
		// Not a lock value: it holds the key until it expires, like one.
		e.state, e.rec = stateHeld, record{Owner: "(not a lock value)"}
	}
	if e.rec.Token == 0 {
		e.rec.Token = m.Sequence // the first value is written before its revision is known
	}
	if e.rec.Released == nil {
		e.state = stateHeld
		return e, nil
	}
	if why := l.checkRelease(key, m, e.rec); why != "" {
		e.state, e.by = stateRemoved, e.rec.Owner
		e.what = fmt.Sprintf("replaced by a release record (naming %s, token %d) that is not believed: %s", e.rec.Owner, e.rec.Token, why)
		return e, nil
	}
	e.state = stateReleased
	return e, nil
}

// checkRelease judges a release record: "" if it is its holder's own, or
// why not. Only what the server vouches for counts: anyone with the
// rights to the key can write any value on it.
func (l *Locker) checkRelease(key string, m *jetstream.RawStreamMsg, rec record) string {
	r := rec.Released
	named, _ := Key(rec.Name)
	switch {
	case named != key:
		return fmt.Sprintf("it names lock %q, not this key", rec.Name)
	case m.Header.Get(jetstream.ExpectedLastSubjSeqSubjHeader) != "":
		return "its revision check names another subject"
	case r.Prev == 0 || m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != strconv.FormatUint(r.Prev, 10):
		return fmt.Sprintf("the server did not check that it replaced revision %d, the one it releases (a copy written over something else)", r.Prev)
	case rec.Token > r.Prev:
		return fmt.Sprintf("its token %d is above the revision %d it releases", rec.Token, r.Prev)
	case !r.Bucket.Equal(l.created):
		return fmt.Sprintf("it was written in a lock bucket created at %s, not in this one (created at %s)",
			r.Bucket.UTC().Format(time.RFC3339Nano), l.created.UTC().Format(time.RFC3339Nano))
	}
	if l.cfg.Trust == nil {
		return "" // no trust list: unsigned releases are believed
	}
	h := m.Header.Get(trust.Header)
	if h == "" {
		return "it is unsigned, and a trust list is configured"
	}
	signer, sig, err := trust.ParseHeader(h)
	if err != nil {
		return err.Error()
	}
	return trustedSigner(l.cfg.Trust, signer, sig, releaseHash(m.Data), rec.Name)
}

// releaseHash is the hash a release record's signature covers.
func releaseHash(data []byte) string {
	return events.Hash(append([]byte(releaseDomain), data...))
}

// trustedSigner checks that a key the list trusts for the pipeline, as a
// runner or as an operator (issue fix takes the lock too), and not
// revoked, signed hash: "" if so, else why not.
func trustedSigner(list *trust.List, signer, sig, hash, pipeline string) string {
	problem := ""
	for _, t := range []events.Type{events.ExecutionStarted, events.ManuallyResolved} { // a runner's, an operator's
		v := list.Check(trust.Signed{Pipeline: pipeline, Type: t, Hash: hash, Signer: signer, Signature: sig})
		if v.Trusted() {
			if err := list.Allows(signer, t, pipeline); err != nil {
				return err.Error() // revoked
			}
			return ""
		}
		problem = v.Problem
		if v.Kind != trust.KindRole {
			break
		}
	}
	return problem
}

// heldError is ErrHeld naming the holder.
func heldError(name string, e entry) error {
	return fmt.Errorf("%w: %q by %s (token %d) until %s", ErrHeld, name, e.rec.Owner, e.rec.Token, e.rec.ExpiresAt.Format(time.RFC3339))
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
