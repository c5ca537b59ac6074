package verify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// issueCandidate is an issue row that did not match in the pass: it is
// drift only if it still does not once confirmed (see confirm).
type issueCandidate struct {
	k     key
	have  *stores.Issue
	drift *IssueDrift // as last confirmed
}

// compareIssues compares the store's issue rows with each change's newest
// event up to the snapshot, and returns the changes whose issue row does
// not match (or is missing, or belongs to no change of the stream). An
// issue row that reflects an event beyond the snapshot — the change moved
// on while verify ran — is not compared: the stream up to the snapshot
// cannot judge it.
func (p *pass) compareIssues() ([]issueCandidate, error) {
	var out []issueCandidate
	seen := map[key]bool{}
	q := stores.IssueQuery{Limit: stores.MaxLimit}
	for {
		page, err := p.store.Issues(p.ctx, q)
		if err != nil {
			return nil, fmt.Errorf("verify: read issues: %w", err)
		}
		for _, i := range page {
			k := key{i.Pipeline, i.ChangeID}
			seen[k] = true
			if i.Seq > p.snapshot {
				in, err := p.inStream(i.Seq, i.EventID)
				if err != nil {
					return nil, err
				}
				if in {
					continue // written after verify began
				}
			}
			c := p.changes[k]
			if c == nil || c.latestSeq == 0 || issueDigestOf(i, p.withTrust) != c.issueDigest {
				out = append(out, issueCandidate{k: k, have: &i})
			}
		}
		if len(page) < q.Limit {
			break
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
	for k, c := range p.changes {
		if c.latestSeq > 0 && !seen[k] {
			out = append(out, issueCandidate{k: k})
		}
	}
	return out, nil
}

// confirm reads the store again for every change the pass found wrong,
// and reports only what is still wrong: a projector running meanwhile may
// have been behind when the pass read its range (a row missing, an issue
// one event behind), or may have moved an issue past the snapshot while
// the issues were paged (it then reads as missing). What is still wrong
// is read again a few times over Config.Settle, so that a projector a
// moment behind the snapshot is not reported; only then is it drift. It
// stops waiting early once nothing has been written to the store for
// quietEnough (no projector is running, or none is behind). What a
// projector never does — alter a row, add a row the stream does not
// have — needs no second look.
func (p *pass) confirm(issues []issueCandidate) error {
	missing := p.rep.Missing
	var top uint64          // the store's newest row at the last look
	var quiet time.Duration // how long it has not moved
	for i, wait := range confirmWaits(p.cfg.Settle) {
		if len(missing)+len(issues) == 0 || quiet >= quietEnough {
			break
		}
		if err := sleep(p.ctx, wait); err != nil {
			return err
		}
		newest, err := p.storeTop()
		if err != nil {
			return err
		}
		if i > 0 && newest == top {
			quiet += wait
		} else {
			quiet = 0
		}
		top = newest
		if missing, err = p.confirmRows(missing); err != nil {
			return err
		}
		var still []issueCandidate
		for _, ic := range issues {
			d, err := p.confirmIssue(ic)
			if err != nil {
				return err
			}
			if d != nil {
				ic.drift = d
				still = append(still, ic)
			}
		}
		issues = still
	}
	p.rep.Missing = missing
	for _, ic := range issues {
		p.rep.Issues = append(p.rep.Issues, *ic.drift)
	}
	for _, c := range p.changes {
		c.drift = false
	}
	for _, rs := range [][]Row{p.rep.Missing, p.rep.Extra, mismatchedRows(p.rep)} {
		for _, r := range rs {
			p.change(key{r.Pipeline, r.ChangeID}).drift = true
		}
	}
	return nil
}

// quietEnough: a store nobody has written to for this long (no projector
// running, or none behind) will not change by waiting longer.
const quietEnough = 200 * time.Millisecond

// storeTop is the sequence of the store's newest row.
func (p *pass) storeTop() (uint64, error) {
	page, err := p.store.History(p.ctx, stores.HistoryQuery{Limit: 1})
	if err != nil || len(page) == 0 {
		return 0, err
	}
	return page[0].Seq, nil
}

// confirmWaits are the pauses before each look of confirm: growing, and
// settle in all.
func confirmWaits(settle time.Duration) []time.Duration {
	switch {
	case settle < 0:
		return []time.Duration{0}
	case settle == 0:
		settle = DefaultSettle
	}
	return []time.Duration{0, settle / 60, settle / 15, settle / 4, settle - settle/60 - settle/15 - settle/4}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d == 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// confirmRows reads again the changes with rows missing and returns the
// rows still missing; a row found now that differs from the stream is
// added to the report as altered.
func (p *pass) confirmRows(missing []Row) ([]Row, error) {
	byChange := map[key][]Row{}
	for _, r := range missing {
		k := key{r.Pipeline, r.ChangeID}
		byChange[k] = append(byChange[k], r)
	}
	var still []Row
	for k, rows := range byChange {
		have, err := p.changeRows(k)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]stores.Record, len(have))
		for _, r := range have {
			byID[r.ID] = r
		}
		for _, r := range rows {
			got, ok := byID[r.EventID]
			if !ok || got.Seq != r.Seq {
				still = append(still, r)
				continue
			}
			want, err := p.streamRecord(r.Seq)
			if err != nil {
				return nil, err
			}
			if digest(want, p.withTrust) != digest(got, p.withTrust) {
				p.rep.Mismatched = append(p.rep.Mismatched, Mismatch{Row: r, Fields: recordDiff(want, got, p.withTrust)})
			}
		}
		// The store's side of the change as it is now, for the summary.
		c := p.changes[k]
		c.storeRows, c.storeDigest = 0, [32]byte{}
		for _, r := range have {
			if r.Seq <= p.snapshot {
				c.storeRows++
				c.storeDigest = chainDigest(c.storeDigest, digest(r, p.withTrust))
			}
		}
	}
	return still, nil
}

// confirmIssue reads a change's issue row again and compares it with the
// change's newest event up to the snapshot; nil if it matches now, or
// reflects an event beyond the snapshot.
func (p *pass) confirmIssue(ic issueCandidate) (*IssueDrift, error) {
	page, err := p.store.Issues(p.ctx, stores.IssueQuery{Pipeline: ic.k.pipeline, ChangeID: ic.k.change, Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("verify: read issue %s/%s: %w", ic.k.pipeline, ic.k.change, err)
	}
	var got *stores.Issue
	if len(page) > 0 {
		got = &page[0]
		if got.Seq > p.snapshot {
			in, err := p.inStream(got.Seq, got.EventID)
			if err != nil || in {
				return nil, err
			}
		}
	}
	d := &IssueDrift{Pipeline: ic.k.pipeline, ChangeID: ic.k.change, Have: got}
	c := p.changes[ic.k]
	if c == nil || c.latestSeq == 0 {
		if got == nil {
			return nil, nil
		}
		d.Problem = "extra"
		return d, nil
	}
	rec, err := p.streamRecord(c.latestSeq)
	if err != nil {
		return nil, err
	}
	if !p.withTrust && got != nil {
		rec.Trust = got.Trust // not judged without a list: take the projector's verdict as it is
	}
	want := stores.IssueOf(rec)
	d.Want = &want
	if got == nil {
		d.Problem = "missing"
		return d, nil
	}
	fields := issueDiff(want, *got)
	if len(fields) == 0 {
		return nil, nil
	}
	d.Problem = "differs in " + fmt.Sprint(fields)
	return d, nil
}

// changeRows reads every row of one change from the store.
func (p *pass) changeRows(k key) ([]stores.Record, error) {
	var out []stores.Record
	q := stores.HistoryQuery{Pipeline: k.pipeline, ChangeID: k.change, Limit: stores.MaxLimit}
	for {
		page, err := p.store.History(p.ctx, q)
		if err != nil {
			return nil, fmt.Errorf("verify: read %s/%s: %w", k.pipeline, k.change, err)
		}
		out = append(out, page...)
		if len(page) < q.Limit {
			slices.Reverse(out)
			return out, nil
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
}

// streamRecord reads the event at seq as a store row, retrying what a
// cluster's fail-over makes fail meanwhile.
func (p *pass) streamRecord(seq uint64) (stores.Record, error) {
	m, err := getMsg(p.ctx, p.stream, seq)
	if err != nil {
		return stores.Record{}, err
	}
	return recordOf(p.ctx, p.js, p.stream, p.cfg.Stream.SubjectPrefix, m, p.cfg.Trust)
}

// getMsg reads the message at seq, retrying for up to 2 minutes what a
// cluster's fail-over makes fail meanwhile; a sequence the stream does not
// hold is an error wrapping jetstream.ErrMsgNotFound at once.
func getMsg(ctx context.Context, stream jetstream.Stream, seq uint64) (*jetstream.RawStreamMsg, error) {
	var m *jetstream.RawStreamMsg
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(2*time.Second), backoff.WithMaxElapsedTime(2*time.Minute)), ctx)
	err := backoff.Retry(func() error {
		var err error
		m, err = stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return backoff.Permanent(err)
		}
		return err
	}, b)
	if err != nil {
		return nil, fmt.Errorf("verify: read seq %d: %w", seq, err)
	}
	return m, nil
}

// finish settles what depends on the whole stream — whether a problem is
// acknowledged by a resolution or an overlap record after it — and puts
// the lists in order.
func (p *pass) finish() {
	rep := p.rep
	resolved := func(pipeline, changeID string) *change {
		if c := p.changes[key{pipeline, changeID}]; c != nil {
			return c
		}
		return &change{}
	}
	for i, u := range rep.Untrusted {
		rep.Untrusted[i].Acknowledged = resolved(u.Pipeline, u.ChangeID).resolved > u.Seq
	}
	for i, u := range rep.StoreUntrusted {
		rep.StoreUntrusted[i].Acknowledged = resolved(u.Pipeline, u.ChangeID).storeResolved > u.Seq
	}
	for i, st := range rep.StaleTokens {
		c := resolved(st.Pipeline, st.ChangeID)
		rep.StaleTokens[i].Acknowledged = st.Type == events.ExecutionOverlapped || c.resolved > st.Seq || c.overlapped > st.Seq
	}
	for _, bs := range [][]BadMessage{rep.Unreadable, rep.WrongSubject} {
		for i, b := range bs {
			bs[i].Acknowledged = b.ChangeID != "" && resolved(b.Pipeline, b.ChangeID).resolved > b.Seq
		}
	}
	for i, d := range rep.Downgrades {
		rep.Downgrades[i].Acknowledged = resolved(d.Pipeline, d.ChangeID).resolvedV2 > d.Seq
	}
	for i, o := range rep.OutOfChain {
		rep.OutOfChain[i].Acknowledged = resolved(o.Pipeline, o.ChangeID).resolved > o.Seq
	}
	for k, c := range p.changes {
		if c.streamEvents > 0 {
			rep.Changes++
		}
		if c.drift {
			rep.Drifted = append(rep.Drifted, ChangeSummary{Pipeline: k.pipeline, ChangeID: k.change,
				StreamEvents: c.streamEvents, StoreRows: c.storeRows,
				StreamDigest: fmt.Sprintf("%x", c.streamDigest[:8]), StoreDigest: fmt.Sprintf("%x", c.storeDigest[:8])})
		}
	}
	bySeq := func(a, b Row) int { return cmp.Compare(a.Seq, b.Seq) }
	slices.SortFunc(rep.Missing, bySeq)
	slices.SortFunc(rep.Extra, bySeq)
	slices.SortFunc(rep.Mismatched, func(a, b Mismatch) int { return bySeq(a.Row, b.Row) })
	slices.SortFunc(rep.StoreChain, func(a, b Break) int { return cmp.Compare(a.Seq, b.Seq) })
	byChange := func(ap, ac, bp, bc string) int { return cmp.Or(cmp.Compare(ap, bp), cmp.Compare(ac, bc)) }
	slices.SortFunc(rep.Issues, func(a, b IssueDrift) int { return byChange(a.Pipeline, a.ChangeID, b.Pipeline, b.ChangeID) })
	slices.SortFunc(rep.Drifted, func(a, b ChangeSummary) int { return byChange(a.Pipeline, a.ChangeID, b.Pipeline, b.ChangeID) })
}

// scanConfig is how verify reads the stream.
func (p *pass) scanConfig() projector.ScanConfig {
	return projector.ScanConfig{Stream: p.cfg.Stream.Name, Subjects: []string{p.cfg.Stream.SubjectPrefix + ".>"},
		ToSeq: p.snapshot, Logger: p.cfg.Logger}
}
