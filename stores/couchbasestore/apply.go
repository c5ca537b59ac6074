package couchbasestore

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
)

// Apply writes the batch: event documents, index pages, issues, leaf
// entries, then the checkpoint, each step finished before the next starts
// (see doc.go for why that order keeps every row reachable and the whole
// idempotent). A failed Apply may leave some of its writes behind; applying
// the batch again completes it.
func (s *Store) Apply(ctx context.Context, b stores.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	ks, err := s.begin(ctx)
	if err != nil {
		return err
	}
	p := newPlan(ks, b)
	if len(b.Records) == 0 {
		if b.Through == 0 {
			return nil
		}
		if err := s.run(ctx, []task{s.raiseCheckpoint(p)}); err != nil {
			return s.fail(ctx, "raise checkpoint", err)
		}
		return nil
	}
	steps := []struct {
		name  string
		tasks func() []task
	}{
		// Independent of each other: the events, the index directories
		// (above the leaves), the pipeline list (above the issues) and
		// reading the current issues.
		{"write events and index pages", func() []task {
			return slices.Concat(s.insertEvents(p), s.raisePages(p), s.listPipelines(p), s.readIssues(p))
		}},
		// Before an issue moves: the member list of the status it moves to.
		{"list issues", func() []task { return s.addMembers(p) }},
		{"write issues", func() []task { return s.writeIssues(p) }},
		// After the issues: leaf entries and superseded marks need to know
		// which events are current; members of a status an issue left go.
		{"write index leaves", func() []task { return slices.Concat(s.writeLeaves(p), s.removeMembers(p)) }},
		{"raise checkpoint", func() []task { return []task{s.raiseCheckpoint(p)} }},
	}
	for _, step := range steps {
		if err := s.run(ctx, step.tasks()); err != nil {
			return s.fail(ctx, step.name, err)
		}
	}
	return nil
}

// plan is what one Apply writes, worked out from the batch before any I/O.
type plan struct {
	ks         keyspace
	recs       []stores.Record // one per sequence, ascending
	changes    []*changePlan
	pages      map[pageRef]map[uint64]string // → segment → latest OccurredAt in it
	checkpoint string
	through    uint64 // the batch's Through: the checkpoint it sets
}

type pageRef struct {
	ix   string
	page uint64
}

// changePlan is one change touched by the batch.
type changePlan struct {
	ih, ph string
	latest stores.Record // the batch's newest event of the change
	seqs   []uint64      // the batch's events of the change
	segs   []uint64      // their segments, ascending

	// The issue as last read (readIssues, then writeIssues' retries).
	cur    issueDoc
	cas    gocb.Cas
	exists bool
	// The status addMembers listed the issue in, if any.
	listed stores.IssueStatus

	// The outcome (writeIssues): the issue's sequence and status
	// afterwards, and the state this batch replaced, if it did.
	after     uint64
	status    stores.IssueStatus
	replaced  bool
	oldSeq    uint64
	oldStatus stores.IssueStatus
}

func newPlan(ks keyspace, b stores.Batch) *plan {
	p := &plan{ks: ks, pages: map[pageRef]map[uint64]string{}, checkpoint: b.Checkpoint, through: b.Through}
	bySeq := make(map[uint64]stores.Record, len(b.Records))
	for _, r := range b.Records {
		if _, dup := bySeq[r.Seq]; !dup { // a sequence is one event; keep the first copy
			bySeq[r.Seq] = r
		}
	}
	for _, seq := range slices.Sorted(maps.Keys(bySeq)) {
		p.recs = append(p.recs, bySeq[seq])
	}
	byIssue := map[string]*changePlan{}
	for _, r := range p.recs {
		ih := issueHash(r.Pipeline, r.ChangeID)
		c := byIssue[ih]
		if c == nil {
			c = &changePlan{ih: ih, ph: pipelineHash(r.Pipeline)}
			byIssue[ih] = c
			p.changes = append(p.changes, c)
		}
		c.latest = r // recs ascend, so the last one is the newest
		c.seqs = append(c.seqs, r.Seq)
		seg := segOf(r.Seq)
		if !slices.Contains(c.segs, seg) {
			c.segs = append(c.segs, seg)
		}
		at := stores.FormatTime(r.OccurredAt)
		for _, ix := range indexesOf(r) {
			pr := pageRef{ix, pageOf(seg)}
			if p.pages[pr] == nil {
				p.pages[pr] = map[uint64]string{}
			}
			p.pages[pr][seg] = max(p.pages[pr][seg], at)
		}
	}
	return p
}

// insertEvents writes the changeLog rows. Insert by sequence makes a
// redelivered event a no-op: ErrDocumentExists means it is already there
// (the first write of a sequence stands).
func (s *Store) insertEvents(p *plan) []task {
	tasks := make([]task, len(p.recs))
	for i, r := range p.recs {
		tasks[i] = func(ctx context.Context) error {
			err := s.insert(ctx, p.ks.event(r.Seq), eventDocOf(r))
			if err != nil && !errors.Is(err, gocb.ErrDocumentExists) {
				return err
			}
			return nil
		}
	}
	return tasks
}

// raisePages records in each index page the segments this batch writes
// leaves in, raising their latest time. A page is listed in its root
// before it is created, so a page that exists is always reachable.
func (s *Store) raisePages(p *plan) []task {
	var tasks []task
	for pr, segs := range p.pages {
		tasks = append(tasks, func(ctx context.Context) error {
			listInRoot := func(ctx context.Context) error {
				return s.upsertPaths(ctx, p.ks.root(pr.ix), []gocb.MutateInSpec{upsertPath("p."+strconv.FormatUint(pr.page, 10), 1)})
			}
			return update(ctx, s, p.ks.page(pr.ix, pr.page), listInRoot, func(d *pageDoc, _ bool) bool {
				if d.S == nil {
					d.S = map[string]string{}
				}
				changed := false
				for seg, at := range segs {
					k := strconv.FormatUint(seg, 10)
					if at > d.S[k] {
						d.S[k], changed = at, true
					}
				}
				return changed
			})
		})
	}
	return tasks
}

func (s *Store) readIssues(p *plan) []task {
	tasks := make([]task, len(p.changes))
	for i, c := range p.changes {
		tasks[i] = func(ctx context.Context) (err error) {
			c.cas, c.exists, err = s.get(ctx, p.ks.issue(c.ih), &c.cur)
			return err
		}
	}
	return tasks
}

// raises reports whether, as read, the batch makes the issue newer. The
// issue's sequence only grows, so once false it stays false.
func (c *changePlan) raises() bool { return !c.exists || c.latest.Seq > c.cur.Seq }

// listPipelines adds the batch's pipelines to the pipeline list, before
// any issue of theirs is created: one call for the usual batch.
func (s *Store) listPipelines(p *plan) []task {
	seen := map[string]bool{}
	var specs []gocb.MutateInSpec
	for _, c := range p.changes {
		if !seen[c.ph] {
			seen[c.ph] = true
			specs = append(specs, upsertPath("p."+c.ph, c.latest.Pipeline))
		}
	}
	return []task{func(ctx context.Context) error { return s.upsertPaths(ctx, p.ks.pipelines(), specs) }}
}

// addMembers lists each issue the batch moves into a tracked status in
// that status's member document, before the issue moves, raising the
// member's sequence (never lowering it: see removeMembers).
func (s *Store) addMembers(p *plan) []task {
	groups := map[string][]*changePlan{}
	for _, c := range p.changes {
		if st := stores.IssueStatusOf(stores.StateOf(c.latest), c.latest.Trust); c.raises() && tracked(st) {
			c.listed = st
			k := p.ks.members(st, c.ih)
			groups[k] = append(groups[k], c)
		}
	}
	var tasks []task
	for key, cs := range groups {
		tasks = append(tasks, func(ctx context.Context) error {
			return update(ctx, s, key, nil, func(d *membersDoc, _ bool) bool {
				if d.M == nil {
					d.M = map[string]member{}
				}
				changed := false
				for _, c := range cs {
					if m, ok := d.M[c.ih]; !ok || m.Seq < c.latest.Seq {
						d.M[c.ih], changed = member{Seq: c.latest.Seq, Pipeline: c.ph}, true
					}
				}
				return changed
			})
		})
	}
	return tasks
}

// writeIssues moves each issue to the batch's newest event of its change
// if that is newer, under CAS: of two writers the loser re-reads and
// compares sequences again, so an older event never replaces a newer one.
// It also records the change's segments (for its history).
func (s *Store) writeIssues(p *plan) []task {
	tasks := make([]task, len(p.changes))
	for i, c := range p.changes {
		tasks[i] = func(ctx context.Context) error {
			key := p.ks.issue(c.ih)
			reread := false
			return s.retry(ctx, func() error {
				if reread {
					c.cur = issueDoc{}
					var err error
					if c.cas, c.exists, err = s.get(ctx, key, &c.cur); err != nil {
						return err
					}
				}
				reread = true
				d, changed := c.next()
				switch {
				case !changed:
					return nil
				case c.exists:
					return s.replace(ctx, key, d, c.cas)
				default:
					return s.insert(ctx, key, d)
				}
			})
		}
	}
	return tasks
}

// next computes the issue document after this batch from c.cur, and the
// outcome fields.
func (c *changePlan) next() (issueDoc, bool) {
	c.replaced = false
	if !c.exists {
		d := issueDocOf(c.latest, c.segs)
		c.after, c.status = d.Seq, d.Status
		return d, true
	}
	d, changed := c.cur, false
	if c.latest.Seq > d.Seq {
		c.replaced, c.oldSeq, c.oldStatus = true, d.Seq, d.Status
		d, changed = issueDocOf(c.latest, d.Segs), true
	}
	for _, seg := range c.segs {
		if !slices.Contains(d.Segs, seg) {
			d.Segs, changed = append(slices.Clone(d.Segs), seg), true
		}
	}
	slices.Sort(d.Segs)
	c.after, c.status = d.Seq, d.Status
	return d, changed
}

// writeLeaves adds the batch's entries to the leaves of the whole log, the
// pipeline and the state, and marks superseded events: the batch's events
// older than their issue, and the event the batch's newest replaced. A
// leaf is read, merged and replaced under CAS (a set union: the same
// result whoever writes first and however often). Marks only ever say
// "superseded", which is permanent, so they can land in any order; a mark
// that was lost leaves a stale entry that readers check against the issue.
//
// Not sub-document upserts of e.<seq> paths, which would need no read:
// with at most 16 paths per call a batch takes many calls per leaf, and
// gocaves rewrites the whole document for every path.
func (s *Store) writeLeaves(p *plan) []task {
	type leaf struct {
		entries map[uint64]entry
		marks   map[uint64]bool
	}
	leaves := map[string]*leaf{}
	at := func(ix string, seq uint64) *leaf {
		k := p.ks.leaf(ix, segOf(seq))
		if leaves[k] == nil {
			leaves[k] = &leaf{entries: map[uint64]entry{}, marks: map[uint64]bool{}}
		}
		return leaves[k]
	}
	for _, c := range p.changes {
		for _, seq := range c.seqs {
			if seq < c.after {
				at(ixAll, seq).marks[seq] = true
				at(ixPipeline(c.ph), seq).marks[seq] = true
			}
		}
		if c.replaced {
			at(ixAll, c.oldSeq).marks[c.oldSeq] = true
			at(ixPipeline(c.ph), c.oldSeq).marks[c.oldSeq] = true
		}
	}
	for _, r := range p.recs {
		e := entryOf(r)
		for _, ix := range indexesOf(r) {
			at(ix, r.Seq).entries[r.Seq] = e
		}
	}
	var tasks []task
	for key, l := range leaves {
		tasks = append(tasks, func(ctx context.Context) error {
			return update(ctx, s, key, nil, func(d *leafDoc, _ bool) bool {
				if d.E == nil {
					d.E = map[string]entry{}
				}
				if d.X == nil {
					d.X = map[string]int{}
				}
				changed := false
				for seq, e := range l.entries {
					if k := strconv.FormatUint(seq, 10); d.E[k] != e {
						if _, ok := d.E[k]; !ok { // a sequence is one event: the first write stands
							d.E[k], changed = e, true
						}
					}
				}
				for seq := range l.marks {
					if k := strconv.FormatUint(seq, 10); d.X[k] == 0 {
						d.X[k], changed = 1, true
					}
				}
				return changed
			})
		})
	}
	return tasks
}

// removeMembers takes issues off the member lists of tracked statuses they
// are no longer in: the status this batch moved an issue out of, and the
// status addMembers listed it in if another writer's newer event won the
// issue instead. A member is removed only if its sequence is at most the
// issue's (as this batch left it): a writer that moves the issue into that
// status again does so at a higher sequence and lists it at that sequence
// first, so its member is never removed.
func (s *Store) removeMembers(p *plan) []task {
	groups := map[string][]*changePlan{}
	stale := func(c *changePlan, st stores.IssueStatus) {
		if tracked(st) && st != c.status {
			k := p.ks.members(st, c.ih)
			if !slices.Contains(groups[k], c) {
				groups[k] = append(groups[k], c)
			}
		}
	}
	for _, c := range p.changes {
		if c.replaced {
			stale(c, c.oldStatus)
		}
		if c.listed != "" {
			stale(c, c.listed)
		}
	}
	var tasks []task
	for key, cs := range groups {
		tasks = append(tasks, func(ctx context.Context) error {
			return update(ctx, s, key, nil, func(d *membersDoc, exists bool) bool {
				changed := false
				for _, c := range cs {
					if m, ok := d.M[c.ih]; ok && m.Seq <= c.after {
						delete(d.M, c.ih)
						changed = true
					}
				}
				return exists && changed
			})
		})
	}
	return tasks
}

// raiseCheckpoint raises the batch's checkpoint to its Through under CAS,
// never lowering it (Through 0 changes nothing); the name is listed (for
// Reset) before the document is created.
func (s *Store) raiseCheckpoint(p *plan) task {
	return func(ctx context.Context) error {
		if p.through == 0 {
			return nil
		}
		listName := func(ctx context.Context) error {
			return s.upsertPaths(ctx, p.ks.checkpointDir(), []gocb.MutateInSpec{upsertPath("n."+digest(16, p.checkpoint), p.checkpoint)})
		}
		return update(ctx, s, p.ks.checkpoint(p.checkpoint), listName, func(d *checkpointDoc, _ bool) bool {
			if d.Seq >= p.through {
				return false
			}
			d.Name, d.Seq = p.checkpoint, p.through
			return true
		})
	}
}

// bySeqDesc orders newest first.
func bySeqDesc(a, b uint64) int { return cmp.Compare(b, a) }
