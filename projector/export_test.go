package projector

import (
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
)

// SetHeldTimings shortens how often a running projector reads the held
// stream and re-drives it. Call it before starting projectors.
func SetHeldTimings(t testing.TB, refresh, redrive time.Duration) {
	oldRefresh, oldRedrive := heldRefreshEvery, redriveEvery
	heldRefreshEvery, redriveEvery = refresh, redrive
	t.Cleanup(func() { heldRefreshEvery, redriveEvery = oldRefresh, oldRedrive })
}

// Route is the apply loop a change's events go to among n.
func Route(pipeline, change string, n int) int {
	return route(events.Event{Pipeline: pipeline, ChangeID: change}, n)
}
