// Package verify compares an audit store with the stream it was projected
// from, and repairs the difference.
//
// Verify reads the stream up to a snapshot (its last sequence when verify
// begins; projector.Scan, so the live projectors are not disturbed and a
// cluster's fail-overs are ridden out) and the store's rows side by side in
// sequence order, and reports, per change, the rows the store is missing,
// the rows it has that the stream does not, the rows whose content differs,
// and the issue rows that do not match the newest event of their change up
// to the snapshot. Nothing newer than the snapshot is judged, so verify
// may run while projectors write; its memory grows with the changes, not
// the events. It also checks the hash chain: every event's
// prevHash must be the hash of the bytes of the change's previous event, in
// the stream and in the store's rows, and names the first broken link — an
// event altered after it was written breaks the link from its successor.
//
// Some stream problems are neither drift nor tampering, and get their own
// categories with their own remedy: a message on a change's subject that
// does not decode (Unreadable), a valid event published on another change's
// subject (WrongSubject, checked with events.CheckSubject), and a
// schema-version-1 event, without the chain, on a change whose chain had
// started (Downgrades). The stream cannot drop them; each stays open until
// an operator records the change's state after it (auditflow issue fix).
// Neither kind of bad message is a row a store should hold, and the chain
// through one (a resolution's prevHash is its hash) is not a broken link.
//
// With a trust list (Config.Trust) it also judges every event's signature
// (package trust), in the stream and, from the row alone, in the store:
// an unsigned event, an unknown or revoked key, a key outside its roles or
// pipelines, a signature that is not over the event's bytes, and a
// signature seen before on another event (replayed) are Untrusted, open
// until a trusted operator's resolution follows them; only a trusted
// resolution acknowledges any stream problem. Rows keep their event's
// signature and the projector's verdict, which are compared like any field
// (the verdicts only with a list: without one verify cannot judge them,
// and repair refuses to overwrite them).
//
// Repair turns a report into corrections and applies them: what Store.Apply
// can do (missing rows, issue rows missing or behind) by re-applying the
// stream's events through it, idempotent and sequence-guarded, so that a
// projector writing meanwhile is never rolled back; the rest (altered and
// stray rows, issue rows wrong at their own sequence) through
// stores.Repairer, or, for a store without it, by a rebuild: Reset, then a
// replay of the stream.
package verify

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// Config configures Verify and Repair.
type Config struct {
	Stream producer.StreamConfig
	// Trust judges signatures (see the package documentation); nil
	// checks none. Give verify the projectors' trust list.
	Trust  *trust.List
	Logger *slog.Logger // nil discards
	// Progress, if set, is told how many stream events and store rows have
	// been read, as reading goes.
	Progress func(streamRead, storeRead int)
	// Settle is how long verify keeps reading again what looks wrong
	// (a row missing, an issue row behind) before it reports it: a
	// projector running meanwhile may have been a moment behind the
	// snapshot. Default DefaultSettle; negative: one second look only.
	Settle time.Duration
}

// DefaultSettle is Config.Settle's default: what looks wrong is read again
// over 3 s, in growing steps, before verify calls it drift.
const DefaultSettle = 3 * time.Second

// Row identifies one changeLog row.
type Row struct {
	Pipeline string      `json:"pipeline"`
	ChangeID string      `json:"changeId"`
	Seq      uint64      `json:"seq"`
	EventID  string      `json:"eventId"`
	Type     events.Type `json:"type"`
}

// Mismatch is a row present on both sides with different content.
type Mismatch struct {
	Row
	Fields []string `json:"fields"` // the fields that differ
}

// IssueDrift is an issue row that does not match its change's newest event.
type IssueDrift struct {
	Pipeline string        `json:"pipeline"`
	ChangeID string        `json:"changeId"`
	Problem  string        `json:"problem"`        // "missing", "extra" or the fields that differ
	Want     *stores.Issue `json:"want,omitempty"` // nil: the change has no event up to the snapshot
	Have     *stores.Issue `json:"have,omitempty"` // nil: the store has no issue row
}

// Break is a broken link of a change's hash chain.
type Break struct {
	Where    string `json:"where"` // "stream" or "store"
	Pipeline string `json:"pipeline"`
	ChangeID string `json:"changeId"`
	Seq      uint64 `json:"seq"`     // the event whose prevHash does not match
	PrevSeq  uint64 `json:"prevSeq"` // the event it should point at (0: none)
	Want     string `json:"want"`    // expected prevHash
	Got      string `json:"got"`     // actual prevHash
}

func (b Break) String() string {
	if b.PrevSeq == 0 {
		return fmt.Sprintf("%s: %s/%s seq %d: prevHash %s on the first event of its change", b.Where, b.Pipeline, b.ChangeID, b.Seq, b.Got)
	}
	return fmt.Sprintf("%s: %s/%s seq %d does not follow seq %d: prevHash %s, but seq %d hashes to %s (seq %d was altered, or seq %d was)",
		b.Where, b.Pipeline, b.ChangeID, b.Seq, b.PrevSeq, short(b.Got), b.PrevSeq, short(b.Want), b.PrevSeq, b.Seq)
}

func short(h string) string {
	if len(h) > 19 {
		return h[:19] + "…"
	}
	if h == "" {
		return "(none)"
	}
	return h
}

// StaleToken is an event written with a lock token lower than one
// already recorded for its pipeline earlier in the stream. Lock tokens grow
// with every holder, so its writer no longer held the pipeline lock: it
// went on after its lease had passed to another (paused, partitioned), or
// did not take the lock at all.
type StaleToken struct {
	Row
	Token    uint64 `json:"token"`    // the event's lock token
	Newer    uint64 `json:"newer"`    // the higher token recorded before it
	NewerSeq uint64 `json:"newerSeq"` // where that token was first recorded
	// Acknowledged: the event is its runner's own ExecutionOverlapped
	// record, or an ExecutionOverlapped or ManuallyResolved event follows it
	// on the same change, so an operator has been asked to look.
	Acknowledged bool `json:"acknowledged"`
}

func (s StaleToken) String() string {
	ack := "NOT acknowledged: no overlap record or resolution follows it on its change"
	if s.Acknowledged {
		ack = "acknowledged by an overlap record or an operator's resolution"
	}
	return fmt.Sprintf("%s/%s seq %d %s with lock token %d, after token %d (seq %d): %s",
		s.Pipeline, s.ChangeID, s.Seq, s.Type, s.Token, s.Newer, s.NewerSeq, ack)
}

// BadMessage is a stream message that is not a valid event of the change
// whose subject it is on: it does not decode (garbage, a newer schema, an
// event over the size limits), or it is another change's event (published
// on the wrong subject). Projectors dead-letter it, so no store holds it;
// a runner stops at it while it is its change's newest message, until an
// operator records the change's state after it (auditflow issue fix).
type BadMessage struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	// Pipeline and ChangeID name the change whose subject it is on; both
	// are "" if the subject is no change's (nothing reads it there).
	Pipeline string `json:"pipeline"`
	ChangeID string `json:"changeId"`
	// Event is the event it holds when it is another change's event; nil
	// for a message that does not decode.
	Event *Row   `json:"event,omitempty"`
	What  string `json:"what"` // why it is not the change's event
	// Acknowledged: an operator's resolution follows it on its change's
	// subject, so the change has moved past it.
	Acknowledged bool `json:"acknowledged"`
}

// Open reports whether the message still needs an operator: it is on a
// change's subject and no resolution follows it there.
func (b BadMessage) Open() bool { return b.ChangeID != "" && !b.Acknowledged }

func (b BadMessage) String() string {
	where := fmt.Sprintf("seq %d on change %s/%s's subject", b.Seq, b.Pipeline, b.ChangeID)
	if b.ChangeID == "" {
		where = fmt.Sprintf("seq %d on subject %s, which is no change's", b.Seq, b.Subject)
	}
	state := "NOT resolved: runs of the change stop at it"
	switch {
	case b.ChangeID == "":
		state = "no runner reads it"
	case b.Acknowledged:
		state = "resolved by an operator after it"
	}
	return fmt.Sprintf("%s: %s; %s", where, b.What, state)
}

// Downgrade is an event written at schema version 1 (which has no hash
// chain) on a change whose events had started carrying the chain: an old
// writer, or someone forging an event the chain would otherwise catch —
// a hand-written ManuallyResolved closing an issue, say. It is a problem
// until an operator has recorded the change's state after it.
type Downgrade struct {
	Row
	Version int `json:"version"`
	// ChainSince is the change's first event at schema version 2 or later
	// (or carrying prevHash).
	ChainSince uint64 `json:"chainSince"`
	// Acknowledged: a ManuallyResolved at version 2 or later follows it on
	// its change.
	Acknowledged bool `json:"acknowledged"`
}

func (d Downgrade) String() string {
	ack := "NOT acknowledged: no operator's resolution follows it"
	if d.Acknowledged {
		ack = "acknowledged by an operator's resolution after it"
	}
	return fmt.Sprintf("%s/%s seq %d %s at schemaVersion %d, without the hash chain, although the change's events carry it since seq %d: %s",
		d.Pipeline, d.ChangeID, d.Seq, d.Type, d.Version, d.ChainSince, ack)
}

// Untrusted is an event whose signature the trust list does not accept,
// found in the stream or, judged from the row alone, in the store.
type Untrusted struct {
	Row
	Where string `json:"where"` // "stream" or "store"
	// Signer is the signing key's identity ("<name> (<key>)" or the key),
	// "" for an unsigned event.
	Signer  string     `json:"signer"`
	Kind    trust.Kind `json:"kind"` // unsigned, unknown key, bad signature, role, pipeline, revoked, replayed
	Problem string     `json:"problem"`
	// Acknowledged: a trusted operator's resolution follows it on its
	// change, so the change's state is an operator's, not the forger's.
	Acknowledged bool `json:"acknowledged"`
}

func (u Untrusted) String() string {
	return fmt.Sprintf("%s: %s/%s seq %d %s: %s; %s", u.Where, u.Pipeline, u.ChangeID, u.Seq, u.Type, u.Problem, resolvedText(u.Acknowledged, "a trusted operator"))
}

// resolvedText says whether an event runners stop at has a resolution
// after it, by whom.
func resolvedText(acknowledged bool, by string) string {
	if acknowledged {
		return "resolved by " + by + " after it"
	}
	return "NOT resolved: runners stop at it while it is its change's newest event, and its issue stays open"
}

// OutOfChain is an event that does not extend its change's chain: the
// message right before it on its subject is not the one it names
// (events.CheckChain) — a copy of an earlier event published again (an
// exact copy, its signature valid, still lands after another message than
// the one it was written after), a fork, a repeated id, a downgrade.
// Projectors store it with that verdict, as OUT_OF_CHAIN with its
// change's issue open; runners stop at it. It is a problem until an
// operator's resolution (trusted, with a trust list) follows it.
type OutOfChain struct {
	Row
	PrevSeq uint64 `json:"prevSeq"` // the message before it on its subject (0: none)
	Problem string `json:"problem"`
	// Acknowledged: an operator's resolution, itself in the chain, follows
	// it on its change.
	Acknowledged bool `json:"acknowledged"`
}

func (o OutOfChain) String() string {
	return fmt.Sprintf("%s/%s seq %d %s (event %s): %s; %s", o.Pipeline, o.ChangeID, o.Seq, o.Type, o.EventID, o.Problem, resolvedText(o.Acknowledged, "an operator"))
}

// ChangeSummary is the count and digest of one change on each side.
type ChangeSummary struct {
	Pipeline     string `json:"pipeline"`
	ChangeID     string `json:"changeId"`
	StreamEvents int    `json:"streamEvents"`
	StoreRows    int    `json:"storeRows"`
	StreamDigest string `json:"streamDigest"`
	StoreDigest  string `json:"storeDigest"`
}

// Report is what Verify found.
type Report struct {
	// StreamEvents counts the valid events read from the stream, each on
	// its own change's subject: the rows a store must hold.
	StreamEvents int    `json:"streamEvents"`
	Undecodable  int    `json:"undecodable"` // stream messages that cannot be decoded (dead-lettered, never in a store)
	StoreRows    int    `json:"storeRows"`
	Changes      int    `json:"changes"`
	LastSeq      uint64 `json:"lastSeq"` // the stream's last sequence when verify began

	Missing    []Row           `json:"missing"`
	Extra      []Row           `json:"extra"`
	Mismatched []Mismatch      `json:"mismatched"`
	Issues     []IssueDrift    `json:"issues"`
	Drifted    []ChangeSummary `json:"drifted"` // per-change counts and digests, for changes with any drift

	StreamChain []Break `json:"streamChain"`
	StoreChain  []Break `json:"storeChain"`
	Unchained   int     `json:"unchained"` // events after a change's first with no prevHash (writers that do not chain)
	Unhashed    int     `json:"unhashed"`  // store rows without a hash (written before the hash chain existed)

	// StaleTokens lists events written with a stale lock token, in stream
	// order (see StaleToken).
	StaleTokens []StaleToken `json:"staleTokens"`

	// Unreadable lists the messages that do not decode, WrongSubject the
	// valid events published on another change's subject, in stream order
	// (see BadMessage). Neither is a row a store should hold.
	Unreadable   []BadMessage `json:"unreadable"`
	WrongSubject []BadMessage `json:"wrongSubject"`
	// Downgrades lists schema-version-1 events after their change's hash
	// chain had started (see Downgrade), in stream order.
	Downgrades []Downgrade `json:"downgrades"`
	// OutOfChain lists the events that do not extend their change's chain
	// (see OutOfChain), in stream order.
	OutOfChain []OutOfChain `json:"outOfChain"`

	// TrustChecked: verify had a trust list, and Untrusted and
	// StoreUntrusted list what it does not accept, in sequence order.
	TrustChecked   bool        `json:"trustChecked"`
	Untrusted      []Untrusted `json:"untrusted"`
	StoreUntrusted []Untrusted `json:"storeUntrusted"`
	// StoreVerdicts counts store rows that carry a projector's trust
	// verdict (stores.Record.Trust): a store projected with a trust list.
	StoreVerdicts int `json:"storeVerdicts"`

	Elapsed time.Duration `json:"-"`
}

// Drift reports whether store and stream differ.
func (r *Report) Drift() bool {
	return len(r.Missing)+len(r.Extra)+len(r.Mismatched)+len(r.Issues) > 0
}

// Unacknowledged returns the stale-token events that no overlap record or
// resolution follows: writes from a runner without the lock that nobody
// has been asked to look at.
func (r *Report) Unacknowledged() []StaleToken {
	var out []StaleToken
	for _, s := range r.StaleTokens {
		if !s.Acknowledged {
			out = append(out, s)
		}
	}
	return out
}

// OpenStreamProblems returns the stream's problems that still need an
// operator: bad messages on a change's subject (unreadable, or another
// change's event) and downgrades, with no resolution after them. A store
// repair cannot fix them; resolving their change (auditflow issue fix)
// acknowledges them.
func (r *Report) OpenStreamProblems() (bad []BadMessage, downgrades []Downgrade) {
	for _, b := range append(slices.Clone(r.WrongSubject), r.Unreadable...) {
		if b.Open() {
			bad = append(bad, b)
		}
	}
	slices.SortFunc(bad, func(a, b BadMessage) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, d := range r.Downgrades {
		if !d.Acknowledged {
			downgrades = append(downgrades, d)
		}
	}
	return bad, downgrades
}

// OpenOutOfChain returns the events out of their chain that no operator's
// resolution follows.
func (r *Report) OpenOutOfChain() []OutOfChain {
	var out []OutOfChain
	for _, o := range r.OutOfChain {
		if !o.Acknowledged {
			out = append(out, o)
		}
	}
	return out
}

// OpenUntrusted returns the untrusted events, of the stream and of the
// store, that no trusted operator's resolution follows.
func (r *Report) OpenUntrusted() []Untrusted {
	var out []Untrusted
	for _, u := range append(slices.Clone(r.Untrusted), r.StoreUntrusted...) {
		if !u.Acknowledged {
			out = append(out, u)
		}
	}
	return out
}

// Problems reports whether anything needs attention: drift, a broken
// chain, an unacknowledged stale-token write, an open stream problem, an
// untrusted event no trusted resolution follows, or an event out of its
// chain that no resolution follows.
func (r *Report) Problems() bool {
	bad, downgrades := r.OpenStreamProblems()
	return r.Drift() || r.Tampered() || len(r.Unacknowledged())+len(bad)+len(downgrades)+len(r.OpenUntrusted())+len(r.OpenOutOfChain()) > 0
}

// Tampered reports whether a hash chain is broken.
func (r *Report) Tampered() bool { return len(r.StreamChain)+len(r.StoreChain) > 0 }

// FirstBreak is the earliest broken link, stream before store.
func (r *Report) FirstBreak() (Break, bool) {
	for _, bs := range [][]Break{r.StreamChain, r.StoreChain} {
		if len(bs) > 0 {
			return slices.MinFunc(bs, func(a, b Break) int { return int(a.Seq) - int(b.Seq) }), true
		}
	}
	return Break{}, false
}

type key struct{ pipeline, change string }

// Verify compares store with the stream up to a snapshot: the stream's
// last sequence when it begins (Report.LastSeq). Nothing newer is judged
// or reported, so verify may run while projectors write: a store row or
// issue row reflecting an event past the snapshot is not drift (it is
// checked to be on the stream, though: a row the stream never had is),
// and what looked wrong because a projector was behind when its range was
// read is read again before it is reported (see confirm).
//
// Its memory is bounded by the number of changes, not of events: it reads
// the stream and the store's rows side by side in sequence order (see
// pass), keeping per change a few sequences and digests.
func Verify(ctx context.Context, js jetstream.JetStream, store stores.Store, cfg Config) (*Report, error) {
	start := time.Now()
	if err := cfg.Stream.Validate(); err != nil {
		return nil, err
	}
	stream, err := projector.LookupStream(ctx, js, cfg.Stream.Name, 0, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	last := stream.CachedInfo().State.LastSeq
	rep := &Report{TrustChecked: cfg.Trust != nil, LastSeq: last}
	p := &pass{ctx: ctx, js: js, stream: stream, store: store, cfg: cfg, rep: rep, snapshot: last, withTrust: cfg.Trust != nil,
		changes: map[key]*change{}, prevOf: map[string]events.Prev{}, badBefore: map[string]bool{}, chainSince: map[string]uint64{},
		newest: map[string]high{}, seen: map[[16]byte]uint64{}, storeSeen: map[[16]byte]uint64{},
		facts: streamFacts{misfiled: map[uint64]bool{}, afterBad: map[uint64]bool{}}}
	if last > 0 {
		if err := projector.Scan(ctx, js, p.scanConfig(), p.batch); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	if p.storeDone < last { // the stream's newest messages were not audit events
		if err := p.compareRange(last, nil); err != nil {
			return nil, err
		}
	}
	if err := p.rowsAbove(); err != nil {
		return nil, err
	}
	issues, err := p.compareIssues()
	if err != nil {
		return nil, err
	}
	if err := p.confirm(issues); err != nil {
		return nil, err
	}
	p.finish()
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// badMessage describes a stream message that is not a valid event of the
// change whose subject it is on; e is what it decoded to, if it did.
func badMessage(prefix string, m projector.StreamMsg, e events.Event, err error) BadMessage {
	b := BadMessage{Seq: m.Seq, Subject: m.Subject, What: strings.TrimPrefix(err.Error(), "events: ")}
	if p, c, perr := events.ParseSubject(prefix, m.Subject); perr == nil {
		b.Pipeline, b.ChangeID = p, c
	}
	var ee *events.Error
	if errors.Is(err, events.ErrWrongSubject) {
		row := rowOf(stores.Record{Seq: m.Seq, Event: e})
		b.Event = &row
		if errors.As(err, &ee) {
			b.What = ee.Reason
		}
	}
	return b
}

func rowOf(r stores.Record) Row {
	return Row{Pipeline: r.Pipeline, ChangeID: r.ChangeID, Seq: r.Seq, EventID: r.ID, Type: r.Type}
}

// digest is a row's content, as both sides must agree on it: its sequence,
// its hash, its signature, its chain verdict, the state it stores (what
// listings filter on), its trust verdict (withTrust: verify can judge
// verdicts only with a trust list) and its event in canonical encoding.
func digest(r stores.Record, withTrust bool) [32]byte {
	b, err := events.Encode(r.Event)
	if err != nil { // a store row that does not validate: digest its fields
		b = fmt.Appendf(nil, "%+v", r.Event)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s\x00%s\x00%s\x00%s\x00%s\x00", r.Seq, r.Hash, r.Signer, r.Signature, r.Chain, r.RowState)
	if withTrust {
		fmt.Fprintf(h, "%s\x00", r.Trust)
	}
	h.Write(b)
	return [32]byte(h.Sum(nil))
}

// StreamRecord reads the event at seq from the stream sc describes as a
// store row, with its signature, its chain verdict (judged against the
// message before it on its subject) and, judged with list, its trust
// verdict: the row a projector with that list stores.
func StreamRecord(ctx context.Context, js jetstream.JetStream, sc producer.StreamConfig, seq uint64, list *trust.List) (stores.Record, error) {
	if err := sc.Validate(); err != nil {
		return stores.Record{}, err
	}
	stream, err := js.Stream(ctx, sc.Name)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: stream %s: %w", sc.Name, err)
	}
	m, err := stream.GetMsg(ctx, seq)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: read seq %d: %w", seq, err)
	}
	return recordOf(ctx, js, stream, sc.SubjectPrefix, m, list)
}

// recordOf is the row for a message read from the stream, its chain
// verdict judged against the message before it (asked of the stream).
func recordOf(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, prefix string, m *jetstream.RawStreamMsg, list *trust.List) (stores.Record, error) {
	e, err := events.Decode(m.Data)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: seq %d: %w", m.Sequence, err)
	}
	rec, _ := judgeMsg(list, projector.StreamMsg{Seq: m.Sequence, Subject: m.Subject, Data: m.Data, Header: m.Header}, e, events.Hash(m.Data))
	prev, err := producer.Before(ctx, js, stream, prefix, m.Subject, m.Sequence)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: seq %d: %w", m.Sequence, err)
	}
	rec.Chain = stores.ChainOf(e, prev)
	rec.RowState = stores.StateOf(rec)
	return rec, nil
}

// judgeMsg is the row a projector with list stores for event e, read as
// m (whose data hash to hash), and list's verdict on it.
func judgeMsg(list *trust.List, m projector.StreamMsg, e events.Event, hash string) (stores.Record, trust.Verdict) {
	signer, signature, v := list.CheckHeader(m.Header.Get(trust.Header), trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: m.Seq, Hash: hash})
	return stores.Record{Seq: m.Seq, Hash: hash, Signer: signer, Signature: signature,
		Trust: events.Truncate(v.Problem, stores.MaxTrustLen), Event: e}, v
}

// judgeRecord reports row r, whose signature list judged v, as Untrusted
// if v is not trusted, or if its signature was seen before on another
// event (seen maps signatures to the first sequence carrying them; rows
// must come in sequence order): a signature copied onto other bytes, or
// the same signed bytes published again. Without a list every row is
// trusted.
func judgeRecord(where string, r stores.Record, v trust.Verdict, list *trust.List, seen map[[16]byte]uint64) (Untrusted, bool) {
	if list == nil {
		return Untrusted{}, false
	}
	if r.Signature != "" {
		// Half a SHA-256 of each signature: 24 bytes a signed event
		// instead of the signature's 86 and more.
		sum := sha256.Sum256([]byte(r.Signature))
		sig := [16]byte(sum[:16])
		if first, ok := seen[sig]; !ok {
			seen[sig] = r.Seq
		} else if first != r.Seq {
			what := "a signature copied from seq %d, onto other bytes"
			if v.Trusted() {
				what = "the same signed bytes as seq %d, published again (a replay)"
			}
			v = trust.Verdict{Kind: trust.KindReplayed, Name: v.Name, Problem: "replayed: " + fmt.Sprintf(what, first)}
		}
	}
	if v.Trusted() {
		return Untrusted{}, false
	}
	u := Untrusted{Row: rowOf(r), Where: where, Kind: v.Kind, Problem: v.Problem}
	if r.Signer != "" {
		u.Signer = list.Identity(r.Signer)
	}
	return u, true
}

// recordDiff names the fields in which two rows differ (Trust only
// withTrust).
func recordDiff(want, got stores.Record, withTrust bool) []string {
	var fields []string
	if want.Seq != got.Seq {
		fields = append(fields, "Seq")
	}
	if want.Hash != got.Hash {
		fields = append(fields, "Hash")
	}
	if want.Signer != got.Signer {
		fields = append(fields, "Signer")
	}
	if want.Signature != got.Signature {
		fields = append(fields, "Signature")
	}
	if withTrust && want.Trust != got.Trust {
		fields = append(fields, "Trust")
	}
	if want.Chain != got.Chain {
		fields = append(fields, "Chain")
	}
	if want.RowState != got.RowState {
		fields = append(fields, "RowState")
	}
	want.OccurredAt, got.OccurredAt = want.OccurredAt.UTC(), got.OccurredAt.UTC()
	if len(want.Metadata) == 0 && len(got.Metadata) == 0 {
		want.Metadata, got.Metadata = nil, nil
	}
	wv, gv := reflect.ValueOf(want.Event), reflect.ValueOf(got.Event)
	for i := range wv.NumField() {
		if !reflect.DeepEqual(wv.Field(i).Interface(), gv.Field(i).Interface()) {
			fields = append(fields, wv.Type().Field(i).Name)
		}
	}
	return fields
}

func issueDiff(want, got stores.Issue) []string {
	want.UpdatedAt, got.UpdatedAt = want.UpdatedAt.UTC(), got.UpdatedAt.UTC()
	var fields []string
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	for i := range wv.NumField() {
		if !reflect.DeepEqual(wv.Field(i).Interface(), gv.Field(i).Interface()) {
			fields = append(fields, wv.Type().Field(i).Name)
		}
	}
	return fields
}
