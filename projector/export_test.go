package projector

import (
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
)

// SetHoldDelays shortens the delays of held newer-version events for a
// test. Call it before starting projectors, so that its cleanup runs after
// theirs.
func SetHoldDelays(t testing.TB, lo, hi time.Duration) {
	oldLo, oldHi := holdMin, holdMax
	holdMin, holdMax = lo, hi
	t.Cleanup(func() { holdMin, holdMax = oldLo, oldHi })
}

// Route is the apply loop a change's events go to among n.
func Route(pipeline, change string, n int) int {
	return route(events.Event{Pipeline: pipeline, ChangeID: change}, n)
}
