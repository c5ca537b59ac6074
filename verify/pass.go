package verify

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// How verify keeps its memory bounded: one pass over the stream in
// sequence order, up to the snapshot; for each batch read, the store's
// rows in the same sequence range (stores.HistoryQuery pages newest-first
// from BeforeSeq, so a range is one or two queries), compared row by row
// and then dropped. Across batches only per-change state is kept — the
// previous link of each chain, running digests and counts, the newest
// event's sequence and issue digest — plus the problems found.

// change is what verify keeps of one change across the pass.
type change struct {
	// The stream's side, up to the snapshot.
	streamEvents int
	streamDigest [32]byte // running digest of its events' digests
	latestSeq    uint64   // its newest valid event
	issueDigest  [32]byte // the issue that event makes (issueDigestOf)
	// The newest trusted ManuallyResolved (of any schema version, and of
	// version 2 or later) and the newest ExecutionOverlapped: a problem
	// before one of them is acknowledged.
	resolved, resolvedV2, overlapped uint64

	// The store's side.
	storeRows     int
	storeDigest   [32]byte
	storePrev     link   // the previous row, for the chain check
	storeResolved uint64 // the newest trusted resolution among its rows

	drift bool // a row of it is missing, extra or altered
}

// link is one end of a chain link: an event's sequence and hash.
type link struct {
	seq  uint64
	hash string
}

func chainDigest(prev, d [32]byte) [32]byte {
	return sha256.Sum256(append(prev[:], d[:]...))
}

// high is the highest lock token seen on a pipeline, and where.
type high struct{ token, seq uint64 }

// pass is one run of Verify.
type pass struct {
	ctx       context.Context
	js        jetstream.JetStream
	stream    jetstream.Stream
	store     stores.Store
	cfg       Config
	rep       *Report
	snapshot  uint64
	withTrust bool

	changes map[key]*change
	// By subject, as the stream's chain runs: the previous message,
	// whether it was a bad one, and where the chain started.
	prevOf     map[string]events.Prev
	badBefore  map[string]bool
	chainSince map[string]uint64
	newest     map[string]high // by pipeline: the highest lock token so far
	// Signatures seen (their SHA-256, to the first sequence carrying
	// them), to catch a signature used twice; only with a trust list.
	seen, storeSeen map[[16]byte]uint64
	facts           streamFacts
	storeDone       uint64 // the store's rows up to here are compared
	streamRead      int
}

// streamFacts is what the stream pass learns for the store's chain
// check: which events are not rows at all (published on another change's
// subject), and which follow a bad message on their subject (their
// prevHash is that message's hash, which no store row has).
type streamFacts struct {
	misfiled, afterBad map[uint64]bool
}

func (p *pass) change(k key) *change {
	c := p.changes[k]
	if c == nil {
		c = &change{}
		p.changes[k] = c
	}
	return c
}

// windowEntry is a stream event of the batch being compared.
type windowEntry struct {
	rec     stores.Record
	digest  [32]byte
	matched bool
}

// batch takes one batch of the stream: checks it as a stream, then
// compares the store's rows of its sequence range with it.
func (p *pass) batch(msgs []projector.StreamMsg) error {
	prefix := p.cfg.Stream.SubjectPrefix
	win := make(map[uint64]*windowEntry, len(msgs))
	for _, m := range msgs {
		p.streamRead++
		hash := events.Hash(m.Data)
		e, err := events.Decode(m.Data)
		if err == nil {
			err = events.CheckSubject(prefix, m.Subject, e)
		}
		if err != nil {
			b := badMessage(prefix, m, e, err)
			if b.Event != nil {
				p.rep.WrongSubject = append(p.rep.WrongSubject, b)
				p.facts.misfiled[m.Seq] = true
			} else {
				p.rep.Unreadable = append(p.rep.Unreadable, b)
				p.rep.Undecodable++
			}
			p.prevOf[m.Subject] = events.PrevOf(m.Seq, hash, e, err)
			p.badBefore[m.Subject] = true
			continue
		}
		if p.badBefore[m.Subject] {
			p.facts.afterBad[m.Seq] = true
			delete(p.badBefore, m.Subject)
		}
		rec, v := judgeMsg(p.cfg.Trust, m, e, hash)
		prev := p.prevOf[m.Subject]
		rec.Chain = stores.ChainOf(e, prev)
		rec.RowState = stores.StateOf(rec)
		if rec.Chain != "" {
			p.rep.OutOfChain = append(p.rep.OutOfChain, OutOfChain{Row: rowOf(rec), PrevSeq: prev.Seq, Problem: rec.Chain})
		}
		u, untrusted := judgeRecord("stream", rec, v, p.cfg.Trust, p.seen)
		if untrusted {
			p.rep.Untrusted = append(p.rep.Untrusted, u)
		}
		d := digest(rec, p.withTrust)
		win[m.Seq] = &windowEntry{rec: rec, digest: d}
		k := key{e.Pipeline, e.ChangeID}
		c := p.change(k)
		c.streamEvents++
		c.streamDigest = chainDigest(c.streamDigest, d)
		if rec.Seq > c.latestSeq {
			c.latestSeq, c.issueDigest = rec.Seq, issueDigestOf(stores.IssueOf(rec), p.withTrust)
		}
		switch {
		case e.Type == events.ManuallyResolved && !untrusted && rec.Chain == "":
			c.resolved = m.Seq
			if e.SchemaVersion >= 2 {
				c.resolvedV2 = m.Seq
			}
		case e.Type == events.ExecutionOverlapped:
			c.overlapped = m.Seq
		}
		row := rowOf(rec)
		// An event out of its chain is reported as such; its lock token
		// (a copy's is its original's) is not the pipeline's history.
		if tok := e.LockToken; tok > 0 && rec.Chain == "" {
			switch h := p.newest[e.Pipeline]; {
			case tok < h.token:
				p.rep.StaleTokens = append(p.rep.StaleTokens, StaleToken{Row: row, Token: tok, Newer: h.token, NewerSeq: h.seq})
			case tok > h.token:
				p.newest[e.Pipeline] = high{tok, m.Seq}
			}
		}
		// A broken hash link is tamper evidence where the event names the
		// message before it and that message's bytes are not the ones it
		// was written after: an altered copy of the stream. An event
		// written after another message than the one before it (a copy
		// published again, a fork) is out of its chain, not tampering:
		// that is its own category, which a resolution settles.
		hasPrev := prev.Seq != 0
		placed := e.SchemaVersion >= events.ChainVersion
		switch {
		case placed && e.PrevSeq != prev.Seq:
		case !hasPrev && e.PrevHash != "":
			p.rep.StreamChain = append(p.rep.StreamChain, Break{Where: "stream", Pipeline: e.Pipeline, ChangeID: e.ChangeID, Seq: m.Seq, Got: e.PrevHash})
		case hasPrev && e.PrevHash == "" && e.SchemaVersion < 2 && p.chainSince[m.Subject] != 0:
			// Not a writer that does not chain: one that claims to
			// predate the chain, on a change that has it.
			p.rep.Downgrades = append(p.rep.Downgrades, Downgrade{Row: row, Version: e.SchemaVersion, ChainSince: p.chainSince[m.Subject]})
		case hasPrev && e.PrevHash == "":
			p.rep.Unchained++
		case hasPrev && e.PrevHash != prev.Hash:
			p.rep.StreamChain = append(p.rep.StreamChain, Break{Where: "stream", Pipeline: e.Pipeline, ChangeID: e.ChangeID,
				Seq: m.Seq, PrevSeq: prev.Seq, Want: prev.Hash, Got: e.PrevHash})
		}
		if p.chainSince[m.Subject] == 0 && (e.PrevHash != "" || e.SchemaVersion >= 2) {
			p.chainSince[m.Subject] = m.Seq
		}
		p.prevOf[m.Subject] = events.PrevOf(m.Seq, hash, e, nil)
		p.rep.StreamEvents++
	}
	if len(msgs) == 0 {
		return nil
	}
	return p.compareRange(msgs[len(msgs)-1].Seq, win)
}

// compareRange compares the store's rows with sequences in
// (p.storeDone, hi] with the stream's events there (win).
func (p *pass) compareRange(hi uint64, win map[uint64]*windowEntry) error {
	rows, err := storeRange(p.ctx, p.store, p.storeDone, hi)
	if err != nil {
		return err
	}
	for _, r := range rows {
		p.storeRow(r, win[r.Seq])
	}
	for _, e := range sortedEntries(win) {
		if !e.matched {
			p.rep.Missing = append(p.rep.Missing, rowOf(e.rec))
			p.change(key{e.rec.Pipeline, e.rec.ChangeID}).drift = true
		}
	}
	p.storeDone = hi
	if p.cfg.Progress != nil {
		p.cfg.Progress(p.streamRead, p.rep.StoreRows)
	}
	return nil
}

func sortedEntries(win map[uint64]*windowEntry) []*windowEntry {
	out := make([]*windowEntry, 0, len(win))
	for _, e := range win {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *windowEntry) int { return cmp.Compare(a.rec.Seq, b.rec.Seq) })
	return out
}

// storeRow takes one store row, in sequence order, with the stream's
// event at its sequence (nil if there is none, or a bad message).
func (p *pass) storeRow(r stores.Record, want *windowEntry) {
	p.rep.StoreRows++
	if r.Trust != "" {
		p.rep.StoreVerdicts++
	}
	k := key{r.Pipeline, r.ChangeID}
	c := p.change(k)
	d := digest(r, p.withTrust)
	c.storeRows++
	c.storeDigest = chainDigest(c.storeDigest, d)
	switch {
	case want == nil || want.matched:
		p.rep.Extra = append(p.rep.Extra, rowOf(r))
		c.drift = true
	default:
		want.matched = true
		if want.digest != d {
			p.rep.Mismatched = append(p.rep.Mismatched, Mismatch{Row: rowOf(want.rec), Fields: recordDiff(want.rec, r, p.withTrust)})
			c.drift = true
		}
	}
	// Rows of events published on another change's subject (a store fed
	// by an older projector has them; they show as extra rows) are not
	// links of any change's chain, nor that change's signed events.
	if p.facts.misfiled[r.Seq] {
		return
	}
	if r.Hash == "" {
		p.rep.Unhashed++
	}
	// A row whose predecessor on the stream is a bad message points at
	// that message, which no store holds: not a broken link.
	// A row written after another message than the one before it (a copy
	// published again, stored as out of its chain) is not a broken link.
	misplaced := r.SchemaVersion >= events.ChainVersion && r.PrevSeq != c.storePrev.seq
	if prev := c.storePrev; prev.seq != 0 && r.PrevHash != "" && prev.hash != "" && !p.facts.afterBad[r.Seq] && !misplaced && r.PrevHash != prev.hash {
		p.rep.StoreChain = append(p.rep.StoreChain, Break{Where: "store", Pipeline: r.Pipeline, ChangeID: r.ChangeID,
			Seq: r.Seq, PrevSeq: prev.seq, Want: prev.hash, Got: r.PrevHash})
	}
	c.storePrev = link{seq: r.Seq, hash: r.Hash}
	if p.cfg.Trust != nil {
		v := p.cfg.Trust.Check(trust.Signed{Pipeline: r.Pipeline, Type: r.Type, Seq: r.Seq, Hash: r.Hash, Signer: r.Signer, Signature: r.Signature})
		if u, bad := judgeRecord("store", r, v, p.cfg.Trust, p.storeSeen); bad {
			p.rep.StoreUntrusted = append(p.rep.StoreUntrusted, u)
		} else if r.Type == events.ManuallyResolved {
			c.storeResolved = r.Seq
		}
	}
}

// storeRange returns the store's rows with sequences in (lo, hi],
// ascending.
func storeRange(ctx context.Context, store stores.Store, lo, hi uint64) ([]stores.Record, error) {
	var out []stores.Record
	q := stores.HistoryQuery{BeforeSeq: hi + 1, Limit: int(min(hi-lo+1, stores.MaxLimit))}
	for {
		page, err := store.History(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("verify: read store: %w", err)
		}
		for _, r := range page {
			if r.Seq <= lo {
				slices.Reverse(out)
				return out, nil
			}
			out = append(out, r)
		}
		if len(page) < q.Limit {
			slices.Reverse(out)
			return out, nil
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
}

// rowsAbove compares the store's rows beyond the snapshot. A live
// projector wrote them after verify began: the stream, asked for that
// sequence, says so. One the stream does not have is a row it never had.
func (p *pass) rowsAbove() error {
	var extra []stores.Record
	q := stores.HistoryQuery{Limit: 1000}
	for done := false; !done; {
		page, err := p.store.History(p.ctx, q)
		if err != nil {
			return fmt.Errorf("verify: read store: %w", err)
		}
		for _, r := range page {
			if r.Seq <= p.snapshot {
				done = true
				break
			}
			in, err := p.inStream(r.Seq, r.ID)
			if err != nil {
				return err
			}
			if !in {
				extra = append(extra, r)
			}
		}
		if len(page) < q.Limit {
			done = true
		} else {
			q.BeforeSeq = page[len(page)-1].Seq
		}
	}
	slices.Reverse(extra)
	for _, r := range extra {
		p.storeRow(r, nil)
	}
	return nil
}

// inStream reports whether the stream holds the event eventID at seq
// (any event, if eventID is "").
func (p *pass) inStream(seq uint64, eventID string) (bool, error) {
	m, err := getMsg(p.ctx, p.stream, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	e, err := events.Decode(m.Data)
	return err == nil && (eventID == "" || e.ID == eventID), nil
}

// issueDigestOf is an issue's content as verify compares it: every field,
// the time as an instant, the trust verdict only withTrust (without a
// list verify cannot judge verdicts and takes the projector's as it is).
func issueDigestOf(i stores.Issue, withTrust bool) [32]byte {
	if !withTrust {
		i.Trust = ""
	}
	h := sha256.New()
	v := reflect.ValueOf(i)
	for f := range v.NumField() {
		if t, ok := v.Field(f).Interface().(interface{ UnixNano() int64 }); ok {
			fmt.Fprintf(h, "%d\x00", t.UnixNano())
			continue
		}
		fmt.Fprintf(h, "%v\x00", v.Field(f).Interface())
	}
	return [32]byte(h.Sum(nil))
}
