package projector

import (
	"slices"
	"sync"

	"github.com/auditflow/auditflow/events"
)

// tokenWatch flags events written with a stale lock token: a token lower
// than one already recorded for the same pipeline earlier in the stream.
// Lock tokens grow with every holder, so in a sound history they never go
// down along a pipeline; one that does came from a runner that kept
// writing after its lease had passed to another (paused, partitioned) or
// from a writer that does not take the lock.
//
// It keeps, per pipeline, the points in the stream where the highest
// token rose, so that redelivered (older) events are judged against what
// came before them, not after. Rises are rare (one per lock acquisition),
// and only the newest maxRises per pipeline are kept; an event older than
// all of them is not judged. It sees what this process fetched since it
// started; verify judges the whole stream.
type tokenWatch struct {
	mu    sync.Mutex
	rises map[string][]rise
}

type rise struct{ seq, token uint64 }

const maxRises = 64

// check records e at seq and returns the highest token recorded for e's
// pipeline before seq, and whether e's token is below it. Events without a
// token (0: written without the lock, e.g. a forced resolution) are
// neither judged nor recorded.
func (w *tokenWatch) check(e events.Event, seq uint64) (newest uint64, stale bool) {
	if e.LockToken == 0 {
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rises == nil {
		w.rises = map[string][]rise{}
	}
	rs := w.rises[e.Pipeline]
	// i: the first rise at or after seq; rs[i-1] is the last before it.
	i, _ := slices.BinarySearchFunc(rs, seq, func(r rise, s uint64) int {
		switch {
		case r.seq < s:
			return -1
		case r.seq > s:
			return 1
		}
		return 0
	})
	if i > 0 {
		newest = rs[i-1].token
		stale = e.LockToken < newest
	} else if len(rs) == maxRises {
		return 0, false // older than what is kept: not judged
	}
	if !stale && e.LockToken > newest && (i == len(rs) || rs[i].seq != seq) {
		// A new rise at seq; later rises with a token not above it are
		// no longer rises.
		rs = slices.Insert(rs, i, rise{seq, e.LockToken})
		j := i + 1
		for j < len(rs) && rs[j].token <= e.LockToken {
			j++
		}
		rs = slices.Delete(rs, i+1, j)
		if len(rs) > maxRises {
			rs = rs[len(rs)-maxRises:]
		}
		w.rises[e.Pipeline] = rs
	}
	return newest, stale
}
