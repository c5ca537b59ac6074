package projector

import (
	"math/rand/v2"
	"testing"
)

// TestProgress checks the floor against the obvious definition — the
// largest k with 1..k all settled — while sequences settle in random
// order, some through the ack floor, and every through() against the
// floor that finishing its sequences gives.
func TestProgress(t *testing.T) {
	for round := range 200 {
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		n := 1 + rng.IntN(300)
		order := rng.Perm(n)
		var g progress
		settled := make([]bool, n+2)
		want := func() uint64 {
			k := uint64(0)
			for k+1 <= uint64(n) && settled[k+1] {
				k++
			}
			return k
		}
		for i := 0; i < len(order); {
			k := min(len(order)-i, 1+rng.IntN(8))
			batch := make([]uint64, k)
			for j := range batch {
				batch[j] = uint64(order[i+j] + 1)
			}
			i += k
			before := g.through(nil)
			claim := g.through(batch)
			if rng.IntN(10) == 0 { // the ack floor catches up with what is settled
				g.raise(want())
			}
			g.finish(batch...)
			for _, s := range batch {
				settled[s] = true
			}
			floor, _ := g.state()
			if floor != want() {
				t.Fatalf("round %d: floor %d, want %d (runs %v)", round, floor, want(), g.done)
			}
			if claim < before || claim > floor {
				t.Fatalf("round %d: batch %v claimed %d; floor was %d, is %d", round, batch, claim, before, floor)
			}
		}
		if floor, _ := g.state(); floor != uint64(n) || len(g.done) != 0 {
			t.Fatalf("round %d: end floor %d of %d, runs left %v", round, floor, n, g.done)
		}
	}
}

func TestProgressGaps(t *testing.T) {
	var g progress
	g.finish(2, 3, 5)
	if f, _ := g.state(); f != 0 {
		t.Fatalf("floor %d with 1 unsettled", f)
	}
	if c := g.through([]uint64{1}); c != 3 {
		t.Fatalf("through(1) = %d, want 3", c)
	}
	// Sequence 4 is not in the stream (or went to another process): only
	// the consumer's ack floor passes it.
	g.finish(1)
	if f, _ := g.state(); f != 3 {
		t.Fatalf("floor %d, want 3", f)
	}
	g.raise(4)
	if f, _ := g.state(); f != 5 {
		t.Fatalf("floor %d after the ack floor passed the gap, want 5", f)
	}
	g.raise(2) // an older ack floor changes nothing
	g.finish(3)
	if f, _ := g.state(); f != 5 || len(g.done) != 0 {
		t.Fatalf("floor %d runs %v", f, g.done)
	}
}
