package couchbasestore

import (
	"context"
	"maps"
	"math"
	"slices"
	"strconv"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// History returns changeLog rows matching q, newest first.
func (s *Store) History(ctx context.Context, q stores.HistoryQuery) ([]stores.Record, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	return read(ctx, s, "history", func(ks keyspace) ([]stores.Record, error) { return s.history(ctx, ks, q) })
}

// read runs a query in the current generation.
func read[T any](ctx context.Context, s *Store, what string, query func(keyspace) ([]T, error)) ([]T, error) {
	ks, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	out, err := query(ks)
	if err != nil {
		return nil, s.fail(ctx, what, err)
	}
	return out, nil
}

func (s *Store) history(ctx context.Context, ks keyspace, q stores.HistoryQuery) ([]stores.Record, error) {
	f := filter{before: q.BeforeSeq, state: q.State}
	if q.Pipeline != "" {
		f.pipeline = pipelineHash(q.Pipeline)
	}
	if q.ChangeID != "" {
		f.change = changeHash(q.ChangeID)
	}
	if !q.Since.IsZero() {
		f.since = stores.FormatTime(q.Since)
	}
	var src source
	switch {
	case q.ChangeID != "":
		refs, err := s.changeLeaves(ctx, ks, q.Pipeline, q.ChangeID, f.maxSeg())
		if err != nil {
			return nil, err
		}
		src = &listSource{refs: refs}
	case q.Pipeline != "":
		src = s.dirSource(ks, ixPipeline(f.pipeline), f)
	case q.State != "":
		src = s.dirSource(ks, ixState(q.State), f)
	default:
		src = s.dirSource(ks, ixAll, f)
	}
	var out []stores.Record
	err := s.walk(ctx, ks, src, f, func(ctx context.Context, cands []candidate) error {
		docs := make([]eventDoc, len(cands))
		found := make([]bool, len(cands))
		tasks := make([]task, len(cands))
		for i, c := range cands {
			tasks[i] = func(ctx context.Context) (err error) {
				_, found[i], err = s.get(ctx, ks.event(c.seq), &docs[i])
				return err
			}
		}
		if err := s.run(ctx, tasks); err != nil {
			return err
		}
		for i, c := range cands {
			// The entry only narrowed the search: the row itself is
			// checked against the query, so hashes may collide and an
			// entry may disagree with its row (a value altered in one but
			// not the other) without a row being listed under a value it
			// does not hold. What is returned is the row as stored.
			if !found[i] || docs[i].Seq != c.seq {
				continue
			}
			r, err := docs[i].record()
			if err != nil {
				return err
			}
			if q.Match(r) {
				out = append(out, r)
			}
		}
		return nil
	}, func() int { return q.Limit - len(out) })
	return out, err
}

// Issues returns issue rows matching q, most recently changed first.
func (s *Store) Issues(ctx context.Context, q stores.IssueQuery) ([]stores.Issue, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	return read(ctx, s, "issues", func(ks keyspace) ([]stores.Issue, error) { return s.issues(ctx, ks, q) })
}

func (s *Store) issues(ctx context.Context, ks keyspace, q stores.IssueQuery) ([]stores.Issue, error) {
	switch {
	case q.ChangeID != "":
		// At most one issue per pipeline: read them all.
		pipelines := []string{q.Pipeline}
		if q.Pipeline == "" {
			var err error
			if pipelines, err = s.pipelineNames(ctx, ks); err != nil {
				return nil, err
			}
		}
		ihs := make([]string, len(pipelines))
		for i, p := range pipelines {
			ihs[i] = issueHash(p, q.ChangeID)
		}
		return s.matchIssues(ctx, ks, ihs, q)
	case tracked(q.Status):
		// Few issues are open or in progress: read their member lists.
		ihs, err := s.membersOf(ctx, ks, q.Status, q.Pipeline)
		if err != nil {
			return nil, err
		}
		return s.matchIssues(ctx, ks, ihs, q)
	}
	// Otherwise walk the leaves for entries that are still their change's
	// newest event: each is an issue row, in sequence order.
	f := filter{before: q.BeforeSeq, status: q.Status, current: true}
	ix := ixAll
	if q.Pipeline != "" {
		f.pipeline = pipelineHash(q.Pipeline)
		ix = ixPipeline(f.pipeline)
	}
	var out []stores.Issue
	err := s.walk(ctx, ks, s.dirSource(ks, ix, f), f, func(ctx context.Context, cands []candidate) error {
		ihs := make([]string, len(cands))
		for i, c := range cands {
			ihs[i] = c.e.Issue
		}
		docs, err := s.readIssueDocs(ctx, ks, ihs)
		if err != nil {
			return err
		}
		for i, c := range cands {
			// A superseded mark may have been lost (a crash between the
			// issue's write and the mark's): the issue decides.
			if docs[i] == nil || docs[i].Seq != c.seq {
				continue
			}
			is, err := docs[i].issue()
			if err != nil {
				return err
			}
			if q.Match(is) {
				out = append(out, is)
			}
		}
		return nil
	}, func() int { return q.Limit - len(out) })
	return out, err
}

// matchIssues reads the issues ihs, keeps those matching q, newest first.
func (s *Store) matchIssues(ctx context.Context, ks keyspace, ihs []string, q stores.IssueQuery) ([]stores.Issue, error) {
	docs, err := s.readIssueDocs(ctx, ks, ihs)
	if err != nil {
		return nil, err
	}
	var out []stores.Issue
	for _, d := range docs {
		if d == nil {
			continue
		}
		is, err := d.issue()
		if err != nil {
			return nil, err
		}
		if q.Match(is) {
			out = append(out, is)
		}
	}
	slices.SortFunc(out, func(a, b stores.Issue) int { return bySeqDesc(a.Seq, b.Seq) })
	return out[:min(len(out), q.Limit)], nil
}

// readIssueDocs reads issues by hash; missing ones are nil.
func (s *Store) readIssueDocs(ctx context.Context, ks keyspace, ihs []string) ([]*issueDoc, error) {
	out := make([]*issueDoc, len(ihs))
	tasks := make([]task, len(ihs))
	for i, ih := range ihs {
		tasks[i] = func(ctx context.Context) error {
			var d issueDoc
			_, ok, err := s.get(ctx, ks.issue(ih), &d)
			if ok {
				out[i] = &d
			}
			return err
		}
	}
	return out, s.run(ctx, tasks)
}

// pipelineNames lists every pipeline with events.
func (s *Store) pipelineNames(ctx context.Context, ks keyspace) ([]string, error) {
	var d pipelinesDoc
	if _, _, err := s.get(ctx, ks.pipelines(), &d); err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Values(d.P)), nil
}

// membersOf lists the issues (hashes) in tracked status st, optionally of
// one pipeline. The list may hold a few stale members; callers check the
// issues themselves.
func (s *Store) membersOf(ctx context.Context, ks keyspace, st stores.IssueStatus, pipeline string) ([]string, error) {
	docs := make([]membersDoc, len(memberBuckets))
	tasks := make([]task, len(memberBuckets))
	for i := range memberBuckets {
		tasks[i] = func(ctx context.Context) error {
			_, _, err := s.get(ctx, ks.members(st, memberBuckets[i:i+1]), &docs[i])
			return err
		}
	}
	if err := s.run(ctx, tasks); err != nil {
		return nil, err
	}
	ph := ""
	if pipeline != "" {
		ph = pipelineHash(pipeline)
	}
	var ihs []string
	for _, d := range docs {
		for ih, m := range d.M {
			if ph == "" || m.Pipeline == ph {
				ihs = append(ihs, ih)
			}
		}
	}
	return ihs, nil
}

// changeLeaves lists the leaves holding a change's events, of one pipeline
// or of every pipeline that has the change id, newest segment first, up
// to segment maxSeg. The issue documents record them.
func (s *Store) changeLeaves(ctx context.Context, ks keyspace, pipeline, change string, maxSeg uint64) ([]leafRef, error) {
	pipelines := []string{pipeline}
	if pipeline == "" {
		var err error
		if pipelines, err = s.pipelineNames(ctx, ks); err != nil {
			return nil, err
		}
	}
	ihs := make([]string, len(pipelines))
	for i, p := range pipelines {
		ihs[i] = issueHash(p, change)
	}
	docs, err := s.readIssueDocs(ctx, ks, ihs)
	if err != nil {
		return nil, err
	}
	var refs []leafRef
	for i, d := range docs {
		if d == nil {
			continue
		}
		for _, seg := range d.Segs {
			if seg <= maxSeg {
				refs = append(refs, leafRef{ix: ixPipeline(pipelineHash(pipelines[i])), seg: seg})
			}
		}
	}
	slices.SortStableFunc(refs, func(a, b leafRef) int { return bySeqDesc(a.seg, b.seg) })
	return refs, nil
}

// filter selects leaf entries. Zero fields do not filter.
type filter struct {
	before           uint64 // seq < before
	pipeline, change string // hashes
	state            events.State
	status           stores.IssueStatus
	since            string // At >= since
	current          bool   // not marked superseded
}

// maxSeg is the highest segment that can hold a sequence below before.
func (f filter) maxSeg() uint64 {
	if f.before == 0 {
		return math.MaxUint64
	}
	if f.before == 1 {
		return 0 // and match rejects seq 0, which never exists
	}
	return segOf(f.before - 1)
}

func (f filter) match(seq uint64, e entry, superseded bool) bool {
	return (f.before == 0 || seq < f.before) &&
		(f.pipeline == "" || e.Pipeline == f.pipeline) &&
		(f.change == "" || e.Change == f.change) &&
		(f.state == "" || e.State == f.state) &&
		(f.status == "" || e.status() == f.status) &&
		(f.since == "" || e.At >= f.since) &&
		(!f.current || !superseded)
}

// leafRef names one leaf: an index and a segment.
type leafRef struct {
	ix  string
	seg uint64
}

// source yields the leaves to read, highest segment first, at most n at a
// time (more only to keep one segment's leaves together); none when done.
type source interface {
	next(ctx context.Context, n int) ([]leafRef, error)
}

// listSource yields a known list of leaves.
type listSource struct{ refs []leafRef }

func (l *listSource) next(_ context.Context, n int) ([]leafRef, error) {
	n = min(n, len(l.refs))
	for n < len(l.refs) && n > 0 && l.refs[n].seg == l.refs[n-1].seg {
		n++
	}
	out := l.refs[:n]
	l.refs = l.refs[n:]
	return out, nil
}

// dirSource yields an index's leaves by reading its root and then its
// pages, newest first, skipping leaves above the filter's sequence bound
// and leaves with no event as recent as its Since.
type dirSource struct {
	s        *Store
	ks       keyspace
	ix       string
	maxSeg   uint64
	since    string
	pages    []uint64
	rootRead bool
	segs     []uint64
}

func (s *Store) dirSource(ks keyspace, ix string, f filter) *dirSource {
	return &dirSource{s: s, ks: ks, ix: ix, maxSeg: f.maxSeg(), since: f.since}
}

func (d *dirSource) next(ctx context.Context, n int) ([]leafRef, error) {
	if !d.rootRead {
		var root rootDoc
		if _, _, err := d.s.get(ctx, d.ks.root(d.ix), &root); err != nil {
			return nil, err
		}
		d.rootRead = true
		for k := range root.P {
			if pg, err := strconv.ParseUint(k, 10, 64); err == nil && pg <= pageOf(d.maxSeg) {
				d.pages = append(d.pages, pg)
			}
		}
		slices.SortFunc(d.pages, bySeqDesc)
	}
	for len(d.segs) == 0 && len(d.pages) > 0 {
		var page pageDoc
		if _, _, err := d.s.get(ctx, d.ks.page(d.ix, d.pages[0]), &page); err != nil {
			return nil, err
		}
		d.pages = d.pages[1:]
		for k, at := range page.S {
			if seg, err := strconv.ParseUint(k, 10, 64); err == nil && seg <= d.maxSeg && at >= d.since {
				d.segs = append(d.segs, seg)
			}
		}
		slices.SortFunc(d.segs, bySeqDesc)
	}
	n = min(n, len(d.segs))
	out := make([]leafRef, n)
	for i, seg := range d.segs[:n] {
		out[i] = leafRef{ix: d.ix, seg: seg}
	}
	d.segs = d.segs[n:]
	return out, nil
}

// candidate is a leaf entry that passed the filter.
type candidate struct {
	seq uint64
	e   entry
}

// walk reads leaves from src, a few at a time and in parallel, and hands
// matching entries to accept newest first, at most want() at a time, until
// want() is 0 or the leaves run out. It reads one leaf first and doubles
// the window up to Concurrency, so a small page costs few reads and a
// sparse one is not slowed by round trips.
func (s *Store) walk(ctx context.Context, ks keyspace, src source, f filter,
	accept func(ctx context.Context, cands []candidate) error, want func() int) error {
	window := 1
	for want() > 0 {
		refs, err := src.next(ctx, window)
		if err != nil || len(refs) == 0 {
			return err
		}
		window = min(window*2, s.cfg.Concurrency)
		leaves := make([]leafDoc, len(refs))
		tasks := make([]task, len(refs))
		for i, r := range refs {
			tasks[i] = func(ctx context.Context) error {
				_, _, err := s.get(ctx, ks.leaf(r.ix, r.seg), &leaves[i])
				return err
			}
		}
		if err := s.run(ctx, tasks); err != nil {
			return err
		}
		// Segments are disjoint ranges of sequences: sorting within each
		// run of equal segments orders the whole window.
		var cands []candidate
		for i := 0; i < len(refs); {
			j, from := i, len(cands)
			for ; j < len(refs) && refs[j].seg == refs[i].seg; j++ {
				for k, e := range leaves[j].E {
					seq, err := strconv.ParseUint(k, 10, 64)
					if err == nil && f.match(seq, e, leaves[j].X[k] != 0) {
						cands = append(cands, candidate{seq: seq, e: e})
					}
				}
			}
			slices.SortFunc(cands[from:], func(a, b candidate) int { return bySeqDesc(a.seq, b.seq) })
			i = j
		}
		for len(cands) > 0 && want() > 0 {
			n := min(len(cands), want())
			if err := accept(ctx, cands[:n]); err != nil {
				return err
			}
			cands = cands[n:]
		}
	}
	return nil
}
