package inspect_test

import (
	"testing"

	"github.com/auditflow/auditflow/internal/inspect"
)

// TestFixCommandQuotesWhatAShellWouldRead: ids come from events, and
// people paste the command the guidance shows.
func TestFixCommandQuotesWhatAShellWouldRead(t *testing.T) {
	for _, tc := range []struct{ pipeline, change, want string }{
		{"billing", "0002-add-index", `auditflow issue fix -p billing -c 0002-add-index -r applied --reason "..."`},
		{"billing", "0003-$(rm -rf ~)", `auditflow issue fix -p billing -c '0003-$(rm -rf ~)' -r applied --reason "..."`},
		{"it's", "a b", `auditflow issue fix -p 'it'\''s' -c 'a b' -r applied --reason "..."`},
		{"", "x", `auditflow issue fix -p '' -c x -r applied --reason "..."`},
	} {
		if got := inspect.FixCommand(tc.pipeline, tc.change, "applied"); got != tc.want {
			t.Errorf("FixCommand(%q, %q) = %s, want %s", tc.pipeline, tc.change, got, tc.want)
		}
	}
}
