// Package verify compares an audit store with the stream it was projected
// from, and repairs the difference.
//
// Verify reads the whole stream (an ordered consumer: the live projectors
// are not disturbed) and the whole store, and reports, per change, the rows
// the store is missing, the rows it has that the stream does not, the rows
// whose content differs, and the issue rows that do not match the newest
// event of their change. It also checks the hash chain: every event's
// prevHash must be the hash of the bytes of the change's previous event, in
// the stream and in the store's rows, and names the first broken link — an
// event altered after it was written breaks the link from its successor.
//
// Repair turns a report into corrections (the stream's rows for missing and
// altered ones, deletions for stray ones, the expected issues) and applies
// them through stores.Repairer, or, for a store without targeted repair,
// rebuilds it: Reset, then a replay of the stream.
package verify

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Config configures Verify and Repair.
type Config struct {
	Stream producer.StreamConfig
	Logger *slog.Logger // nil discards
	// Progress, if set, is told how many stream events and store rows have
	// been read, as reading goes.
	Progress func(streamRead, storeRead int)
}

// Row identifies one changeLog row.
type Row struct {
	Pipeline, ChangeID string
	Seq                uint64
	EventID            string
	Type               events.Type
}

// Mismatch is a row present on both sides with different content.
type Mismatch struct {
	Row
	Fields []string // the fields that differ
}

// IssueDrift is an issue row that does not match its change's newest event.
type IssueDrift struct {
	Pipeline, ChangeID string
	Problem            string // "missing", "extra" or the fields that differ
	Want               *stores.Issue
	Have               *stores.Issue
}

// Break is a broken link of a change's hash chain.
type Break struct {
	Where              string // "stream" or "store"
	Pipeline, ChangeID string
	Seq                uint64 // the event whose prevHash does not match
	PrevSeq            uint64 // the event it should point at (0: none)
	Want, Got          string // expected and actual prevHash
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
	Token    uint64 // the event's lock token
	Newer    uint64 // the higher token recorded before it
	NewerSeq uint64 // where that token was first recorded
	// Acknowledged: the event is its runner's own ExecutionOverlapped
	// record, or an ExecutionOverlapped or ManuallyResolved event follows it
	// on the same change, so an operator has been asked to look.
	Acknowledged bool
}

func (s StaleToken) String() string {
	ack := "NOT acknowledged: no overlap record or resolution follows it on its change"
	if s.Acknowledged {
		ack = "acknowledged by an overlap record or an operator's resolution"
	}
	return fmt.Sprintf("%s/%s seq %d %s with lock token %d, after token %d (seq %d): %s",
		s.Pipeline, s.ChangeID, s.Seq, s.Type, s.Token, s.Newer, s.NewerSeq, ack)
}

// ChangeSummary is the count and digest of one change on each side.
type ChangeSummary struct {
	Pipeline, ChangeID        string
	StreamEvents, StoreRows   int
	StreamDigest, StoreDigest string
}

// Report is what Verify found.
type Report struct {
	StreamEvents int // decodable events read from the stream
	Undecodable  int // stream events that cannot be decoded (dead-lettered, never in a store)
	StoreRows    int
	Changes      int
	LastSeq      uint64 // the stream's last sequence when verify began

	Missing    []Row
	Extra      []Row
	Mismatched []Mismatch
	Issues     []IssueDrift
	Drifted    []ChangeSummary // per-change counts and digests, for changes with any drift

	StreamChain []Break
	StoreChain  []Break
	Unchained   int // events after a change's first with no prevHash (writers that do not chain)
	Unhashed    int // store rows without a hash (written before the hash chain existed)

	// StaleTokens lists events written with a stale lock token, in stream
	// order (see StaleToken).
	StaleTokens []StaleToken

	Elapsed time.Duration
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

// entry is what verify keeps of one stream event: enough to compare and
// chain, not the event itself.
type entry struct {
	Row
	hash, prevHash string
	digest         [32]byte
}

// Verify compares store with the stream up to the stream's last event at
// the start. Events arriving meanwhile are not in the comparison, so verify
// a store whose projector is running only if it is caught up, or accept
// that the newest rows may show as extra.
func Verify(ctx context.Context, js jetstream.JetStream, store stores.Store, cfg Config) (*Report, error) {
	start := time.Now()
	if err := cfg.Stream.Validate(); err != nil {
		return nil, err
	}
	stream, err := js.Stream(ctx, cfg.Stream.Name)
	if err != nil {
		return nil, fmt.Errorf("verify: stream %s: %w", cfg.Stream.Name, err)
	}
	rep := &Report{}
	byChange, latest, err := readStream(ctx, stream, cfg, rep)
	if err != nil {
		return nil, err
	}
	rows, err := readStore(ctx, store, stream, rep.LastSeq, cfg, rep)
	if err != nil {
		return nil, err
	}
	rep.Changes = len(byChange)
	compareRows(byChange, rows, rep)
	if err := nameMismatchedFields(ctx, stream, rows, rep); err != nil {
		return nil, err
	}
	if err := compareIssues(ctx, store, stream, latest, rep); err != nil {
		return nil, err
	}
	checkStoreChains(rows, rep)
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// readStream reads every event up to the stream's current last one.
func readStream(ctx context.Context, stream jetstream.Stream, cfg Config, rep *Report) (map[key][]entry, map[key]stores.Record, error) {
	rep.LastSeq = stream.CachedInfo().State.LastSeq
	byChange := map[key][]entry{}
	latest := map[key]stores.Record{}
	if rep.LastSeq == 0 {
		return byChange, latest, nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.Stream.SubjectPrefix + ".>"}})
	if err != nil {
		return nil, nil, fmt.Errorf("verify: consumer: %w", err)
	}
	prevOf := map[string]entry{} // by subject: the chain runs per subject
	type high struct{ token, seq uint64 }
	newest := map[string]high{} // by pipeline: the highest lock token so far
	err = projector.ScanStream(ctx, cons, 1000, rep.LastSeq, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			hash := events.Hash(m.Data)
			e, err := events.Decode(m.Data)
			if err != nil {
				rep.Undecodable++
				prevOf[m.Subject] = entry{Row: Row{Seq: m.Seq}, hash: hash}
				continue
			}
			rec := stores.Record{Seq: m.Seq, Hash: hash, Event: e}
			en := entry{Row: rowOf(rec), hash: hash, prevHash: e.PrevHash, digest: digest(rec)}
			k := key{e.Pipeline, e.ChangeID}
			byChange[k] = append(byChange[k], en)
			if l, ok := latest[k]; !ok || rec.Seq > l.Seq {
				latest[k] = rec
			}
			if tok := e.LockToken; tok > 0 {
				switch h := newest[e.Pipeline]; {
				case tok < h.token:
					rep.StaleTokens = append(rep.StaleTokens, StaleToken{Row: en.Row, Token: tok, Newer: h.token, NewerSeq: h.seq})
				case tok > h.token:
					newest[e.Pipeline] = high{tok, m.Seq}
				}
			}
			prev, hasPrev := prevOf[m.Subject]
			switch {
			case !hasPrev && e.PrevHash != "":
				rep.StreamChain = append(rep.StreamChain, Break{Where: "stream", Pipeline: e.Pipeline, ChangeID: e.ChangeID, Seq: m.Seq, Got: e.PrevHash})
			case hasPrev && e.PrevHash == "":
				rep.Unchained++
			case hasPrev && e.PrevHash != prev.hash:
				rep.StreamChain = append(rep.StreamChain, Break{Where: "stream", Pipeline: e.Pipeline, ChangeID: e.ChangeID,
					Seq: m.Seq, PrevSeq: prev.Seq, Want: prev.hash, Got: e.PrevHash})
			}
			prevOf[m.Subject] = en
			rep.StreamEvents++
		}
		if cfg.Progress != nil {
			cfg.Progress(rep.StreamEvents+rep.Undecodable, 0)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("verify: %w", err)
	}
	for i, st := range rep.StaleTokens {
		acked := st.Type == events.ExecutionOverlapped
		for _, en := range byChange[key{st.Pipeline, st.ChangeID}] {
			if en.Seq > st.Seq && (en.Type == events.ExecutionOverlapped || en.Type == events.ManuallyResolved) {
				acked = true
			}
		}
		rep.StaleTokens[i].Acknowledged = acked
	}
	return byChange, latest, nil
}

// readStore reads every changeLog row up to lastSeq.
//
// A row beyond lastSeq was projected after verify began, or was never in
// the stream at all: the stream, asked for that sequence, tells which.
func readStore(ctx context.Context, store stores.Store, stream jetstream.Stream, lastSeq uint64, cfg Config, rep *Report) (map[string]stores.Record, error) {
	rows := map[string]stores.Record{}
	q := stores.HistoryQuery{Limit: stores.MaxLimit}
	for {
		page, err := store.History(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("verify: read store: %w", err)
		}
		if len(page) == 0 {
			return rows, nil
		}
		for _, r := range page {
			if r.Seq > lastSeq && inStream(ctx, stream, r.Seq, r.ID) {
				continue // projected after verify began
			}
			rows[r.ID] = r
			rep.StoreRows++
		}
		if cfg.Progress != nil {
			cfg.Progress(rep.StreamEvents+rep.Undecodable, rep.StoreRows)
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
}

func rowOf(r stores.Record) Row {
	return Row{Pipeline: r.Pipeline, ChangeID: r.ChangeID, Seq: r.Seq, EventID: r.ID, Type: r.Type}
}

// digest is a row's content, as both sides must agree on it: its sequence,
// its hash and its event in canonical encoding.
func digest(r stores.Record) [32]byte {
	b, err := events.Encode(r.Event)
	if err != nil { // a store row that does not validate: digest its fields
		b = fmt.Appendf(nil, "%+v", r.Event)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s\x00", r.Seq, r.Hash)
	h.Write(b)
	return [32]byte(h.Sum(nil))
}

func compareRows(byChange map[key][]entry, rows map[string]stores.Record, rep *Report) {
	seen := map[string]bool{}
	drifted := map[key]bool{}
	for k, es := range byChange {
		for _, e := range es {
			seen[e.EventID] = true
			r, ok := rows[e.EventID]
			switch {
			case !ok:
				rep.Missing = append(rep.Missing, e.Row)
				drifted[k] = true
			case digest(r) != e.digest:
				rep.Mismatched = append(rep.Mismatched, Mismatch{Row: e.Row})
				drifted[k] = true
			}
		}
	}
	for id, r := range rows {
		if !seen[id] {
			rep.Extra = append(rep.Extra, rowOf(r))
			drifted[key{r.Pipeline, r.ChangeID}] = true
		}
	}
	storeByChange := map[key][]stores.Record{}
	for _, r := range rows {
		k := key{r.Pipeline, r.ChangeID}
		if drifted[k] {
			storeByChange[k] = append(storeByChange[k], r)
		}
	}
	for k := range drifted {
		s := ChangeSummary{Pipeline: k.pipeline, ChangeID: k.change, StreamEvents: len(byChange[k]), StoreRows: len(storeByChange[k])}
		h := sha256.New()
		for _, e := range byChange[k] {
			h.Write(e.digest[:])
		}
		s.StreamDigest = fmt.Sprintf("%x", h.Sum(nil))[:16]
		h.Reset()
		srs := storeByChange[k]
		slices.SortFunc(srs, func(a, b stores.Record) int { return int(a.Seq) - int(b.Seq) })
		for _, r := range srs {
			d := digest(r)
			h.Write(d[:])
		}
		s.StoreDigest = fmt.Sprintf("%x", h.Sum(nil))[:16]
		rep.Drifted = append(rep.Drifted, s)
	}
	sortRows(rep.Missing)
	sortRows(rep.Extra)
	slices.SortFunc(rep.Mismatched, func(a, b Mismatch) int { return int(a.Seq) - int(b.Seq) })
	slices.SortFunc(rep.Drifted, func(a, b ChangeSummary) int {
		if a.Pipeline != b.Pipeline {
			return cmpStr(a.Pipeline, b.Pipeline)
		}
		return cmpStr(a.ChangeID, b.ChangeID)
	})
}

// nameMismatchedFields reads each mismatched event from the stream again
// (they are few) and names the fields in which the store's row differs.
func nameMismatchedFields(ctx context.Context, stream jetstream.Stream, rows map[string]stores.Record, rep *Report) error {
	for i, m := range rep.Mismatched {
		want, err := StreamRecord(ctx, stream, m.Seq)
		if err != nil {
			return err
		}
		rep.Mismatched[i].Fields = recordDiff(want, rows[m.EventID])
	}
	return nil
}

// StreamRecord reads the event at seq from the stream as a store row.
func StreamRecord(ctx context.Context, stream jetstream.Stream, seq uint64) (stores.Record, error) {
	m, err := stream.GetMsg(ctx, seq)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: read seq %d: %w", seq, err)
	}
	e, err := events.Decode(m.Data)
	if err != nil {
		return stores.Record{}, fmt.Errorf("verify: seq %d: %w", seq, err)
	}
	return stores.Record{Seq: seq, Hash: events.Hash(m.Data), Event: e}, nil
}

// recordDiff names the fields in which two rows differ.
func recordDiff(want, got stores.Record) []string {
	var fields []string
	if want.Seq != got.Seq {
		fields = append(fields, "Seq")
	}
	if want.Hash != got.Hash {
		fields = append(fields, "Hash")
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

func sortRows(rs []Row) { slices.SortFunc(rs, func(a, b Row) int { return int(a.Seq) - int(b.Seq) }) }

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func compareIssues(ctx context.Context, store stores.Store, stream jetstream.Stream, latest map[key]stores.Record, rep *Report) error {
	have := map[key]stores.Issue{}
	q := stores.IssueQuery{Limit: stores.MaxLimit}
	for {
		page, err := store.Issues(ctx, q)
		if err != nil {
			return fmt.Errorf("verify: read issues: %w", err)
		}
		if len(page) == 0 {
			break
		}
		for _, i := range page {
			if i.Seq <= rep.LastSeq || !inStream(ctx, stream, i.Seq, i.EventID) {
				have[key{i.Pipeline, i.ChangeID}] = i
			}
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
	for k, r := range latest {
		want := stores.IssueOf(r)
		got, ok := have[k]
		switch {
		case !ok:
			rep.Issues = append(rep.Issues, IssueDrift{Pipeline: k.pipeline, ChangeID: k.change, Problem: "missing", Want: &want})
		default:
			if fields := issueDiff(want, got); len(fields) > 0 {
				rep.Issues = append(rep.Issues, IssueDrift{Pipeline: k.pipeline, ChangeID: k.change,
					Problem: "differs in " + fmt.Sprint(fields), Want: &want, Have: &got})
			}
		}
	}
	for k, got := range have {
		if _, ok := latest[k]; !ok {
			rep.Issues = append(rep.Issues, IssueDrift{Pipeline: k.pipeline, ChangeID: k.change, Problem: "extra", Have: &got})
		}
	}
	slices.SortFunc(rep.Issues, func(a, b IssueDrift) int {
		if a.Pipeline != b.Pipeline {
			return cmpStr(a.Pipeline, b.Pipeline)
		}
		return cmpStr(a.ChangeID, b.ChangeID)
	})
	return nil
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

// checkStoreChains checks, per change, that each row's prevHash is the
// previous row's hash.
func checkStoreChains(rows map[string]stores.Record, rep *Report) {
	byChange := map[key][]stores.Record{}
	for _, r := range rows {
		k := key{r.Pipeline, r.ChangeID}
		byChange[k] = append(byChange[k], r)
	}
	for k, rs := range byChange {
		slices.SortFunc(rs, func(a, b stores.Record) int { return int(a.Seq) - int(b.Seq) })
		for i, r := range rs {
			if r.Hash == "" {
				rep.Unhashed++
			}
			if i == 0 || r.PrevHash == "" || rs[i-1].Hash == "" {
				continue
			}
			if r.PrevHash != rs[i-1].Hash {
				rep.StoreChain = append(rep.StoreChain, Break{Where: "store", Pipeline: k.pipeline, ChangeID: k.change,
					Seq: r.Seq, PrevSeq: rs[i-1].Seq, Want: rs[i-1].Hash, Got: r.PrevHash})
			}
		}
	}
	slices.SortFunc(rep.StoreChain, func(a, b Break) int { return int(a.Seq) - int(b.Seq) })
}

// inStream reports whether a store row at a sequence past the snapshot is
// really on the stream (projected after verify began): false means the
// store holds a row the stream never had.
func inStream(ctx context.Context, stream jetstream.Stream, seq uint64, eventID string) bool {
	m, err := stream.GetMsg(ctx, seq)
	if err != nil {
		return false
	}
	e, err := events.Decode(m.Data)
	return err == nil && (eventID == "" || e.ID == eventID)
}
