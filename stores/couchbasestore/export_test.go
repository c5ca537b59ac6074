package couchbasestore

import (
	"context"
	"strconv"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
)

// RawApply writes the documents Apply writes for b into a fresh store —
// event documents, index pages and their root entries, the pipeline list,
// issues, status members, index leaves, the checkpoint and its listing —
// one mutation per document, all at once (Concurrency in flight), with no
// read, no CAS and none of Apply's ordering between steps. It is the
// equal-work baseline Apply is benchmarked against: Apply's read before
// each read-modify-write (issues, pages, members, leaves, checkpoint) and
// its five ordered steps are the guards it pays for.
func (s *Store) RawApply(ctx context.Context, b stores.Batch) error {
	ks, err := s.begin(ctx)
	if err != nil {
		return err
	}
	p := newPlan(ks, b)
	var tasks []task
	upsert := func(key string, v any) {
		tasks = append(tasks, func(ctx context.Context) error {
			_, err := s.coll.Upsert(key, v, &gocb.UpsertOptions{DurabilityLevel: s.cfg.Durability, Timeout: s.cfg.OpTimeout, Context: ctx})
			return err
		})
	}
	paths := func(key string, specs []gocb.MutateInSpec) {
		tasks = append(tasks, func(ctx context.Context) error { return s.upsertPaths(ctx, key, specs) })
	}
	for _, r := range p.recs {
		upsert(ks.event(r.Seq), eventDocOf(r))
	}
	for pr, segs := range p.pages {
		d := pageDoc{S: map[string]string{}}
		for seg, at := range segs {
			d.S[strconv.FormatUint(seg, 10)] = at
		}
		upsert(ks.page(pr.ix, pr.page), d)
		paths(ks.root(pr.ix), []gocb.MutateInSpec{upsertPath("p."+strconv.FormatUint(pr.page, 10), 1)})
	}
	tasks = append(tasks, s.listPipelines(p)...)
	members := map[string]*membersDoc{}
	for _, c := range p.changes {
		d, _ := c.next() // as if the store had no issue yet
		upsert(ks.issue(c.ih), d)
		if tracked(c.status) {
			k := ks.members(c.status, c.ih)
			if members[k] == nil {
				members[k] = &membersDoc{M: map[string]member{}}
			}
			members[k].M[c.ih] = member{Seq: c.latest.Seq, Pipeline: c.ph}
		}
	}
	for k, d := range members {
		upsert(k, d)
	}
	leaves := map[string]*leafDoc{}
	at := func(ix string, seq uint64) *leafDoc {
		k := ks.leaf(ix, segOf(seq))
		if leaves[k] == nil {
			leaves[k] = &leafDoc{E: map[string]entry{}, X: map[string]int{}}
		}
		return leaves[k]
	}
	for _, c := range p.changes {
		for _, seq := range c.seqs {
			if seq < c.after {
				at(ixAll, seq).X[strconv.FormatUint(seq, 10)] = 1
				at(ixPipeline(c.ph), seq).X[strconv.FormatUint(seq, 10)] = 1
			}
		}
	}
	for _, r := range p.recs {
		e := entryOf(r)
		for _, ix := range indexesOf(r) {
			at(ix, r.Seq).E[strconv.FormatUint(r.Seq, 10)] = e
		}
	}
	for k, d := range leaves {
		upsert(k, d)
	}
	if b.Through > 0 {
		paths(ks.checkpointDir(), []gocb.MutateInSpec{upsertPath("n."+digest(16, b.Checkpoint), b.Checkpoint)})
		upsert(ks.checkpoint(b.Checkpoint), checkpointDoc{Name: b.Checkpoint, Seq: b.Through})
	}
	return s.run(ctx, tasks)
}
