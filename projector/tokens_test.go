package projector

import (
	"testing"

	"github.com/auditflow/auditflow/events"
)

func TestTokenWatch(t *testing.T) {
	ev := func(pipeline string, token uint64) events.Event {
		return events.Event{Pipeline: pipeline, LockToken: token}
	}
	var w tokenWatch
	steps := []struct {
		pipeline string
		seq      uint64
		token    uint64
		stale    bool
	}{
		{"p", 1, 5, false},
		{"p", 2, 5, false},
		{"q", 3, 2, false}, // other pipelines are independent
		{"p", 4, 9, false}, // a new holder
		{"p", 5, 5, true},  // the old holder writes on: stale
		{"p", 6, 0, false}, // no token: not judged
		{"p", 3, 5, false}, // a redelivery of an event from before the new holder
		{"p", 7, 9, false},
		{"p", 4, 9, false}, // redelivered rise
	}
	for _, s := range steps {
		if _, stale := w.check(ev(s.pipeline, s.token), s.seq); stale != s.stale {
			t.Errorf("%s seq %d token %d: stale %v, want %v", s.pipeline, s.seq, s.token, stale, s.stale)
		}
	}
	// Bounded: only the newest rises are kept, older events are not judged.
	var b tokenWatch
	for i := range uint64(200) {
		b.check(ev("p", i+1), i+1)
	}
	if n := len(b.rises["p"]); n != maxRises {
		t.Fatalf("kept %d rises", n)
	}
	if _, stale := b.check(ev("p", 1), 2); stale {
		t.Fatal("judged an event older than what is kept")
	}
	if _, stale := b.check(ev("p", 150), 190); !stale {
		t.Fatal("a stale token among the kept rises was not flagged")
	}
}
