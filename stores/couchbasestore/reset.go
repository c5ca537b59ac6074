package couchbasestore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Reset empties the store: it raises the generation in the meta document,
// which every call reads first, so from that write on the store is empty
// for every reader and writer at once; then it deletes the old
// generation's documents, found through its indexes. If that is
// interrupted, the next Reset finishes it (the meta document records the
// lowest generation not yet purged). Reset must not race with Apply on the
// same store: a batch in flight may land in the old generation and be
// lost, as it would be by a Reset just after it.
//
// A store of the older layout (events keyed by id) is rebuilt the same
// way: the new generation is of this version's layout, and the purge
// reads the older one's keys from its leaves.
func (s *Store) Reset(ctx context.Context) error {
	switch m, exists, err := s.meta(ctx); {
	case err != nil:
		return err
	case exists && m.Layout != layoutVersion && m.Layout != olderLayout:
		return fmt.Errorf("couchbasestore: reset: %w", s.layoutError(m.Layout))
	}
	var old, clean uint64
	var was int
	err := update(ctx, s, metaKey, nil, func(m *metaDoc, exists bool) bool {
		was, old, clean = m.Layout, m.Gen, m.Clean
		m.Layout = layoutVersion
		m.Gen++
		return true
	})
	if err != nil {
		return s.fail(ctx, "reset: raise generation", err)
	}
	if was == olderLayout {
		s.log.Info("couchbasestore: reset: the store is empty, in this version's layout; purging the older layout's documents",
			"collection", s.cfg.Collection, "layout", layoutVersion)
	}
	for gen := clean; gen <= old; gen++ {
		n, err := s.purge(ctx, keyspaceOf(gen))
		if err != nil {
			return s.fail(ctx, fmt.Sprintf("reset: purge generation %d", gen), err)
		}
		s.log.Debug("couchbasestore: purged generation", "collection", s.cfg.Collection, "gen", gen, "documents", n)
	}
	err = update(ctx, s, metaKey, nil, func(m *metaDoc, _ bool) bool {
		if m.Clean > old {
			return false
		}
		m.Clean = old + 1
		return true
	})
	if err != nil {
		return s.fail(ctx, "reset: record purge", err)
	}
	return nil
}

// purge deletes every document of generation ks reachable from its
// indexes and lists, and returns how many it deleted (or found gone). The
// whole log's index names every event and issue; the pipeline list names
// the pipeline indexes; states, member lists and checkpoints are fixed or
// listed. Everything goes from the bottom up (a leaf before its page,
// pages before the root, indexes before the lists naming them), so an
// interrupted purge leaves whatever is left still reachable.
func (s *Store) purge(ctx context.Context, ks keyspace) (int, error) {
	issues := map[string]bool{}
	n, err := s.purgeIndex(ctx, ks, ixAll, func(ctx context.Context, l leafDoc) (int, error) {
		var keys []string
		for k, e := range l.E {
			switch seq, err := strconv.ParseUint(k, 10, 64); {
			case e.Ref != "": // layout 1: events keyed by id
				keys = append(keys, ks.prefix+e.Ref)
			case err == nil:
				keys = append(keys, ks.event(seq))
			}
			issues[e.Issue] = true
		}
		return len(keys), s.removeAll(ctx, keys)
	})
	if err != nil {
		return n, err
	}
	var pipelines pipelinesDoc
	if _, _, err := s.get(ctx, ks.pipelines(), &pipelines); err != nil {
		return n, err
	}
	var ixs []string
	for ph := range pipelines.P {
		ixs = append(ixs, ixPipeline(ph))
	}
	for _, st := range events.States {
		ixs = append(ixs, ixState(st))
	}
	for _, ix := range ixs {
		m, err := s.purgeIndex(ctx, ks, ix, nil)
		if n += m; err != nil {
			return n, err
		}
	}
	var keys []string
	for ih := range issues {
		keys = append(keys, ks.issue(ih))
	}
	for _, st := range []stores.IssueStatus{stores.IssueOpen, stores.IssueInProgress} {
		for i := range memberBuckets {
			keys = append(keys, ks.members(st, memberBuckets[i:i+1]))
		}
	}
	var cps checkpointDirDoc
	if _, _, err := s.get(ctx, ks.checkpointDir(), &cps); err != nil {
		return n, err
	}
	for _, name := range cps.N {
		keys = append(keys, ks.checkpoint(name))
	}
	if err := s.removeAll(ctx, keys); err != nil {
		return n, err
	}
	// Last, the lists, once what they name is gone.
	return n + len(keys) + 2, s.removeAll(ctx, []string{ks.checkpointDir(), ks.pipelines()})
}

// purgeIndex deletes index ix's leaves, pages and root, handing each leaf
// to onLeaf (if set) before deleting it.
func (s *Store) purgeIndex(ctx context.Context, ks keyspace, ix string, onLeaf func(context.Context, leafDoc) (int, error)) (int, error) {
	var root rootDoc
	if _, exists, err := s.get(ctx, ks.root(ix), &root); err != nil || !exists {
		return 0, err
	}
	n := 0
	for _, k := range slices.Sorted(maps.Keys(root.P)) {
		pg, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			continue
		}
		var page pageDoc
		if _, _, err := s.get(ctx, ks.page(ix, pg), &page); err != nil {
			return n, err
		}
		var leaves []string
		for k := range page.S {
			if seg, err := strconv.ParseUint(k, 10, 64); err == nil {
				leaves = append(leaves, ks.leaf(ix, seg))
			}
		}
		if onLeaf != nil {
			for _, key := range leaves {
				var l leafDoc
				if _, _, err := s.get(ctx, key, &l); err != nil {
					return n, err
				}
				m, err := onLeaf(ctx, l)
				if n += m; err != nil {
					return n, err
				}
			}
		}
		if err := s.removeAll(ctx, leaves); err != nil {
			return n, err
		}
		if err := s.remove(ctx, ks.page(ix, pg)); err != nil {
			return n, err
		}
		n += len(leaves) + 1
	}
	return n + 1, s.remove(ctx, ks.root(ix))
}

func (s *Store) removeAll(ctx context.Context, keys []string) error {
	tasks := make([]task, len(keys))
	for i, k := range keys {
		tasks[i] = func(ctx context.Context) error { return s.remove(ctx, k) }
	}
	return s.run(ctx, tasks)
}
